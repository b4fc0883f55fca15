"""vml/objects: chunk boundaries, packs, the chunk store, index files, manifests, gc of the store."""

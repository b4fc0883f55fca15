"""The chunk store: content-addressed chunks and directory manifests in packs."""

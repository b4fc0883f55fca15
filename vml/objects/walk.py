"""Walking the Merkle tree of listings from a root."""

from __future__ import annotations

from typing import Callable, Iterator

from vml.objects.manifest import KIND_DIR, Listing, Node, decode_listing
from vml.objects.store import ChunkStore


def listing_loader(store: ChunkStore, overlay: dict[bytes, bytes] | None = None) -> Callable[[bytes], Listing]:
    """Load and validate listings from the store, or first from an in-memory overlay."""

    def load(listing_id: bytes, *, root: bool = False) -> Listing:
        data = overlay.get(listing_id) if overlay else None
        if data is None:
            data = store.get(listing_id)
        return decode_listing(data, root=root)

    return load


def root_node(load: Callable[..., Listing], root_id: bytes) -> Node:
    return load(root_id, root=True).nodes[0]


def walk_nodes(load: Callable[..., Listing], root_id: bytes, *, seen: set[bytes] | None = None) -> Iterator[tuple[bytes, Node]]:
    """(path, node) for every node under the root, depth first. With `seen`, subtrees whose
    listing id is in it are skipped (and new ones added): each listing is visited once."""
    root = root_node(load, root_id)
    stack = [(b"", root.tree)]
    while stack:
        prefix, listing_id = stack.pop()
        if seen is not None:
            if listing_id in seen:
                continue
            seen.add(listing_id)
        subdirs = []
        for node in load(listing_id).nodes:
            path = prefix + b"/" + node.name if prefix else node.name
            yield path, node
            if node.kind == KIND_DIR:
                subdirs.append((path, node.tree))
        stack.extend(reversed(subdirs))

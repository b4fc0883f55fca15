"""Walking the Merkle tree of listings from a root."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterator

from vml.objects.manifest import KIND_DIR, Listing, Node, decode_listing, decode_listing_items
from vml.objects.store import ChunkStore


def listing_loader(store: ChunkStore, overlay: dict[bytes, bytes] | None = None, *, memo: int = 0) -> Callable[[bytes], Listing]:
    """Load and validate listings from the store, or first from an in-memory overlay.
    With `memo`, the last that many decoded listings are kept (for walks that revisit)."""

    def load(listing_id: bytes, *, root: bool = False, raw: bool = False) -> Listing | dict[bytes, list]:
        """The listing; with `raw`, its undecoded nodes by name (see decode_listing_items)."""
        data = overlay.get(listing_id) if overlay else None
        if data is None:
            data = store.get(listing_id)
        return decode_listing_items(data) if raw else decode_listing(data, root=root)

    if not memo:
        return load
    remembered: OrderedDict[tuple[bytes, bool, bool], Listing | dict[bytes, list]] = OrderedDict()

    def load_remembered(listing_id: bytes, *, root: bool = False, raw: bool = False) -> Listing | dict[bytes, list]:
        key = (listing_id, root, raw)
        listing = remembered.get(key)
        if listing is None:
            listing = remembered[key] = load(listing_id, root=root, raw=raw)
            if len(remembered) > memo:
                remembered.popitem(last=False)
        return listing

    return load_remembered


def root_node(load: Callable[..., Listing], root_id: bytes) -> Node:
    return load(root_id, root=True).nodes[0]


def node_at(load: Callable[..., Listing], root_id: bytes, path: bytes) -> Node | None:
    """The node at a relative '/'-separated path (b"" for the top), or None if absent."""
    node = root_node(load, root_id)
    for name in path.split(b"/") if path else ():
        if node.kind != KIND_DIR:
            return None
        node = next((child for child in load(node.tree).nodes if child.name == name), None)
        if node is None:
            return None
    return node


def read_content(store: ChunkStore, node: Node) -> bytes:
    """A regular file's bytes, holes of a sparse file as zeros."""
    data = b"".join(store.get(chunk) for chunk in node.chunk_ids())
    if node.extents is None:
        return data
    content = bytearray(node.size)
    position = 0
    for offset, length in node.extents:
        content[offset : offset + length] = data[position : position + length]
        position += length
    return bytes(content)


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

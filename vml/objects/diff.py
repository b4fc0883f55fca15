"""Comparing two trees of listings, skipping every subtree whose id is equal on both sides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from vml.objects.manifest import KIND_DIR, Listing, Node

ADDED = "A"
DELETED = "D"
MODIFIED = "M"  # content or type changed
METADATA = "T"  # only mode, owner, mtime or xattrs changed


@dataclass(frozen=True, slots=True)
class Change:
    path: bytes
    status: str
    old: Node | None
    new: Node | None


def diff_roots(load: Callable[..., Listing], old_root: bytes | None, new_root: bytes | None) -> Iterator[Change]:
    old = load(old_root, root=True).nodes[0] if old_root is not None else None
    new = load(new_root, root=True).nodes[0] if new_root is not None else None
    if old is not None and new is not None and not old.same_metadata(new):
        yield Change(b".", METADATA, old, new)
    yield from diff_listings(load, old.tree if old else None, new.tree if new else None, b"")


def diff_listings(load: Callable[..., Listing], old_id: bytes | None, new_id: bytes | None, prefix: bytes) -> Iterator[Change]:
    if old_id == new_id:
        return
    old_nodes = {n.name: n for n in load(old_id).nodes} if old_id is not None else {}
    new_nodes = {n.name: n for n in load(new_id).nodes} if new_id is not None else {}
    for name in sorted(old_nodes.keys() | new_nodes.keys()):
        path = prefix + b"/" + name if prefix else name
        old, new = old_nodes.get(name), new_nodes.get(name)
        if new is None:
            yield Change(path, DELETED, old, None)
            if old.kind == KIND_DIR:
                yield from diff_listings(load, old.tree, None, path)
        elif old is None:
            yield Change(path, ADDED, None, new)
            if new.kind == KIND_DIR:
                yield from diff_listings(load, None, new.tree, path)
        elif old.kind == KIND_DIR and new.kind == KIND_DIR:
            if not old.same_metadata(new):
                yield Change(path, METADATA, old, new)
            yield from diff_listings(load, old.tree, new.tree, path)
        elif old.kind != new.kind:
            yield Change(path, MODIFIED, old, new)
            if old.kind == KIND_DIR:
                yield from diff_listings(load, old.tree, None, path)
            if new.kind == KIND_DIR:
                yield from diff_listings(load, None, new.tree, path)
        elif not old.same_content(new) or old.hardlink != new.hardlink:
            yield Change(path, MODIFIED, old, new)
        elif not old.same_metadata(new):
            yield Change(path, METADATA, old, new)

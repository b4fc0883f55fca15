"""Comparing two trees of listings, skipping every subtree whose id is equal on both sides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from vml.objects.manifest import KIND_DIR, Listing, Node, node_from_item
from vml.objects.walk import node_at, root_node

ADDED = "A"
DELETED = "D"
MODIFIED = "M"  # content or type changed, perhaps metadata too
METADATA = "T"  # only mode, owner, mtime, xattrs or hardlink group changed


@dataclass(frozen=True, slots=True)
class Change:
    path: bytes
    status: str
    old: Node | None
    new: Node | None

    @property
    def parts(self) -> list[str]:
        """What changed: content, type, mode, owner, mtime, xattrs, links (empty for A and D)."""
        return changed_parts(self.old, self.new) if self.old is not None and self.new is not None else []


def changed_parts(old: Node, new: Node) -> list[str]:
    parts = []
    if old.kind != new.kind:
        parts.append("type")
    elif old.kind != KIND_DIR and not old.same_content(new):
        parts.append("content")
    if old.hardlink != new.hardlink:
        parts.append("links")  # now (or no longer) sharing its inode with other paths
    if old.mode != new.mode:
        parts.append("mode")
    if (old.uid, old.gid) != (new.uid, new.gid):
        parts.append("owner")
    if old.mtime_ns != new.mtime_ns:
        parts.append("mtime")
    if old.xattrs != new.xattrs:
        parts.append("xattrs")
    return parts


def diff_roots(load: Callable[..., Listing], old_root: bytes | None, new_root: bytes | None) -> Iterator[Change]:
    old = root_node(load, old_root) if old_root is not None else None
    new = root_node(load, new_root) if new_root is not None else None
    if old is not None and new is not None and not old.same_metadata(new):
        yield Change(b".", METADATA, old, new)
    yield from diff_listings(load, old.tree if old else None, new.tree if new else None, b"")


def diff_paths(load: Callable[..., Listing], old_root: bytes | None, new_root: bytes | None, paths: Iterable[bytes]) -> Iterator[Change]:
    """Changes at and under each of `paths` (relative, '/'-separated; b"" is the whole tree),
    in path order. Only the listings on the way to each path are read."""
    wanted = sorted(set(paths))
    # A path under another wanted path is covered by it.
    wanted = [p for p in wanted if not any(p != q and (not q or p.startswith(q + b"/")) for q in wanted)]
    if b"" in wanted:
        yield from diff_roots(load, old_root, new_root)
        return
    for path in wanted:
        old = node_at(load, old_root, path) if old_root is not None else None
        new = node_at(load, new_root, path) if new_root is not None else None
        yield from diff_nodes(load, path, old, new)


def diff_listings(load: Callable[..., Listing], old_id: bytes | None, new_id: bytes | None, prefix: bytes) -> Iterator[Change]:
    if old_id == new_id:
        return
    # Nodes stay undecoded msgpack arrays until they differ: a large directory with one
    # changed file costs one comparison per unchanged file, not one decoded node.
    old_items = load(old_id, raw=True) if old_id is not None else {}
    new_items = load(new_id, raw=True) if new_id is not None else {}
    for name in sorted(old_items.keys() | new_items.keys()):
        old, new = old_items.get(name), new_items.get(name)
        if old == new:
            continue
        path = prefix + b"/" + name if prefix else name
        yield from diff_nodes(load, path, node_from_item(old) if old else None, node_from_item(new) if new else None)


def diff_nodes(load: Callable[..., Listing], path: bytes, old: Node | None, new: Node | None) -> Iterator[Change]:
    """The changes from node `old` to node `new` at `path` (either may be None), and below."""
    if old is None and new is None:
        return
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
    elif not old.same_content(new):
        yield Change(path, MODIFIED, old, new)
    elif not old.same_metadata(new) or old.hardlink != new.hardlink:
        yield Change(path, METADATA, old, new)

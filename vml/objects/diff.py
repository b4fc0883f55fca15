"""Comparing two trees of listings, skipping every subtree whose id is equal on both sides.

The status letters are git's where git has the case: A added, D deleted, M content changed,
T type changed (a file that became a symlink, a FIFO that became a file). A directory
replaced by anything else, or the reverse, is the old path deleted (with all below it) and
the new one added, as `git diff` shows it. P is vml's own, a letter git does not use: only
properties changed (mode, owner, mtime, xattrs, inode flags, hardlinks), which git does not
keep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from vml.objects.manifest import KIND_DIR, Listing, Node, check_depth, node_from_item, walk_key
from vml.objects.walk import PathBudget, hardlink_groups, node_at, root_node

ADDED = "A"
DELETED = "D"
MODIFIED = "M"  # content changed (same type), perhaps properties too
TYPE_CHANGED = "T"  # another type of file at the same path (never to or from a directory)
PROPERTIES = "P"  # only mode, owner, mtime, xattrs, flags or hardlinks changed
STATUSES = (ADDED, DELETED, MODIFIED, TYPE_CHANGED, PROPERTIES)


@dataclass(frozen=True, slots=True)
class Change:
    path: bytes
    status: str
    old: Node | None
    new: Node | None
    parts: tuple[str, ...] = ()  # what changed: content, type, links, mode, owner, mtime, xattrs, flags (none for A and D)


class _Groups:
    """The hardlink groups of both trees, read when first needed: a path's `links` changed
    when the set of other paths sharing its inode did."""

    def __init__(self, load: Callable[..., Listing], old_root: bytes, new_root: bytes):
        self._load = load
        self._roots = (old_root, new_root)
        self._maps: tuple[dict[bytes, frozenset[bytes]], ...] | None = None
        old_links, new_links = (load(root, root=True).links for root in self._roots)
        # (A root written before roots listed their groups has None: it compares by walking.)
        self.tables_differ = old_links is not None and new_links is not None and old_links != new_links

    def _map(self, root: bytes) -> dict[bytes, frozenset[bytes]]:
        members = {}
        for group in hardlink_groups(self._load, root):
            whole = frozenset(group)
            members.update((path, whole) for path in group)
        return members

    def _members(self) -> tuple[dict[bytes, frozenset[bytes]], ...]:
        if self._maps is None:
            self._maps = tuple(self._map(root) for root in self._roots)
        return self._maps

    def links_changed(self, path: bytes) -> bool:
        old, new = self._members()
        return old.get(path, frozenset()) - {path} != new.get(path, frozenset()) - {path}

    def regrouped(self) -> list[bytes]:
        """Every path whose group gained or lost a member, in walk order."""
        old, new = self._members()
        paths = {path for group in set(old.values()) ^ set(new.values()) for path in group}
        return sorted((p for p in paths if self.links_changed(p)), key=walk_key)


class TreeDiff:
    """The changes from one tree (a root listing id, or None for nothing) to another."""

    def __init__(self, load: Callable[..., Listing], old_root: bytes | None, new_root: bytes | None):
        self.load = load
        self.old_root, self.new_root = old_root, new_root
        # Each path of either tree gives at most two changes (deleted, then added).
        self._budget = PathBudget(2 + sum(2 * PathBudget.of(load, root).left for root in (old_root, new_root) if root is not None))

    def changes(self, paths: Iterable[bytes] = (b"",)) -> list[Change]:
        """Changes at and under each of `paths` (relative, '/'-separated; b"" is the whole
        tree), in walk order. Only the listings on the way to each path are read."""
        wanted = sorted(set(paths))
        # A path under another wanted path is covered by it.
        wanted = [p for p in wanted if not any(p != q and (not q or p.startswith(q + b"/")) for q in wanted)]
        found: list[Change] = []
        if b"" in wanted:
            found.extend(self._top())
            self._walk([("listings", b"", self._tree(self.old_root), self._tree(self.new_root))], found)
        else:
            for path in wanted:
                old = node_at(self.load, self.old_root, path) if self.old_root is not None else None
                new = node_at(self.load, self.new_root, path) if self.new_root is not None else None
                self._walk([("nodes", path, old, new)], found)
        return self._with_links(found, wanted)

    def _tree(self, root: bytes | None) -> bytes | None:
        return root_node(self.load, root).tree if root is not None else None

    def _top(self) -> Iterator[Change]:
        if self.old_root is not None and self.new_root is not None:
            old, new = root_node(self.load, self.old_root), root_node(self.load, self.new_root)
            yield Change(b".", PROPERTIES, old, new, tuple(_property_parts(old, new)))

    def _walk(self, tasks: list[tuple], found: list[Change]) -> None:
        """Runs the tasks, last first, appending changes in walk order: ("listings", prefix,
        old id, new id) compares two listings, ("nodes", path, old, new) two nodes. A stack,
        not recursion: a tree may be as deep as its paths allow."""
        while tasks:
            task, path, old, new = tasks.pop()
            if task == "listings":
                check_depth(path)
                tasks.extend(reversed(self._differing(path, old, new)))
            else:
                tasks.extend(reversed(self._node_changes(path, old, new, found)))

    def _differing(self, prefix: bytes, old_id: bytes | None, new_id: bytes | None) -> list[tuple]:
        """The names whose nodes differ between two listings, as node tasks in name order."""
        if old_id == new_id:
            return []
        # Nodes stay undecoded msgpack arrays until they differ: a large directory with one
        # changed file costs one comparison per unchanged file, not one decoded node.
        old_items = self.load(old_id, raw=True) if old_id is not None else {}
        new_items = self.load(new_id, raw=True) if new_id is not None else {}
        tasks = []
        for name in sorted(old_items.keys() | new_items.keys()):
            old, new = old_items.get(name), new_items.get(name)
            if old == new:
                continue
            self._budget.spend()
            path = prefix + b"/" + name if prefix else name
            tasks.append(("nodes", path, node_from_item(old) if old else None, node_from_item(new) if new else None))
        return tasks

    def _node_changes(self, path: bytes, old: Node | None, new: Node | None, found: list[Change]) -> list[tuple]:
        """Appends the changes from node `old` to node `new` at `path` (either may be None);
        returns the listings to compare below it. A change of properties comes without its
        `links` part here (see _with_links)."""
        if old is None and new is None:
            return []
        if old is not None and new is not None and (old.kind == KIND_DIR) == (new.kind == KIND_DIR):
            if old.kind != new.kind:
                found.append(Change(path, TYPE_CHANGED, old, new, ("type", *_property_parts(old, new))))
            elif old.kind != KIND_DIR and not old.same_content(new):
                found.append(Change(path, MODIFIED, old, new, ("content", *_property_parts(old, new))))
            else:
                found.append(Change(path, PROPERTIES, old, new, tuple(_property_parts(old, new))))
            return [("listings", path, old.tree, new.tree)] if old.kind == KIND_DIR else []
        # Added, deleted, or a directory on one side only: as git shows it, the old path goes
        # (with everything below it) and the new one comes.
        below = []
        if old is not None:
            found.append(Change(path, DELETED, old, None))
            if old.kind == KIND_DIR:
                below.append(("listings", path, old.tree, None))
        if new is not None:
            found.append(Change(path, ADDED, None, new))
            if new.kind == KIND_DIR:
                below.append(("listings", path, None, new.tree))
        return below

    def _with_links(self, found: list[Change], wanted: list[bytes]) -> list[Change]:
        """Adds `links` where a path's hardlink group changed, and the paths whose nodes are
        equal but whose group gained or lost a member elsewhere; drops the nodes that
        differ only in how they are written (a first member naming itself)."""
        groups = None
        if self.old_root is not None and self.new_root is not None:  # else every path is added or deleted
            groups = _Groups(self.load, self.old_root, self.new_root)
            if not groups.tables_differ and not any(
                node.hardlink is not None for c in found for node in (c.old, c.new) if node is not None
            ):
                groups = None  # no group gained or lost a member
        kept = []
        for change in found:
            if change.old is not None and change.new is not None and groups is not None and change.old.kind != KIND_DIR:
                if groups.links_changed(change.path):
                    change = replace(change, parts=change.parts[:1] + ("links",) + change.parts[1:]
                                     if change.status != PROPERTIES else ("links",) + change.parts)
            if change.parts or change.old is None or change.new is None:
                kept.append(change)
        if groups is None:
            return kept
        reported = {c.path for c in found}
        extra = []
        for path in groups.regrouped():
            if path in reported or not any(not w or path == w or path.startswith(w + b"/") for w in wanted):
                continue
            old, new = node_at(self.load, self.old_root, path), node_at(self.load, self.new_root, path)
            if old is not None and new is not None:
                extra.append(Change(path, PROPERTIES, old, new, ("links",)))
        return sorted(kept + extra, key=lambda change: walk_key(change.path)) if extra else kept


def _property_parts(old: Node, new: Node) -> list[str]:
    parts = []
    if old.mode != new.mode:
        parts.append("mode")
    if (old.uid, old.gid) != (new.uid, new.gid):
        parts.append("owner")
    if old.mtime_ns != new.mtime_ns:
        parts.append("mtime")
    if old.xattrs != new.xattrs:
        parts.append("xattrs")
    if old.flags != new.flags:
        parts.append("flags")
    return parts


def diff_roots(load: Callable[..., Listing], old_root: bytes | None, new_root: bytes | None) -> list[Change]:
    """Every change from one tree to another, in walk order."""
    return TreeDiff(load, old_root, new_root).changes()


def diff_paths(load: Callable[..., Listing], old_root: bytes | None, new_root: bytes | None, paths: Iterable[bytes]) -> list[Change]:
    """The changes at and under each of `paths`, in walk order."""
    return TreeDiff(load, old_root, new_root).changes(paths)

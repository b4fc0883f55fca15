"""Walking the Merkle tree of listings from a root."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

from vml.errors import CorruptObject
from vml.objects.manifest import KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FILE, KIND_SYMLINK, Listing, Node, decode_listing, decode_listing_items
from vml.objects.store import ChunkStore


class PathBudget:
    """The paths an expansion of a tree may yield: what its root declares. Listings may name
    one listing many times (identical directories share it), so a few KB can name 2^40
    paths; the root's totals (at most MAX_PATHS) bound every walk, and a tree whose listings
    name more than they declare is damaged, found after at most that many paths."""

    def __init__(self, declared: int):
        self.left = declared

    @classmethod
    def of(cls, load: Callable[..., Listing], root_id: bytes, *, times: int = 1) -> PathBudget:
        return cls(load(root_id, root=True).totals.nodes * times)

    def spend(self, paths: int = 1) -> None:
        self.left -= paths
        if self.left < 0:
            raise CorruptObject("damaged manifest: its listings name more paths than its root declares")


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


def hardlink_groups(load: Callable[..., Listing], root_id: bytes) -> tuple[tuple[bytes, ...], ...]:
    """The tree's hardlink groups, each its paths in walk order (the first is the one the
    others name). A root written before roots listed them is walked to find them."""
    listing = load(root_id, root=True)
    if listing.links is not None:
        return listing.links
    groups: dict[bytes, list[bytes]] = {}
    for path, node in walk_nodes(load, root_id):
        if node.hardlink is not None and node.hardlink != path:
            groups.setdefault(node.hardlink, [node.hardlink]).append(path)
    return tuple(tuple(members) for members in groups.values())


PRIVILEGED_SHOWN = 20


def privileged_nodes(load: Callable[..., Listing], roots: list[bytes], within: set[bytes]) -> tuple[int, list[tuple[bytes, str]]]:
    """What a checkout by root would give power to, among the nodes of `roots` reached through
    the listings in `within` (those just received from elsewhere): files that run as root
    (setuid or setgid root) and device nodes. Returns how many, and the first ones with why."""
    found: list[tuple[bytes, str]] = []
    count = 0
    seen: set[bytes] = set()
    stack = [(b"", root_node(load, root).tree) for root in roots if root in within]
    while stack:
        prefix, listing_id = stack.pop()
        if listing_id in seen or listing_id not in within:
            continue
        seen.add(listing_id)
        for node in load(listing_id).nodes:
            path = prefix + b"/" + node.name if prefix else node.name
            why = _privilege(node)
            if why:
                count += 1
                if len(found) < PRIVILEGED_SHOWN:
                    found.append((path, why))
            if node.kind == KIND_DIR:
                stack.append((path, node.tree))
    return count, sorted(found)


def _privilege(node: Node) -> str | None:
    if node.kind in (KIND_CHAR, KIND_BLOCK):
        return "device"
    if node.kind == KIND_FILE and node.mode & 0o4000 and node.uid == 0:
        return "setuid root"
    if node.kind == KIND_FILE and node.mode & 0o2000 and node.gid == 0:
        return "setgid root"
    return None


def tree_counts(load: Callable[..., Listing], root_id: bytes) -> tuple[int, int, int, int]:
    """(regular files, directories, symlinks, other nodes) below the top, counted once per
    distinct listing and multiplied out: exact, and as fast for a tree whose listings
    repeat (2^40 paths in a few KB) as for any other."""
    return listing_counts(load, root_node(load, root_id).tree)


def listing_counts(load: Callable[..., Listing], top: bytes) -> tuple[int, int, int, int]:
    """tree_counts below a directory's listing."""
    counted: dict[bytes, tuple[int, int, int, int]] = {}
    stack = [top]
    while stack:
        listing_id = stack[-1]
        if listing_id in counted:
            stack.pop()
            continue
        nodes = load(listing_id).nodes
        waiting = [n.tree for n in nodes if n.kind == KIND_DIR and n.tree not in counted]
        if waiting:
            stack.extend(waiting)
            continue
        files = dirs = links = other = 0
        for node in nodes:
            if node.kind == KIND_DIR:
                below = counted[node.tree]
                files, dirs, links, other = files + below[0], dirs + below[1] + 1, links + below[2], other + below[3]
            elif node.kind == KIND_FILE:
                files += 1
            elif node.kind == KIND_SYMLINK:
                links += 1
            else:
                other += 1
        counted[listing_id] = (files, dirs, links, other)
        stack.pop()
    return counted[top]


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
    """A regular file's bytes, holes of a sparse file as zeros. The chunks' recorded sizes
    must add up to the node's before any is read: a lying node costs no memory."""
    expected = sum(length for _offset, length in node.extents) if node.extents is not None else node.size
    if sum(store.raw_size(chunk) for chunk in node.chunk_ids()) != expected or not 0 <= expected <= node.size:
        raise CorruptObject(f"damaged manifest: {node.name!r} does not have the {node.size:,} bytes it says")
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
    budget = PathBudget.of(load, root_id) if seen is None else None
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
            if budget is not None:
                budget.spend()
            yield path, node
            if node.kind == KIND_DIR:
                subdirs.append((path, node.tree))
        stack.extend(reversed(subdirs))


def missing_blobs(
    load_raw: Callable[[list[bytes]], list[bytes]], root_ids: list[bytes], known: Callable[[bytes], bool]
) -> tuple[list[tuple[bytes, bytes]], list[bytes]]:
    """What a repository holding the blobs `known` says it has must receive to hold the
    trees of `root_ids`: (listings as (id, raw bytes), every child before its parents; data chunks).

    A listing the other side has is skipped with everything below it: blobs are always
    stored children first, so a listing is never there without its subtree. Listings are
    loaded a level at a time (`load_raw` takes a batch), so a remote costs one round of
    requests per level of directories, not one per directory.
    """
    raw: dict[bytes, bytes] = {}
    children: dict[bytes, list[bytes]] = {}
    chunks: list[bytes] = []
    seen: set[bytes] = set()
    level = [(listing_id, True) for listing_id in dict.fromkeys(root_ids) if not known(listing_id)]
    seen.update(listing_id for listing_id, _root in level)
    while level:
        next_level = []
        for (listing_id, is_root), data in zip(level, load_raw([listing_id for listing_id, _root in level])):
            raw[listing_id] = data
            below = children[listing_id] = []
            for node in decode_listing(data, root=is_root).nodes:
                if node.kind == KIND_DIR:
                    below.append(node.tree)  # (those not sent are left out by _children_first)
                    if node.tree not in seen and not known(node.tree):
                        seen.add(node.tree)
                        next_level.append((node.tree, False))
                elif node.chunks:
                    for chunk_id in node.chunk_ids():
                        if chunk_id not in seen and not known(chunk_id):
                            seen.add(chunk_id)
                            chunks.append(chunk_id)
        level = next_level
    return [(listing_id, raw[listing_id]) for listing_id in _children_first(children, list(raw))], chunks


def shared_blobs(load_old: Callable[[list[bytes]], list[bytes]], load_new: Callable[[list[bytes]], list[bytes | None]],
                 pairs: list[tuple[bytes, bytes]]) -> set[bytes]:
    """The blobs of old trees that a walk of new trees meets where they differ: for each
    (old root, new root), the children (listings and chunks) of every old directory whose
    counterpart at the same path in the new tree is another listing, down those paths. Given
    to missing_blobs(new roots) as what the other side has, it skips every unchanged subtree
    (its listing is among its old parent's children) at the cost of the changed directories,
    not of the whole old tree; a file moved to another directory is sent again.
    `load_new` may answer None for a listing it lacks: that path is not followed."""
    known: set[bytes] = {old for old, _new in pairs}
    level = [(old, new, True) for old, new in dict.fromkeys(pairs) if old != new]
    followed: set[tuple[bytes, bytes]] = set()
    while level:
        olds = load_old([old for old, _new, _root in level])
        news = load_new([new for _old, new, _root in level])
        next_level = []
        for (_old, _new, is_root), old_data, new_data in zip(level, olds, news):
            below: dict[bytes, bytes] = {}
            for node in decode_listing(old_data, root=is_root).nodes:
                if node.kind == KIND_DIR and node.tree is not None:
                    known.add(node.tree)
                    below[node.name] = node.tree
                elif node.chunks:
                    known.update(node.chunk_ids())
            if new_data is None:
                continue
            for node in decode_listing(new_data, root=is_root).nodes:
                old_tree = below.get(node.name)
                if node.kind == KIND_DIR and old_tree is not None and node.tree is not None and old_tree != node.tree \
                        and (old_tree, node.tree) not in followed:
                    followed.add((old_tree, node.tree))
                    next_level.append((old_tree, node.tree, False))
        level = next_level
    return known


def _children_first(children: dict[bytes, list[bytes]], listing_ids: list[bytes]) -> list[bytes]:
    """A post-order of the listings: one shared by several parents comes before all of them."""
    order: list[bytes] = []
    done: set[bytes] = set()
    for start in listing_ids:
        if start in done:
            continue
        done.add(start)
        stack = [(start, iter(children[start]))]
        while stack:
            listing_id, pending = stack[-1]
            child = next((c for c in pending if c not in done and c in children), None)
            if child is None:
                order.append(listing_id)
                stack.pop()
            else:
                done.add(child)
                stack.append((child, iter(children[child])))
    return order

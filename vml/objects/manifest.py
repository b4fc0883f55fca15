"""Directory manifests: the Merkle tree of a saved file tree, canonically encoded with msgpack.

One listing per directory, its nodes sorted by raw name bytes, each with full metadata and
either chunk ids (regular files) or the id of the child listing (directories). Encoding
uses msgpack arrays of a fixed shape, so the same tree always gives the same bytes.
The root of an entry is a listing with a single node named b"" that describes the
top directory itself, followed by the tree's hardlink groups (see `encode_root`).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

import msgpack

from vml.errors import CorruptObject, UnsafePath
from vml.objects.ids import ID_SIZE

FORMAT = 1
# More paths than any filesystem holds (ext4 counts inodes in 32 bits): a root declaring
# more is a hostile DAG that names one listing again and again, not a tree.
MAX_PATHS = 1 << 32
# Directories nested deeper than this are refused, by captures and by readers: a path of
# one-letter names under Linux's PATH_MAX (4096 bytes) is at most 2048 levels deep.
MAX_DEPTH = 2048
# The walks that recurse (one Python call per level, no C stack in CPython 3.11+) need room.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * MAX_DEPTH + 1000))

KIND_FILE = 1
KIND_DIR = 2
KIND_SYMLINK = 3
KIND_CHAR = 4
KIND_BLOCK = 5
KIND_FIFO = 6
KIND_NAMES = {
    KIND_FILE: "file",
    KIND_DIR: "dir",
    KIND_SYMLINK: "symlink",
    KIND_CHAR: "char",
    KIND_BLOCK: "block",
    KIND_FIFO: "fifo",
}


@dataclass(slots=True)
class Node:
    name: bytes
    kind: int
    mode: int  # permission bits, with setuid, setgid and sticky (st_mode & 0o7777)
    uid: int
    gid: int
    user: str | None
    group: str | None
    mtime_ns: int
    size: int = 0
    xattrs: tuple[tuple[bytes, bytes], ...] = ()
    target: bytes | None = None  # symlink target, stored as is
    rdev: tuple[int, int] | None = None  # (major, minor) of a device
    # On every member of a hardlink group but the first (in walk order): the path of the
    # first, from the root. Entries written before groups were listed in the root also
    # gave it to the first member itself; readers treat a path naming itself as None.
    hardlink: bytes | None = None
    chunks: bytes = b""  # concatenated 32-byte chunk ids of the file's data
    extents: tuple[tuple[int, int], ...] | None = None  # (offset, length) data extents of a sparse file
    tree: bytes | None = None  # id of a directory's listing
    flags: int = 0  # the inode flags chattr sets (FS_IOC_GETFLAGS), those vml keeps (see fsmeta)

    def chunk_ids(self) -> list[bytes]:
        data = self.chunks
        return [data[i : i + ID_SIZE] for i in range(0, len(data), ID_SIZE)]

    def same_metadata(self, other: Node) -> bool:
        return (
            self.mode == other.mode
            and self.uid == other.uid
            and self.gid == other.gid
            and self.mtime_ns == other.mtime_ns
            and self.xattrs == other.xattrs
            and self.flags == other.flags
        )

    def same_content(self, other: Node) -> bool:
        return (
            self.kind == other.kind
            and self.size == other.size
            and self.chunks == other.chunks
            and self.extents == other.extents
            and self.target == other.target
            and self.rdev == other.rdev
            and self.tree == other.tree
        )


@dataclass(slots=True)
class Totals:
    nodes: int = 0
    files: int = 0
    bytes: int = 0

    def add_node(self, node: Node) -> None:
        self.nodes += 1
        if node.kind == KIND_FILE:
            self.files += 1
            self.bytes += node.size

    def add(self, other: Totals) -> None:
        self.nodes += other.nodes
        self.files += other.files
        self.bytes += other.bytes


@dataclass(slots=True)
class Listing:
    nodes: list[Node]
    totals: Totals = field(default_factory=Totals)
    # A root listing's hardlink groups: each the paths of one inode's names in walk order
    # (two or more). None: a root written before groups were listed (see `hardlink_groups`).
    links: tuple[tuple[bytes, ...], ...] | None = None


def walk_key(path: bytes) -> tuple[bytes, ...]:
    """The place of a path in walk order: depth first, names sorted by their bytes (the
    order in which captures, restores and diffs visit a tree)."""
    return tuple(path.split(b"/"))


def node_to_array(node: Node) -> list:
    fields = [
        node.name,
        node.kind,
        node.mode,
        node.uid,
        node.gid,
        node.user,
        node.group,
        node.mtime_ns,
        node.size,
        [list(pair) for pair in node.xattrs] if node.xattrs else [],
        node.target,
        list(node.rdev) if node.rdev is not None else None,
        node.hardlink,
        node.chunks,
        [value for extent in node.extents for value in extent] if node.extents is not None else None,
        node.tree,
    ]
    if node.flags:
        fields.append(node.flags)  # only when set: nodes without flags keep the bytes they always had
    return fields


def encode_listing(nodes: list[Node], totals: Totals) -> bytes:
    """Canonical bytes of a directory listing; `nodes` must be sorted by name."""
    return msgpack.packb(
        [FORMAT, totals.nodes, totals.files, totals.bytes, [node_to_array(n) for n in nodes]],
        use_bin_type=True,
    )


def encode_root(top: Node, totals: Totals, links: list[list[bytes]]) -> bytes:
    """Canonical bytes of an entry's root: the top directory's node, the totals of the whole
    tree, and its hardlink groups (each two or more paths; any order: sorted here)."""
    groups = sorted((sorted(group, key=walk_key) for group in links), key=lambda group: walk_key(group[0]))
    return msgpack.packb(
        [FORMAT, totals.nodes, totals.files, totals.bytes, [node_to_array(top)], groups],
        use_bin_type=True,
    )


def encode_listing_of_encoded(encoded_nodes: list[bytes], totals: Totals) -> bytes:
    """The same bytes as encode_listing, from nodes encoded already by encode_node (a capture
    encodes each node once, for both its stat cache and its listing)."""
    packer = _packer()
    head = packer.pack_array_header(5) + b"".join(packer.pack(v) for v in (FORMAT, totals.nodes, totals.files, totals.bytes))
    return head + packer.pack_array_header(len(encoded_nodes)) + b"".join(encoded_nodes)


def encode_node(node: Node) -> bytes:
    return _packer().pack(node_to_array(node))


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's packer (msgpack.packb makes one a call: half the time of a node's)."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer


def decode_node(data: bytes) -> Node:
    try:
        return _node_from_array(msgpack.unpackb(data, raw=False))
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise CorruptObject(f"damaged cached node: {error}") from None


def check_depth(path: bytes) -> None:
    """Refuse a directory nested deeper than MAX_DEPTH (a hostile tree may nest millions)."""
    if path.count(b"/") >= MAX_DEPTH:
        raise UnsafePath(f"refusing a directory nested deeper than {MAX_DEPTH} levels: {path[:60]!r}…")


def check_name(name: bytes) -> None:
    """Refuse names that would step out of, or around, the directory being restored."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise UnsafePath(f"refusing unsafe name {name!r} in a manifest")


def _node_from_array(item: list) -> Node:
    (name, kind, mode, uid, gid, user, group, mtime_ns, size, xattrs, target, rdev, hardlink, chunks, extents, tree, *rest) = item
    flags = rest[0] if len(rest) == 1 else 0
    if not isinstance(name, bytes) or kind not in KIND_NAMES or not isinstance(chunks, bytes) or len(chunks) % ID_SIZE:
        raise ValueError("malformed node")
    if len(rest) > 1 or (rest and (not isinstance(flags, int) or flags <= 0)):
        raise ValueError("malformed node")
    # (Written out, with positional fields and no generator for the common empty xattrs: a
    # checkout decodes every node of its entry, and this took 2.6 µs a node, now 1.6.)
    if not (isinstance(mode, int) and isinstance(uid, int) and isinstance(gid, int) and isinstance(mtime_ns, int) and isinstance(size, int)):
        raise ValueError("malformed node")
    if extents is not None:
        extents = tuple(zip(extents[0::2], extents[1::2]))
    return Node(name, kind, mode, uid, gid, user, group, mtime_ns, size, () if xattrs == [] else tuple((bytes(k), bytes(v)) for k, v in xattrs),
                target, tuple(rdev) if rdev is not None else None, hardlink, chunks, extents, tree, flags)


def decode_listing_items(data: bytes) -> dict[bytes, list]:
    """A listing's nodes as undecoded msgpack arrays by name: for comparing two listings
    without building the nodes that are equal (node_from_item builds the others)."""
    try:
        version, _nodes, _files, _size, items, *_links = msgpack.unpackb(data, raw=False)
        if version != FORMAT:
            raise ValueError(f"unknown manifest format {version}")
        return {item[0]: item for item in items}
    except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as error:
        raise CorruptObject(f"damaged manifest: {error}") from None


def node_from_item(item: list) -> Node:
    """A validated node of a (non-root) listing from its msgpack array."""
    try:
        node = _node_from_array(item)
    except (ValueError, TypeError) as error:
        raise CorruptObject(f"damaged manifest: {error}") from None
    check_name(node.name)
    if node.kind == KIND_DIR and (not isinstance(node.tree, bytes) or len(node.tree) != ID_SIZE):
        raise CorruptObject(f"damaged manifest: directory {node.name!r} has no listing id")
    return node


def decode_listing(data: bytes, *, root: bool = False) -> Listing:
    """Parse and validate a listing; a hostile or damaged one raises CorruptObject or UnsafePath."""
    links = None
    try:
        version, nodes, files, size, items, *rest = msgpack.unpackb(data, raw=False)
        if version != FORMAT:
            raise ValueError(f"unknown manifest format {version}")
        decoded = [_node_from_array(item) for item in items]
        if rest:
            if not root or len(rest) != 1:
                raise ValueError("a directory listing has five fields")
            links = _decode_links(rest[0])
    except UnsafePath:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise CorruptObject(f"damaged manifest: {error}") from None
    if root:
        if len(decoded) != 1 or decoded[0].name != b"" or decoded[0].kind != KIND_DIR:
            raise CorruptObject("damaged manifest: an entry's root must describe one directory")
        if not 0 <= nodes <= MAX_PATHS:
            raise CorruptObject(f"damaged manifest: the root declares {nodes:,} paths, more than a filesystem holds")
    else:
        previous = None
        for node in decoded:
            check_name(node.name)
            if previous is not None and node.name <= previous:
                raise CorruptObject("damaged manifest: names are not sorted and unique")
            previous = node.name
    for node in decoded:
        if node.kind == KIND_DIR and (not isinstance(node.tree, bytes) or len(node.tree) != ID_SIZE):
            raise CorruptObject(f"damaged manifest: directory {node.name!r} has no listing id")
    return Listing(decoded, Totals(nodes, files, size), links)


def _decode_links(groups: list) -> tuple[tuple[bytes, ...], ...]:
    """A root's hardlink groups, checked to be in their one canonical form."""
    seen: set[bytes] = set()
    decoded = []
    for group in groups:
        if not isinstance(group, list) or len(group) < 2 or not all(isinstance(path, bytes) for path in group):
            raise ValueError("a hardlink group is two or more paths")
        for path in group:
            for name in path.split(b"/"):
                check_name(name)
            if path in seen:
                raise ValueError("a path is in two hardlink groups")
            seen.add(path)
        decoded.append(tuple(group))
    if decoded != sorted((tuple(sorted(g, key=walk_key)) for g in decoded), key=lambda g: walk_key(g[0])):
        raise ValueError("hardlink groups are not in walk order")
    return tuple(decoded)

"""Capture a tree that lives elsewhere (a guest) from a metadata listing and a tar stream.

The guest's `find` lists every path with its metadata; the stat cache vouches for what
did not change; only the rest is asked for as one tar stream (GNU tar, pax format, with
xattrs and sparse maps). The result is the same Merkle tree of listings a local capture
of the same files gives, node for node, so entries from either kind of area compare.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

from vml.areas.capture.assemble import Assembly, CaptureProgress, CaptureResult, Child, other_name
from vml.areas.rules import Rules, Scope
from vml.areas.statcache import RACY_WINDOW_NS, StatCache, pack_key
from vml.areas.tarformat import KIND_OF_TAR_TYPE, TarMember, TarReader, member_rel, node_of_member, parse_time
from vml.objects.chunker import WHOLE_FILE_BYTES, chunk_file, cut_whole, one_chunk
from vml.objects.manifest import (
    KIND_BLOCK,
    KIND_CHAR,
    KIND_DIR,
    KIND_FIFO,
    KIND_FILE,
    KIND_SYMLINK,
    Node,
    Totals,
    decode_node,
    encode_node,
)
from vml.objects.store import ChunkStore

# One record per path: fixed fields, then path and symlink target, NUL-separated. Owners by
# number only: find's %u and %g look each file's owner up again (two thirds of
# find's time on a guest's 75,000 paths); the names are looked up once a number (`owner_names`).
FIND_FORMAT = r"%y %m %U %G %s %T@ %C@ %i %n %D %b\0%p\0%l\0"
_FIELDS_PER_RECORD = 3
BATCH_BYTES = 4 * 1024 * 1024
BATCH_ITEMS = 256
MAX_BYTES_IN_FLIGHT = 64 * 1024 * 1024
_TYPES = {
    b"f": (KIND_FILE, stat.S_IFREG),
    b"d": (KIND_DIR, stat.S_IFDIR),
    b"l": (KIND_SYMLINK, stat.S_IFLNK),
    b"c": (KIND_CHAR, stat.S_IFCHR),
    b"b": (KIND_BLOCK, stat.S_IFBLK),
    b"p": (KIND_FIFO, stat.S_IFIFO),
}

# Opens a tar stream of the given paths (relative, in the order given) holding about the
# given number of bytes; the context's value is (stream, problems), where problems() lists
# (path, message) the guest's tar reported.
OpenTar = Callable[[list[bytes], int], contextlib.AbstractContextManager[tuple[IO[bytes], Callable[[], list[tuple[bytes, str]]]]]]


@dataclass(slots=True)
class GuestPath:
    rel: bytes
    kind: int
    mode: int  # permission bits with setuid, setgid, sticky
    uid: int
    gid: int
    user: str | None
    group: str | None
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: tuple[int, int]  # (device, inode): hardlink identity
    nlink: int
    target: bytes | None
    key: bytes  # the stat cache key, packed as a local capture packs it

    @property
    def racy_after(self) -> int:
        return max(self.mtime_ns, self.ctime_ns)


def _unsafe(rel: bytes) -> bool:
    """Whether a relative path has an empty, "." or ".." part (only a part that starts with
    a dot can be either of the last two: most paths are cleared without being split)."""
    if b"//" in rel or rel[:1] == b"/" or rel[-1:] == b"/":
        return True
    return (rel[:1] == b"." or b"/." in rel) and any(part in (b".", b"..") for part in rel.split(b"/"))


OwnerNames = Callable[[set[int], set[int]], tuple[dict[int, str], dict[int, str]]]


def parse_names(data: bytes) -> dict[int, str]:
    """Names by number from passwd or group lines (getent's, or the files'): the first line
    of a number names it, as getpwuid answers."""
    names: dict[int, str] = {}
    for line in data.splitlines():
        fields = line.split(b":")
        if len(fields) > 2 and fields[2].isdigit():
            name = fields[0].decode("utf-8", "replace")
            if name != fields[2].decode():  # (a name that is its own number is no name: find printed it so)
                names.setdefault(int(fields[2]), name)
    return names


GuestListing = tuple[dict[bytes, "GuestPath"], list[tuple[bytes, str]]]  # paths by relative name, the ones skipped


def parse_listing(data: bytes) -> GuestListing:
    """Paths by relative name (b"" is the top) and the ones skipped, from find's output
    (owners' names not yet known: see `name_owners`)."""
    parser = ListingParser()
    parser.feed(data)
    return parser.close()


class ListingParser:
    """find's output parsed piece by piece as it arrives (`feed`), so that parsing a large
    guest's listing (0.45 s of 75,000 paths) goes on while its find still runs."""

    def __init__(self) -> None:
        self.paths: dict[bytes, GuestPath] = {}
        self.skipped: list[tuple[bytes, str]] = []
        self.file_bytes = 0  # the size of the regular files parsed so far
        self._rest = b""  # the fields of a record not whole yet

    def feed(self, data: bytes) -> None:
        fields = (self._rest + data if self._rest else data).split(b"\0")
        whole = (len(fields) - 1) // _FIELDS_PER_RECORD * _FIELDS_PER_RECORD  # (the last field may be cut)
        self._rest = b"\0".join(fields[whole:])
        self._records(fields, whole)

    def close(self) -> GuestListing:
        """The listing, once find's output has all been fed."""
        if self._rest:  # output cut short: its whole fields, as parse_listing always read them
            fields = self._rest.split(b"\0")
            self._records(fields, len(fields) // _FIELDS_PER_RECORD * _FIELDS_PER_RECORD)
            self._rest = b""
        return self.paths, self.skipped

    def _records(self, fields: list[bytes], stop: int) -> None:
        paths, skipped = self.paths, self.skipped
        for start in range(0, stop, _FIELDS_PER_RECORD):
            head, path, target = fields[start : start + _FIELDS_PER_RECORD]
            kind_code, mode, uid, gid, size, mtime, ctime, inode, nlink, device, _blocks = head.split(b" ")
            rel = path[2:] if path.startswith(b"./") else b"" if path == b"." else path
            if rel and _unsafe(rel):
                skipped.append((rel, "a name the guest's listing should not hold"))  # never a path outside the tree
                continue
            if kind_code not in _TYPES:
                skipped.append((rel, "socket" if kind_code == b"s" else "unknown file type"))
                continue
            kind, type_bits = _TYPES[kind_code]
            permissions = int(mode, 8)
            uid_number, gid_number = int(uid), int(gid)
            mtime_ns, ctime_ns = parse_time(mtime), parse_time(ctime)
            size_number, inode_number, nlink_number = int(size), int(inode), int(nlink)
            if kind == KIND_FILE:
                self.file_bytes += size_number
            key = pack_key(inode_number, size_number, mtime_ns, ctime_ns, type_bits | permissions, uid_number, gid_number, nlink_number)
            paths[rel] = GuestPath(
                rel, kind, permissions, uid_number, gid_number, None, None,
                size_number if kind == KIND_FILE else 0, mtime_ns, ctime_ns, (int(device), inode_number), nlink_number,
                target if kind == KIND_SYMLINK else None, key,
            )


def name_owners(paths: dict[bytes, GuestPath], owner_names: OwnerNames) -> None:
    """Give each path its owner's and group's names, looked up once a number."""
    users, groups = owner_names({p.uid for p in paths.values()}, {p.gid for p in paths.values()})
    for guest_path in paths.values():
        guest_path.user = users.get(guest_path.uid)
        guest_path.group = groups.get(guest_path.gid)


@dataclass(slots=True)
class _Batch:
    """Data stored by one worker task, (data, whether to cut it into chunks) each; the ids
    of each item's chunks, in order, once it is done."""

    items: list[tuple[bytes, bool]] = field(default_factory=list)
    size: int = 0
    future: Future | None = None

    def ids(self) -> list[bytes]:
        assert self.future is not None, "a batch is submitted before its ids are asked for"
        return self.future.result()


@dataclass(slots=True)
class _Dir:
    rel: bytes
    names: list[bytes]


class GuestCapture:
    def __init__(
        self,
        listing: bytes | GuestListing,
        guest_now_ns: int,
        open_tar: OpenTar,
        store: ChunkStore,
        old_cache: StatCache,
        *,
        rules: Rules,
        dry_run: bool = False,
        expected: Callable[[bytes], Node | None] | None = None,
        progress: Callable[[CaptureProgress], None] | None = None,
        owner_names: OwnerNames,
    ):
        self.paths, self.skipped = parse_listing(listing) if isinstance(listing, bytes) else listing
        name_owners(self.paths, owner_names)
        self.expected = expected
        self._trusted: dict[bytes, bytes | None] = {}
        self.open_tar = open_tar
        self.store = store
        self.old_cache = old_cache
        self.rules = rules
        self.tree = Assembly(store, old_cache, dry_run)
        self.counts = self.tree.counts
        self.racy_after = guest_now_ns - RACY_WINDOW_NS
        self._progress = progress or (lambda counts: None)
        self.changed_while_reading: list[bytes] = []
        self._fetched: dict[bytes, Node] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="vml-hash")
        self._in_flight: deque[tuple[Future, int]] = deque()
        self._bytes_in_flight = 0
        self._unfinished: list[tuple[Node, list[tuple[_Batch, int]]]] = []
        self._batch = _Batch()
        self._uncacheable: set[bytes] = set()
        self._present: set[bytes] = set()  # the paths of the tree being built (for its hardlink groups)

    def run(self) -> CaptureResult:
        if b"" not in self.paths:
            raise FileNotFoundError("the guest's listing has no top directory")
        dirs = self._tree()
        hardlinks = self._hardlink_groups(dirs)
        wanted = self._to_fetch(dirs, hardlinks)
        try:
            while True:
                self._fetch(wanted)
                self._finish_hashing()
                result, missing = self._build(dirs, hardlinks)
                if not missing:
                    return result
                wanted = missing  # cached nodes whose data left the store (gc): read them now
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    # -- the tree the rules admit, in a local capture's order

    def _tree(self) -> dict[bytes, _Dir]:
        children: dict[bytes, list[bytes]] = {}
        for rel in self.paths:
            if rel:
                parent, _, name = rel.rpartition(b"/")
                children.setdefault(parent, []).append(name)
        dirs: dict[bytes, _Dir] = {}
        scopes = {b"": self.rules.root_scope()}
        order = [b""]
        while order:
            rel = order.pop()
            kept = []
            for name in sorted(children.get(rel, ())):
                child_rel = rel + b"/" + name if rel else name
                path = self.paths[child_rel]
                scope = self.rules.scope(child_rel, path.kind == KIND_DIR, scopes[rel]) if not self.rules.everything else Scope.IN
                if scope is Scope.OUT:
                    continue
                kept.append(name)
                if path.kind == KIND_DIR:
                    scopes[child_rel] = scope
                    order.append(child_rel)
            dirs[rel] = _Dir(rel, kept)
        return dirs

    def _preorder(self, dirs: dict[bytes, _Dir]) -> Iterator[bytes]:
        stack = [iter(dirs[b""].names)]
        parents = [b""]
        while stack:
            name = next(stack[-1], None)
            if name is None:
                stack.pop()
                parents.pop()
                continue
            rel = parents[-1] + b"/" + name if parents[-1] else name
            yield rel
            if rel in dirs:
                stack.append(iter(dirs[rel].names))
                parents.append(rel)

    def _hardlink_groups(self, dirs: dict[bytes, _Dir]) -> dict[bytes, list[bytes]]:
        """Each path that shares its inode with another path of the tree -> its group, the
        paths of that inode in walk order (the first is the one the others name)."""
        groups: dict[tuple[int, int], list[bytes]] = {}
        for rel in self._preorder(dirs):
            path = self.paths[rel]
            if path.kind != KIND_DIR and path.nlink > 1:  # any kind but a directory may have several names
                groups.setdefault(path.inode, []).append(rel)
        return {rel: members for members in groups.values() if len(members) > 1 for rel in members}

    # -- what must cross the network

    def _cached_node(self, rel: bytes) -> bytes | None:
        parent, _, name = rel.rpartition(b"/")
        cached = self.old_cache.dirs.get(parent)
        hit = cached.children.get(name) if cached is not None else None
        path = self.paths.get(rel)
        if path is None:
            return None
        if hit is None or hit[0] != path.key or path.racy_after >= self.racy_after:
            return self._trust(rel, path) if self.expected is not None else None
        return hit[1]

    def _trust(self, rel: bytes, path: GuestPath) -> bytes | None:
        """Right after a checkout wrote a path, the node the entry has there, if the listing
        shows exactly its metadata (tar set its mtime to the entry's: a later write would
        change it): what vml just sent is not read back. Hardlinks are always read."""
        if rel not in self._trusted:
            node = self.expected(rel) if path.nlink == 1 or path.kind == KIND_DIR else None
            matches = node is not None and node.hardlink is None and (
                node.kind, node.mode, node.uid, node.gid, node.mtime_ns, node.size, node.target
            ) == (path.kind, path.mode, path.uid, path.gid, path.mtime_ns, path.size, path.target)
            self._trusted[rel] = encode_node(node) if matches else None
        return self._trusted[rel]

    def _to_fetch(self, dirs: dict[bytes, _Dir], hardlinks: dict[bytes, list[bytes]]) -> list[bytes]:
        """The top (always), and every path the stat cache cannot vouch for; a hardlink group
        is read once, through its first member, if any of its members changed."""
        changed_groups = {group[0] for member, group in hardlinks.items() if self._cached_node(member) is None}
        wanted = [b""]
        for rel in self._preorder(dirs):
            group = hardlinks.get(rel)
            if group is not None:
                if group[0] == rel and rel in changed_groups:
                    wanted.append(rel)
            elif self._cached_node(rel) is None:
                wanted.append(rel)
        return wanted

    def _fetch(self, wanted: list[bytes]) -> None:
        if not wanted:
            return
        pending = set(wanted)
        size = sum(self.paths[rel].size for rel in wanted if rel in self.paths)
        with self.open_tar(wanted, size) as (stream, problems):
            archive = TarReader(stream)
            for member in archive:
                rel = member_rel(member.name)
                if rel not in pending:
                    continue  # a link tar added, or a name it altered
                pending.discard(rel)
                if KIND_OF_TAR_TYPE.get(member.type) != self.paths[rel].kind:
                    # Replaced by another type (or linked) between the listing and the read:
                    # left out of this entry, like a file deleted meanwhile.
                    self.changed_while_reading.append(rel)
                    self.paths.pop(rel)
                    continue
                self._fetched[rel] = self._member_node(archive, member, rel)
                self._progress(self.counts)
            archive.drain()
            reported = problems()
        for rel, message in reported:
            if "changed as we read it" in message:
                self.changed_while_reading.append(rel)
                self._uncacheable.add(rel)
        for rel in pending:
            why = next((m for r, m in reported if r == rel), None)
            if why is None or "No such file" not in why:
                # Unreadable, or unexplained (tar quotes odd names in its messages): never
                # left out in silence.
                self.skipped.append((rel, why or "the guest's tar did not send it"))
            self.paths.pop(rel, None)  # deleted since the listing, or skipped: not part of this entry

    def _member_node(self, archive: TarReader, member: TarMember, rel: bytes) -> Node:
        path = self.paths[rel]  # of the member's own kind: _fetch checked they agree
        node = node_of_member(member, rel.rpartition(b"/")[2], path.user, path.group)
        if node.kind == KIND_FILE:
            self._read_content(archive, member, node)
        if (node.kind, node.mode, node.uid, node.gid, node.mtime_ns, node.size) != (
            path.kind, path.mode, path.uid, path.gid, path.mtime_ns, path.size
        ):
            self.changed_while_reading.append(rel)  # it changed between the listing and the read
            self._uncacheable.add(rel)
        return node

    def _read_content(self, archive: TarReader, member: TarMember, node: Node) -> None:
        node.extents = member.extents
        if one_chunk(member.size, node.extents):  # (chunk_file's rule: most files, read at once)
            data = archive.read(member.size)
            tickets = [self._hash_later(data, cut=False)] if data else []
        elif member.size <= WHOLE_FILE_BYTES:
            # Read whole and cut by a worker: the member's data is the file's data extents back
            # to back, which cut_whole cuts as chunk_file would (tests/objects/test_chunker.py).
            data = archive.read(member.size)
            tickets = [self._hash_later(data, cut=True)] if data else []
        else:
            # The view is reused for the next chunk: each is copied.
            chunks = chunk_file(lambda buffer, _offset: archive.readinto(buffer), member.size, node.extents)
            tickets = [self._hash_later(bytes(chunk), cut=False) for chunk in chunks]
        self._unfinished.append((node, tickets))  # node.chunks once the workers are done: see _finish_hashing
        self.counts.files_read += 1
        self.counts.bytes_read += member.size

    def _hash_later(self, data: bytes, *, cut: bool) -> tuple[_Batch, int]:
        """Cut (if `cut`), hash, compress and store data on a worker, while this thread reads
        the stream on (zstd took a third of its time, FastCDC a sixth); the ticket names the
        ids once it is done. Data goes in batches: a future, its lock and a worker's wake-up
        per small file were a third of this thread's time. Memory stays bounded: at most
        MAX_BYTES_IN_FLIGHT of data waits for the workers."""
        batch = self._batch
        batch.items.append((data, cut))
        batch.size += len(data)
        ticket = batch, len(batch.items) - 1
        if batch.size >= BATCH_BYTES or len(batch.items) >= BATCH_ITEMS:
            self._submit_batch()
        return ticket

    def _submit_batch(self) -> None:
        batch = self._batch
        if not batch.items:
            return
        while self._in_flight and self._bytes_in_flight + batch.size > MAX_BYTES_IN_FLIGHT:
            future, size = self._in_flight.popleft()
            future.result()
            self._bytes_in_flight -= size
        chunk = self.tree.sink.chunk
        items, batch.items = batch.items, []  # the data is the worker's alone, freed when it is done

        def store_all() -> list[bytes]:
            return [b"".join([chunk(piece) for piece in cut_whole(data)]) if cut else chunk(data) for data, cut in items]

        batch.future = self._pool.submit(store_all)
        self._in_flight.append((batch.future, batch.size))
        self._bytes_in_flight += batch.size
        self._batch = _Batch()

    def _finish_hashing(self) -> None:
        self._submit_batch()
        for node, tickets in self._unfinished:
            node.chunks = b"".join(batch.ids()[index] for batch, index in tickets)
        self._unfinished.clear()
        self._in_flight.clear()
        self._bytes_in_flight = 0

    # -- listings, bottom up

    def _build(self, dirs: dict[bytes, _Dir], hardlinks: dict[bytes, list[bytes]]) -> tuple[CaptureResult, list[bytes]]:
        """The tree, bottom up, and the files whose cached nodes' data left the store."""
        built: dict[bytes, tuple[bytes, Totals]] = {}
        missing: list[bytes] = []
        self._present.clear()
        for rel in reversed([b"", *(r for r in self._preorder(dirs) if r in dirs)]):
            reused = self._reuse(dirs[rel], built, hardlinks)
            built[rel] = reused if reused is not None else self.tree.listing(rel, self._listed(dirs[rel], built, hardlinks, missing))
        listing_id, totals = built[b""]
        top = self._fetched.get(b"")
        if top is None:
            raise FileNotFoundError("the guest's top directory could not be read")
        groups = {group[0]: [member for member in group if member in self._present] for group in hardlinks.values()}
        links = [members for members in groups.values() if len(members) > 1]
        return self.tree.result(top, listing_id, totals, links, self.skipped, self.changed_while_reading), missing

    def _reuse(self, directory: _Dir, built, hardlinks) -> tuple[bytes, Totals] | None:
        """The cached listing of a directory in which the cache vouches for every child,
        decoding no node (the common case of a re-commit or a status); None otherwise."""
        rel = directory.rel
        cached = self.old_cache.dirs.get(rel)
        if cached is None or cached.fingerprint is None:
            return None
        fingerprinted, child_rels, size = [], [], 0
        for name in directory.names:
            child_rel = rel + b"/" + name if rel else name
            path = self.paths.get(child_rel)
            if path is None or child_rel in self._fetched or path.racy_after >= self.racy_after:
                return None
            hit = cached.children.get(name)
            if hit is None or hit[0] != path.key:
                return None
            subdir = built.get(child_rel) if path.kind == KIND_DIR else None
            fingerprinted.append((name, path.key, subdir[0] if subdir else None, _named_first(child_rel, hardlinks)))
            child_rels.append(child_rel)
            size += path.size
        reused = self.tree.reuse(rel, fingerprinted, size)
        if reused is not None:
            self._present.update(child_rels)
        return reused

    def _listed(self, directory: _Dir, built, hardlinks, missing: list[bytes]) -> list[Child]:
        """The children of a directory as its listing will hold them."""
        children = []
        for name in directory.names:
            child_rel = directory.rel + b"/" + name if directory.rel else name
            path = self.paths.get(child_rel)
            if path is None:
                continue  # vanished or unreadable: reported by the fetch
            subdir = built.get(child_rel) if path.kind == KIND_DIR else None
            encoded, node = self._child_node(child_rel, path, subdir, hardlinks, missing)
            if encoded is None:
                continue
            self._present.add(child_rel)
            cacheable = child_rel not in self._uncacheable and path.racy_after < self.racy_after
            listing_id, totals = subdir if subdir is not None else (None, None)
            children.append(Child(name, path.key, encoded, node, _named_first(child_rel, hardlinks), path.size, cacheable,
                                  listing_id, totals))
        return children

    def _child_node(self, rel: bytes, path: GuestPath, subdir, hardlinks, missing) -> tuple[bytes | None, Node | None]:
        first = _named_first(rel, hardlinks)
        if first is not None:
            source = self._fetched.get(first)
            if source is None:
                cached = self._cached_node(first)
                if cached is None:
                    return None, None  # the group's first member vanished
                source = decode_node(cached)
            node = other_name(source, rel.rpartition(b"/")[2], first)
            return encode_node(node), node
        node = self._fetched.get(rel)
        if node is None:
            cached = self._cached_node(rel)
            if cached is None:
                return None, None
            if path.kind == KIND_DIR:
                node = decode_node(cached)
                node.tree = subdir[0]
                return encode_node(node), node
            if path.kind == KIND_FILE:
                node = decode_node(cached)
                if not self.tree.has_data(node):
                    missing.append(rel)
                return cached, node
            return cached, None
        if path.kind == KIND_DIR:
            node.tree = subdir[0]
        return encode_node(node), node


def _named_first(rel: bytes, hardlinks: dict[bytes, list[bytes]]) -> bytes | None:
    """The path a node names as its hardlink group's first member: None for the first itself."""
    group = hardlinks.get(rel)
    return group[0] if group is not None and group[0] != rel else None

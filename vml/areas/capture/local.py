"""Capture a local file tree into the chunk store as a Merkle tree of listings.

The walk runs on the calling thread (it is mostly lstat calls); reading, chunking, hashing
and compressing files runs on a thread pool, since blake3, zstd and file reads release the
GIL. Directories are finished in post-order within a bounded window of work in flight, so
memory stays bounded whatever the size of the tree.
"""

from __future__ import annotations

import gc
import os
import stat
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable


from vml.areas.fsmeta import KIND_OF_TYPE, OwnerNames, data_extents, dir_flags, read_flags, read_xattrs
from vml.areas.rules import Rules, Scope
from vml.areas.statcache import RACY_WINDOW_NS, CachedDir, StatCache, dir_fingerprint, stat_key
from vml.errors import UnsafePath, VmlError
from vml.objects import compress as compression
from vml.objects.chunker import MIN_SIZE, cut_stream
from vml.objects.hashing import object_id
from vml.objects.ids import ObjectId
from vml.objects.manifest import (
    KIND_BLOCK,
    KIND_CHAR,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    Node,
    Totals,
    decode_node,
    encode_listing,
    encode_listing_of_encoded,
    encode_node,
    encode_root,
    check_depth,
)
from vml.objects.pack import TYPE_DATA, TYPE_TREE
from vml.objects.store import ChunkStore

MAX_FILES_IN_FLIGHT = 1024
MAX_BYTES_IN_FLIGHT = 256 * 1024 * 1024
MAX_DIRS_WAITING = 256  # directories scanned but not finished: bounds memory on unchanged trees
# Small files go to the workers in batches: one task per file made the threads spend more
# time handing the GIL and futures back and forth than reading.
BATCH_FILES = 64
BATCH_BYTES = 4 * 1024 * 1024



@dataclass(slots=True)
class CaptureProgress:
    files: int = 0
    bytes: int = 0
    files_read: int = 0
    bytes_read: int = 0


@dataclass(slots=True)
class CaptureResult:
    root_id: ObjectId
    totals: Totals
    cache: StatCache
    skipped: list[tuple[bytes, str]]
    changed_while_reading: list[bytes]
    progress: CaptureProgress
    listings: dict[bytes, bytes]  # listings kept in memory by a dry capture (id -> bytes)


class BlobWriter:
    """Puts chunks and listings into the store; in a dry run only hashes them, keeping the
    new listings in memory (a status or diff walks them)."""

    def __init__(self, store: ChunkStore, dry_run: bool):
        self.store = store
        self.dry_run = dry_run
        self.listings: dict[bytes, bytes] = {}

    def chunk(self, data: bytes | memoryview) -> bytes:
        chunk_id = object_id(data)
        if not self.dry_run and chunk_id not in self.store:
            flag, payload = compression.compress(data)
            self.store.add(chunk_id, TYPE_DATA, flag, payload, len(data))
        return chunk_id

    def listing(self, data: bytes) -> ObjectId:
        listing_id = object_id(data)
        if self.dry_run:
            if listing_id not in self.store:
                self.listings[listing_id] = data
        elif listing_id not in self.store:
            flag, payload = compression.compress(data)
            self.store.add(listing_id, TYPE_TREE, flag, payload, len(data))
        return listing_id


@dataclass(slots=True)
class _FileContent:
    chunks: bytes
    extents: tuple | None
    stable: bool  # the file did not change while it was read
    flags: int  # its inode flags (chattr), read from the same descriptor


@dataclass(slots=True)
class _Child:
    name: bytes
    st: os.stat_result
    key: tuple  # its stat cache key
    node: Node | None = None  # complete already (not a regular file, or a hardlink's copy)
    cached: bytes | None = None  # the stat cache's node, decoded only if the directory changed
    content: tuple[Future, int] | None = None  # pending read of a regular file: its batch and place in it
    subdir: "_PendingDir | None" = None
    hardlink: bytes | None = None
    cacheable: bool = True
    reads: bool = False  # this child, not an earlier hardlink to the same inode, reads the content


@dataclass(slots=True)
class _LinkGroup:
    first: _Child  # the name met first in walk order, whose node the others copy
    paths: list[bytes]  # every name, in walk order


@dataclass(slots=True)
class _PendingDir:
    rel: bytes
    children: list[_Child]
    cached: CachedDir | None
    listing_id: bytes | None = None
    totals: Totals = field(default_factory=Totals)
    reusable: bool = True  # false when something in it must not be trusted next time


class Capture:
    def __init__(
        self,
        root: bytes,
        store: ChunkStore,
        old_cache: StatCache,
        *,
        dry_run: bool = False,
        rules: Rules | None = None,
        workers: int | None = None,
        progress: Callable[[CaptureProgress], None] | None = None,
    ):
        self.root = root
        self.rules = None if rules is None or rules.everything else rules
        self.store = store
        self.old_cache = old_cache
        self.blobs = BlobWriter(store, dry_run)
        self.new_cache = StatCache()
        self.owners = OwnerNames(root)
        self.skipped: list[tuple[bytes, str]] = []
        self.changed_while_reading: list[bytes] = []
        self.counts = CaptureProgress()
        self._progress = progress or (lambda counts: None)
        self._pool = ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2), thread_name_prefix="vml-read")
        self._queue: deque[_PendingDir] = deque()
        self._in_flight = 0
        self._bytes_in_flight = 0
        self._hardlinks: dict[tuple[int, int], _LinkGroup] = {}  # by (device, inode)
        self._batch: list[tuple[bytes, os.stat_result]] = []
        self._batch_children: list[_Child] = []
        self._batch_bytes = 0
        self._racy_after = time.time_ns() - RACY_WINDOW_NS

    def file_node(self, name: bytes, path: bytes) -> Node:
        """One regular file, read on this thread, as the node named `name`."""
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{os.fsdecode(path)} is not a regular file")
        content = self._read_file(path, st)
        node = self._metadata_node(name, st, path)
        node.chunks, node.extents, node.flags = content.chunks, content.extents, content.flags
        return node

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- the walk

    def run(self) -> CaptureResult:
        # The capture makes millions of short-lived acyclic objects; the cyclic collector
        # would walk them again and again for nothing.
        collecting = gc.isenabled()
        gc.disable()
        try:
            root_st = os.stat(self.root)
            if not stat.S_ISDIR(root_st.st_mode):
                raise NotADirectoryError(f"{os.fsdecode(self.root)} is not a directory")
            top = self._scan_dir(self.root, b"", self.rules.root_scope() if self.rules else Scope.IN)
            while self._queue:
                self._finish(self._queue.popleft())
            root_node = self._metadata_node(b"", root_st, self.root)
            root_node.tree = top.listing_id
            totals = Totals(top.totals.nodes, top.totals.files, top.totals.bytes)
            links = [group.paths for group in self._hardlinks.values() if len(group.paths) > 1]
            root_id = self.blobs.listing(encode_root(root_node, totals, links))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            if collecting:
                gc.enable()
        return CaptureResult(
            root_id, totals, self.new_cache, self.skipped, self.changed_while_reading, self.counts, self.blobs.listings
        )

    def _scan_dir(self, path: bytes, rel: bytes, scope: Scope) -> _PendingDir:
        try:
            check_depth(rel)
        except UnsafePath as error:
            raise VmlError(f"{os.fsdecode(path)}: {error} (vml cannot save it)") from None
        with os.scandir(path) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        cached = self.old_cache.dirs.get(rel)
        pending = _PendingDir(rel, [], cached)
        for entry in entries:
            child_rel = rel + b"/" + entry.name if rel else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we walked
            fmt = stat.S_IFMT(st.st_mode)
            child_scope = scope
            if self.rules is not None:
                child_scope = self.rules.scope(child_rel, fmt == stat.S_IFDIR, scope)
                if child_scope is Scope.OUT:
                    continue
            if fmt == stat.S_IFSOCK:
                self.skipped.append((child_rel, "socket"))
                continue
            if fmt not in KIND_OF_TYPE:
                self.skipped.append((child_rel, "unknown file type"))
                continue
            child = _Child(entry.name, st, stat_key(st))
            if st.st_mtime_ns >= self._racy_after or st.st_ctime_ns >= self._racy_after:
                child.cacheable = False
                pending.reusable = False
            if fmt == stat.S_IFDIR:
                child.subdir = self._scan_dir(entry.path, child_rel, child_scope)
            else:
                self._plan_child(child, entry.path, child_rel, cached)
            pending.children.append(child)
        self._queue.append(pending)
        self._drain()
        return pending

    def _plan_child(self, child: _Child, path: bytes, rel: bytes, cached: CachedDir | None) -> None:
        st = child.st
        hit = cached.children.get(child.name) if cached is not None else None
        cache_hit = hit is not None and child.cacheable and hit[0] == child.key
        if st.st_nlink > 1:  # any kind but a directory may have several names
            key = (st.st_dev, st.st_ino)
            group = self._hardlinks.get(key)
            if group is not None:  # another name of an inode met already: its node, named here
                group.paths.append(rel)
                first = group.first
                if first.content is None and first.node is None:
                    self._submit_batch()  # the first name's read is still in the batch being filled
                child.hardlink = group.paths[0]
                child.content = first.content
                if child.content is None:
                    child.node = self._copy_node(first.node, child)
                return
            self._hardlinks[key] = _LinkGroup(child, [rel])
            if cache_hit:  # complete now: the other names copy it
                node = decode_node(hit[1])
                if self._chunks_present(node):
                    child.node = node
                    return
        elif cache_hit:
            child.cached = hit[1]  # decoded in _finish, and only if the directory changed
            return
        self._plan_read(child, path)

    def _plan_read(self, child: _Child, path: bytes) -> None:
        st = child.st
        if not stat.S_ISREG(st.st_mode):
            child.node = self._metadata_node(child.name, st, path)
            return
        self._in_flight += 1
        self._bytes_in_flight += st.st_size
        child.reads = True
        if st.st_size >= MIN_SIZE:
            child.content = (self._pool.submit(self._read_files, [(path, st)]), 0)
            return
        self._batch_children.append(child)
        self._batch.append((path, st))
        self._batch_bytes += st.st_size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        future = self._pool.submit(self._read_files, self._batch)
        for place, child in enumerate(self._batch_children):
            child.content = (future, place)
        self._batch, self._batch_children, self._batch_bytes = [], [], 0

    def _chunks_present(self, node: Node) -> bool:
        return all(chunk in self.store for chunk in node.chunk_ids())

    @staticmethod
    def _copy_node(node: Node, child: _Child) -> Node:
        copy = decode_node(encode_node(node))
        copy.name = child.name
        copy.hardlink = child.hardlink
        return copy

    def _drain(self) -> None:
        while self._queue and (
            self._in_flight > MAX_FILES_IN_FLIGHT
            or self._bytes_in_flight > MAX_BYTES_IN_FLIGHT
            or len(self._queue) > MAX_DIRS_WAITING
        ):
            self._finish(self._queue.popleft())

    # -- file contents (on worker threads)

    def _read_files(self, batch: list[tuple[bytes, os.stat_result]]) -> list[_FileContent]:
        return [self._read_file(path, st) for path, st in batch]

    def _read_file(self, path: bytes, st: os.stat_result) -> _FileContent:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            flags = read_flags(fd)
            extents = data_extents(fd, st.st_size) if st.st_blocks * 512 < st.st_size else None
            ids = []
            if extents is None and st.st_size < MIN_SIZE:
                # One read of the size lstat saw: a file that grew since is caught by the fstat below.
                data = os.read(fd, st.st_size) if st.st_size else b""
                if data:
                    ids.append(self.blobs.chunk(data))
            else:
                for chunk in cut_stream(_ExtentReader(fd, extents).readinto):
                    ids.append(self.blobs.chunk(chunk))
            after = os.fstat(fd)
        finally:
            os.close(fd)
        stable = (after.st_size, after.st_mtime_ns, after.st_ctime_ns) == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return _FileContent(b"".join(ids), extents, stable, flags)

    # -- finishing a directory (post-order, on the calling thread)

    def _finish(self, pending: _PendingDir) -> None:
        self._submit_batch()  # its files may be the ones this directory waits for
        if not self._finish_unchanged(pending):
            self._finish_changed(pending)
        pending.children = []  # release the stat results and nodes
        self._progress(self.counts)

    def _fingerprint(self, pending: _PendingDir) -> bytes:
        return dir_fingerprint([
            (child.name, child.key, child.subdir.listing_id if child.subdir is not None else None, child.hardlink)
            for child in pending.children
        ])

    def _finish_unchanged(self, pending: _PendingDir) -> bool:
        """Reuse the cached listing of a directory in which nothing changed, decoding no node
        (the common case of a re-commit or a status). False if anything may have changed."""
        cached = pending.cached
        if cached is None or cached.fingerprint is None or not pending.reusable:
            return False
        if any(child.cached is None and child.subdir is None for child in pending.children):
            return False  # something is being read, or is not a plain cache hit
        fingerprint = self._fingerprint(pending)
        if fingerprint != cached.fingerprint or cached.listing_id not in self.store:
            return False
        pending.listing_id = cached.listing_id
        pending.totals = Totals(*cached.totals)
        self.new_cache.dirs[pending.rel] = CachedDir(fingerprint, cached.listing_id, cached.totals, cached.children)
        for child in pending.children:
            self.counts.files += 1
            if stat.S_ISREG(child.st.st_mode):
                self.counts.bytes += child.st.st_size
        return True

    def _finish_changed(self, pending: _PendingDir) -> None:
        encoded_nodes = []
        totals = Totals()
        cache_children = {}
        for child in pending.children:
            node = self._complete_node(child, pending)
            encoded = child.cached or encode_node(node)  # a cache hit's bytes are its node's encoding
            encoded_nodes.append(encoded)
            totals.add_node(node)
            if child.subdir is not None:
                totals.add(child.subdir.totals)
            if child.cacheable:
                cache_children[child.name] = (child.key, encoded)
            self.counts.files += 1
            self.counts.bytes += node.size
        fingerprint = self._fingerprint(pending)
        cached = pending.cached
        if cached is not None and cached.fingerprint == fingerprint and cached.listing_id in self.store:
            pending.listing_id = cached.listing_id
        else:
            pending.listing_id = self.blobs.listing(encode_listing_of_encoded(encoded_nodes, totals))
        pending.totals = totals
        self.new_cache.dirs[pending.rel] = CachedDir(
            fingerprint if pending.reusable else None,
            pending.listing_id,
            (totals.nodes, totals.files, totals.bytes),
            cache_children,
        )

    def _complete_node(self, child: _Child, pending: _PendingDir) -> Node:
        if child.subdir is not None:
            node = self._metadata_node(child.name, child.st, os.path.join(self.root, pending.rel, child.name))
            node.tree = child.subdir.listing_id
            return node
        if child.cached is not None:
            node = decode_node(child.cached)
            if self._chunks_present(node):
                return node
            child.cached = None  # its data has gone from the store (gc): read it again, now
            self._plan_read(child, os.path.join(self.root, pending.rel, child.name))
            self._submit_batch()
        if child.node is not None:
            return child.node
        batch, place = child.content
        content: _FileContent = batch.result()[place]
        if child.reads:
            self._in_flight -= 1
            self._bytes_in_flight -= child.st.st_size
            self.counts.files_read += 1
            self.counts.bytes_read += child.st.st_size
        path = os.path.join(self.root, pending.rel, child.name)
        if not content.stable:
            self.changed_while_reading.append(path)
            child.cacheable = False
            pending.reusable = False
        node = self._metadata_node(child.name, child.st, path)
        node.chunks = content.chunks
        node.extents = content.extents
        node.flags = content.flags
        node.hardlink = child.hardlink
        return node

    def _metadata_node(self, name: bytes, st: os.stat_result, path: bytes) -> Node:
        kind = KIND_OF_TYPE[stat.S_IFMT(st.st_mode)]
        node = Node(
            name=name,
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            user=self.owners.user(st.st_uid),
            group=self.owners.group(st.st_gid),
            mtime_ns=st.st_mtime_ns,
            size=st.st_size if kind == KIND_FILE else 0,
            xattrs=read_xattrs(path),
        )
        if kind == KIND_SYMLINK:
            node.target = os.readlink(path)
        elif kind in (KIND_CHAR, KIND_BLOCK):
            node.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif kind == KIND_DIR:
            node.flags = dir_flags(path)
        # (Regular files' flags are read with their content; devices and FIFOs are never
        # opened, and Linux keeps no flags on symlinks.)
        return node


class _ExtentReader:
    """Reads the data extents of a file back to back (the whole file if it has no holes)."""

    def __init__(self, fd: int, extents: tuple[tuple[int, int], ...] | None):
        self._fd = fd
        self._extents = deque(extents) if extents is not None else None
        self._remaining = 0
        self._offset = 0

    def readinto(self, buffer: memoryview) -> int:
        if self._extents is None:
            return os.readv(self._fd, [buffer])
        while self._remaining == 0:
            if not self._extents:
                return 0
            self._offset, self._remaining = self._extents.popleft()
        want = min(len(buffer), self._remaining)
        got = os.preadv(self._fd, [buffer[:want]], self._offset)
        if got == 0:
            self._remaining = 0  # the file shrank while we read it; fstat will tell
            return self.readinto(buffer)
        self._offset += got
        self._remaining -= got
        return got


def capture_tree(root: bytes, store: ChunkStore, old_cache: StatCache, **options) -> CaptureResult:
    return Capture(root, store, old_cache, **options).run()


def capture_files(files: list[tuple[bytes, bytes]], store: ChunkStore) -> tuple[ObjectId, Totals]:
    """A tree of regular files (a disk image; a memory image and its disks), each (name in
    the tree, path) with its data chunked into the store: the root listing's id and totals."""
    files = sorted(files)
    capture = Capture(b"/", store, StatCache(), workers=1)
    nodes = []
    totals = Totals()
    try:
        for name, path in files:
            node = capture.file_node(name, os.path.realpath(path))
            totals.add_node(node)
            nodes.append(node)
    finally:
        capture.close()
    listing_id = capture.blobs.listing(encode_listing(nodes, totals))
    newest = max((node.mtime_ns for node in nodes), default=0)
    top = Node(name=b"", kind=KIND_DIR, mode=0o755, uid=0, gid=0, user=None, group=None, mtime_ns=newest, tree=listing_id)
    return capture.blobs.listing(encode_root(top, totals, [])), totals

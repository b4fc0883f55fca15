"""Capture a local file tree into the chunk store as a Merkle tree of listings.

The walk runs on the calling thread (it is mostly lstat calls); reading, chunking, hashing
and compressing files runs on a thread pool, since blake3, zstd and file reads release the
GIL, and past the first PROCESSES_AFTER files in reader processes (processes.py), since
the Python between those calls does not. Directories are finished in post-order within a bounded window of work in flight, so
memory stays bounded whatever the size of the tree.
"""

from __future__ import annotations

import gc
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING

from vml.areas.capture.assemble import Assembly, CaptureProgress, CaptureResult, Child, other_name
from vml.areas.fsmeta import KIND_OF_TYPE, OwnerNames, data_extents, dir_flags, read_flags, read_xattrs
from vml.areas.rules import Rules, Scope
from vml.areas.statcache import RACY_WINDOW_NS, CachedDir, StatCache, stat_key
from vml.errors import UnsafePath, VmlError
from vml.objects.chunker import Extents, chunk_file, cut_whole, one_chunk, read_whole
from vml.objects.ids import ObjectId
from vml.objects.manifest import (
    KIND_BLOCK,
    KIND_CHAR,
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    Node,
    Totals,
    check_depth,
    decode_node,
    encode_listing,
    encode_node,
    encode_root,
)
from vml.objects.store import ChunkStore
from vml.workers import Takeover
from vml.workers import wanted as workers_wanted

if TYPE_CHECKING:
    from vml.areas.capture.processes import ReaderProcesses

MAX_FILES_IN_FLIGHT = 1024
MAX_BYTES_IN_FLIGHT = 256 * 1024 * 1024
MAX_DIRS_WAITING = 256  # directories scanned but not finished: bounds memory on unchanged trees
# How far past these the walk goes on while the oldest directory waits for a read (_drain):
# a reader takes about 0.3 s over the base tree's 100 MB file, the other reader 8,000 small
# ones meanwhile. (Twice these bounds changed neither its time nor its peak memory.)
FAR_FILES, FAR_BYTES, FAR_DIRS = 8 * MAX_FILES_IN_FLIGHT, 4 * MAX_BYTES_IN_FLIGHT, 4 * MAX_DIRS_WAITING
# Small files go to the workers in batches: one task per file made the threads spend more
# time handing the GIL and futures back and forth than reading.
BATCH_FILES = 64
BATCH_BYTES = 4 * 1024 * 1024
# Files given to the threads before reader processes take over (vml/workers.py: Takeover):
# every file after, large ones too (a reader writes its own packs, and sends back ids only).
# A thread reading a 100 MB file while this thread walked waited for the GIL between chunks
# and took 2 s; the walk stopped behind its directory, and a core was idle. At 256 rather than
# 2,048 the readers are up 0.2 s sooner in the base tree's commit (5.87 s to 5.67 s).
PROCESSES_AFTER = 256
# A file this large starts them whatever came before: the runtimes tree's 100 MB file came
# among its first 256 and was read on a thread, taking turns at the GIL with the walk (vml's
# process spent 0.2 CPU-s more).
PROCESSES_FOR = 16 * 1024 * 1024
_S_IFMT = 0o170000  # stat.S_IFMT(mode) is mode & this, without a call per path
_NAME = attrgetter("name")


# A file to read: its path, and its size, blocks, mtime and ctime as the walk's lstat gave them.
# Plain tuples, here and in FileContent: they go to and from reader processes by the hundred
# thousand, and a stat result or a dataclass took ten times as long to pickle and unpickle
# (3.1 and 1.4 µs a file against 0.3 and 0.15).
ToRead = tuple[bytes, int, int, int, int]
# What reading it found: its chunk ids (joined), its data extents (None: no holes), whether it
# stayed unchanged while read, its inode flags (chattr) and its extended attributes, the last
# two read from the same descriptor.
FileContent = tuple[bytes, Extents | None, bool, int, tuple[tuple[bytes, bytes], ...]]


def to_read(path: bytes, st: os.stat_result) -> ToRead:
    return path, st.st_size, st.st_blocks, st.st_mtime_ns, st.st_ctime_ns


def read_content(file: ToRead, chunk: Callable[[memoryview], bytes]) -> FileContent:
    """A regular file's content cut into chunks, each given to `chunk` for its id (a thread of
    the capture, or a reader process: processes.py)."""
    path, size, blocks, mtime_ns, ctime_ns = file
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        flags = read_flags(fd)
        xattrs = read_xattrs(fd)  # (by descriptor: no second walk of the path)
        extents = data_extents(fd, size) if blocks * 512 < size else None

        if read_whole(size, extents):  # most files: one read into new bytes, not zeroed first
            ids = [chunk(piece) for piece in cut_whole(os.pread(fd, size, 0) if size else b"")]
        else:

            def read_at(buffer: memoryview, offset: int) -> int:
                return os.preadv(fd, [buffer], offset)

            ids = [chunk(piece) for piece in chunk_file(read_at, size, extents)]
        after = os.fstat(fd)  # a file that changed while it was read is not trusted
    finally:
        os.close(fd)
    stable = after.st_size == size and after.st_mtime_ns == mtime_ns and after.st_ctime_ns == ctime_ns
    return b"".join(ids), extents, stable, flags, xattrs


@dataclass(slots=True)
class _Child:
    name: bytes
    st: os.stat_result
    key: tuple  # its stat cache key
    node: Node | None = None  # complete already (not a regular file, or a hardlink's copy)
    cached: bytes | None = None  # the stat cache's node, decoded only if the directory changed
    content: tuple[Future, int] | None = None  # pending read of a regular file: its batch and place in it
    subdir: _PendingDir | None = None
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
    checked: int = 0  # children whose reads are known done (Capture._read_all)


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
        processes: int | None = None,
        progress: Callable[[CaptureProgress], None] | None = None,
    ):
        """`workers`: threads reading files; `processes`: reader processes (processes.py)
        that take over once a capture has given the threads PROCESSES_AFTER files (None:
        VML_WORKER_PROCESSES if set, else one a core; none on one core, in a dry run, which
        stores nothing, or where the store reads blobs from a source)."""
        self.root = root
        self.rules = None if rules is None or rules.everything else rules
        self.store = store
        self.old_cache = old_cache
        self.tree = Assembly(store, old_cache, dry_run)
        self.counts = self.tree.counts
        self.owners = OwnerNames(root)
        self.skipped: list[tuple[bytes, str]] = []
        self.changed_while_reading: list[bytes] = []
        self._progress = progress or (lambda counts: None)
        self._pool = ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2), thread_name_prefix="vml-read")
        if processes is None:
            processes = workers_wanted()
        self._readers: Takeover[ReaderProcesses] = Takeover(0 if dry_run or store.source is not None else processes, PROCESSES_AFTER,
                                                            self._start_readers)
        self._queue: deque[_PendingDir] = deque()
        self._in_flight = 0
        self._bytes_in_flight = 0
        self._hardlinks: dict[tuple[int, int], _LinkGroup] = {}  # by (device, inode)
        self._batch: list[ToRead] = []
        self._batch_children: list[_Child] = []
        self._batch_bytes = 0
        self._racy_after = time.time_ns() - RACY_WINDOW_NS

    def file_node(self, name: bytes, path: bytes) -> Node:
        """One regular file, read on this thread, as the node named `name`."""
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{os.fsdecode(path)} is not a regular file")
        chunks, extents, _stable, flags, xattrs = read_content(to_read(path, st), self.tree.sink.chunk)
        node = self._metadata_node(name, st, path, xattrs)
        node.chunks, node.extents, node.flags = chunks, extents, flags
        return node

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- the walk

    def run(self) -> CaptureResult:
        # The capture makes millions of short-lived acyclic objects; the cyclic collector
        # would walk them again and again for nothing.
        collecting = gc.isenabled()
        gc.disable()
        failed = True
        try:
            root_st = os.stat(self.root)
            if not stat.S_ISDIR(root_st.st_mode):
                raise NotADirectoryError(f"{os.fsdecode(self.root)} is not a directory")
            top = self._scan_dir(self.root, b"", self.rules.root_scope() if self.rules else Scope.IN)
            while self._queue:
                self._finish(self._queue.popleft())
            if self._readers.processes is not None:
                self._readers.processes.finish()  # their last packs: in the store before the commit names them
            top_node = self._metadata_node(b"", root_st, self.root)
            links = [group.paths for group in self._hardlinks.values() if len(group.paths) > 1]
            result = self.tree.result(top_node, top.listing_id, top.totals, links, self.skipped, self.changed_while_reading)
            failed = False
            return result
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._readers.close(kill=failed)
            if collecting:
                gc.enable()

    def _scan_dir(self, path: bytes, rel: bytes, scope: Scope) -> _PendingDir:
        try:
            check_depth(rel)
        except UnsafePath as error:
            raise VmlError(f"{os.fsdecode(path)}: {error} (vml cannot save it)") from None
        with os.scandir(path) as scan:
            entries = sorted(scan, key=_NAME)
        cached = self.old_cache.dirs.get(rel)
        cached_children = cached.children if cached is not None else None
        pending = _PendingDir(rel, [], cached)
        children = pending.children
        rules, racy_after = self.rules, self._racy_after
        prefix = rel + b"/" if rel else b""
        # (The loop runs once per path of the tree: an unchanged re-commit is mostly this
        # loop and its lstat calls, so its common case, a plain file the stat cache
        # vouches for, is written out here rather than in _plan_child.)
        for entry in entries:
            name = entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while we walked
            fmt = st.st_mode & _S_IFMT
            child_scope = scope
            if rules is not None:
                child_scope = rules.scope(prefix + name, fmt == stat.S_IFDIR, scope)
                if child_scope is Scope.OUT:
                    continue
            if fmt not in KIND_OF_TYPE:
                self.skipped.append((prefix + name, "socket" if fmt == stat.S_IFSOCK else "unknown file type"))
                continue
            child = _Child(name, st, stat_key(st))
            children.append(child)
            if st.st_mtime_ns >= racy_after or st.st_ctime_ns >= racy_after:
                child.cacheable = False
                pending.reusable = False
            if fmt == stat.S_IFDIR:
                child.subdir = self._scan_dir(entry.path, prefix + name, child_scope)
                continue
            if st.st_nlink == 1 and cached_children is not None and child.cacheable:
                hit = cached_children.get(name)
                if hit is not None and hit[0] == child.key:
                    child.cached = hit[1]  # decoded in _finish, and only if the directory changed
                    continue
            self._plan_child(child, entry.path, prefix + name, cached)
        self._queue.append(pending)
        self._drain()
        return pending

    def _plan_child(self, child: _Child, path: bytes, rel: bytes, cached: CachedDir | None) -> None:
        """A child that is not a plain file the stat cache vouches for (_scan_dir does those):
        another name of an inode, or something to read."""
        st = child.st
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
                    child.node = other_name(first.node, child.name, child.hardlink)
                return
            self._hardlinks[key] = _LinkGroup(child, [rel])
            hit = cached.children.get(child.name) if cached is not None else None
            if hit is not None and child.cacheable and hit[0] == child.key:  # complete now: the other names copy it
                node = decode_node(hit[1])
                if self.tree.has_data(node):
                    child.node = node
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
        if not one_chunk(st.st_size):  # read on its own: small files go in batches
            child.content = (self._submit([to_read(path, st)], large=st.st_size >= PROCESSES_FOR), 0)
            return
        self._batch_children.append(child)
        self._batch.append(to_read(path, st))
        self._batch_bytes += st.st_size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        future = self._submit(self._batch)
        for place, child in enumerate(self._batch_children):
            child.content = (future, place)
        self._batch, self._batch_children, self._batch_bytes = [], [], 0

    def _submit(self, batch: list[ToRead], *, large: bool = False) -> Future:
        readers = self._readers.take(len(batch), large=large)
        if readers is not None:
            return readers.submit(batch)
        return self._pool.submit(self._read_files, batch)

    def _start_readers(self, count: int) -> ReaderProcesses:
        from vml.areas.capture.processes import ReaderProcesses  # (which imports this module)

        return ReaderProcesses(self.store, count)

    def _drain(self) -> None:
        """Finish the oldest directories while work in flight is over its bounds. While the
        oldest one still waits for a read (a 100 MB file), the walk goes on, feeding the
        other workers, up to the FAR_ bounds: stopping at once left a core idle for as long
        as the one file took."""
        queue = self._queue
        while queue:
            files, size, dirs = self._in_flight, self._bytes_in_flight, len(queue)
            if files <= MAX_FILES_IN_FLIGHT and size <= MAX_BYTES_IN_FLIGHT and dirs <= MAX_DIRS_WAITING:
                return
            if files <= FAR_FILES and size <= FAR_BYTES and dirs <= FAR_DIRS and not self._read_all(queue[0]):
                return
            self._finish(queue.popleft())

    @staticmethod
    def _read_all(pending: _PendingDir) -> bool:
        """Whether every read the directory's files wait for is done (so finishing it now
        does not wait). Each child is looked at until its read is done, once."""
        children = pending.children
        while pending.checked < len(children):
            child = children[pending.checked]
            content = child.content
            if (content is None and child.reads) or (content is not None and not content[0].done()):
                return False  # (None: in the batch being filled; another name's: that name's read)
            pending.checked += 1
        return True

    # -- file contents (on worker threads)

    def _read_files(self, batch: list[ToRead]) -> list[FileContent]:
        chunk = self.tree.sink.chunk
        return [read_content(file, chunk) for file in batch]

    # -- finishing a directory (post-order, on the calling thread)

    def _finish(self, pending: _PendingDir) -> None:
        self._submit_batch()  # its files may be the ones this directory waits for
        built = self._reuse(pending)
        if built is None:
            built = self.tree.listing(pending.rel, [self._listed(child, pending) for child in pending.children])
        pending.listing_id, pending.totals = built
        pending.children = []  # release the stat results and nodes
        if pending.cached is not None:
            pending.cached.release()  # (and the cached children, decoded for this directory)
        self._progress(self.counts)

    def _reuse(self, pending: _PendingDir) -> tuple[bytes, Totals] | None:
        """The cached listing of a directory in which nothing changed, decoding no node (the
        common case of a re-commit or a status); None if anything may have changed."""
        if pending.cached is None or not pending.reusable:
            return None
        fingerprinted = []
        size = 0
        for child in pending.children:
            subdir = child.subdir
            if subdir is not None:
                fingerprinted.append((child.name, child.key, subdir.listing_id, child.hardlink))
            elif child.cached is None:
                return None  # something is being read, or is not a plain cache hit
            else:
                fingerprinted.append((child.name, child.key, None, child.hardlink))
                if child.st.st_mode & _S_IFMT == stat.S_IFREG:
                    size += child.st.st_size
        return self.tree.reuse(pending.rel, fingerprinted, size)

    def _listed(self, child: _Child, pending: _PendingDir) -> Child:
        node = self._complete_node(child, pending)
        encoded = child.cached or encode_node(node)  # a cache hit's bytes are its node's encoding
        subdir = child.subdir
        return Child(child.name, child.key, encoded, node, child.hardlink, node.size, child.cacheable,
                     subdir.listing_id if subdir is not None else None, subdir.totals if subdir is not None else None)

    def _complete_node(self, child: _Child, pending: _PendingDir) -> Node:
        if child.subdir is not None:
            node = self._metadata_node(child.name, child.st, os.path.join(self.root, pending.rel, child.name))
            node.tree = child.subdir.listing_id
            return node
        if child.cached is not None:
            node = decode_node(child.cached)
            if self.tree.has_data(node):
                return node
            child.cached = None  # its data has gone from the store (gc): read it again, now
            self._plan_read(child, os.path.join(self.root, pending.rel, child.name))
            self._submit_batch()
        if child.node is not None:
            return child.node
        batch, place = child.content
        chunks, extents, stable, flags, xattrs = batch.result()[place]
        if child.reads:
            self._in_flight -= 1
            self._bytes_in_flight -= child.st.st_size
            self.counts.files_read += 1
            self.counts.bytes_read += child.st.st_size
        if not stable:
            self.changed_while_reading.append(os.path.join(self.root, pending.rel, child.name))
            child.cacheable = False
            pending.reusable = False
        node = self._metadata_node(child.name, child.st, None, xattrs)
        node.chunks, node.extents, node.flags = chunks, extents, flags
        node.hardlink = child.hardlink
        return node

    def _metadata_node(self, name: bytes, st: os.stat_result, path: bytes | None, xattrs: tuple | None = None) -> Node:
        """`xattrs`: read already (with a regular file's content: then `path`, which only
        other kinds need, may be None); else read here, by path."""
        mode = st.st_mode
        kind = KIND_OF_TYPE[mode & _S_IFMT]
        if xattrs is None:
            assert path is not None, "xattrs are read by path"
            xattrs = read_xattrs(path)
        uid, gid = st.st_uid, st.st_gid
        # (Positional: a capture makes a node for every path.)
        node = Node(name, kind, mode & 0o7777, uid, gid, self.owners.user(uid), self.owners.group(gid), st.st_mtime_ns,
                    st.st_size if kind == KIND_FILE else 0, xattrs)
        if kind == KIND_FILE:
            return node  # (its flags are read with its content)
        assert path is not None, "only a regular file's node is made without its path"
        if kind == KIND_SYMLINK:
            node.target = os.readlink(path)
        elif kind in (KIND_CHAR, KIND_BLOCK):
            node.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif kind == KIND_DIR:
            node.flags = dir_flags(path)
        # (Devices and FIFOs are never opened, and Linux keeps no flags on symlinks.)
        return node


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
    listing_id = capture.tree.sink.listing(encode_listing(nodes, totals))
    newest = max((node.mtime_ns for node in nodes), default=0)
    top = Node(name=b"", kind=KIND_DIR, mode=0o755, uid=0, gid=0, user=None, group=None, mtime_ns=newest, tree=listing_id)
    return capture.tree.sink.listing(encode_root(top, totals, [])), totals

"""Restore a saved tree onto the local filesystem, exactly and safely.

Every operation is relative to an open directory descriptor and never follows a symlink:
directories are opened with O_NOFOLLOW, files are created with O_EXCL, and metadata of
non-regular files is set through /proc/self/fd. Names are validated before use (see
`manifest.check_name`), so a hostile manifest cannot write outside the target.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from vml.areas.fsmeta import PROTECTING_FLAGS, TYPE_OF_KIND, clear_flags, clear_flags_below, flag_letters, write_flags
from vml.areas.restore.files import Birth, FileWriter
from vml.areas.restore.processes import WriterProcesses
from vml.areas.rules import Rules, Scope, may_delete
from vml.errors import CorruptObject, VmlError
from vml.objects.manifest import (
    KIND_BLOCK,
    KIND_CHAR,
    KIND_DIR,
    KIND_FIFO,
    KIND_FILE,
    KIND_NAMES,
    KIND_SYMLINK,
    Listing,
    Node,
    check_depth,
    check_name,
)
from vml.objects.store import ChunkStore
from vml.objects.walk import PathBudget
from vml.pathnames import quote_path
from vml.workers import Takeover
from vml.workers import wanted as workers_wanted

MAX_FILES_IN_FLIGHT = 1024
MAX_DIRS_PENDING = 64
# Small files go to the workers in batches (as in capture): one task per file costs more in
# futures and GIL hand-offs than writing the file.
BATCH_FILES = 64
BATCH_BYTES = 4 * 1024 * 1024
PROCESSES_AFTER = 2048  # files given to the threads before writer processes take over (vml/workers.py: Takeover)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class RestoreProgress:
    nodes: int = 0
    files_written: int = 0
    bytes_written: int = 0
    removed: int = 0
    metadata_only: int = 0
    not_restored: list[tuple[bytes, str]] = field(default_factory=list)  # (path, what could not be kept)


@dataclass(slots=True)
class _PendingDir:
    fd: int
    node: Node
    scope: Scope
    rel: bytes  # its path from the top (b"" for the top)
    jobs: list[Future] = field(default_factory=list)  # a batch appears once however many of its files are here
    files: int = 0  # files of this directory in those jobs
    empty: bool = False  # it held nothing when this restore began: no name in it needs looking up first
    created: bool = False  # made by this restore


class Restore:
    def __init__(
        self,
        store: ChunkStore,
        load_listing: Callable[..., Listing],
        *,
        rules: Rules | None = None,
        entry_rules: Rules | None = None,
        workers: int | None = None,
        processes: int | None = None,
        progress: Callable[[RestoreProgress], None] | None = None,
    ):
        """`workers`: threads writing files; `processes`: writer processes (processes.py)
        that take over once a restore has given the threads PROCESSES_AFTER files (None:
        VML_WORKER_PROCESSES if set, else one a core; none on one core, or where blobs may
        have to be read from a source)."""
        self.store = store
        self.rules = None if rules is None or rules.everything else rules
        self.entry_rules = None if entry_rules is None or entry_rules.everything else entry_rules
        self._load_listing = load_listing
        self.as_root = os.geteuid() == 0
        self.counts = RestoreProgress()
        self.not_restored = self.counts.not_restored
        self._progress = progress or (lambda counts: None)
        self._pool = ThreadPoolExecutor(max_workers=workers or max(2, os.cpu_count() or 2), thread_name_prefix="vml-write")
        if processes is None:
            processes = workers_wanted()
        self._writers: Takeover[WriterProcesses] = Takeover(
            processes if store.source is None else 0, PROCESSES_AFTER,
            lambda count: WriterProcesses(self.store.root, self._files.birth, count, self._processes_done),
        )
        self._queue: deque[_PendingDir] = deque()
        self._in_flight = 0
        self._written: dict[bytes, Future | None] = {}  # first members of hardlink groups, by path
        self._firsts: set[bytes] = set()  # the paths other names of the same inode link to
        self._not_made: set[bytes] = set()  # first members that could not be made (device nodes, not root)
        self._counting = threading.Lock()  # workers add to the counts
        self._flagged: list[tuple[bytes, Node]] = []  # inode flags to set once everything is written
        self._budget = PathBudget(0)  # the paths the tree being restored declares (see run)
        self._batch: list[tuple[int, Node, bytes, bytes]] = []
        self._batch_dirs: list[_PendingDir] = []
        self._batch_bytes = 0
        self._root_fd = -1
        self._updating = False
        self._files = FileWriter(store, Birth(), self.not_restored)

    def run(self, root_id: bytes, target: bytes, current_root_id: bytes | None = None) -> RestoreProgress:
        """Make `target` hold the tree `root_id`. With `current_root_id` (what the target holds
        now), unchanged subtrees and files are left alone; without it, `target` must be empty."""
        current = self._root_node(current_root_id) if current_root_id is not None else None
        self._firsts.clear()  # the target's groups, not the current tree's
        root = self._root_node(root_id)
        self._budget = PathBudget.of(self._load_listing, root_id)
        self._updating = current is not None
        os.makedirs(target, mode=0o700, exist_ok=True)
        self._root_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        failed = True
        try:
            if current is None and os.listdir(self._root_fd):
                raise VmlError(f"{os.fsdecode(target)} is not empty")
            if current is None:
                _check_inodes(self._root_fd, target, self._budget.left)
            self._files.birth = self._learn_birth(self._root_fd)
            top = _PendingDir(os.dup(self._root_fd), root, self.rules.root_scope() if self.rules else Scope.IN, b"",
                              empty=current is None)
            self._unprotect(top.fd, current, root, b"")
            self._restore_dir(top, b"", root.tree, current.tree if current is not None else None)
            self._queue.append(top)
            while self._queue:
                self._finish(self._queue.popleft())
            self._set_flags()
            failed = False
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._writers.close(kill=failed)  # (a failed restore's partial files are removed next)
            while self._queue:
                os.close(self._queue.popleft().fd)
            os.close(self._root_fd)
        return self.counts

    def _root_node(self, root_id: bytes) -> Node:
        listing = self._load_listing(root_id, root=True)
        if len(listing.nodes) != 1 or listing.nodes[0].kind != KIND_DIR:
            raise CorruptObject("damaged manifest: an entry's root must describe one directory")
        if listing.links:
            self._firsts.update(group[0] for group in listing.links)
        return listing.nodes[0]

    # -- directories

    def _restore_dir(self, pending: _PendingDir, rel: bytes, listing_id: bytes, current_id: bytes | None) -> None:
        check_depth(rel)
        dir_fd = pending.fd
        target = self._load_listing(listing_id).nodes
        current = {n.name: n for n in self._load_listing(current_id).nodes} if current_id is not None else {}
        wanted = set()
        for node in target:
            check_name(node.name)
            wanted.add(node.name)
        if current_id is not None:
            for name in os.listdir(dir_fd):
                raw = os.fsencode(name)
                if raw not in wanted and self._in_scope(pending, rel, raw):
                    self._remove(dir_fd, raw)
        for node in target:
            child_rel = rel + b"/" + node.name if rel else node.name
            self._budget.spend()
            self.counts.nodes += 1
            self._restore_node(pending, child_rel, node, current.get(node.name))
        self._progress(self.counts)

    def _restore_node(self, pending: _PendingDir, rel: bytes, node: Node, current: Node | None) -> None:
        dir_fd = pending.fd
        if node.kind == KIND_DIR:
            if current is not None and current.kind == KIND_DIR:
                if current.tree == node.tree and current.same_metadata(node):
                    return
                child = _PendingDir(os.open(node.name, _DIR_FLAGS, dir_fd=dir_fd), node, self._child_scope(pending, rel), rel)
                self._unprotect(child.fd, current, node, rel)
                self._restore_dir(child, rel, node.tree, current.tree)
            else:
                if current is not None or (not pending.empty and self._exists(dir_fd, node.name)):
                    self._remove(dir_fd, node.name)
                os.mkdir(node.name, 0o700, dir_fd=dir_fd)
                child = _PendingDir(os.open(node.name, _DIR_FLAGS, dir_fd=dir_fd), node, self._child_scope(pending, rel), rel,
                                    empty=True, created=True)
                self._unprotect(child.fd, None, node, rel)
                self._restore_dir(child, rel, node.tree, None)
            self._queue.append(child)
            self._drain()
            return
        if current is not None and current.kind == node.kind and current.same_content(node) and current.hardlink == node.hardlink:
            if self._is_first(rel, node):
                self._written[rel] = None
            if not current.same_metadata(node):
                self._unprotect_by_name(dir_fd, current, node, rel)
                self._set_metadata_by_name(dir_fd, node, rel)
                self.counts.metadata_only += 1
            return
        if current is not None:
            self._unprotect_by_name(dir_fd, current, None, rel)  # it is replaced: nothing may stop that
        if node.flags:
            self._flagged.append((rel, node))
        replace = current is not None or (not pending.empty and self._exists(dir_fd, node.name))
        if replace and self._is_dir(dir_fd, node.name):
            self._remove(dir_fd, node.name)
            replace = False
        name = b".vml-restore-" + uuid.uuid4().hex.encode() if replace else node.name
        if node.hardlink is not None and node.hardlink != rel:
            self._link(pending.fd, rel, node, name)
        elif node.kind == KIND_FILE:
            self._restore_file(pending, rel, node, name)
        else:
            self._restore_special(dir_fd, rel, node, name)
            if replace and rel not in self._not_made:
                os.rename(name, node.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def _is_first(self, rel: bytes, node: Node) -> bool:
        """Whether other names of this node's inode link to `rel` (a path naming itself: an
        entry written before roots listed their hardlink groups)."""
        return rel in self._firsts or node.hardlink == rel

    def _child_scope(self, parent: _PendingDir, rel: bytes) -> Scope:
        if self.rules is None or parent.scope is Scope.IN:
            return parent.scope
        return self.rules.scope(rel, True, parent.scope)

    def _in_scope(self, parent: _PendingDir, rel: bytes, name: bytes) -> bool:
        """Whether both the area's rules and those the entry was saved under cover `name` in
        this directory: what either leaves out is never deleted."""
        if self.rules is None and self.entry_rules is None:
            return True
        child_rel = rel + b"/" + name if rel else name
        return may_delete(child_rel, self._is_dir(parent.fd, name), self.entry_rules, self.rules, parent.scope)

    def _drain(self) -> None:
        while len(self._queue) > MAX_DIRS_PENDING or (self._queue and self._in_flight > MAX_FILES_IN_FLIGHT):
            self._finish(self._queue.popleft())

    def _finish(self, pending: _PendingDir) -> None:
        self._submit_batch()  # its files may be in the batch being filled
        try:
            for job in pending.jobs:
                job.result()
            self._in_flight -= pending.files
            self._files.set_metadata_fd(pending.fd, pending.node, pending.rel, born=pending.created)
        finally:
            os.close(pending.fd)
        self._progress(self.counts)

    # -- regular files

    def _restore_file(self, pending: _PendingDir, rel: bytes, node: Node, name: bytes) -> None:
        self._in_flight += 1
        pending.files += 1
        first = self._is_first(rel, node)
        if first or node.size >= BATCH_BYTES:
            job = self._submit([(pending.fd, node, name, rel)])
            pending.jobs.append(job)
            if first:
                self._written[rel] = job  # the other names wait for it
            return
        self._batch.append((pending.fd, node, name, rel))
        if not self._batch_dirs or self._batch_dirs[-1] is not pending:
            self._batch_dirs.append(pending)
        self._batch_bytes += node.size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if not self._batch:
            return
        job = self._submit(self._batch)
        for pending in self._batch_dirs:
            pending.jobs.append(job)
        self._batch, self._batch_dirs, self._batch_bytes = [], [], 0

    def _submit(self, batch: list[tuple[int, Node, bytes, bytes]]) -> Future:
        writers = self._writers.take(len(batch))
        if writers is not None:
            return writers.submit(batch)
        return self._pool.submit(self._write_files, batch)

    def _processes_done(self, done: tuple[int, int, list[tuple[bytes, str]]]) -> None:
        files, size, not_restored = done
        self._count(files=files, size=size)
        self.not_restored.extend(not_restored)

    def _write_files(self, batch: list[tuple[int, Node, bytes, bytes]]) -> None:
        for dir_fd, node, name, rel in batch:
            self._files.write_file(dir_fd, node, name, rel)
            self._count(files=1, size=node.size)

    def _link(self, dir_fd: int, rel: bytes, node: Node, name: bytes) -> None:
        """Another name for the inode of the group's first member, an earlier node of the same kind."""
        first = node.hardlink
        job = self._written.get(first)
        if job is not None:
            job.result()
        elif first not in self._written and not self._updating:
            raise CorruptObject(f"damaged manifest: {node.name!r} is a hardlink to {first!r}, which is not an earlier node")
        if first in self._not_made:
            self.not_restored.append((rel, f"another name of {quote_path(first)}, which could not be made"))
            return
        try:
            parent_fd, first_name = self._open_parent(first)
        except OSError:
            raise CorruptObject(f"damaged manifest: hardlink target {first!r} is not in the tree") from None
        try:
            first_st = os.stat(first_name, dir_fd=parent_fd, follow_symlinks=False)
            if TYPE_OF_KIND[node.kind] != stat.S_IFMT(first_st.st_mode) or (node.kind == KIND_FILE and first_st.st_size != node.size):
                raise CorruptObject(f"damaged manifest: hardlink target {first!r} is not a matching {KIND_NAMES[node.kind]}")
            os.link(first_name, name, src_dir_fd=parent_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise CorruptObject(f"damaged manifest: hardlink target {first!r} does not exist") from None
        finally:
            os.close(parent_fd)
        if name != node.name:
            os.rename(name, node.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if node.kind == KIND_FILE:
            self._count(files=1)

    def _open_parent(self, rel: bytes) -> tuple[int, bytes]:
        parts = rel.split(b"/")
        for part in parts:
            check_name(part)
        fd = os.dup(self._root_fd)
        try:
            for part in parts[:-1]:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = next_fd
        except OSError:
            os.close(fd)
            raise
        return fd, parts[-1]

    def _count(self, *, files: int, size: int = 0) -> None:
        """Counts what was written; workers call it, so it adds under a lock (a `+=` on the
        counts from several threads loses updates)."""
        with self._counting:
            self.counts.files_written += files
            self.counts.bytes_written += size

    # -- everything else

    def _restore_special(self, dir_fd: int, rel: bytes, node: Node, name: bytes) -> None:
        if self._is_first(rel, node):
            self._written[rel] = None  # made here, now: the other names link to it at once
        if node.kind == KIND_SYMLINK:
            os.symlink(node.target, name, dir_fd=dir_fd)
        elif node.kind == KIND_FIFO:
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
        elif node.kind in (KIND_CHAR, KIND_BLOCK):
            if not self.as_root:
                self.not_restored.append((rel, "device node (needs root)"))
                self._not_made.add(rel)
                return
            kind_bits = stat.S_IFCHR if node.kind == KIND_CHAR else stat.S_IFBLK
            os.mknod(name, kind_bits | 0o600, os.makedev(*node.rdev), dir_fd=dir_fd)
        else:
            raise CorruptObject(f"damaged manifest: unknown kind {node.kind}")
        self._set_metadata_by_name(dir_fd, node, rel, name)

    # -- metadata: owner, then xattrs (chown clears capabilities), then mode, then times

    @staticmethod
    def _learn_birth(top_fd: int) -> Birth:
        owner = None if stat.S_ISGID & os.fstat(top_fd).st_mode else (os.geteuid(), os.getegid())
        try:
            with_xattrs = "system.posix_acl_default" in os.listxattr(top_fd)
        except OSError:
            with_xattrs = False  # a filesystem without xattrs
        umask = _umask()
        unborn_modes = umask | 0o7000 if umask is not None and not with_xattrs else 0o7777
        return Birth(owner, with_xattrs, unborn_modes)

    def _set_metadata_by_name(self, dir_fd: int, node: Node, rel: bytes, name: bytes | None = None) -> None:
        name = name or node.name
        path = b"/proc/self/fd/%d/%s" % (dir_fd, name)
        if self.as_root:
            os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
        self._files.set_xattrs(path, node, rel, follow=False)
        if node.kind != KIND_SYMLINK:  # Linux symlinks have no mode of their own
            path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                os.chmod(b"/proc/self/fd/%d" % path_fd, node.mode)
            finally:
                os.close(path_fd)
        os.utime(name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)

    # -- inode flags: cleared before anything they forbid, set once everything is written
    # (an immutable file cannot be renamed into place, linked to, or have its times set)

    def _unprotect(self, fd: int, current: Node | None, node: Node, rel: bytes) -> None:
        """A directory about to be filled: its current flags go, the entry's come at the end."""
        if current is not None and current.flags:
            write_flags(fd, 0)
        if node.flags:
            self._flagged.append((rel, node))

    def _unprotect_by_name(self, dir_fd: int, current: Node, node: Node | None, rel: bytes) -> None:
        """A file whose metadata changes (`node`, whose flags come at the end) or which is
        replaced (None): flags that forbid it are cleared first."""
        if current.kind == KIND_FILE and current.flags & PROTECTING_FLAGS:
            clear_flags(dir_fd, current.name)
        if node is not None and node.flags != current.flags:
            self._flagged.append((rel, node))

    def _set_flags(self) -> None:
        for rel, node in self._flagged:
            try:
                if rel:
                    parent_fd, name = self._open_parent(rel)
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent_fd)
                    finally:
                        os.close(parent_fd)
                else:
                    fd = os.dup(self._root_fd)
                try:
                    write_flags(fd, node.flags)
                finally:
                    os.close(fd)
            except OSError as error:
                self.not_restored.append((rel or b".", f"inode flags {flag_letters(node.flags) or '(none)'}: {error.strerror}"))

    # -- helpers

    @staticmethod
    def _exists(dir_fd: int, name: bytes) -> bool:
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    @staticmethod
    def _is_dir(dir_fd: int, name: bytes) -> bool:
        try:
            return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False

    def _remove(self, dir_fd: int, name: bytes) -> None:
        try:
            self._remove_now(dir_fd, name)
        except PermissionError:
            clear_flags_below(dir_fd, name)  # an immutable or append-only file or directory in the way
            self._remove_now(dir_fd, name)
        self.counts.removed += 1

    def _remove_now(self, dir_fd: int, name: bytes) -> None:
        if self._is_dir(dir_fd, name):
            shutil.rmtree(name, dir_fd=dir_fd)  # fd-based: never follows symlinks inside
        else:
            try:
                os.unlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                pass


def _umask() -> int | None:
    """This process's umask, read without setting it (os.umask would change it for every
    thread for a moment); None where Linux does not say (before 4.7)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_inodes(fd: int, target: bytes, paths: int) -> None:
    """Refuse at once a tree the target's filesystem has no room for, by inodes (a tree
    whose listings repeat can name billions of paths in a few KB)."""
    fs = os.fstatvfs(fd)
    if fs.f_files and fs.f_favail < paths:  # (f_files 0: a filesystem that makes inodes as needed)
        raise VmlError(f"{os.fsdecode(target)} has room for {fs.f_favail:,} more files; the entry holds {paths:,} paths")


def remove_partial(target: str, *, keep_top: bool) -> None:
    """Empty `target` of what a failed restore into it left (it was empty or absent before);
    with `keep_top` false, remove the directory too."""
    if not os.path.isdir(target) or os.path.islink(target):
        return
    for name in os.listdir(target):
        path = os.path.join(target, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    if not keep_top:
        with contextlib.suppress(OSError):
            os.rmdir(target)

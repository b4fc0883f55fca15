"""Writing a restored regular file and setting metadata through a descriptor: the part of a
restore that threads of the restoring process or writer processes of its own (processes.py)
do, the same way in both."""

from __future__ import annotations

import errno
import os
from collections import deque
from dataclasses import dataclass

from vml.errors import CorruptObject
from vml.objects.ids import ID_SIZE
from vml.objects.manifest import Node
from vml.objects.store import ChunkStore
from vml.pathnames import quote_path

NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Birth:
    """What a new file or directory in the target is born with, so as not to set it again:
    the owner (None: the target is setgid, whose group its contents take), whether it may
    inherit xattrs (a default ACL on the target) that the restore must then remove, and the
    mode bits it cannot be born with (the umask's and the special bits; all of them when
    the umask is not known or a default ACL decides instead)."""

    owner: tuple[int, int] | None = None
    with_xattrs: bool = True
    unborn_modes: int = 0o7777


class FileWriter:
    """Writes files into directories given as descriptors. What it could not keep (an xattr
    the filesystem refuses) goes to `not_restored`, which the caller owns."""

    def __init__(self, store: ChunkStore, birth: Birth, not_restored: list[tuple[bytes, str]]):
        self.store = store
        self.birth = birth
        self.as_root = os.geteuid() == 0
        self.not_restored = not_restored

    def write_file(self, dir_fd: int, node: Node, name: bytes, rel: bytes) -> None:
        """A new regular file `name` in `dir_fd` holding `node` (renamed to `node.name` once
        whole); never a file with partial or wrong content."""
        # Born with its mode when the umask lets it be (most files: no fchmod); else born
        # private, and its mode set once it is written.
        born_mode = node.mode if not node.mode & self.birth.unborn_modes else 0o600
        fd = os.open(name, NEW_FILE_FLAGS, born_mode, dir_fd=dir_fd)
        try:
            try:
                self.write_content(fd, node)
                self.set_metadata_fd(fd, node, rel, born=True, born_mode=born_mode)
            finally:
                os.close(fd)
        except BaseException as error:
            os.unlink(name, dir_fd=dir_fd)
            if isinstance(error, CorruptObject):
                raise type(error)(f"{quote_path(rel)}: {error}") from None
            raise
        if name != node.name:
            os.rename(name, node.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def write_content(self, fd: int, node: Node) -> int:
        if node.extents is None and len(node.chunks) == ID_SIZE:  # most files: one chunk, no holes
            data = self.store.get(node.chunks)
            if len(data) == node.size:  # (else the way below says what is wrong with it)
                done = os.pwrite(fd, data, 0)
                while done < len(data):  # (a short write: the rest, or the reason it was short)
                    done += os.pwrite(fd, memoryview(data)[done:], done)
                return done
        extents = deque(node.extents) if node.extents is not None else deque([(0, node.size)])
        expected = sum(length for _offset, length in extents)
        offset, room = extents.popleft() if extents else (0, 0)
        total = 0
        for chunk_id in node.chunk_ids():
            data = memoryview(self.store.get(chunk_id))
            total += len(data)
            while data:
                while room == 0:
                    if not extents:
                        raise CorruptObject(f"damaged manifest: {node.name!r} has more data than its size")
                    offset, room = extents.popleft()
                piece = data[:room]
                done = os.pwrite(fd, piece, offset)
                offset += done
                room -= done
                data = data[done:]
        if total != expected:
            raise CorruptObject(f"damaged manifest: {node.name!r} has {total} bytes of data, expected {expected}")
        if node.extents is not None or total != node.size:
            os.ftruncate(fd, node.size)
        return total

    # -- metadata: owner, then xattrs (chown clears capabilities), then mode, then times

    def set_metadata_fd(self, fd: int, node: Node, rel: bytes, *, born: bool = False, born_mode: int | None = None) -> None:
        """`born`: the file or directory was made by this restore (its owner and xattrs are
        known without asking: see `Birth`), with `born_mode` if it was given one. (A chown
        by root keeps the mode bits a born mode may have: only setuid and setgid go, and
        those are never born. An access ACL among the xattrs sets group bits: the mode is
        set after it, always.)"""
        if self.as_root and not (born and (node.uid, node.gid) == self.birth.owner):
            os.fchown(fd, node.uid, node.gid)
        if node.xattrs or not born or self.birth.with_xattrs:
            self.set_xattrs(fd, node, rel, follow=True)
        if born_mode != node.mode or node.xattrs:
            os.fchmod(fd, node.mode)
        os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))

    def set_xattrs(self, target: int | bytes, node: Node, rel: bytes, *, follow: bool) -> None:
        try:
            present = {os.fsencode(n) for n in os.listxattr(target, follow_symlinks=follow)}
        except OSError:
            present = set()
        wanted = dict(node.xattrs)
        for name in present - wanted.keys():
            try:
                os.removexattr(target, name, follow_symlinks=follow)
            except OSError:
                pass
        for name, value in node.xattrs:
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as error:
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
                self.not_restored.append((rel or b".", f"xattr {name.decode(errors='replace')}: {error.strerror}"))

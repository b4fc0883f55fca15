"""Durable writes: the one home of temp file, fsync, rename, fsync of the directory.

A file written here is whole or absent after a crash, and is on disk once the call returns.
Temp files end in `.tmp`, the suffix gc removes when a killed process left one behind.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import BinaryIO

TEMP_SUFFIX = ".tmp"


def temp_name(path: str) -> str:
    """A fresh temp name for a file that will become `path` (a remote's path too: sftp)."""
    return f"{path}.{uuid.uuid4().hex}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    return name.endswith(TEMP_SUFFIX)


def fsync_dir(path: str) -> None:
    """Make the names in a directory durable: a rename is only on disk once its directory is."""
    fsync_file(path, os.O_DIRECTORY)


class PendingFile:
    """A temp file in `directory` that becomes a file of its own only at `commit`, for a
    writer that learns the final name at the end (a pack is named by its hash).

    `mode` is the permission bits it is created with, less the umask, as with os.open."""

    def __init__(self, directory: str, name: str, *, mode: int = 0o666, buffering: int = -1):
        self.temp_path = os.path.join(directory, temp_name(name))
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            self.file: BinaryIO = os.fdopen(fd, "wb", buffering=buffering)
        except BaseException:
            os.close(fd)
            os.unlink(self.temp_path)
            raise

    def commit(self, path: str) -> None:
        """Flush, fsync, rename over `path`, fsync `path`'s directory."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.rename(self.temp_path, path)
        fsync_dir(os.path.dirname(os.path.abspath(path)))

    def discard(self) -> None:
        """Close and remove the temp file; nothing happens to a committed file."""
        try:
            self.file.close()
        except OSError:
            pass  # its buffer could not be written (a full disk): the file goes anyway
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temp_path)


@contextlib.contextmanager
def atomic_file(path: str, *, mode: int = 0o666, tmp_dir: str | None = None, buffering: int = -1) -> Iterator[BinaryIO]:
    """A binary file to stream `path`'s new content into. Leaving the block without an
    exception replaces `path` durably; with one, the temp file goes and `path` is as it was.
    The temp file is made in `tmp_dir` (same filesystem as `path`) or beside `path`."""
    pending = PendingFile(tmp_dir or os.path.dirname(os.path.abspath(path)), os.path.basename(path),
                          mode=mode, buffering=buffering)
    try:
        yield pending.file
        pending.commit(path)
    except BaseException:
        pending.discard()
        raise


def write_atomically(path: str, data: bytes | Iterable[bytes], *, mode: int = 0o666, tmp_dir: str | None = None) -> None:
    """Create or replace `path` with `data`, or with the pieces it yields, durably."""
    pieces = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
    with atomic_file(path, mode=mode, tmp_dir=tmp_dir) as sink:
        for piece in pieces:
            sink.write(piece)


def create_exclusive(path: str, data: bytes, *, mode: int = 0o644) -> bool:
    """Create `path` holding `data` only if it is absent (git's lock file): False if it exists.
    The content is fsynced; the name becomes durable with the `rename` that follows."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def fsync_file(path: str, flags: int = 0) -> None:
    """Put a file already written (by someone else: a restore, libvirt) on disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """Put every file and directory below `path` on disk (a tree written by a restore,
    before it is renamed into place)."""
    for directory, _subdirectories, files in os.walk(path):
        for name in files:
            if not os.path.islink(os.path.join(directory, name)):
                fsync_file(os.path.join(directory, name))
        fsync_dir(directory)


def rename(source: str, target: str) -> None:
    """Rename `source` over `target`, durably (a lock file over the file it locked)."""
    os.rename(source, target)
    fsync_dir(os.path.dirname(os.path.abspath(target)))

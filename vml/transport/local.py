"""A repository on a path of this machine, reached through plain file operations."""

from __future__ import annotations

import collections
import contextlib
import os

from vml import durable
from vml.transport.base import Location, MissingFile, TransportError, check_relative

PIECE = 1024 * 1024


class LocalTransport:
    renames = True
    parallel_writes = 1

    def __init__(self, location: Location):
        self.location = location
        self.root = location.path
        self.bytes_sent = 0
        self.bytes_received = 0
        self.requests: collections.Counter[str] = collections.Counter()  # counted by object storage only

    def _path(self, path: str) -> str:
        return os.path.join(self.root, check_relative(path))

    def _missing(self, path: str) -> MissingFile:
        return MissingFile(f"{self.location}: {path} does not exist")

    def read(self, path: str) -> bytes:
        try:
            with open(self._path(path), "rb") as source:
                data = source.read()
        except FileNotFoundError:
            raise self._missing(path) from None
        self.bytes_received += len(data)
        return data

    def read_ranges(self, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        try:
            fd = os.open(self._path(path), os.O_RDONLY)
        except FileNotFoundError:
            raise self._missing(path) from None
        try:
            pieces = []
            for offset, length in ranges:
                piece = os.pread(fd, length, offset)
                if len(piece) != length:
                    raise TransportError(f"{self.location}: {path} is shorter than its index says (truncated?)")
                pieces.append(piece)
                self.bytes_received += length
            return pieces
        finally:
            os.close(fd)

    def size(self, path: str) -> int:
        try:
            return os.stat(self._path(path)).st_size
        except FileNotFoundError:
            raise self._missing(path) from None

    def exists(self, path: str) -> bool:
        return os.path.exists(self._path(path))

    def list(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(self._path(path)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list_tree(self, path: str) -> list[str]:
        found = []
        for directory, _dirs, files in os.walk(self._path(path)):
            relative = os.path.relpath(directory, self.root).replace(os.sep, "/")
            found.extend(f"{relative}/{name}" for name in files)
        return sorted(found)

    def write(self, path: str, data: bytes) -> None:
        self._write_atomically(path, [data])

    def write_from(self, path: str, local_path: str, progress=None) -> None:
        with open(local_path, "rb") as source:
            self._write_atomically(path, iter(lambda: source.read(PIECE), b""), progress)

    def _write_atomically(self, path: str, pieces, progress=None) -> None:
        target = self._path(path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with durable.atomic_file(target) as sink:
            for piece in pieces:
                sink.write(piece)
                self.bytes_sent += len(piece)
                if progress is not None:
                    progress(len(piece))

    def create_exclusive(self, path: str, data: bytes) -> bool:
        target = self._path(path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not durable.create_exclusive(target, data):
            return False
        self.bytes_sent += len(data)
        return True

    def rename(self, source: str, target: str) -> None:
        durable.rename(self._path(source), self._path(target))

    def remove(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(path))

    def close(self) -> None:
        pass


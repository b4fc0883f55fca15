"""A repository held in a dictionary: the reference implementation of the Transport
protocol, for tests of push and fetch logic without files (`memory://NAME` URLs share one
store per name within a process)."""

from __future__ import annotations

import collections

from vml.transport.base import Location, MissingFile, TransportError, check_relative

_STORES: dict[str, dict[str, bytes]] = {}


class MemoryTransport:
    renames = True
    parallel_writes = 1

    def __init__(self, location: Location):
        self.location = location
        self.files = _STORES.setdefault(location.path, {})
        self.bytes_sent = 0
        self.bytes_received = 0
        self.requests: collections.Counter[str] = collections.Counter()  # counted by object storage only

    def read(self, path: str) -> bytes:
        data = self._get(path)
        self.bytes_received += len(data)
        return data

    def _get(self, path: str) -> bytes:
        try:
            return self.files[check_relative(path)]
        except KeyError:
            raise MissingFile(f"{self.location}: {path} does not exist") from None

    def read_ranges(self, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        data = self._get(path)
        pieces = [data[offset : offset + length] for offset, length in ranges]
        if any(len(piece) != length for piece, (_offset, length) in zip(pieces, ranges)):
            raise TransportError(f"{self.location}: {path} is shorter than its index says (truncated?)")
        self.bytes_received += sum(len(piece) for piece in pieces)
        return pieces

    def size(self, path: str) -> int:
        return len(self._get(path))

    def exists(self, path: str) -> bool:
        return check_relative(path) in self.files

    def list(self, path: str) -> list[str]:
        prefix = check_relative(path) + "/"
        return sorted({name[len(prefix) :].split("/", 1)[0] for name in self.files if name.startswith(prefix)})

    def list_tree(self, path: str) -> list[str]:
        prefix = check_relative(path) + "/"
        return sorted(name for name in self.files if name.startswith(prefix))

    def write(self, path: str, data: bytes) -> None:
        self.files[check_relative(path)] = bytes(data)
        self.bytes_sent += len(data)

    def write_from(self, path: str, local_path: str, progress=None) -> None:
        with open(local_path, "rb") as source:
            data = source.read()
        self.write(path, data)
        if progress is not None:
            progress(len(data))

    def create_exclusive(self, path: str, data: bytes) -> bool:
        if self.exists(path):
            return False
        self.write(path, data)
        return True

    def rename(self, source: str, target: str) -> None:
        self.files[check_relative(target)] = self._get(source)
        del self.files[source]

    def remove(self, path: str) -> None:
        self.files.pop(check_relative(path), None)

    def close(self) -> None:
        pass

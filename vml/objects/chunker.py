"""Content-defined chunking (FastCDC, via pyfastcdc's compiled implementation), and THE rule
for cutting a file into chunks: a small file without holes is one chunk, anything else is cut
by FastCDC over its data extents. Every capture engine cuts through `chunk_file`, or through
`cut_whole` a file it read whole (the same cuts), so the same file gives the same chunks
wherever it was read."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from pyfastcdc.cy import FastCDC

# Average 1 MiB like restic; pyfastcdc's real mean is about avg + min.
MIN_SIZE = 256 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 4 * 1024 * 1024

_chunker = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=1, seed=0)
# A file without holes up to this size is read whole and cut in memory (`cut_whole`), the same
# cuts as a stream's: a stream (`cut_stream`) reads through a buffer of twice MAX_SIZE made, and
# zeroed, for each file (pyfastcdc's), which was a sixth of a commit's reader processes' Python
# over the runtimes tree's 883 files from 256 KiB up (0.7 s against 0.35 s to read and cut them
# whole). A larger file streams, its memory bounded.
WHOLE_FILE_BYTES = 16 * 1024 * 1024

# (offset, length) of each data region of a file with holes, in order.
Extents = tuple[tuple[int, int], ...]
# Reads into the buffer from the file's offset; the count read, 0 at the end of the file.
ReadAt = Callable[[memoryview, int], int]


def cut_stream(readinto: Callable[[memoryview], int]) -> Iterator[memoryview]:
    """Yield chunks of the stream; each view is valid only until the next is yielded."""

    class _Reader:
        __slots__ = ()

        def readinto(self, buffer: memoryview) -> int:
            return readinto(buffer)

    # FastCDC objects hold only the configuration; each cut_stream call has its own buffer,
    # so one instance serves every thread.
    for chunk in _chunker.cut_stream(_Reader()):
        yield chunk.data


def cut_buffer(data: bytes | memoryview) -> Iterator[memoryview]:
    for chunk in _chunker.cut_buf(data):
        yield chunk.data


def cut_whole(data: bytes) -> Iterator[memoryview]:
    """The chunks of a file's whole data (or its data extents back to back), as `chunk_file`
    cuts them: one if it is small, else FastCDC's."""
    if len(data) < MIN_SIZE:
        if data:
            yield memoryview(data)
        return
    yield from cut_buffer(data)


def read_whole(size: int, extents: Extents | None = None) -> bool:
    """Whether a file is read at once and cut with `cut_whole`: no holes, and at most
    WHOLE_FILE_BYTES."""
    return extents is None and size <= WHOLE_FILE_BYTES


def one_chunk(size: int, extents: Extents | None = None) -> bool:
    """Whether a file is at most one chunk, read at once: a small file without holes."""
    return extents is None and size < MIN_SIZE


def chunk_file(read_at: ReadAt, size: int, extents: Extents | None) -> Iterator[memoryview]:
    """The chunks of a file of `size` bytes (as its metadata says) whose data regions are
    `extents` (None: no holes). Each view is valid only until the next is yielded."""
    if one_chunk(size, extents):
        # One read of the size the metadata gave: a file that changed since is the
        # reader's to notice (its metadata after the read).
        if size:
            buffer = memoryview(bytearray(size))
            got = read_at(buffer, 0)
            if got:
                yield buffer[:got]
        return
    yield from cut_stream(ExtentReader(read_at, extents).readinto)


class ExtentReader:
    """A file's data extents back to back (the whole file if it has no holes)."""

    def __init__(self, read_at: ReadAt, extents: Extents | None):
        self._read_at = read_at
        self._extents = deque(extents) if extents is not None else None
        self._remaining = 0
        self._offset = 0

    def readinto(self, buffer: memoryview) -> int:
        if self._extents is None:
            got = self._read_at(buffer, self._offset)
            self._offset += got
            return got
        while True:
            while self._remaining == 0:
                if not self._extents:
                    return 0
                self._offset, self._remaining = self._extents.popleft()
            got = self._read_at(buffer[: min(len(buffer), self._remaining)], self._offset)
            if got:
                self._offset += got
                self._remaining -= got
                return got
            self._remaining = 0  # the file shrank while it was read: its reader will notice

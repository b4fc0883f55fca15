"""Content-defined chunking (FastCDC, via pyfastcdc's compiled implementation)."""

from __future__ import annotations

from typing import Callable, Iterator

from pyfastcdc.cy import FastCDC

# Average 1 MiB like restic; pyfastcdc's real mean is about avg + min.
MIN_SIZE = 256 * 1024
AVG_SIZE = 1024 * 1024
MAX_SIZE = 4 * 1024 * 1024

_chunker = FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, normalized_chunking=1, seed=0)


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

"""zstd compression of stored blobs; incompressible data is kept raw."""

from __future__ import annotations

import threading

import zstandard

from vml.errors import CorruptObject

LEVEL = 3
FLAG_RAW = 0
FLAG_ZSTD = 1

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    # zstandard's (de)compressor objects are not thread-safe: one per thread.
    found = getattr(_local, "compressor", None)
    if found is None:
        found = _local.compressor = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True)
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


def compress(data: bytes | memoryview) -> tuple[int, bytes]:
    """Return (flag, payload): zstd when it saves at least 1/32 of the size, raw otherwise."""
    packed = _compressor().compress(data)
    if len(packed) + (len(data) >> 5) < len(data):
        return FLAG_ZSTD, packed
    return FLAG_RAW, bytes(data)


def decompress(flag: int, payload: bytes, raw_length: int) -> bytes:
    if flag == FLAG_RAW:
        return payload
    if flag != FLAG_ZSTD:
        raise CorruptObject(f"unknown compression flag {flag}")
    try:
        return _decompressor().decompress(payload, max_output_size=raw_length)
    except zstandard.ZstdError as error:
        raise CorruptObject(f"cannot decompress a stored blob: {error}") from None

"""zstd compression of stored blobs; incompressible data is kept raw."""

from __future__ import annotations

import threading

import zstandard

from vml.errors import CorruptObject

LEVEL = 3
# Blobs smaller than this are compressed at SMALL_LEVEL: zstd's cost for a small input is mostly
# fixed (its entropy tables), its ratio there low at any level; over the runtimes tree's
# 164,000 chunks under 16 KiB, level 1 took 1.65 CPU-s against level 3's 1.97, and its packs
# grew by 3.5 MB (814 to 818 MB).
SMALL = 16 * 1024
SMALL_LEVEL = 1
FLAG_RAW = 0
FLAG_ZSTD = 1
# No blob vml writes comes near this (chunks are at most 4 MiB; a listing this large would
# describe one directory of about two million names): a larger size is a lie, not a blob.
MAX_BLOB = 256 << 20

_local = threading.local()


def _compressors() -> tuple[zstandard.ZstdCompressor, zstandard.ZstdCompressor]:
    """This thread's compressors for small blobs and for the others (zstandard's objects are
    not thread-safe: one per thread)."""
    found = getattr(_local, "compressors", None)
    if found is None:
        found = _local.compressors = (zstandard.ZstdCompressor(level=SMALL_LEVEL, write_content_size=True),
                                      zstandard.ZstdCompressor(level=LEVEL, write_content_size=True))
    return found


def _decompressor() -> zstandard.ZstdDecompressor:
    found = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


def compress(data: bytes | memoryview) -> tuple[int, bytes]:
    """Return (flag, payload): zstd when it saves at least 1/32 of the size, raw otherwise."""
    small, large = _compressors()
    packed = (small if len(data) < SMALL else large).compress(data)
    if len(packed) + (len(data) >> 5) < len(data):
        return FLAG_ZSTD, packed
    return FLAG_RAW, bytes(data)


def decompress(flag: int, payload: bytes, raw_length: int) -> bytes:
    """A blob's raw bytes, never more than its recorded `raw_length`: a frame that says it
    holds more (zstd sizes its output by the frame's own header, whatever the caller's
    limit) is refused before anything is decompressed."""
    if flag == FLAG_RAW:
        return payload
    if flag != FLAG_ZSTD:
        raise CorruptObject(f"unknown compression flag {flag}")
    if not 0 <= raw_length <= MAX_BLOB:
        raise CorruptObject(f"a stored blob claims {raw_length:,} bytes, more than any blob vml writes")
    try:
        declared = zstandard.frame_content_size(payload)
        if declared != -1 and declared != raw_length:  # -1: the frame does not say
            raise CorruptObject(f"a stored blob's zstd frame holds {declared:,} bytes, its record says {raw_length:,}")
        return _decompressor().decompress(payload, max_output_size=raw_length)
    except zstandard.ZstdError as error:
        raise CorruptObject(f"cannot decompress a stored blob: {error}") from None

"""Hash functions: BLAKE3-256 for object ids (trusted), xxh3 for checksums and cache keys (fast only)."""

from __future__ import annotations

import blake3
import xxhash

from vml.objects.ids import ObjectId


def object_id(data: bytes | memoryview) -> ObjectId:
    return ObjectId(blake3.blake3(data).digest())


class StreamingId:
    """BLAKE3 over data fed piece by piece (for ids of files too large to hold)."""

    def __init__(self) -> None:
        self._hasher = blake3.blake3()

    def update(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)

    def digest(self) -> ObjectId:
        return ObjectId(self._hasher.digest())


def file_digest(path: str | bytes) -> str:
    """BLAKE3-256 of a whole file, as 'blake3:HEX' (a base image's digest)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(path, "rb") as image:
        if image.seek(0, 2):  # an empty file cannot be mapped
            hasher.update_mmap(path)
    return "blake3:" + hasher.hexdigest()


def checksum64(data: bytes | memoryview) -> int:
    """Non-cryptographic checksum for pack and index trailers."""
    return xxhash.xxh3_64_intdigest(data)


class StreamingChecksum:
    """checksum64 over data fed piece by piece (an index file written or checked streaming)."""

    def __init__(self) -> None:
        self._hasher = xxhash.xxh3_64()

    def update(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)

    def value(self) -> int:
        return self._hasher.intdigest()


def fingerprint128(data: bytes) -> bytes:
    """Non-cryptographic fingerprint for stat-cache keys."""
    return xxhash.xxh3_128_digest(data)

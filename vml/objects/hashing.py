"""Hash functions: BLAKE3-256 for object ids (trusted), xxh3 for checksums and cache keys (fast only)."""

from __future__ import annotations

import hashlib

import blake3
import xxhash

from vml.objects.ids import ObjectId


def object_id(data: bytes | memoryview) -> ObjectId:
    return ObjectId(blake3.blake3(data).digest())


def raw_object_id(data: bytes | memoryview) -> bytes:
    """object_id's bytes, not made an ObjectId (a commit's reader hashes every chunk, and
    making each an ObjectId was 4 % of its Python)."""
    return blake3.blake3(data).digest()


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


DIGEST_LENGTHS = {"blake3": 64, "sha256": 64}  # hex digits of each digest a catalog may give


def file_digest_as(path: str, algorithm: str) -> str:
    """A whole file's digest as 'ALGORITHM:HEX', for the algorithms of DIGEST_LENGTHS (a
    catalog's images are published with SHA-256 as often as not)."""
    if algorithm == "blake3":
        return file_digest(path)
    if algorithm != "sha256":
        raise ValueError(f"no digest {algorithm!r}")
    with open(path, "rb") as image:
        return "sha256:" + hashlib.file_digest(image, "sha256").hexdigest()


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

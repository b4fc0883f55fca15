"""The files a publish found nothing in, so that the next publish of a changed tree reads
only what changed: keys of (everything the scan's answer depends on, the file's path, its
chunk ids). Local to the repository (vml/scrub-cache), never pushed; a key is a 128-bit
BLAKE3 digest, so the file says nothing about names or contents."""

from __future__ import annotations

import os

from vml.durable import write_atomically
from vml.objects.hashing import object_id
from vml.objects.manifest import Node

MAGIC = b"vml-scrub-cache 1\n"
KEY = 16


class CleanCache:
    def __init__(self, path: str | None, context: bytes):
        """`context`: the bytes of everything besides a file's path and chunks that the scan's
        answer depends on (vml's version, the rules, the homes, the allowlist); a cache made
        under another context is ignored whole."""
        self.path = path
        self.context = bytes(object_id(context))
        self.known: set[bytes] = set()
        self.seen: set[bytes] = set()  # clean files of this tree: what is saved
        if path is not None:
            self.known = self._load(path)

    def _load(self, path: str) -> set[bytes]:
        try:
            with open(path, "rb") as cache_file:
                data = cache_file.read()
        except FileNotFoundError:
            return set()
        head = len(MAGIC) + len(self.context)
        if not data.startswith(MAGIC + self.context) or (len(data) - head) % KEY:
            return set()
        return {data[i : i + KEY] for i in range(head, len(data), KEY)}

    def key(self, path: bytes, node: Node) -> bytes:
        extents = repr(node.extents).encode()
        return bytes(object_id(b"\0".join((self.context, path, node.chunks, extents, str(node.size).encode()))))[:KEY]

    def hit(self, key: bytes) -> bool:
        if key in self.known:
            self.seen.add(key)
            return True
        return False

    def add(self, key: bytes) -> None:
        self.seen.add(key)

    def save(self) -> None:
        if self.path is not None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            write_atomically(self.path, MAGIC + self.context + b"".join(sorted(self.seen)))

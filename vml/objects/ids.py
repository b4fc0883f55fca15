"""Typed object ids: 32-byte BLAKE3 digests, hex only at the edges."""

from __future__ import annotations

from vml.errors import UsageError

ID_SIZE = 32


class ObjectId(bytes):
    """The BLAKE3-256 digest of an object's raw bytes (a chunk or a manifest)."""

    __slots__ = ()

    def __new__(cls, raw: bytes) -> ObjectId:
        if len(raw) != ID_SIZE:
            raise ValueError(f"an object id is {ID_SIZE} bytes, not {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def parse(cls, text: str) -> ObjectId:
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise UsageError(f"not an object id: {text!r}") from None
        if len(raw) != ID_SIZE:
            raise UsageError(f"not an object id (needs {ID_SIZE * 2} hex digits): {text!r}")
        return cls(raw)

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"ObjectId({self.hex()[:16]}…)"

    def short(self) -> str:
        return self.hex()[:12]

"""Index files: which pack holds each blob, so opening a store reads a few files, not every pack."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vml.durable import write_atomically
from vml.errors import CorruptObject
from vml.objects.hashing import checksum64, object_id
from vml.objects.ids import ID_SIZE, ObjectId
from vml.objects.pack import TYPE_TREE, PackEntry

MAGIC_V1 = b"VMLIDX\x00\x01"
MAGIC = b"VMLIDX\x00\x02"
_HEADER_V1 = struct.Struct("<8sII")  # magic, pack count, entry count
_HEADER = struct.Struct("<8sIII")  # magic, pack count, entry count, listing entries (they come first)
_ENTRY = struct.Struct("<32sIBBIII")  # id, pack number in this file, type, flag, offset, length, raw length
_FOOTER = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class IndexFile:
    """A checked index file, its entries still packed: a reader that needs only listings
    (diff, log, show) decodes the first `tree_count` and leaves the data chunks alone."""

    name: str
    pack_ids: list[ObjectId]
    entries: memoryview
    tree_count: int  # entries [0, tree_count) are listings; in a format 1 file, every entry

    @property
    def count(self) -> int:
        return len(self.entries) // _ENTRY.size

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[bytes, int, int, int, int, int, int]]:
        """(blob id, pack number in this file, type, flag, offset, length, raw length)."""
        stop = self.count if stop is None else stop
        for record in _ENTRY.iter_unpack(self.entries[start * _ENTRY.size : stop * _ENTRY.size]):
            if record[1] >= len(self.pack_ids):
                raise CorruptObject(f"index {self.name} names a pack it does not list")
            yield record


def encode_index(packs: dict[ObjectId, list[PackEntry]]) -> bytes:
    pack_ids = sorted(packs)
    trees, data = [], []
    for pack_no, pack_id in enumerate(pack_ids):
        for e in packs[pack_id]:
            record = _ENTRY.pack(e.id, pack_no, e.blob_type, e.flag, e.offset, e.length, e.raw_length)
            (trees if e.blob_type == TYPE_TREE else data).append(record)
    body = b"".join([_HEADER.pack(MAGIC, len(pack_ids), len(trees) + len(data), len(trees)), *pack_ids, *trees, *data])
    return body + _FOOTER.pack(checksum64(body))


def write_index(index_dir: str, tmp_dir: str, packs: dict[ObjectId, list[PackEntry]]) -> str:
    data = encode_index(packs)
    path = os.path.join(index_dir, object_id(data).hex() + ".idx")
    write_atomically(path, data, mode=0o644, tmp_dir=tmp_dir)
    return path


def read_index(path: str) -> IndexFile:
    """The index file, its checksum and shape verified (its entries are decoded on demand)."""
    with open(path, "rb") as index_file:
        data = index_file.read()
    return parse_index(os.path.basename(path), data)


def parse_index(name: str, data: bytes) -> IndexFile:
    """An index file's bytes (read from anywhere), checked as `read_index` does."""
    if len(data) < _HEADER.size + _FOOTER.size:
        raise CorruptObject(f"index {name} is truncated")
    body, (stored_sum,) = data[: -_FOOTER.size], _FOOTER.unpack(data[-_FOOTER.size :])
    if checksum64(body) != stored_sum:
        raise CorruptObject(f"index {name} is damaged (checksum mismatch)")
    if body.startswith(MAGIC):
        _magic, pack_count, entry_count, tree_count = _HEADER.unpack_from(body)
        header_size = _HEADER.size
    elif body.startswith(MAGIC_V1):
        _magic, pack_count, entry_count = _HEADER_V1.unpack_from(body)
        header_size, tree_count = _HEADER_V1.size, entry_count
    else:
        raise CorruptObject(f"index {name} has an unknown format")
    entries_start = header_size + pack_count * ID_SIZE
    if len(body) != entries_start + entry_count * _ENTRY.size or tree_count > entry_count:
        raise CorruptObject(f"index {name} has the wrong length")
    pack_ids = [ObjectId(body[header_size + i * ID_SIZE : header_size + (i + 1) * ID_SIZE]) for i in range(pack_count)]
    return IndexFile(name, pack_ids, memoryview(body)[entries_start:], tree_count)


def list_index_files(index_dir: str) -> list[str]:
    return sorted(os.path.join(index_dir, n) for n in os.listdir(index_dir) if n.endswith(".idx"))



"""Index files: which pack holds each blob, so opening a store reads a few files, not every pack."""

from __future__ import annotations

import os
import struct
from typing import Iterator

from vml.errors import CorruptObject
from vml.objects.hashing import checksum64, object_id
from vml.objects.ids import ID_SIZE, ObjectId
from vml.objects.pack import PackEntry, write_file_atomically

MAGIC = b"VMLIDX\x00\x01"
_HEADER = struct.Struct("<8sII")  # magic, pack count, entry count
_ENTRY = struct.Struct("<32sIBBIII")  # id, pack number in this file, type, flag, offset, length, raw length
_FOOTER = struct.Struct("<Q")


def encode_index(packs: dict[ObjectId, list[PackEntry]]) -> bytes:
    pack_ids = sorted(packs)
    parts = [_HEADER.pack(MAGIC, len(pack_ids), sum(len(entries) for entries in packs.values()))]
    parts.extend(pack_ids)
    for pack_no, pack_id in enumerate(pack_ids):
        for e in packs[pack_id]:
            parts.append(_ENTRY.pack(e.id, pack_no, e.blob_type, e.flag, e.offset, e.length, e.raw_length))
    body = b"".join(parts)
    return body + _FOOTER.pack(checksum64(body))


def write_index(index_dir: str, tmp_dir: str, packs: dict[ObjectId, list[PackEntry]]) -> str:
    data = encode_index(packs)
    path = os.path.join(index_dir, object_id(data).hex() + ".idx")
    write_file_atomically(path, data, tmp_dir)
    return path


def read_index(path: str) -> Iterator[tuple[ObjectId, list[tuple]]]:
    """Yield (pack id, [(blob id, type, flag, offset, length, raw length), ...]) per pack."""
    with open(path, "rb") as index_file:
        data = index_file.read()
    name = os.path.basename(path)
    if len(data) < _HEADER.size + _FOOTER.size:
        raise CorruptObject(f"index {name} is truncated")
    body, (stored_sum,) = data[: -_FOOTER.size], _FOOTER.unpack(data[-_FOOTER.size :])
    if checksum64(body) != stored_sum:
        raise CorruptObject(f"index {name} is damaged (checksum mismatch)")
    magic, pack_count, entry_count = _HEADER.unpack_from(body)
    if magic != MAGIC:
        raise CorruptObject(f"index {name} has an unknown format")
    entries_start = _HEADER.size + pack_count * ID_SIZE
    if len(body) != entries_start + entry_count * _ENTRY.size:
        raise CorruptObject(f"index {name} has the wrong length")
    pack_ids = [ObjectId(body[_HEADER.size + i * ID_SIZE : _HEADER.size + (i + 1) * ID_SIZE]) for i in range(pack_count)]
    grouped: list[list[tuple]] = [[] for _ in pack_ids]
    for raw_id, pack_no, blob_type, flag, offset, length, raw_length in _ENTRY.iter_unpack(
        memoryview(body)[entries_start:]
    ):
        if pack_no >= pack_count:
            raise CorruptObject(f"index {name} names a pack it does not list")
        grouped[pack_no].append((raw_id, blob_type, flag, offset, length, raw_length))
    yield from zip(pack_ids, grouped)


def list_index_files(index_dir: str) -> list[str]:
    return sorted(os.path.join(index_dir, n) for n in os.listdir(index_dir) if n.endswith(".idx"))



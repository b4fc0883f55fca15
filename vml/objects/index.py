"""Index files: which pack holds each blob, so opening a store reads a few files, not every pack.

Format 3 (written now) is sorted by blob id with a fan-out table, like git's pack .idx: a
store opens it through mmap and finds a blob in O(log n) without decoding the file, so a
store of millions of blobs opens at once, in memory that does not grow with it.

    header    magic "VMLIDX\\0\\3", pack count (u32), fan-out bits b (u32)
    pack ids  pack count x 32 bytes, sorted
    records   one per blob in each pack (a blob two packs hold has two), sorted (by id,
              then pack): id, pack number in this file, type, flag, offset, length, raw
              length (50 bytes)
    fan-out   2**b u32s: how many records have an id whose first b bits are <= the bucket
    count     u32: how many records
    checksum  xxh3-64 of all of the above

Formats 1 and 2 (unsorted) are still read: a store loads them whole and the next write
merges them into format 3 (`merge_indexes`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import mmap
import os
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from vml.durable import PendingFile, write_atomically
from vml.errors import CorruptObject
from vml.objects.hashing import StreamingChecksum, StreamingId, checksum64, object_id
from vml.objects.ids import ID_SIZE, ObjectId
from vml.objects.pack import PackEntry

MAGIC_V1 = b"VMLIDX\x00\x01"
MAGIC_V2 = b"VMLIDX\x00\x02"
MAGIC = b"VMLIDX\x00\x03"
_HEADER_V1 = struct.Struct("<8sII")  # magic, pack count, entry count
_HEADER_V2 = struct.Struct("<8sIII")  # magic, pack count, entry count, listing entries (they come first)
_HEADER = struct.Struct("<8sII")  # magic, pack count, fan-out bits
_ENTRY = struct.Struct("<32sIBBIII")  # id, pack number in this file, type, flag, offset, length, raw length
_U32 = struct.Struct("<I")
_FOOTER = struct.Struct("<Q")
# Index files up to this size are read whole and their checksum checked when a store opens
# them (a few milliseconds); larger ones, made by merging, are mapped and checked by fsck, by
# each merge that reads them, and when a lookup in them fails (ChunkStore).
VERIFY_AT_OPEN = 16 * 1024 * 1024
Record = tuple[bytes, int, int, int, int, int, int]  # (blob id, pack number in the file, type, flag, offset, length, raw length)


def fan_bits(count: int) -> int:
    """Fan-out bits for `count` records: buckets of at most ~32 records, 16 to 65,536 of them."""
    return max(4, min(16, (count // 16).bit_length()))


@dataclass(eq=False)
class IndexFile:
    """A checked index file. `data` is its bytes (or a read-only map of them); a format 3
    file is searched in place (`find`), an older one is decoded whole (`records`)."""

    name: str
    pack_ids: list[ObjectId]
    data: bytes | mmap.mmap
    count: int
    records_start: int
    sorted: bool  # format 3: records sorted by id, with a fan-out table
    fan_start: int = 0
    shift: int = 0  # 16 - fan-out bits: a bucket is the id's first two bytes >> shift
    verified: bool = True  # its checksum was checked
    _fan: tuple[int, ...] | None = field(default=None, repr=False)  # the fan-out table, once `find` has read it

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[Record]:
        stop = self.count if stop is None else stop
        view = memoryview(self.data)[self.records_start + start * _ENTRY.size : self.records_start + stop * _ENTRY.size]
        try:
            for record in _ENTRY.iter_unpack(view):
                if record[1] >= len(self.pack_ids):
                    raise CorruptObject(f"index {self.name} names a pack it does not list")
                yield record
        finally:
            view.release()

    def find(self, blob_id: bytes) -> Record | None:
        """The record of `blob_id` in a sorted file, or None."""
        data, first, fan = self.data, self.records_start, self._fan
        if fan is None:  # (decoded once: a checkout looks up every blob of its entry)
            fan = self._fan = struct.unpack_from(f"<{1 << (16 - self.shift)}I", data, self.fan_start)
        bucket = int.from_bytes(blob_id[:2], "big") >> self.shift
        low = fan[bucket - 1] if bucket else 0
        high = min(fan[bucket], self.count)
        end = first + high * _ENTRY.size
        # A C-speed search of the bucket (~32 records); a match must start on a record.
        position = data.find(blob_id, first + low * _ENTRY.size, end)
        while position >= 0 and (position - first) % _ENTRY.size:
            position = data.find(blob_id, position + 1, end)
        if position < 0:
            return None
        record = _ENTRY.unpack_from(data, position)
        if record[1] >= len(self.pack_ids):
            raise CorruptObject(f"index {self.name} names a pack it does not list")
        return record

    def raw_records(self) -> Iterator[bytes]:
        """Each record's 50 bytes, in the file's order."""
        data, step = self.data, _ENTRY.size
        for position in range(self.records_start, self.records_start + self.count * step, step):
            yield data[position : position + step]

    def verify(self) -> None:
        """Check the checksum of a file that was mapped unchecked."""
        if not self.verified:
            body_end = len(self.data) - _FOOTER.size
            hasher = StreamingChecksum()
            for start in range(0, body_end, 8 * 1024 * 1024):
                hasher.update(self.data[start : min(start + 8 * 1024 * 1024, body_end)])
            if hasher.value() != _FOOTER.unpack_from(self.data, body_end)[0]:
                raise CorruptObject(f"index {self.name} is damaged (checksum mismatch)")
            self.verified = True


class IndexWriter:
    """Encodes a format 3 index file into `sink` from records given in id order, streaming:
    a merge of millions of records holds none of them."""

    def __init__(self, sink: BinaryIO, pack_ids: Sequence[ObjectId], expected: int):
        self._sink = sink
        self._id, self._sum = StreamingId(), StreamingChecksum()
        self.bits = fan_bits(expected)
        self._buckets = array("I", bytes(4 << self.bits))
        self._shift = 16 - self.bits
        self.count = 0
        self._last = b""
        self._write(_HEADER.pack(MAGIC, len(pack_ids), self.bits) + b"".join(pack_ids))

    def _write(self, data: bytes, *, summed: bool = True) -> None:
        self._sink.write(data)
        self._id.update(data)
        if summed:
            self._sum.update(data)

    def add(self, record: bytes) -> None:
        """A record (50 bytes) greater than the last one (in id order, then pack order)."""
        if record <= self._last:
            raise ValueError("index records must come in increasing order")
        self._last = record
        self._buckets[int.from_bytes(record[:2], "big") >> self._shift] += 1
        self.count += 1
        self._write(record)

    def finish(self) -> ObjectId:
        """Write the fan-out table and the trailer; the file's name (the hash of its bytes)."""
        cumulative = list(itertools.accumulate(self._buckets))
        self._write(struct.pack(f"<{len(cumulative)}I", *cumulative) + _U32.pack(self.count))
        self._write(_FOOTER.pack(self._sum.value()), summed=False)
        return self._id.digest()


def encode_index(packs: dict[ObjectId, list[PackEntry]]) -> bytes:
    """A format 3 index file of these packs, as bytes. One pass in C over records already in
    memory (a commit's): the fan-out by bisection, not record by record as `IndexWriter`."""
    return _encoded(*_sorted_records(packs))


class PendingIndex:
    """Packs not indexed yet, numbered in the order they came, each pack's records encoded
    as it comes: a commit adopts its reader processes' packs while it walks, and encoding the
    runtimes tree's 200,000 records when it flushed took 0.16 s after its last file was
    read. (`encode_index` numbers packs in the order of their ids; an index file may list
    them in any.)"""

    def __init__(self) -> None:
        self.packs: dict[ObjectId, int] = {}  # each pack's number in the file
        self._records: list[bytes] = []  # (the entries themselves are not kept: 19 MB of a commit's peak)

    def __bool__(self) -> bool:
        return bool(self.packs)

    def add(self, pack_id: ObjectId, entries: list[PackEntry]) -> None:
        if pack_id in self.packs:
            return
        number = self.packs[pack_id] = len(self.packs)
        self._records += [_ENTRY.pack(e.id, number, e.blob_type, e.flag, e.offset, e.length, e.raw_length) for e in entries]

    def write(self, index_dir: str, tmp_dir: str) -> IndexFile:
        """The index file of these packs, as `write_index` writes it."""
        self._records.sort()
        return _written(index_dir, tmp_dir, _encoded(list(self.packs), self._records))


def _encoded(pack_ids: list[ObjectId], records: list[bytes]) -> bytes:
    """An index file of these packs and their records (sorted, each once)."""
    bits = fan_bits(len(records))
    shift = 16 - bits
    fan = [bisect.bisect_left(records, ((bucket + 1) << shift).to_bytes(2, "big")) for bucket in range((1 << bits) - 1)]
    fan.append(len(records))
    body = b"".join([_HEADER.pack(MAGIC, len(pack_ids), bits), *pack_ids, *records,
                     struct.pack(f"<{len(fan)}I", *fan), _U32.pack(len(records))])
    return body + _FOOTER.pack(checksum64(body))


def _sorted_records(packs: dict[ObjectId, list[PackEntry]]) -> tuple[list[ObjectId], list[bytes]]:
    """The pack ids (sorted) and every blob's record in each pack, sorted. A blob two packs
    hold has a record for each: an index file is also each pack's whole table of contents
    (a remote's gc reads it so)."""
    pack_ids = sorted(packs)
    records = [_ENTRY.pack(e.id, pack_no, e.blob_type, e.flag, e.offset, e.length, e.raw_length)
               for pack_no, pack_id in enumerate(pack_ids) for e in packs[pack_id]]
    records.sort()
    return pack_ids, list(dict.fromkeys(records))  # (a pack listed twice: its records once)


def write_index(index_dir: str, tmp_dir: str, packs: dict[ObjectId, list[PackEntry]]) -> IndexFile:
    """A new index file of these packs, durable in `index_dir`, and read from the bytes it
    was written from (not read back)."""
    return _written(index_dir, tmp_dir, encode_index(packs))


def _written(index_dir: str, tmp_dir: str, data: bytes) -> IndexFile:
    name = object_id(data).hex() + ".idx"
    write_atomically(os.path.join(index_dir, name), data, mode=0o644, tmp_dir=tmp_dir)
    return parse_index(name, data, verify=False)


def _write_records(index_dir: str, tmp_dir: str, pack_ids: Sequence[ObjectId], records: Iterable[bytes], expected: int) -> str:
    pending = PendingFile(tmp_dir, "idx", mode=0o644, buffering=1024 * 1024)
    try:
        writer = IndexWriter(pending.file, pack_ids, expected)
        for record in records:
            writer.add(record)
        path = os.path.join(index_dir, writer.finish().hex() + ".idx")
        pending.commit(path)
        return path
    except BaseException:
        pending.discard()
        raise


def merge_indexes(index_dir: str, tmp_dir: str, indexes: Sequence[IndexFile]) -> str:
    """One format 3 file holding every record of `indexes` (a record two of them hold,
    once), written streaming; the inputs are checked first and left in place."""
    pack_ids = sorted({pack_id for index in indexes for pack_id in index.pack_ids})
    numbers = {pack_id: number for number, pack_id in enumerate(pack_ids)}
    runs = []
    for index in indexes:
        index.verify()
        renumber = [_U32.pack(numbers[pack_id]) for pack_id in index.pack_ids]
        runs.append(_renumbered(index, renumber))

    def unique() -> Iterator[bytes]:
        last = b""
        for record in heapq.merge(*runs):
            if record != last:
                last = record
                yield record

    return _write_records(index_dir, tmp_dir, pack_ids, unique(), sum(index.count for index in indexes))


def _renumbered(index: IndexFile, renumber: list[bytes]) -> Iterator[bytes]:
    """The file's records in id order, each with its pack number in the merged file."""
    def renumbered(record: bytes) -> bytes:
        pack_no = _U32.unpack_from(record, ID_SIZE)[0]
        if pack_no >= len(renumber):
            raise CorruptObject(f"index {index.name} names a pack it does not list")
        return record[:ID_SIZE] + renumber[pack_no] + record[ID_SIZE + 4 :]

    if index.sorted and index.pack_ids == sorted(index.pack_ids):  # then renumbering keeps the order
        return map(renumbered, index.raw_records())
    return iter(sorted(map(renumbered, index.raw_records())))


def read_index(path: str) -> IndexFile:
    """The index file, its shape verified, and its checksum unless it is larger than
    VERIFY_AT_OPEN (then it is mapped, not read)."""
    with open(path, "rb") as index_file:
        size = os.fstat(index_file.fileno()).st_size
        if size <= VERIFY_AT_OPEN:
            return parse_index(os.path.basename(path), index_file.read())
        mapped = mmap.mmap(index_file.fileno(), 0, prot=mmap.PROT_READ)
    return parse_index(os.path.basename(path), mapped, verify=False)


def parse_index(name: str, data: bytes | mmap.mmap, *, verify: bool = True) -> IndexFile:
    """An index file's bytes (read from anywhere), checked as `read_index` does."""
    size = len(data)
    if size < _HEADER_V2.size + _FOOTER.size:
        raise CorruptObject(f"index {name} is truncated")
    body_end = size - _FOOTER.size
    if verify and checksum64(memoryview(data)[:body_end]) != _FOOTER.unpack_from(data, body_end)[0]:
        raise CorruptObject(f"index {name} is damaged (checksum mismatch)")
    magic = bytes(data[:8])
    if magic == MAGIC:
        _magic, pack_count, bits = _HEADER.unpack_from(data)
        if not 4 <= bits <= 16:
            raise CorruptObject(f"index {name} has the wrong shape")
        records_start = _HEADER.size + pack_count * ID_SIZE
        count = _U32.unpack_from(data, body_end - 4)[0]
        fan_start = records_start + count * _ENTRY.size
        if fan_start + (4 << bits) + 4 != body_end:
            raise CorruptObject(f"index {name} has the wrong length")
        if _U32.unpack_from(data, fan_start + (4 << bits) - 4)[0] != count:
            raise CorruptObject(f"index {name} has a damaged fan-out table")
        index = IndexFile(name, [], data, count, records_start, True, fan_start, 16 - bits, verify)
        header_size = _HEADER.size
    elif magic in (MAGIC_V1, MAGIC_V2):
        if magic == MAGIC_V2:
            _magic, pack_count, count, _trees = _HEADER_V2.unpack_from(data)
            header_size = _HEADER_V2.size
        else:
            _magic, pack_count, count = _HEADER_V1.unpack_from(data)
            header_size = _HEADER_V1.size
        records_start = header_size + pack_count * ID_SIZE
        if records_start + count * _ENTRY.size != body_end:
            raise CorruptObject(f"index {name} has the wrong length")
        index = IndexFile(name, [], data, count, records_start, False, verified=verify)
    else:
        raise CorruptObject(f"index {name} has an unknown format")
    index.pack_ids = [ObjectId(bytes(data[header_size + i * ID_SIZE : header_size + (i + 1) * ID_SIZE])) for i in range(pack_count)]
    return index


def list_index_files(index_dir: str) -> list[str]:
    return sorted(os.path.join(index_dir, n) for n in os.listdir(index_dir) if n.endswith(".idx"))

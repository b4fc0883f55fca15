"""Chunk boundaries are a stored format: they must never change silently. And packs round trip,
and damaged bytes are detected, never returned."""

from __future__ import annotations

import io
import os
import random

import pytest
import zstandard

from vml.errors import CorruptObject, MissingObject
from vml.objects import compress as compress_module
from vml.objects.chunker import MAX_SIZE, MIN_SIZE, WHOLE_FILE_BYTES, chunk_file, cut_buffer, cut_stream, cut_whole, read_whole
from vml.objects.compress import FLAG_ZSTD, compress
from vml.objects.hashing import object_id
from vml.objects.pack import TYPE_DATA, TYPE_TREE, DamagedBlob, open_blob, pack_path
from vml.objects.store import BLOB_TYPE, LENGTH, OFFSET, PACK_NO, ChunkStore

MiB = 1024 * 1024

# Chunk lengths of random.Random(1234).randbytes(16 MiB); computed once with pyfastcdc
# (avg 1 MiB, min 256 KiB, max 4 MiB, normalized chunking 1, seed 0). If this changes,
# dedup against every existing repository breaks: do not update it casually.
GOLDEN_LENGTHS = [
    1587404, 1421755, 1160442, 1241405, 3271789, 1996844,
    1311562, 947877, 1068759, 1247231, 1080793, 441355,
]


@pytest.fixture(scope="module")
def data() -> bytes:
    return random.Random(1234).randbytes(16 * MiB)


def _lengths_buffer(data: bytes) -> list[int]:
    return [len(c) for c in cut_buffer(data)]


def _chunks_stream(data: bytes) -> list[bytes]:
    # views are valid only until the next one: copy each
    return [bytes(c) for c in cut_stream(io.BytesIO(data).readinto)]


def test_golden_boundaries(data: bytes):
    assert _lengths_buffer(data) == GOLDEN_LENGTHS
    assert sum(GOLDEN_LENGTHS) == len(data)


def test_stream_and_buffer_cut_the_same(data: bytes):
    buffered = [bytes(c) for c in cut_buffer(data)]
    streamed = _chunks_stream(data)
    assert [len(c) for c in streamed] == [len(c) for c in buffered] == GOLDEN_LENGTHS
    assert streamed == buffered
    assert b"".join(streamed) == data


def test_stream_with_short_reads_cuts_the_same(data: bytes):
    """A reader that returns fewer bytes than asked (like a pipe) must not move boundaries."""
    source = io.BytesIO(data)

    def short_readinto(buffer: memoryview) -> int:
        return source.readinto(buffer[: min(len(buffer), 100_003)])

    lengths = [len(c) for c in cut_stream(short_readinto)]
    assert lengths == GOLDEN_LENGTHS


def test_chunk_size_bounds(data: bytes):
    lengths = _lengths_buffer(data)
    assert all(MIN_SIZE <= n <= MAX_SIZE for n in lengths[:-1])
    assert 0 < lengths[-1] <= MAX_SIZE
    # all zeros has no content-defined cut points: every chunk is the maximum
    zeros = _lengths_buffer(bytes(10 * MiB))
    assert zeros == [MAX_SIZE, MAX_SIZE, 10 * MiB - 2 * MAX_SIZE]
    # small inputs are one chunk; empty input none
    assert _lengths_buffer(b"x" * 1000) == [1000]
    assert _lengths_buffer(b"") == []
    assert [len(c) for c in cut_stream(io.BytesIO(b"").readinto)] == []


def test_insertion_changes_only_nearby_chunks(data: bytes):
    middle = len(data) // 2
    edited = data[:middle] + random.Random(99).randbytes(100) + data[middle:]
    before = [object_id(c) for c in cut_buffer(data)]
    after = [object_id(c) for c in cut_buffer(edited)]
    shared = set(before) & set(after)
    assert len(shared) >= len(before) - 2, (len(before), len(after), len(shared))
    # the chunks before the edit are the same, in order, and so are those after it
    prefix = 0
    while before[prefix] == after[prefix]:
        prefix += 1
    suffix = 0
    while before[-1 - suffix] == after[-1 - suffix]:
        suffix += 1
    assert prefix + suffix >= len(before) - 2
    assert sum(GOLDEN_LENGTHS[:prefix]) <= middle  # the first changed chunk contains the edit


def _read_at(data: bytes, most: int = 100_003):
    """Positioned reads of `data`; more than `most` bytes take several."""

    def read_at(buffer: memoryview, offset: int) -> int:
        piece = data[offset : offset + min(len(buffer), most)]
        buffer[: len(piece)] = piece
        return len(piece)

    return read_at


def test_chunk_file_small_file_is_one_chunk_large_file_is_cut(data: bytes):
    small = data[: MIN_SIZE - 1]
    assert [bytes(c) for c in chunk_file(_read_at(small, MIN_SIZE), len(small), None)] == [small]
    assert list(chunk_file(_read_at(b""), 0, None)) == []
    assert [len(c) for c in chunk_file(_read_at(data), len(data), None)] == GOLDEN_LENGTHS
    # a small file that shrank before its one read: what is there (its reader sees the change)
    assert [bytes(c) for c in chunk_file(_read_at(b"abc"), 10, None)] == [b"abc"]


def test_a_file_read_whole_is_cut_as_chunk_file_cuts_it(data: bytes):
    """cut_whole (a file read at once) and chunk_file (a file read as it is cut) give the same
    chunks, whatever the size: empty, one chunk, a few, and the largest read whole."""
    largest = (data * (WHOLE_FILE_BYTES // len(data) + 1))[:WHOLE_FILE_BYTES]
    for content in (b"", b"x", data[: MIN_SIZE - 1], data[:MIN_SIZE], data[: MIN_SIZE + 1], data[: 3 * MiB], data, largest):
        whole = [bytes(c) for c in cut_whole(content)]
        assert whole == [bytes(c) for c in chunk_file(_read_at(content, MIN_SIZE), len(content), None)]
        assert b"".join(whole) == content
    assert len(list(cut_whole(largest))) > 2
    assert read_whole(WHOLE_FILE_BYTES) and not read_whole(WHOLE_FILE_BYTES + 1)
    assert not read_whole(10, ((0, 1),))  # a file with holes is read by its extents


def test_chunk_file_reads_only_the_data_extents_of_a_sparse_file(data: bytes):
    """A file with holes is cut over its data extents back to back, however small it is."""
    extents = ((MiB, 5 * MiB), (8 * MiB, 3 * MiB), (15 * MiB, MiB))
    sparse = bytearray(16 * MiB)
    for offset, length in extents:
        sparse[offset : offset + length] = data[offset : offset + length]
    chunks = [bytes(c) for c in chunk_file(_read_at(bytes(sparse)), len(sparse), extents)]
    assert chunks == [bytes(c) for c in cut_buffer(b"".join(data[o : o + n] for o, n in extents))]
    assert [bytes(c) for c in chunk_file(_read_at(b"x" * 10), 10, ((0, 1), (5, 1)))] == [b"xx"]
    # shrunk while read: the extents past its end give nothing
    assert [bytes(c) for c in chunk_file(_read_at(bytes(sparse[: 9 * MiB])), len(sparse), extents)] == [
        bytes(c) for c in cut_buffer(data[MiB : 6 * MiB] + data[8 * MiB : 9 * MiB])
    ]


# -- packs and the store


def _new_store(root) -> ChunkStore:
    ChunkStore.create(str(root))
    return ChunkStore(str(root)).open()


def test_store_round_trip_across_reopen(tmp_path):
    rng = random.Random(7)
    blobs = [rng.randbytes(n) for n in (0, 1, 100, 64 * 1024, 3 * MiB)] + [b"a" * MiB, b"tree-ish"]
    store = _new_store(tmp_path / "store")
    ids = [store.put(b, TYPE_TREE if b == b"tree-ish" else TYPE_DATA) for b in blobs]
    assert ids == [object_id(b) for b in blobs]
    assert store.get(ids[2]) == blobs[2]  # readable before flush (from the open pack)
    assert store.put(blobs[3]) == ids[3]  # a duplicate is not stored twice
    store.flush()
    assert len(dict(store.items())) == len(blobs)
    store.close()

    reopened = ChunkStore(str(tmp_path / "store")).open()
    assert reopened.problems == []
    for blob_id, blob in zip(ids, blobs):
        assert blob_id in reopened
        assert reopened.get(blob_id) == blob
    assert reopened.location(ids[-1])[BLOB_TYPE] == TYPE_TREE
    assert reopened.location(ids[0])[BLOB_TYPE] == TYPE_DATA
    # compressible data is stored compressed
    assert reopened.stored_size(ids[5]) < MiB // 10
    with pytest.raises(MissingObject):
        reopened.get(object_id(b"never stored"))
    reopened.close()


def test_packs_without_index_are_recovered(tmp_path):
    store = _new_store(tmp_path / "store")
    blob_id = store.put(b"survives a crash before the index" * 100)
    store.flush_pack()  # the pack is durable, the index is not written
    store.close()
    assert os.listdir(tmp_path / "store" / "index") == []
    reopened = ChunkStore(str(tmp_path / "store")).open()
    assert reopened.get(blob_id) == b"survives a crash before the index" * 100
    reopened.close()


@pytest.mark.parametrize("compressible", [True, False])
def test_flipped_bytes_raise_corrupt_object(tmp_path, compressible: bool):
    blob = (b"compressible text " * 20000) if compressible else random.Random(3).randbytes(200_000)
    other = random.Random(4).randbytes(50_000)
    store = _new_store(tmp_path / "store")
    blob_id = store.put(blob)
    other_id = store.put(other)
    store.flush()
    location = store.location(blob_id)
    path = pack_path(store.packs_dir, store.pack_ids[location[PACK_NO]])
    store.close()

    with open(path, "r+b") as pack:
        for where in (location[OFFSET] + location[LENGTH] // 2, location[OFFSET] + location[LENGTH] - 1):
            pack.seek(where)
            byte = pack.read(1)
            pack.seek(where)
            pack.write(bytes([byte[0] ^ 0xFF]))

    reopened = ChunkStore(str(tmp_path / "store")).open()
    with pytest.raises(CorruptObject):
        reopened.get(blob_id)
    assert reopened.get(other_id) == other  # the neighbour is intact
    reopened.close()


def test_truncated_pack_raises_corrupt_object(tmp_path):
    store = _new_store(tmp_path / "store")
    blob_id = store.put(random.Random(5).randbytes(100_000))
    store.flush()
    location = store.location(blob_id)
    path = pack_path(store.packs_dir, store.pack_ids[location[PACK_NO]])
    store.close()
    os.truncate(path, location[OFFSET] + location[LENGTH] // 2)
    reopened = ChunkStore(str(tmp_path / "store")).open()
    with pytest.raises(CorruptObject):
        reopened.get(blob_id)
    reopened.close()


def test_damaged_index_falls_back_to_pack_tables(tmp_path):
    store = _new_store(tmp_path / "store")
    blob_id = store.put(b"indexed" * 1000)
    store.flush()
    store.close()
    index_dir = tmp_path / "store" / "index"
    [index_file] = os.listdir(index_dir)
    raw = bytearray((index_dir / index_file).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (index_dir / index_file).write_bytes(bytes(raw))
    reopened = ChunkStore(str(tmp_path / "store")).open()
    assert reopened.problems  # the damage is reported
    assert reopened.get(blob_id) == b"indexed" * 1000  # and the data still found via the pack's table
    reopened.close()


def test_open_blob_returns_only_the_blob_its_id_names():
    blob = b"stored text " * 1000
    flag, payload = compress(blob)
    assert flag == FLAG_ZSTD and open_blob(object_id(blob), flag, payload, len(blob)) == blob
    with pytest.raises(DamagedBlob):
        open_blob(object_id(b"another blob"), flag, payload, len(blob))
    with pytest.raises(CorruptObject) as lying:  # a frame that holds more than its record says
        open_blob(object_id(blob), flag, payload, len(blob) - 1)
    assert not isinstance(lying.value, DamagedBlob)


def test_small_blobs_are_compressed_at_the_small_level_and_all_read_back():
    """Under compress.SMALL bytes a blob is compressed at SMALL_LEVEL, from it at LEVEL (the
    same frames zstd makes at those levels), and each reads back whole."""
    text = b"".join(b"line %d of a source file, with words repeated\n" % i for i in range(2000))
    for blob in (text[: compress_module.SMALL - 1], text[: compress_module.SMALL], text):
        level = compress_module.SMALL_LEVEL if len(blob) < compress_module.SMALL else compress_module.LEVEL
        flag, payload = compress(blob)
        assert flag == FLAG_ZSTD
        assert payload == zstandard.ZstdCompressor(level=level, write_content_size=True).compress(blob)
        assert open_blob(object_id(blob), flag, payload, len(blob)) == blob
    assert compress_module.SMALL_LEVEL != compress_module.LEVEL

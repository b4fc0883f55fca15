"""Index files: listings first and decoded at open, data chunks decoded on the first lookup
that needs them; format 1 files still read; a damaged entry falls back to the pack tables."""

from __future__ import annotations

import os
import random
import struct

from vml.objects.hashing import checksum64
from vml.objects.index import _ENTRY, MAGIC_V1, list_index_files
from vml.objects.pack import TYPE_DATA, TYPE_TREE
from vml.objects.store import ChunkStore


def make_store(tmp_path) -> tuple[str, list[bytes], list[bytes]]:
    root = str(tmp_path / "store")
    ChunkStore.create(root)
    store = ChunkStore(root).open()
    rng = random.Random(3)
    data = [store.put(rng.randbytes(3000 + i), TYPE_DATA) for i in range(40)]
    trees = [store.put(b"listing %d" % i, TYPE_TREE) for i in range(5)]
    store.flush()
    store.close()
    return root, data, trees


def test_listing_lookups_leave_the_data_entries_undecoded(tmp_path):
    root, data, trees = make_store(tmp_path)
    store = ChunkStore(root).open()
    assert [store.get(t) for t in trees] == [b"listing %d" % i for i in range(5)]
    assert store._deferred, "reading listings decoded the data-chunk entries"
    assert len(store._locations) == len(trees)
    assert all(blob in store for blob in data)
    assert not store._deferred and len(store) == len(data) + len(trees)


def test_format_1_index_is_still_read(tmp_path):
    root, data, trees = make_store(tmp_path)
    (path,) = list_index_files(os.path.join(root, "index"))
    with open(path, "rb") as index_file:
        body = index_file.read()[:-8]
    magic, packs, count, _trees = struct.unpack_from("<8sIII", body)
    old = struct.pack("<8sII", MAGIC_V1, packs, count) + body[struct.calcsize("<8sIII") :]
    with open(path, "wb") as index_file:
        index_file.write(old + struct.pack("<Q", checksum64(old)))
    store = ChunkStore(root).open()
    assert not store._deferred and not store.problems
    assert all(store.get(blob) for blob in data + trees)


def test_bad_data_entry_falls_back_to_the_pack_tables(tmp_path):
    root, data, trees = make_store(tmp_path)
    (path,) = list_index_files(os.path.join(root, "index"))
    with open(path, "rb") as index_file:
        body = bytearray(index_file.read()[:-8])
    packs = struct.unpack_from("<8sIII", body)[1]
    last = len(body) - _ENTRY.size  # a data entry: listings come first
    struct.pack_into("<I", body, last + 32, packs + 7)  # names a pack the file does not list
    with open(path, "wb") as index_file:
        index_file.write(bytes(body) + struct.pack("<Q", checksum64(bytes(body))))
    store = ChunkStore(root).open()
    assert not store.problems  # nothing decoded yet that could tell
    assert all(store.get(blob) for blob in data + trees)
    assert any("names a pack it does not list" in p.message and p.recovered for p in store.problems)

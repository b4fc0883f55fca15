"""Index files: sorted, with a fan-out table, searched where they lie (a store decodes none of
their records when it opens); small files merged as they accumulate; formats 1 and 2 still
read and merged away by the next write; damage falls back to the pack tables."""

from __future__ import annotations

import os
import random
import struct

import pytest

from vml.errors import MissingObject
from vml.objects import index as index_module
from vml.objects.hashing import checksum64, object_id
from vml.objects.ids import ObjectId
from vml.objects.index import _ENTRY, MAGIC_V1, MAGIC_V2, PendingIndex, list_index_files, parse_index, read_index, write_index
from vml.objects.pack import TYPE_DATA, TYPE_TREE, PackEntry
from vml.objects.store import ChunkStore


def make_store(tmp_path, count: int = 40) -> tuple[str, list[bytes], list[bytes]]:
    root = str(tmp_path / "store")
    ChunkStore.create(root)
    store = ChunkStore(root).open()
    rng = random.Random(3)
    data = [store.put(rng.randbytes(3000 + i), TYPE_DATA) for i in range(count)]
    trees = [store.put(b"listing %d" % i, TYPE_TREE) for i in range(5)]
    store.flush()
    store.close()
    return root, data, trees


def test_open_decodes_no_record_and_finds_every_blob(tmp_path):
    root, data, trees = make_store(tmp_path, 300)
    store = ChunkStore(root).open()
    assert not store._locations, "opening the store decoded index records"
    assert [store.get(t) for t in trees] == [b"listing %d" % i for i in range(5)]
    assert all(blob in store for blob in data)
    assert object_id(b"absent") not in store
    assert not store._locations  # lookups read the file in place
    assert len(dict(store.items())) == len(data) + len(trees)


def test_records_are_sorted_and_the_fan_out_counts_them(tmp_path):
    root, data, trees = make_store(tmp_path, 300)
    (path,) = list_index_files(os.path.join(root, "index"))
    index = read_index(path)
    ids = [record[0] for record in index.records()]
    assert ids == sorted(data + trees) and index.sorted and index.count == len(ids)
    # Every bucket's count agrees with the ids' first bits.
    bits = 16 - index.shift
    for bucket in range(1 << bits):
        (cumulative,) = struct.unpack_from("<I", index.data, index.fan_start + 4 * bucket)
        assert cumulative == sum(1 for blob in ids if int.from_bytes(blob[:2], "big") >> index.shift <= bucket)


def test_a_pending_index_writes_what_write_index_writes(tmp_path):
    """Packs indexed as they come (PendingIndex, a commit's) give the records write_index
    gives, whatever order the packs came in, and a pack that comes twice is indexed once."""
    rng = random.Random(5)
    packs = {ObjectId(rng.randbytes(32)): [PackEntry(ObjectId(rng.randbytes(32)), TYPE_DATA, 1, 8 + 100 * i, 100, 300) for i in range(n)]
             for n in (50, 1, 200, 7)}
    shared = ObjectId(rng.randbytes(32))  # a blob two packs hold: a record for each
    for entries in list(packs.values())[:2]:
        entries.append(PackEntry(shared, TYPE_TREE, 0, 9000, 10, 10))
    for directory in ("a", "b", "tmp"):
        (tmp_path / directory).mkdir()
    pending = PendingIndex()
    assert not pending
    for pack_id in reversed(list(packs)):
        pending.add(pack_id, packs[pack_id])
    pending.add(next(iter(packs)), packs[next(iter(packs))])
    written = pending.write(str(tmp_path / "a"), str(tmp_path / "tmp"))
    expected = write_index(str(tmp_path / "b"), str(tmp_path / "tmp"), packs)

    def located(index) -> list[tuple]:
        return [(blob_id, index.pack_ids[pack_no], rest) for blob_id, pack_no, *rest in index.records()]

    reread = read_index(os.path.join(tmp_path / "a", written.name))
    assert reread.sorted and reread.count == expected.count == sum(map(len, packs.values()))
    assert sorted(located(reread)) == sorted(located(expected))
    assert [record[0] for record in reread.records()] == sorted(record[0] for record in reread.records())
    assert set(reread.pack_ids) == set(packs) and len(reread.pack_ids) == len(packs)


def _commit(root: str, count: int, seed: int) -> list[bytes]:
    store = ChunkStore(root).open()
    rng = random.Random(seed)
    ids = [store.put(rng.randbytes(200)) for _ in range(count)]
    store.flush()
    store.close()
    return ids


def test_small_index_files_are_merged_as_they_accumulate(tmp_path):
    root, data, trees = make_store(tmp_path, 400)
    everything = data + trees
    counts = []
    for seed in range(40):
        everything += _commit(root, 10, seed + 100)
        counts.append(len(list_index_files(os.path.join(root, "index"))))
    # Geometric merging: never more files than log2 of the blobs, and the big one kept.
    assert max(counts) <= 8, counts
    indexes = [read_index(path) for path in list_index_files(os.path.join(root, "index"))]
    assert sum(index.count for index in indexes) == len(set(everything))
    assert any(index.count >= 405 for index in indexes)
    store = ChunkStore(root).open()
    assert all(store.get(blob) for blob in everything)
    assert not store.problems
    store.close()


def test_merge_keeps_one_record_per_blob_from_overlapping_files(tmp_path):
    root, data, trees = make_store(tmp_path, 50)
    index_dir = os.path.join(root, "index")
    (path,) = list_index_files(index_dir)
    original = read_index(path)
    # A second file naming the same pack (as a crash between two writes can leave).
    twin = index_module.encode_index({original.pack_ids[0]: [
        PackEntry(ObjectId(r[0]), r[2], r[3], r[4], r[5], r[6]) for r in original.records()][:20]})
    with open(os.path.join(index_dir, object_id(twin).hex() + ".idx"), "wb") as out:
        out.write(twin)
    merged = read_index(index_module.merge_indexes(index_dir, os.path.join(root, "tmp"),
                                                   [original, parse_index("twin", twin)]))
    assert [r[0] for r in merged.records()] == [r[0] for r in original.records()]


@pytest.mark.parametrize("magic", [MAGIC_V1, MAGIC_V2])
def test_older_formats_are_read_then_merged_away(tmp_path, magic):
    root, data, trees = make_store(tmp_path)
    (path,) = list_index_files(os.path.join(root, "index"))
    index = read_index(path)
    raw = list(index.raw_records())
    records = b"".join(raw[len(raw) // 2 :] + raw[: len(raw) // 2])  # unsorted, as they were
    header = (struct.pack("<8sII", magic, 1, index.count) if magic == MAGIC_V1
              else struct.pack("<8sIII", magic, 1, index.count, 0))
    old = header + b"".join(index.pack_ids) + records
    os.unlink(path)
    with open(os.path.join(root, "index", "old.idx"), "wb") as index_file:
        index_file.write(old + struct.pack("<Q", checksum64(old)))
    store = ChunkStore(root).open()
    assert not store.problems
    assert all(store.get(blob) for blob in data + trees)
    extra = store.put(b"one more")
    store.flush()  # the next write merges the old file into a sorted one
    store.close()
    files = list_index_files(os.path.join(root, "index"))
    assert all(read_index(p).sorted for p in files) and not any(p.endswith("old.idx") for p in files)
    store = ChunkStore(root).open()
    assert all(store.get(blob) for blob in data + trees + [extra]) and not store._locations
    store.close()


def test_bad_record_falls_back_to_the_pack_tables(tmp_path):
    root, data, trees = make_store(tmp_path)
    (path,) = list_index_files(os.path.join(root, "index"))
    index = read_index(path)
    body = bytearray(index.data[:-8])
    struct.pack_into("<I", body, index.records_start + 3 * _ENTRY.size + 32, 7)  # names a pack the file does not list
    with open(path, "wb") as index_file:
        index_file.write(bytes(body) + struct.pack("<Q", checksum64(bytes(body))))
    store = ChunkStore(root).open()
    assert not store.problems  # nothing looked up yet that could tell
    assert all(store.get(blob) for blob in data + trees)
    assert any("names a pack it does not list" in p.message and p.recovered for p in store.problems)


def test_large_index_is_mapped_unchecked_and_damage_found_at_the_first_failed_read(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "VERIFY_AT_OPEN", 0)  # every file counts as large
    root, data, trees = make_store(tmp_path, 100)
    (path,) = list_index_files(os.path.join(root, "index"))
    index = read_index(path)
    assert not index.verified and not isinstance(index.data, bytes)
    # Damage one id in the file: that blob cannot be found through it any more.
    position = next(index.records_start + n * _ENTRY.size for n, r in enumerate(index.records()) if r[0] == data[7])
    with open(path, "r+b") as index_file:
        index_file.seek(position)
        index_file.write(b"\xff" * 4)
    store = ChunkStore(root).open()
    assert not store.problems
    assert store.get(data[7])  # found after all: the sum is checked, the pack tables stand in
    assert any("checksum mismatch" in p.message and p.recovered for p in store.problems)
    with pytest.raises(MissingObject):
        store.get(object_id(b"never stored"))
    store.close()


def test_a_merge_that_fails_leaves_the_commit_durable(tmp_path, monkeypatch):
    root, data, trees = make_store(tmp_path, 40)  # one index file of 45 records

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vml.objects.store.merge_indexes", full_disk)
    store = ChunkStore(root).open()
    rng = random.Random(9)
    more = [store.put(rng.randbytes(100)) for _ in range(50)]
    extra = store.put(b"saved though the merge failed")
    store.flush()  # a second file of 51: the two would merge; the new one is durable all the same
    assert any("not merged" in p.message for p in store.problems)
    store.close()
    monkeypatch.undo()
    store = ChunkStore(root).open()
    assert store.get(extra) == b"saved though the merge failed" and all(store.get(blob) for blob in data + trees + more)
    assert len(list_index_files(os.path.join(root, "index"))) == 2
    store.close()


def test_a_pack_write_that_fails_is_never_finished(tmp_path, monkeypatch):
    """A write of the open pack that fails (a full disk: injected once, the bytes lost) drops
    that pack and what it held; the adds after it start another pack, and every pack made
    durable reads whole. Before, the next adds went on into the same pack, and once the disk
    had room again it was finished with a table naming bytes it never got ("lists a blob
    outside its data": seen in CI)."""
    import errno

    from vml.objects import pack as pack_module
    from vml.objects.pack import TARGET_SIZE, read_table

    ChunkStore.create(str(tmp_path / "store"))
    store = ChunkStore(str(tmp_path / "store")).open()
    writes = {"count": 0}
    write_run = pack_module.PackWriter._write_run

    def failing_once(writer):
        writes["count"] += 1
        if writes["count"] == 2:  # (the first is the magic's run at a pack's start)
            writer._run, writer._run_size = [], 0
            raise OSError(errno.ENOSPC, "No space left on device")
        write_run(writer)

    monkeypatch.setattr(pack_module.PackWriter, "_write_run", failing_once)
    rng = random.Random(5)
    blobs = [rng.randbytes(256 * 1024) for _number in range(3 * TARGET_SIZE // (256 * 1024))]
    failed = 0
    for data in blobs:
        try:
            store.add(object_id(data), TYPE_DATA, 0, data, len(data))
        except OSError:
            failed += 1
    store.flush()
    assert failed == 1
    packs = [os.path.join(root, name) for root, _dirs, names in os.walk(tmp_path / "store") for name in names if name.endswith(".pack")]
    assert len(packs) >= 2
    for path in packs:
        read_table(path)  # (raises on a table naming bytes the pack lacks)
    stored = [data for data in blobs if object_id(data) in store]
    assert 0 < len(stored) < len(blobs)  # the lost pack's blobs are not claimed
    assert all(store.get(object_id(data)) == data for data in stored)
    store.close()


def test_a_pack_writer_that_lost_a_write_never_finishes(tmp_path):
    """Whoever holds a PackWriter (gc, push, a reader process): once a write of it failed,
    every later write and `finish` fail too, and no pack appears."""
    import errno

    from vml.objects.pack import PackWriter

    writer = PackWriter(str(tmp_path))
    real_write = writer._pending.file.write
    calls = []

    def full_once(data):
        calls.append(len(data))
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(data)

    writer._pending.file.write = full_once  # type: ignore[method-assign]
    data = random.Random(3).randbytes(2 * 1024 * 1024)
    with pytest.raises(OSError):
        writer.add(object_id(data), TYPE_DATA, 0, data, len(data))
    small = b"after the disk had room again"
    writer.add(object_id(small), TYPE_DATA, 0, small, len(small))  # (kept in memory: no write yet)
    with pytest.raises(OSError, match="failed before"):
        writer.finish(str(tmp_path / "packs"))
    writer.abandon()
    assert len(calls) == 1 and not (tmp_path / "packs").exists()
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".pack")]

"""A store with a source (a server's replica of a bucket): what it lacks is read from the
source, checked against its id; a blob read alone is kept, a copy out for a transfer is
not; a damaged payload is refused and nothing of it kept. The source here is a real
repository read through a real transport, as a server reads its bucket."""

from __future__ import annotations

import os
import random

import pytest

from vml.errors import CorruptObject, MissingObject
from vml.exchange.remote import RemoteRepository, RemoteSource
from vml.objects.pack import TYPE_DATA, TYPE_TREE, read_table
from vml.objects.store import ChunkStore
from vml.repo import Repository
from vml.transport.base import open_transport


@pytest.fixture
def origin(tmp_path):
    """A repository holding 30 data chunks and 3 listings, and a source reading it."""
    repo = Repository.init(str(tmp_path / "origin"), bare=True)
    rng = random.Random(7)
    chunks = {}
    for i in range(30):
        data = rng.randbytes(20_000 + i)
        chunks[repo.store.put(data, TYPE_DATA)] = data
    listings = {}
    for i in range(3):
        data = b"listing %d" % i
        listings[repo.store.put(data, TYPE_TREE)] = data
    repo.store.flush()
    repo.close()
    remote = RemoteRepository(open_transport(str(tmp_path / "origin")))
    yield RemoteSource(remote), chunks, listings, tmp_path / "origin"
    remote.close()


def cache(tmp_path, source) -> ChunkStore:
    root = str(tmp_path / "cache")
    ChunkStore.create(root)
    return ChunkStore(root, source=source).open()


def test_a_blob_read_alone_comes_from_the_source_and_is_kept(tmp_path, origin):
    source, chunks, listings, _path = origin
    store = cache(tmp_path, source)
    listing_id, data = next(iter(listings.items()))
    assert listing_id in store and not store.holds(listing_id)
    assert store.raw_size(listing_id) == len(data)
    assert store.get(listing_id) == data
    assert store.get(listing_id) == data  # a second read: from this store's own pack
    store.close()
    again = ChunkStore(str(tmp_path / "cache")).open()  # no source: what was kept is here
    assert again.holds(listing_id) and again.get(listing_id) == data
    assert not any(again.holds(chunk_id) for chunk_id in chunks)
    again.close()


def test_a_copy_out_mixes_own_and_source_blobs_in_order_and_keeps_none(tmp_path, origin):
    source, chunks, _listings, _path = origin
    store = cache(tmp_path, source)
    own = store.put(b"only here" * 1000, TYPE_DATA)
    store.flush()
    wanted = [*list(chunks)[:10], own, *list(chunks)[10:]]
    out = tmp_path / "out"
    out.mkdir()
    copied = [entry for _pack_id, path, _entries in store.copy_to_packs(wanted, str(out)) for entry in read_table(path)]
    assert [entry.id for entry in copied] == wanted
    store.close()
    packs = [name for _dir, _dirs, names in os.walk(tmp_path / "cache" / "packs") for name in names]
    assert len(packs) == 1  # only the blob put here: the chunks went out, not in


def test_damage_in_the_source_is_refused_and_not_kept(tmp_path, origin):
    source, chunks, _listings, path = origin
    chunk_id = next(iter(chunks))
    found = source.locate(chunk_id)
    assert found is not None
    where = source.remote.blobs()[chunk_id]
    pack = next(path.rglob(f"{where.pack.hex()}.pack"))
    with open(pack, "r+b") as damaged:
        damaged.seek(where.offset + where.length // 2)
        byte = damaged.read(1)
        damaged.seek(-1, os.SEEK_CUR)
        damaged.write(bytes([byte[0] ^ 0xFF]))
    store = cache(tmp_path, source)
    with pytest.raises(CorruptObject, match="damaged"):
        store.get(chunk_id)
    with pytest.raises(CorruptObject, match="damaged"):
        list(store.copy_to_packs([chunk_id], str(tmp_path)))
    store.close()
    assert not ChunkStore(str(tmp_path / "cache")).open().holds(chunk_id)


def test_a_blob_neither_holds_is_missing(tmp_path, origin):
    source, _chunks, _listings, _path = origin
    store = cache(tmp_path, source)
    absent = bytes(32)
    assert absent not in store
    with pytest.raises(MissingObject):
        store.get(absent)
    with pytest.raises(MissingObject):
        store.stored_size(absent)
    with pytest.raises(MissingObject):
        list(store.copy_to_packs([absent], str(tmp_path)))
    store.close()

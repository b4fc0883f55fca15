"""Where a capture's chunks and listings go: into the store, or, in a dry run (a status, a
diff), nowhere; a dry run hashes them only and keeps the new listings in memory, where the
diff walks them."""

from __future__ import annotations

from vml.objects.hashing import object_id
from vml.objects.ids import ObjectId
from vml.objects.pack import TYPE_DATA, TYPE_TREE
from vml.objects.store import ChunkStore


class StoreSink:
    """Puts each chunk and listing the store lacks into it; thread-safe (workers put chunks)."""

    def __init__(self, store: ChunkStore):
        self.store = store
        self.listings: dict[bytes, bytes] = {}  # none: they are in the store

    def chunk(self, data: bytes | memoryview) -> ObjectId:
        return self.store.put(data, TYPE_DATA)

    def listing(self, data: bytes) -> ObjectId:
        return self.store.put(data, TYPE_TREE)


class DryRunSink:
    """Stores nothing: a chunk's id only, and each listing the store lacks kept by id."""

    def __init__(self, store: ChunkStore):
        self.store = store
        self.listings: dict[bytes, bytes] = {}

    def chunk(self, data: bytes | memoryview) -> ObjectId:
        return object_id(data)

    def listing(self, data: bytes) -> ObjectId:
        listing_id = object_id(data)
        if listing_id not in self.store:
            self.listings[listing_id] = data
        return listing_id


Sink = StoreSink | DryRunSink


def open_sink(store: ChunkStore, dry_run: bool) -> Sink:
    return DryRunSink(store) if dry_run else StoreSink(store)

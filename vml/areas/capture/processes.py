"""Reader processes of a large capture (vml/workers.py): each is given batches of files by
path and stat, reads and cuts them as a reading thread would (local.py: read_content),
hashes each chunk, and compresses those neither the store (opened read-only, as it was when
the reader started) nor this reader has met; the capture's own process adds them to the
store, where a chunk another reader sent as well is skipped."""

from __future__ import annotations

import os
from concurrent.futures import Future

from vml.areas.capture.local import FileContent, read_content
from vml.objects import compress as compression
from vml.objects.hashing import object_id
from vml.objects.pack import TYPE_DATA
from vml.objects.store import ChunkStore
from vml.workers import FILE_COST, Handler, Workers, then

Blob = tuple[bytes, int, bytes, int]  # id, compression flag, payload, raw length


class ReaderProcesses:
    """`submit` hands a batch of (path, stat) to a reader and gives a Future of the files'
    contents, once the chunks it found new are in `store`."""

    def __init__(self, store: ChunkStore, count: int):
        self._store = store
        self._workers = Workers(f"{__name__}:reader", store.root, count, role="reader process of the commit")

    def submit(self, batch: list[tuple[bytes, os.stat_result]]) -> Future:
        work = sum(st.st_size for _path, st in batch) + FILE_COST * len(batch)
        return then(self._workers.submit(batch, weight=work), self._store_blobs)

    def _store_blobs(self, answer: tuple[list[FileContent], list[Blob]]) -> list[FileContent]:
        contents, blobs = answer
        for blob_id, flag, payload, raw_length in blobs:
            self._store.add(blob_id, TYPE_DATA, flag, payload, raw_length)
        return contents

    def close(self, *, kill: bool = False) -> None:
        self._workers.close(kill=kill)


def reader(store_root: str) -> Handler:
    store = ChunkStore(store_root).open()
    met: set[bytes] = set()  # chunks this reader has sent (the store has them by now, or will)

    def read(batch: list[tuple[bytes, os.stat_result]], _descriptors: list[int]) -> tuple[list[FileContent], list[Blob]]:
        blobs: list[Blob] = []
        new: set[bytes] = set()

        def chunk(data: memoryview) -> bytes:
            blob_id = object_id(data)
            if blob_id not in new and blob_id not in met and blob_id not in store:
                flag, payload = compression.compress(data)
                blobs.append((blob_id, flag, payload, len(data)))
                new.add(blob_id)
            return blob_id

        contents = [read_content(path, st, chunk) for path, st in batch]
        met.update(new)  # (only once sent: a batch that fails sends none of its chunks)
        return contents, blobs

    return read

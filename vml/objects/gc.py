"""Removing what no entry reaches: packs with no live blob are deleted, packs with some
dead blobs are rewritten with only their live ones (copied as stored, not recompressed).

Order: new packs, then one new index covering every kept pack, then the old index files,
then the old packs. A crash at any point leaves every live blob reachable through some
index or pack table. The caller holds the repository's exclusive lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from vml.durable import is_temp_name
from vml.errors import CorruptObject
from vml.objects.ids import ObjectId
from vml.objects.index import list_index_files, write_index
from vml.objects.pack import TARGET_SIZE, PackEntry, PackWriter, read_table
from vml.objects.store import ChunkStore


@dataclass(slots=True)
class GcStats:
    bytes_before: int = 0
    bytes_after: int = 0
    packs_before: int = 0
    packs_after: int = 0
    packs_deleted: int = 0
    packs_rewritten: int = 0
    blobs_removed: int = 0
    temp_files_removed: int = 0

    @property
    def bytes_freed(self) -> int:
        return self.bytes_before - self.bytes_after


def _store_size(store: ChunkStore) -> int:
    """Packs, index files and temp files (a killed commit's half-written pack counts as freed)."""
    total = sum(os.path.getsize(p) for p in store.list_pack_files().values())
    total += sum(os.path.getsize(os.path.join(store.tmp_dir, name)) for name in os.listdir(store.tmp_dir))
    return total + sum(os.path.getsize(p) for p in list_index_files(store.index_dir))


UPLOAD_GRACE = 3600  # seconds: a temp file younger than this may be a push's upload in progress


def collect(store: ChunkStore, live: set[bytes], progress: Callable[[int, int], None] | None = None,
            before_delete: Callable[[], None] | None = None) -> GcStats:
    """Rewrite and delete packs so that only `live` blobs remain. `before_delete` runs after
    the new packs and index are durable and before anything is removed: it may raise to
    stop there (the repository then holds some blobs twice, which a later gc tidies)."""
    stats = GcStats(bytes_before=_store_size(store))
    pack_files = store.list_pack_files()
    stats.packs_before = len(pack_files)
    kept: dict[ObjectId, list[PackEntry]] = {}
    doomed: list[str] = []
    to_copy: list[tuple[ObjectId, PackEntry]] = []
    seen: set[bytes] = set()
    for pack_id in sorted(pack_files):
        try:
            entries = read_table(pack_files[pack_id])
        except CorruptObject:
            continue  # leave a damaged pack alone: fsck reports it; nothing here can repair it
        wanted = [e for e in entries if e.id in live and e.id not in seen]
        seen.update(e.id for e in wanted)
        stats.blobs_removed += len(entries) - len(wanted)
        if len(wanted) == len(entries):
            kept[pack_id] = entries
        else:
            doomed.append(pack_files[pack_id])
            to_copy.extend((pack_id, e) for e in wanted)
            if wanted:
                stats.packs_rewritten += 1
            else:
                stats.packs_deleted += 1
    kept.update(_copy_blobs(store, to_copy, progress))
    # A rewritten pack may be byte for byte a doomed one (the same blobs, in the same order:
    # a pack whose blobs all had copies elsewhere) and so have its name: that file stays.
    kept_files = {pack_files.get(pack_id) for pack_id in kept}
    doomed = [path for path in doomed if path not in kept_files]
    # The new index must be durable before the old ones go.
    old_indexes = list_index_files(store.index_dir)
    new_index = os.path.join(store.index_dir, write_index(store.index_dir, store.tmp_dir, kept).name) if kept else None
    if before_delete is not None:
        before_delete()
    for path in old_indexes:
        if path != new_index:
            os.unlink(path)
    for path in doomed:
        os.unlink(path)
    for name in os.listdir(store.tmp_dir):
        os.unlink(os.path.join(store.tmp_dir, name))
        stats.temp_files_removed += 1
    stats.temp_files_removed += _remove_stale_uploads(store)
    stats.packs_after = len(store.list_pack_files())
    stats.bytes_after = _store_size(store)
    return stats


def _copy_blobs(
    store: ChunkStore, to_copy: list[tuple[ObjectId, PackEntry]], progress: Callable[[int, int], None] | None
) -> dict[ObjectId, list[PackEntry]]:
    written: dict[ObjectId, list[PackEntry]] = {}
    writer: PackWriter | None = None
    for done, (pack_id, entry) in enumerate(to_copy, 1):
        location = (store.pack_number(pack_id), entry.offset, entry.length, entry.raw_length, entry.blob_type, entry.flag)
        payload = store.read_payload(entry.id, location)
        store.decode_payload(entry.id, location, payload)  # never carry damage into a new pack
        if writer is None:
            writer = PackWriter(store.tmp_dir)
        writer.add(entry.id, entry.blob_type, entry.flag, payload, entry.raw_length)
        if writer.size >= TARGET_SIZE:
            written[writer.finish(store.packs_dir)] = writer.entries
            writer = None
        if progress:
            progress(done, len(to_copy))
    if writer is not None:
        written[writer.finish(store.packs_dir)] = writer.entries
    return written


def _remove_stale_uploads(store: ChunkStore) -> int:
    """Temp files a push over a transport left beside packs and index files when cut off.
    Young ones are left: a push (which takes no lock here) may be writing them."""
    removed = 0
    now = time.time()
    directories = [store.index_dir] + [os.path.join(store.packs_dir, sub) for sub in os.listdir(store.packs_dir)]
    for directory in directories:
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if is_temp_name(name) and now - os.path.getmtime(path) > UPLOAD_GRACE:
                os.unlink(path)
                removed += 1
    return removed

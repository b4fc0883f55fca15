"""gc of a repository in object storage (`vml gc --remote NAME`), beside pushes it cannot lock out.

Object storage has no lock that a crash cannot strand, so gc never deletes in the run that
finds something dead. It *condemns* first: a record `vml/gc/condemned-<uuid>.json` names
the blobs no ref reached; a later run, at least `SWEEP_DELAY` after the record (by the
storage's own clock), removes those that are still dead from the packs older than the
record. Pushes read the records: a push never counts on a condemned blob being there (it
sends its own copy, into a pack newer than the record, which the sweep leaves alone), and
it reads them again right before moving a ref. So:

- a push that checked before a record was written moved its refs long before the sweep
  (the check and the ref writes are moments apart; a push that stalls longer than half
  the delay checks again), and the sweep, which works out what is live from the refs read
  after the delay, keeps what that push's entries reach;
- a push that checked after the record sent its own copies of what the record names.

Young packs (`GRACE`) are never condemned: a push may be uploading them. Sweeping rewrites
a pack that holds some dead blobs with only the others (read back from the bucket, each
checked), writes one index for every surviving pack (so index files do not pile up), then
deletes the old index files and the old packs, in that order. A reader that listed an old
index meanwhile may find a pack gone: fetch reads the index files again once.

Git objects (a few hundred bytes an entry) are never deleted: a push sends the chunks of
every entry the remote's refs do not reach, whether or not its commit is there, so a dead
commit left behind is never taken to mean its data is there.

What is live is worked out from the remote's entries as a cache holds them (`vml gc
--remote`: a cache in the repository that runs it; `vml serve gc`: the server's replica):
their git objects and listings, read from the remote when new, never their data. So a run
costs reading what is new plus listings and deletes; only partly dead packs are read back.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from vml.errors import CorruptObject
from vml.exchange.remote import STORE, RemoteBlob, RemoteRepository, pack_file
from vml.objects.ids import ObjectId
from vml.objects.pack import TARGET_SIZE, PackEntry, PackWriter, open_blob, pack_path
from vml.transport.base import MissingFile

GC_DIR = "vml/gc"
RECORD_PREFIX = "condemned-"
SWEEP_DELAY = float(os.environ.get("VML_REMOTE_GC_DELAY", 3600))  # seconds between condemning and deleting (tests shorten it)
GRACE = float(os.environ.get("VML_REMOTE_GC_GRACE", 3600))  # seconds: a younger pack may be a push's


@dataclass(slots=True)
class Condemned:
    """What the gc records name: a push must not count on any of it."""

    names: frozenset[str] = frozenset()  # the record files, to see whether they changed
    blobs: set[bytes] = field(default_factory=set)


@dataclass(slots=True)
class RemoteGcStats:
    packs_deleted: int = 0
    packs_rewritten: int = 0
    blobs_removed: int = 0
    bytes_freed: int = 0
    condemned_blobs: int = 0  # found dead this run: removed by a run SWEEP_DELAY later
    pending_records: int = 0  # records of earlier runs, not yet due
    requests: dict[str, int] = field(default_factory=dict)


def record_names(remote: RemoteRepository) -> frozenset[str]:
    return frozenset(name for name in remote.transport.list(GC_DIR) if name.startswith(RECORD_PREFIX))


def read_condemned(remote: RemoteRepository) -> Condemned:
    """Every record's blobs (one listing; usually there are no records). A record listed
    and gone before it is read was swept meanwhile: the index files no longer name what it
    removed, so they are read again (`forget_blobs`), and so are the records."""
    while True:
        names = record_names(remote)
        condemned = Condemned(names)
        try:
            for name in names:
                condemned.blobs |= _parse_record(remote.transport.read(f"{GC_DIR}/{name}"))
        except MissingFile:
            remote.forget_blobs()
            continue
        return condemned


def _parse_record(data: bytes) -> set[bytes]:
    try:
        return {bytes.fromhex(blob) for blob in json.loads(data)["blobs"]}
    except (ValueError, KeyError, TypeError):
        raise CorruptObject("a gc record of the remote is damaged (vml/gc/): remove it and run gc again") from None


@dataclass(frozen=True, slots=True)
class DueRecord:
    path: str
    written: float  # by the storage's clock
    blobs: set[bytes]


@dataclass(slots=True)
class Pending:
    """What the records not yet due name, and when the newest record naming each was
    written: its sweep removes a blob only from packs older than that."""

    names: set[str] = field(default_factory=set)
    written: dict[bytes, float] = field(default_factory=dict)

    def covers(self, blob_id: bytes, pack_written: float) -> bool:
        """Whether a pending record will remove this copy of the blob (if still dead)."""
        return self.written.get(blob_id, -math.inf) > pack_written


def due_records(remote: RemoteRepository) -> tuple[list[DueRecord], Pending, float]:
    """The records at least SWEEP_DELAY old, what the younger ones name, and the storage's time."""
    records, now = remote.transport.list_tree_dated(GC_DIR)  # type: ignore[attr-defined]
    due, pending = [], Pending()
    for path, written in records:
        blobs = _parse_record(remote.transport.read(path))
        if now - written >= SWEEP_DELAY:
            due.append(DueRecord(path, written, blobs))
            continue
        pending.names.add(path)
        for blob_id in blobs:
            pending.written[blob_id] = max(written, pending.written.get(blob_id, -math.inf))
    return due, pending, now


def collect_remote(remote: RemoteRepository, due: list[DueRecord], pending: Pending, now: float, live: set[bytes],
                   tmp_dir: str) -> RemoteGcStats:
    """Remove what the `due` records name and is still dead, then condemn what is dead now.
    `live`: what the remote's refs reach, worked out from refs read after `due_records`."""
    transport = remote.transport
    stats = RemoteGcStats(pending_records=len(pending.names))
    remote.forget_blobs()  # read afresh: pushes may have added index files since
    written = dict(_pack_times(remote))  # (a pack this listing does not show was written since)
    if due:
        _sweep(remote, due, live, written, tmp_dir, stats)
        transport.remove_many([record.path for record in due])  # type: ignore[attr-defined]
    _condemn(remote, live, pending, written, now, stats)
    stats.requests = dict(transport.requests)
    return stats


def _sweep(remote: RemoteRepository, due: list[DueRecord], live: set[bytes], written: dict[ObjectId, float], tmp_dir: str,
           stats: RemoteGcStats) -> None:
    transport = remote.transport
    old_indexes = [f"{STORE}/index/{name}" for name in transport.list(f"{STORE}/index") if name.endswith(".idx")]
    packs = remote.packs()
    # A blob goes from the packs older than the record that condemned it, never from a
    # newer one: that is a push's own copy, sent because the record was there. (A pack the
    # listing did not show was written since: newer than every record.)
    named = {pack_id: {e.id for e in entries if any(e.id in record.blobs for record in due if written.get(pack_id, math.inf) < record.written)}
             for pack_id, entries in packs.items()}
    # A condemned blob that is live again stays, unless such a copy of a push's holds it.
    copied = {e.id for pack_id, entries in packs.items() for e in entries if e.id in live and e.id not in named[pack_id]}
    kept: dict[ObjectId, list[PackEntry]] = {}
    partly: dict[ObjectId, list[PackEntry]] = {}  # pack -> the blobs it holds that stay
    for pack_id, entries in packs.items():
        keep = [e for e in entries if e.id not in named[pack_id] or (e.id in live and e.id not in copied)]
        if len(keep) == len(entries):
            kept[pack_id] = entries
        else:
            stats.blobs_removed += len(entries) - len(keep)
            partly[pack_id] = keep
    if not partly:
        return
    # A blob that stays is copied once, and not at all if a pack kept whole holds it: a
    # push that found it condemned sent a copy of its own, and the old one need not last.
    held = {e.id for entries in kept.values() for e in entries}
    to_copy: list[tuple[bytes, RemoteBlob]] = []
    for pack_id, keep in partly.items():
        copies = [(e.id, RemoteBlob(pack_id, e.offset, e.length, e.raw_length, e.blob_type, e.flag)) for e in keep if e.id not in held]
        held.update(blob_id for blob_id, _where in copies)
        to_copy.extend(copies)
        if copies:
            stats.packs_rewritten += 1
        else:
            stats.packs_deleted += 1
    gone = list(partly)
    freed = sum(transport.size(pack_file(pack_id)) for pack_id in gone)
    rewritten, added = _rewrite(remote, to_copy, tmp_dir)
    kept.update(rewritten)
    gone = [pack_id for pack_id in gone if pack_id not in rewritten]  # (a rewrite that is byte for byte a gone pack has its name)
    remote.put_index(kept)  # durable before any old index goes
    transport.remove_many(old_indexes)  # type: ignore[attr-defined]
    transport.remove_many([pack_file(pack_id) for pack_id in gone])  # type: ignore[attr-defined]
    stats.bytes_freed = freed - added
    remote.forget_blobs()


def _rewrite(remote: RemoteRepository, to_copy: list[tuple[bytes, RemoteBlob]], tmp_dir: str) -> tuple[dict[ObjectId, list[PackEntry]], int]:
    """The surviving blobs of partly dead packs, read back (each checked) into new packs;
    and the bytes those take."""
    written: dict[ObjectId, list[PackEntry]] = {}
    size = 0
    if not to_copy:
        return written, size
    staging = tempfile.mkdtemp(prefix="gc-", dir=tmp_dir)
    try:
        writer = PackWriter(staging)
        for (blob_id, where), payload in zip(to_copy, remote.read_blobs(to_copy)):
            open_blob(blob_id, where.flag, payload, where.raw_length)  # never carry damage into a new pack
            writer.add(ObjectId(blob_id), where.blob_type, where.flag, payload, where.raw_length)
            if writer.size >= TARGET_SIZE:
                size += _upload(remote, writer, staging, written)
                writer = PackWriter(staging)
        if writer.entries:
            size += _upload(remote, writer, staging, written)
        else:
            writer.abandon()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written, size


def _upload(remote: RemoteRepository, writer: PackWriter, staging: str, written: dict[ObjectId, list[PackEntry]]) -> int:
    pack_id = writer.finish(staging)
    path = pack_path(staging, pack_id)
    size = os.path.getsize(path)
    remote.put_pack(pack_id, path, writer.entries)
    os.unlink(path)
    written[pack_id] = writer.entries
    return size


def _condemn(remote: RemoteRepository, live: set[bytes], pending: Pending, written: dict[ObjectId, float], now: float,
             stats: RemoteGcStats) -> None:
    """Record what no ref reaches now and sits in a pack old enough, unless a pending record
    will remove it from that pack. (A copy newer than the pending record that names it, a
    push's or one this run's sweep rewrote, is recorded again: else it would outlive the
    record's sweep and wait for one more.)"""
    dead = sorted({e.id for pack_id, entries in remote.packs().items()
                   if now - written.get(pack_id, now) >= GRACE  # a pack the listing missed is newer: young
                   for e in entries if e.id not in live and not pending.covers(e.id, written.get(pack_id, math.inf))})
    if dead:
        record = json.dumps({"time": int(time.time()), "blobs": [blob_id.hex() for blob_id in dead]}).encode()
        remote.transport.write(f"{GC_DIR}/{RECORD_PREFIX}{uuid.uuid4().hex}.json", record)
    stats.condemned_blobs = len(dead)


def _pack_times(remote: RemoteRepository) -> list[tuple[ObjectId, float]]:
    found, _now = remote.transport.list_tree_dated(f"{STORE}/packs")  # type: ignore[attr-defined]
    return [(ObjectId(bytes.fromhex(path.rsplit("/", 1)[-1][:64])), written) for path, written in found
            if path.endswith(".pack") and len(path.rsplit("/", 1)[-1]) == 69]

"""Sending entries to a remote: plan the ref updates, then send what the remote lacks in the
order that keeps it valid at every step: blob packs, their index, git objects, refs."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from vml.entry import ENTRY_FILE, BaseRef, EntryInfo, read_entry
from vml.errors import ConcurrentUpdate, UnknownEntry, UsageError
from vml.exchange import TransferProgress
from vml.exchange.remote import RemoteRepository
from vml.exchange.remote_gc import SWEEP_DELAY, Condemned, read_condemned, record_names
from vml.objects.ids import ObjectId
from vml.objects.pack import TYPE_TREE, PackEntry, PackWriter, pack_path, read_table
from vml.objects.store import ChunkStore
from vml.objects.walk import missing_blobs
from vml.refs.bases import BaseName
from vml.refs.git import GitDag
from vml.refs.namespace import BRANCH_PREFIX, PUBLIC_PREFIX, REFS_PREFIX, TAG_PREFIX
from vml.refs.updates import MOVES, REJECTED, classify


@dataclass(frozen=True, slots=True)
class RefUpdate:
    name: str  # the full ref name, the same on both sides: refs/heads/main, refs/tags/v1
    old: str | None  # where the remote has it, None if absent
    new: str
    status: str
    reason: str = ""

    @property
    def moves(self) -> bool:
        return self.status in MOVES


@dataclass(frozen=True, slots=True)
class SendStats:
    commits: int
    blobs: int
    packs: int
    bytes: int  # stored (compressed) bytes of the blobs sent

    def __add__(self, other: SendStats) -> SendStats:
        return SendStats(self.commits + other.commits, self.blobs + other.blobs, self.packs + other.packs, self.bytes + other.bytes)


def plan_updates(git: GitDag, local: dict[str, str], remote: dict[str, str], *, force: bool) -> list[RefUpdate]:
    """How each ref would move on the remote (vml/refs/updates.py says how a ref may move)."""
    updates = []
    for name, new in sorted(local.items()):
        old = remote.get(name)
        tag = name.startswith(TAG_PREFIX)
        status = classify(git, old, new, tag=tag, force=force)
        updates.append(RefUpdate(name, old, new, status, rejection(tag) if status == REJECTED else ""))
    return updates


def rejection(tag: bool) -> str:
    """Why a push may not move a ref on the remote (vml/refs/updates.py's rule said REJECTED)."""
    return ("the remote has this tag on another entry (--force replaces it)" if tag else
            "non-fast-forward: the remote has entries you do not; fetch them first (or --force)")


def manifests_of(git: GitDag, commits: list[str]) -> list[ObjectId]:
    """The trees of chunks the entries need (files, and memory where saved)."""
    return [root for roots in manifest_lists(git, commits) for root in roots]


def manifest_lists(git: GitDag, commits: list[str]) -> list[list[ObjectId]]:
    """Each entry's trees, in the order EntryInfo.manifests gives them (files first)."""
    lists = []
    for commit_id in commits:
        data = git.read_file(commit_id, ENTRY_FILE)
        if data is None:
            raise UnknownEntry(f"{commit_id[:12]} is a git commit but not a vml entry (no {ENTRY_FILE})")
        lists.append(EntryInfo.from_toml(data).manifests())
    return lists


def root_pairs(old_lists: list[list[ObjectId]], new_lists: list[list[ObjectId]]) -> list[tuple[bytes, bytes]]:
    """(old tree, new tree) of the same kind (files with files, memory with memory) for every
    entry the receiver has and every entry it receives: what vml/objects/walk.shared_blobs compares."""
    return [(old, new) for old_roots in old_lists for new_roots in new_lists for old, new in zip(old_roots, new_roots)]


def send(git: GitDag, store: ChunkStore, remote: RemoteRepository, updates: list[RefUpdate], tmp_dir: str,
         progress: Callable[[TransferProgress], None] | None = None) -> tuple[list[RefUpdate], SendStats]:
    """Send the objects the moving refs need, then move the refs (compare-and-swap each).
    Returns the updates as they ended (a ref another push moved meanwhile is rejected)."""
    moving = [u for u in updates if u.moves]
    if not moving:
        return updates, SendStats(0, 0, 0, 0)
    if not remote.transport.renames:  # object storage: gc works by records, not markers (remote_gc.py)
        return _send(git, store, remote, updates, moving, tmp_dir, progress)
    marker = remote.announce_push()
    try:
        return _send(git, store, remote, updates, moving, tmp_dir, progress)
    finally:
        remote.end_push(marker)


def _send(git: GitDag, store: ChunkStore, remote: RemoteRepository, updates: list[RefUpdate], moving: list[RefUpdate],
          tmp_dir: str, progress: Callable[[TransferProgress], None] | None) -> tuple[list[RefUpdate], SendStats]:
    remote_tips = [u.old for u in updates if u.old]
    # Every entry the moving refs gain is checked for its chunks, whether or not its commit
    # is on the remote already: a commit left there is no promise that its data is.
    entries = git.commits_between([u.new for u in moving], remote_tips)
    roots = manifests_of(git, entries)
    totals = send_objects(git, store, remote, entries, roots, tmp_dir, progress)
    checked = time.monotonic()
    finished = []
    for update in updates:
        if update.moves:
            if time.monotonic() - checked > SWEEP_DELAY / 2:  # remote_gc.py: a push that stalled checks again
                more = send_objects(git, store, remote, entries, roots, tmp_dir, progress)
                totals += more
                checked = time.monotonic()
            try:
                remote.update_ref(update.name, update.new, update.old)
            except ConcurrentUpdate as error:
                update = RefUpdate(update.name, update.old, update.new, REJECTED, f"{error}; fetch and try again")
        finished.append(update)
    return finished, totals


def send_objects(git: GitDag, store: ChunkStore, remote: RemoteRepository, entries: list[str], roots: list[ObjectId],
                 tmp_dir: str, progress: Callable[[TransferProgress], None] | None) -> SendStats:
    """Send what the entries need and the remote lacks. On object storage, what gc has
    condemned counts as lacking, and the records are read again at the end: if gc condemned
    more meanwhile, copies of what the entries need of it go too. Move the refs right after."""
    condemned = read_condemned(remote) if not remote.transport.renames else Condemned()
    totals = _send_objects(git, store, remote, entries, roots, condemned, tmp_dir, progress)
    while not remote.transport.renames and record_names(remote) != condemned.names:
        condemned = read_condemned(remote)
        more = _send_objects(git, store, remote, entries, roots, condemned, tmp_dir, progress)
        totals += more
    return totals


def _send_objects(git: GitDag, store: ChunkStore, remote: RemoteRepository, entries: list[str], roots: list[ObjectId],
                  condemned: Condemned, tmp_dir: str, progress: Callable[[TransferProgress], None] | None) -> SendStats:
    """The blobs the entries need that the remote lacks or gc condemned, then the git objects it lacks."""
    known = remote.blobs()

    def present(blob_id: bytes) -> bool:
        return blob_id in known and blob_id not in condemned.blobs  # never count on what gc is to remove

    listings, chunks = missing_blobs(store.get_many, roots, present)
    blob_ids = chunks + [listing_id for listing_id, _data in listings]  # children before parents
    packs, sent_bytes = send_blobs(store, remote, blob_ids, tmp_dir, progress)
    commits = [c for c in entries if not remote.has_object(c)]
    for commit_id in commits:  # parents first; each commit after the trees it names
        for object_id in git.tree_objects(commit_id) + [commit_id]:
            if not remote.has_object(object_id):
                remote.write_object(object_id, *git.read_raw(object_id))
    return SendStats(len(commits), len(blob_ids), packs, sent_bytes)


def send_blobs(store: ChunkStore, remote: RemoteRepository, blob_ids: list[bytes], tmp_dir: str,
               progress: Callable[[TransferProgress], None] | None) -> tuple[int, int]:
    """Upload blobs in packs of ~16 MiB, each whole, then one index naming them all. A cut-off
    push must leave the remote with every listing's subtree below it: packs of chunks may
    go up together (object storage takes several at once), but a pack holding a listing
    goes only once every pack before it is up (listings come last, children first)."""
    if not blob_ids:
        return 0, 0
    total = sum(store.stored_size(blob_id) for blob_id in blob_ids)
    done = 0
    done_lock = threading.Lock()
    uploaded: dict[ObjectId, list[PackEntry]] = {}
    staging = tempfile.mkdtemp(prefix="push-", dir=tmp_dir)

    def advance(moved: int) -> None:  # per piece of an upload (a pack file is a little more than its blobs)
        nonlocal done
        with done_lock:
            done += moved
            progress(TransferProgress(min(done, total), total))

    def put(pack_id: ObjectId, path: str, entries: list[PackEntry]) -> None:
        if not remote.transport.renames and remote.has_pack(pack_id):
            # The very pack a gc condemned (why its blobs are sent again): a sweep that listed
            # it as old may be deleting it, so the copy this push counts on gets another name.
            pack_id, path, entries = _renamed_copy(path, staging)
        remote.put_pack(pack_id, path, entries, advance if progress is not None else None)
        os.unlink(path)
        uploaded[pack_id] = entries

    in_flight: list[Future] = []
    with ThreadPoolExecutor(remote.transport.parallel_writes, thread_name_prefix="vml-push") as pool:
        try:
            for pack_id, path, entries in store.copy_to_packs(blob_ids, staging):
                waits = len(in_flight) if any(e.blob_type == TYPE_TREE for e in entries) else len(in_flight) - remote.transport.parallel_writes + 1
                for _ in range(max(waits, 0)):
                    in_flight.pop(0).result()
                in_flight.append(pool.submit(put, pack_id, path, entries))
            for future in in_flight:
                future.result()
            remote.put_index(uploaded)
        finally:
            for future in in_flight:
                future.cancel()
            pool.shutdown(wait=True)
            shutil.rmtree(staging, ignore_errors=True)
    return len(uploaded), total


def _renamed_copy(path: str, staging: str) -> tuple[ObjectId, str, list[PackEntry]]:
    """The blobs of the pack at `path` in a pack of another name (random bytes before the
    first blob); the first file is removed."""
    writer = PackWriter(staging, pad=os.urandom(16))
    with open(path, "rb") as source:
        for e in read_table(path):
            writer.add(e.id, e.blob_type, e.flag, os.pread(source.fileno(), e.length, e.offset), e.raw_length)
    pack_id = writer.finish(staging)
    os.unlink(path)
    return pack_id, pack_path(staging, pack_id), writer.entries


def bases_to_push(git: GitDag, location: str, remote_digest: Callable[[str], str | None], local: dict[str, str],
                  remote_refs: dict[str, str], differential: bool) -> dict[str, str]:
    """The base refs the entries being pushed sit on and the remote lacks; an error if the
    remote holds another image under the same name and version (`remote_digest`: the
    digest of a base entry on the remote, None if it cannot be read from here)."""
    have = [commit for commit in remote_refs.values() if git.has_object(commit)]
    wanted: dict[str, BaseRef] = {}
    for commit in git.commits_between(list(local.values()), have):
        info = read_entry(git, commit)
        if info.base is not None and info.kind != "base":
            wanted[BaseName(info.base.name, info.base.version).ref] = info.base
    to_send = {}
    for ref, base in wanted.items():
        local_commit = git.ref_target(ref)
        if local_commit is None:
            raise UsageError(f"the entries sit on base {base}, which this repository lacks: fetch or add it before pushing")
        remote_commit = remote_refs.get(ref)
        if remote_commit is None:
            if differential:
                raise UsageError(f"{location} lacks base {base} ({base.digest[:19]}…): a differential push needs it there; "
                                 f"push without --differential to send the base too")
            to_send[ref] = local_commit
        elif remote_commit != local_commit:
            digest = remote_digest(remote_commit)
            if digest is None:
                raise UsageError(f"{location} holds base {base} as another entry ({remote_commit[:12]}): fetch first, then push again")
            if digest != base.digest:
                raise UsageError(f"{location} holds another image as base {base} (another digest): rename one of them")
    return to_send


def refs_to_push(git: GitDag, names_given: tuple[str, ...], *, tags: bool, area_branch: str | None) -> dict[str, str]:
    """The refs a push sends and their entries: the branches or tags named, else the area's
    branch (`area_branch`), else every branch; with `tags` every tag too."""
    refs: dict[str, str] = {}
    for name in names_given:
        if name.startswith((BRANCH_PREFIX, TAG_PREFIX, PUBLIC_PREFIX)):
            full = [name]
        else:  # public/NAME: a public entry's lineage, refs/public/NAME
            full = [BRANCH_PREFIX + name, TAG_PREFIX + name] + ([REFS_PREFIX + name] if name.startswith("public/") else [])
        for ref in full:
            target = git.ref_target(ref)
            if target is not None:
                refs[ref] = target
                break
        else:
            raise UsageError(f"no branch or tag named {name!r} to push (nor a public entry: public/NAME)")
    if not names_given:
        if area_branch is not None and git.ref_target(BRANCH_PREFIX + area_branch) is not None:
            refs.update(_targets(git, [BRANCH_PREFIX + area_branch]))
        elif not tags:
            refs.update(_targets(git, git.ref_names(BRANCH_PREFIX)))
    if tags:
        refs.update(_targets(git, git.ref_names(TAG_PREFIX)))
    if not refs:
        raise UsageError("nothing to push: this repository has no entries on a branch yet")
    return refs


def _targets(git: GitDag, refs: list[str]) -> dict[str, str]:
    found = {ref: git.ref_target(ref) for ref in refs}
    return {ref: target for ref, target in found.items() if target is not None}

"""Sending entries to a remote: plan the ref updates, then send what the remote lacks in the
order that keeps it valid at every step: blob packs, their index, git objects, refs."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable

from vml.entry import ENTRY_FILE, EntryInfo
from vml.errors import ConcurrentUpdate, UnknownEntry
from vml.exchange.remote import RemoteRepository
from vml.objects.ids import ObjectId
from vml.objects.pack import PackEntry
from vml.objects.store import ChunkStore
from vml.objects.walk import missing_blobs
from vml.refs.git import GitDag
from vml.refs.namespace import TAG_PREFIX

UP_TO_DATE, NEW, FAST_FORWARD, FORCED, REJECTED = "up to date", "new", "fast-forward", "forced", "rejected"


@dataclass(frozen=True, slots=True)
class RefUpdate:
    name: str  # the full ref name, the same on both sides: refs/heads/main, refs/tags/v1
    old: str | None  # where the remote has it, None if absent
    new: str
    status: str
    reason: str = ""

    @property
    def moves(self) -> bool:
        return self.status in (NEW, FAST_FORWARD, FORCED)


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """What a transfer has moved so far, for progress bars."""

    done: int
    total: int


@dataclass(frozen=True, slots=True)
class SendStats:
    commits: int
    blobs: int
    packs: int
    bytes: int  # stored (compressed) bytes of the blobs sent


def plan_updates(git: GitDag, local: dict[str, str], remote: dict[str, str], *, force: bool) -> list[RefUpdate]:
    """How each ref would move on the remote: fast-forward only unless forced; a tag that
    exists there with another entry is never moved without force."""
    updates = []
    for name, new in sorted(local.items()):
        old = remote.get(name)
        if old == new:
            updates.append(RefUpdate(name, old, new, UP_TO_DATE))
        elif old is None:
            updates.append(RefUpdate(name, old, new, NEW))
        elif force:
            updates.append(RefUpdate(name, old, new, FORCED))
        elif name.startswith(TAG_PREFIX):
            updates.append(RefUpdate(name, old, new, REJECTED, "the remote has this tag on another entry (--force replaces it)"))
        elif git.has_object(old) and git.is_ancestor(old, new):
            updates.append(RefUpdate(name, old, new, FAST_FORWARD))
        else:
            updates.append(RefUpdate(name, old, new, REJECTED, "non-fast-forward: the remote has entries you do not; fetch them first (or --force)"))
    return updates


def manifests_of(git: GitDag, commits: list[str]) -> list[ObjectId]:
    """The trees of chunks the entries need (files, and memory where saved)."""
    roots = []
    for commit_id in commits:
        data = git.read_file(commit_id, ENTRY_FILE)
        if data is None:
            raise UnknownEntry(f"{commit_id[:12]} is a git commit but not a vml entry (no {ENTRY_FILE})")
        roots.extend(EntryInfo.from_toml(data).manifests())
    return roots


def send(git: GitDag, store: ChunkStore, remote: RemoteRepository, updates: list[RefUpdate], tmp_dir: str,
         progress: Callable[[TransferProgress], None] | None = None) -> tuple[list[RefUpdate], SendStats]:
    """Send the objects the moving refs need, then move the refs (compare-and-swap each).
    Returns the updates as they ended (a ref another push moved meanwhile is rejected)."""
    moving = [u for u in updates if u.moves]
    if not moving:
        return updates, SendStats(0, 0, 0, 0)
    marker = remote.announce_push()
    try:
        return _send(git, store, remote, updates, moving, tmp_dir, progress)
    finally:
        remote.end_push(marker)


def _send(git: GitDag, store: ChunkStore, remote: RemoteRepository, updates: list[RefUpdate], moving: list[RefUpdate],
          tmp_dir: str, progress: Callable[[TransferProgress], None] | None) -> tuple[list[RefUpdate], SendStats]:
    remote_tips = [u.old for u in updates if u.old]
    commits = [c for c in git.commits_between([u.new for u in moving], remote_tips) if not remote.has_object(c)]
    known = remote.blobs()

    def load_raw(blob_ids: list[bytes]) -> list[bytes]:
        return [store.get(blob_id) for blob_id in blob_ids]

    listings, chunks = missing_blobs(load_raw, manifests_of(git, commits), known.__contains__)
    blob_ids = chunks + [listing_id for listing_id, _data in listings]  # children before parents
    packs, sent_bytes = send_blobs(store, remote, blob_ids, tmp_dir, progress)
    for commit_id in commits:  # parents first; each commit after the trees it names
        for object_id in git.tree_objects(commit_id) + [commit_id]:
            if not remote.has_object(object_id):
                remote.write_object(object_id, *git.read_raw(object_id))
    finished = []
    for update in updates:
        if update.moves:
            try:
                remote.update_ref(update.name, update.new, update.old)
            except ConcurrentUpdate as error:
                update = RefUpdate(update.name, update.old, update.new, REJECTED, f"{error}; fetch and try again")
        finished.append(update)
    return finished, SendStats(len(commits), len(blob_ids), packs, sent_bytes)


def send_blobs(store: ChunkStore, remote: RemoteRepository, blob_ids: list[bytes], tmp_dir: str,
               progress: Callable[[TransferProgress], None] | None) -> tuple[int, int]:
    """Upload blobs in packs of ~16 MiB, each whole, then one index naming them all. In the
    order given, so a cut-off push leaves the remote with every listing's subtree below it."""
    if not blob_ids:
        return 0, 0
    total = sum(store.stored_size(blob_id) for blob_id in blob_ids)
    done = 0
    uploaded: dict[ObjectId, list[PackEntry]] = {}
    staging = tempfile.mkdtemp(prefix="push-", dir=tmp_dir)
    try:
        def advance(moved: int) -> None:  # per piece of an upload (a pack file is a little more than its blobs)
            nonlocal done
            done += moved
            progress(TransferProgress(min(done, total), total))

        for pack_id, path, entries in store.copy_to_packs(blob_ids, staging):
            remote.put_pack(pack_id, path, entries, advance if progress is not None else None)
            os.unlink(path)
            uploaded[pack_id] = entries
        remote.put_index(uploaded)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return len(uploaded), total

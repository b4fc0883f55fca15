"""Push and fetch with a vml server (vml serve): the server says only which refs the caller
may read; each side sends the other one transfer bundle (vml/exchange/bundle.py) of what is
new beyond the commits they share, and the server moves each ref by compare-and-swap.

A server never tells a client which blobs it holds (vml/server/exchange.py), so a push
sends every blob of its new entries that the entries it builds on lack, even one the
server may hold for somebody else: that is the price of not leaking it.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from vml.entry import read_entry
from vml.errors import UsageError
from vml.exchange import TransferProgress
from vml.exchange.bundle import TRANSFER, BundleInfo, read_bundle, write_bundle
from vml.exchange.push import RefUpdate, SendStats, bases_to_push, plan_updates
from vml.objects.store import ChunkStore
from vml.refs.git import GitDag
from vml.refs.namespace import REMOTE_PREFIX
from vml.refs.updates import FORCED, REJECTED

if TYPE_CHECKING:
    from vml.transport.http import HttpRemote

MAX_HAVES = 256


def push_refs(git: GitDag, store: ChunkStore, remote: HttpRemote, local: dict[str, str], *, force: bool, differential: bool,
              tmp_dir: str, progress: Callable[[TransferProgress], None] | None = None) -> tuple[list[RefUpdate], SendStats]:
    remote_refs, _head = remote.refs()

    def remote_digest(commit: str) -> str | None:
        base = read_entry(git, commit).base if git.has_object(commit) else None
        return base.digest if base is not None else None

    local = dict(local)
    local.update(bases_to_push(git, remote.location, remote_digest, local, remote_refs, differential))
    updates = plan_updates(git, local, remote_refs, force=force)
    moving = [u for u in updates if u.moves]
    if not moving:
        return updates, SendStats(0, 0, 0, 0)
    news = [u.new for u in moving]
    requires = [c for c in dict.fromkeys(remote_refs.values()) if git.has_object(c) and any(c == n or git.is_ancestor(c, n) for n in news)]
    fd, bundle = tempfile.mkstemp(prefix="push-", suffix=".bundle", dir=tmp_dir)
    os.close(fd)
    growing = GrowingFile(bundle)
    made: list[BundleInfo] = []

    def make() -> None:  # the bundle is written while what is written so far is sent
        try:
            made.append(write_bundle(git, store, bundle, entry=news[0], ref=None, kind=TRANSFER, requires=requires, tmp_dir=tmp_dir,
                                     refs={u.name: u.new for u in moving}, sink=growing))
            growing.finish()
        except BaseException as error:
            growing.finish(error)

    def advance(done: int, total: int) -> None:
        if progress is not None:
            progress(TransferProgress(done, total))

    maker = threading.Thread(target=make, name="vml-bundle")
    maker.start()
    try:
        answers = remote.push(bundle, [{"ref": u.name, "old": u.old, "new": u.new, "force": u.status == FORCED} for u in moving], advance,
                              growing=growing)
    finally:
        growing.cancel()
        maker.join()
        growing.close()
        os.unlink(bundle)
    info = made[0]
    by_ref = {answer.get("ref"): answer for answer in answers}
    finished = []
    for update in updates:
        if update.moves:
            answer = by_ref.get(update.name, {"status": REJECTED, "reason": "the server did not answer for it"})
            update = RefUpdate(update.name, update.old, update.new, str(answer.get("status")), str(answer.get("reason") or ""))
        finished.append(update)
    return finished, SendStats(len(info.commits), info.blobs, info.packs, info.bytes)


def fetch_refs(git: GitDag, store: ChunkStore, remote: HttpRemote, remote_name: str, tmp_dir: str,
               progress: Callable[[TransferProgress], None] | None = None) -> tuple[dict[str, str], str | None, int, int]:
    """Bring what the refs the server shows reach; (those refs, its default branch, commits, blobs)."""
    from vml.transport.http import RefsMoved

    attempts = 0
    while True:
        remote_refs, head = remote.refs()
        want = sorted({c for c in remote_refs.values() if not git.has_object(c)})
        if not want:
            return remote_refs, head, 0, 0
        try:
            commits, blobs = _receive(git, store, remote, want, _haves(git, remote_name), tmp_dir, progress)
            return remote_refs, head, commits, blobs
        except RefsMoved:  # a push landed between the listing and the request: list again
            attempts += 1
            if attempts == 3:
                raise


def _haves(git: GitDag, remote_name: str) -> list[str]:
    """What this repository has, what the remote most likely shares first: its branches as
    last fetched, then every other ref's entry."""
    tracking = git.ref_names(f"{REMOTE_PREFIX}{remote_name}/")
    found = [git.ref_target(ref) for ref in tracking + [r for r in git.ref_names() if r not in tracking]]
    return [c for c in dict.fromkeys(found) if c is not None][:MAX_HAVES]


def _receive(git: GitDag, store: ChunkStore, remote: HttpRemote, want: list[str], have: list[str], tmp_dir: str,
             progress: Callable[[TransferProgress], None] | None) -> tuple[int, int]:
    fd, bundle = tempfile.mkstemp(prefix="fetch-", suffix=".bundle", dir=tmp_dir)
    os.close(fd)
    try:
        def advance(done: int, total: int) -> None:
            if progress is not None:
                progress(TransferProgress(done, total))

        remote.fetch(want, have, bundle, advance)
        info, store_all = read_bundle(git, store, bundle)
        if info.kind != TRANSFER or not set(want) <= set(info.commits) | {c for c in want if git.has_object(c)}:
            raise UsageError(f"{remote.location} sent something else than the entries asked for")
        store_all(trusted=True)  # our own file, in our own temp directory
    finally:
        os.unlink(bundle)
    return len(info.commits), info.blobs


class GrowingFile:
    """A file one thread writes (a bundle being made) while another sends what is in it so
    far: `wait_for` blocks until it holds that many bytes or is finished."""

    def __init__(self, path: str):
        self._sink = open(path, "wb")
        self._changed = threading.Condition()
        self.size = 0
        self.done = False
        self.cancelled = False
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        if self.cancelled:
            raise UsageError("the push stopped")
        return self._sink.write(data)

    def flush(self) -> None:
        self._sink.flush()
        with self._changed:
            self.size = self._sink.tell()
            self._changed.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        if error is None:
            self._sink.flush()
        with self._changed:
            self.size = self._sink.tell()
            self.done, self.error = True, error
            self._changed.notify_all()

    def cancel(self) -> None:
        self.cancelled = True

    def wait_for(self, wanted: int) -> tuple[int, bool]:
        """(bytes written, finished) once at least `wanted` are written or it is finished."""
        with self._changed:
            while self.size < wanted and not self.done:
                self._changed.wait()
            if self.error is not None:
                raise self.error
            return self.size, self.done

    def close(self) -> None:
        self._sink.close()

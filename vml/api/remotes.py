"""vml remote add / remove / list, push, fetch, pull and clone: entries between repositories."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vml.api._common import Progress
from vml.api._trust import ALLOWED_SIGNERS, VERIFY, allowed_signers, verify_public
from vml.api.checkout import CheckoutResult, checkout_area
from vml.config import delete_remote, remote_url, remote_urls, write_remote
from vml.errors import UsageError
from vml.exchange.fetch import fetch_entries, remote_entry_info, update_tracking
from vml.exchange.push import bases_to_push, plan_updates, refs_to_push, send
from vml.exchange.remote import EXCHANGED, RemoteRepository, RemoteSource
from vml.exchange.remote_gc import SWEEP_DELAY, RemoteGcStats, collect_remote, due_records
from vml.exchange.smart import fetch_refs, push_refs
from vml.history import live_blobs
from vml.objects.store import ChunkStore
from vml.refs.git import GitDag
from vml.refs.heads import read_head
from vml.refs.namespace import BRANCH_PREFIX, short_name, tracking_ref
from vml.refs.updates import FAST_FORWARD, REJECTED, UP_TO_DATE, RefChange, classify
from vml.repo import Repository
from vml.transport.base import open_transport, parse_url

if TYPE_CHECKING:
    from vml.transport.http import HttpRemote


@dataclass(frozen=True, slots=True)
class RemoteInfo:
    name: str
    url: str


def _check_remote_name(repo: Repository, name: str) -> None:
    if "/" in name or not repo.git.is_valid_ref_name(tracking_ref(name, "main")):
        raise UsageError(f"{name!r} is not a valid remote name (letters, digits, '-', '_', '.')")


def remote_add(repo: Repository, name: str, url: str) -> RemoteInfo:
    _check_remote_name(repo, name)
    location = parse_url(url)  # a bad URL is refused now, not at the first push
    if "://" not in url:
        url = location.path  # absolute: the repository is found from any directory
    write_remote(repo.git, name, url)
    return RemoteInfo(name, url)


def remote_remove(repo: Repository, name: str) -> RemoteInfo:
    url = remote_url(repo.git, name)
    for ref in repo.git.ref_names(tracking_ref(name)):
        repo.git.delete_ref(ref)
        repo.git.delete_reflog(ref)
    delete_remote(repo.git, name)
    return RemoteInfo(name, url)


def remote_list(repo: Repository) -> list[RemoteInfo]:
    return [RemoteInfo(name, url) for name, url in remote_urls(repo.git).items()]


@contextlib.contextmanager
def _connected(repo: Repository, url: str, accept_new_host_key: bool) -> Iterator[RemoteRepository]:
    remote = RemoteRepository(open_transport(url, accept_new_host_key=accept_new_host_key), repo.remote_index_cache)
    try:
        yield remote
    finally:
        remote.close()


@contextlib.contextmanager
def _server(url: str) -> Iterator[HttpRemote]:
    from vml.transport.http import HttpRemote  # httpx is loaded only for a server's URL

    server = HttpRemote(url)
    try:
        yield server
    finally:
        server.close()


def _base_digest(remote: RemoteRepository, commit: str) -> str | None:
    base = remote_entry_info(remote, commit).base
    return base.digest if base is not None else None


@dataclass(frozen=True, slots=True)
class PushResult:
    remote: str
    url: str
    refs: list[RefChange]
    commits: int
    blobs: int
    packs: int
    blob_bytes: int
    bytes_sent: int  # everything that crossed the transport, git objects and refs included
    seconds: float
    requests: dict[str, int]  # object storage: requests by operation (PutObject, GetObject, ...)

    @property
    def rejected(self) -> bool:
        return any(change.status == REJECTED for change in self.refs)


def push(repo: Repository, remote_name: str = "origin", names_given: tuple[str, ...] = (), *, force: bool = False,
         tags: bool = False, area: str | None = None, differential: bool = False, accept_new_host_key: bool = False,
         progress: Progress = None) -> PushResult:
    """Send branches (default: the area's branch) and with --tags every tag to a remote:
    only the entries and blobs it lacks; each ref moves only by fast-forward unless forced.
    The base images the entries sit on go too, unless `differential`: then the remote must
    have them already (same name, version and digest)."""
    url = remote_url(repo.git, remote_name)
    started = time.monotonic()
    config = None if names_given else repo.choose_area(area) if area is not None or len(repo.areas()) == 1 else None
    local = refs_to_push(repo.git, names_given, tags=tags, area_branch=read_head(repo.git, config.name).branch if config else None)
    with repo.shared_lock():
        if parse_url(url).is_server:
            with _server(url) as server:
                updates, stats = push_refs(repo.git, repo.store, server, local, force=force, differential=differential,
                                           tmp_dir=repo.store.tmp_dir, progress=progress)
                bytes_sent = server.bytes_sent
                requests = {}
        else:
            with _connected(repo, url, accept_new_host_key) as remote:
                remote_refs = remote.refs()
                local.update(bases_to_push(repo.git, remote.location, lambda commit: _base_digest(remote, commit),
                                           local, remote_refs, differential))
                updates = plan_updates(repo.git, local, remote_refs, force=force)
                updates, stats = send(repo.git, repo.store, remote, updates, repo.store.tmp_dir, progress)
                bytes_sent = remote.transport.bytes_sent
                requests = dict(remote.transport.requests)
        for update in updates:
            if update.name.startswith(BRANCH_PREFIX) and update.status != REJECTED:
                tracking = tracking_ref(remote_name, short_name(update.name))
                repo.git.set_direct(tracking, update.new, f"push: {update.status}")
    changes = [RefChange(short_name(u.name), u.old, u.new, u.status, u.reason) for u in updates]
    return PushResult(remote_name, url, changes, stats.commits, stats.blobs, stats.packs, stats.bytes, bytes_sent,
                      round(time.monotonic() - started, 3), requests)


@dataclass(frozen=True, slots=True)
class FetchResult:
    remote: str
    url: str
    refs: list[RefChange]  # remote-tracking branches (origin/main) and tags that moved
    commits: int
    blobs: int
    blob_bytes: int
    bytes_received: int
    seconds: float
    default_branch: str | None  # the branch the remote's HEAD names
    requests: dict[str, int]  # object storage: requests by operation (ListObjectsV2, GetObject, ...)


def fetch(repo: Repository, remote_name: str = "origin", *, accept_new_host_key: bool = False, verify: bool = False,
          allowed: str | None = None, progress: Progress = None) -> FetchResult:
    """Bring the remote's branches (as remote-tracking branches NAME/BRANCH), tags and public
    entries, with only the entries and blobs this repository lacks. With `verify` (or the
    repository's vml.verifySignatures), every public entry a ref would move to must be signed
    by a key in the allowed signers, or no ref moves."""
    url = remote_url(repo.git, remote_name)
    started = time.monotonic()
    signers = allowed_signers(repo, verify, allowed)
    with repo.shared_lock():
        if parse_url(url).is_server:
            with _server(url) as server:
                remote_refs, default, commits, blobs = fetch_refs(repo.git, repo.store, server, remote_name, repo.store.tmp_dir, progress)
                blob_bytes = bytes_received = server.bytes_received
                requests = {}
        else:
            with _connected(repo, url, accept_new_host_key) as remote:
                remote_refs = remote.refs()
                roots, stats = fetch_entries(repo.git, repo.store, remote, sorted(set(remote_refs.values())), progress)
                commits, blobs, blob_bytes = len(roots), stats.blobs, stats.bytes
                bytes_received = remote.transport.bytes_received
                default = remote.default_branch()
                requests = dict(remote.transport.requests)
        verify_public(repo, {ref: entry for ref, entry in remote_refs.items() if repo.git.ref_target(ref) != entry}, signers)
        changes = update_tracking(repo.git, remote_name, remote_refs)
    return FetchResult(remote_name, url, changes, commits, blobs, blob_bytes, bytes_received,
                       round(time.monotonic() - started, 3), default, requests)


@dataclass(frozen=True, slots=True)
class PullResult:
    fetched: FetchResult
    area: str
    branch: str
    old: str | None
    new: str
    status: str  # "up to date" or "fast-forward"
    checkout: CheckoutResult | None


def pull(repo: Repository, remote_name: str = "origin", branch: str | None = None, *, area: str | None = None,
         accept_new_host_key: bool = False, progress: Progress = None, transfer_progress: Progress = None) -> PullResult:
    """Fetch, then fast-forward the area's branch to the remote's and check it out into the area."""
    config = repo.choose_area(area)
    head = read_head(repo.git, config.name)
    if head.branch is None:
        raise UsageError(f"area {config.name} is detached (not on a branch): 'vml switch BRANCH' first")
    fetched = fetch(repo, remote_name, accept_new_host_key=accept_new_host_key, progress=transfer_progress)
    remote_branch = branch or head.branch
    target = repo.git.ref_target(tracking_ref(remote_name, remote_branch))
    if target is None:
        raise UsageError(f"the remote {remote_name} has no branch {remote_branch!r}")
    # The area's branch moves forward only; an unborn one takes the remote's as a fast-forward.
    status = classify(repo.git, head.entry, target, held_is_up_to_date=True) if head.entry else FAST_FORWARD
    if status == UP_TO_DATE:
        return PullResult(fetched, config.name, head.branch, head.entry, head.entry or target, UP_TO_DATE, None)
    if status == REJECTED:
        raise UsageError(
            f"{head.branch} and {remote_name}/{remote_branch} have diverged (vml pulls by fast-forward only): "
            f"look with 'vml log --all --graph', then keep one line, e.g. 'vml branch mine' and 'vml checkout {remote_name}/{remote_branch}'"
        )
    result = checkout_area(repo, config, f"{remote_name}/{remote_branch}", head.branch, force=False, progress=progress,
                           fast_forward=target)
    return PullResult(fetched, config.name, head.branch, head.entry, target, FAST_FORWARD, result)


@dataclass(frozen=True, slots=True)
class CloneResult:
    path: str
    url: str
    branch: str | None
    entry: str | None
    fetched: FetchResult


def clone(url: str, directory: str | None = None, *, accept_new_host_key: bool = False, verify: bool = False, allowed: str | None = None,
          progress: Progress = None) -> CloneResult:
    """A new repository DIR/.vml with `origin` set to URL, its entries fetched and its
    default branch made a local branch. With `verify`, its public entries must be signed by
    a key in `allowed`, which the new repository keeps checking them against."""
    location = parse_url(url)
    if directory is None:
        name = os.path.basename(location.path.rstrip("/")) or "repository"
        for suffix in (".vml", ".git"):
            name = name[: -len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name
        directory = name
    target = os.path.abspath(directory)
    created = not os.path.exists(target)
    repo = Repository.init(target)
    try:
        url = remote_add(repo, "origin", url).url
        if allowed is not None:
            repo.git.config_set(ALLOWED_SIGNERS, os.path.abspath(os.path.expanduser(allowed)))
        if verify:
            repo.git.config_set(VERIFY, "true")
        fetched = fetch(repo, "origin", accept_new_host_key=accept_new_host_key, verify=verify, allowed=allowed, progress=progress)
        default = fetched.default_branch
        branches = {change.ref.split("/", 1)[1]: change.new for change in fetched.refs if change.ref.startswith("origin/")}
        branch = default if default in branches else next(iter(sorted(branches)), None)
        if branch is not None:
            repo.git.set_direct(BRANCH_PREFIX + branch, branches[branch], f"clone: from {url}")
            repo.git.set_symbolic("HEAD", BRANCH_PREFIX + branch)
    except BaseException:
        repo.close()
        shutil.rmtree(target if created else os.path.join(target, ".vml"), ignore_errors=True)
        raise
    repo.close()
    return CloneResult(target, url, branch, branches.get(branch) if branch else None, fetched)


def _entries_cache(repo: Repository, url: str, remote: RemoteRepository) -> tuple[GitDag, ChunkStore]:
    """A cache of a remote's entries in this repository (`vml/cache/entries/<hash of the
    URL>`): the git objects, and a store of listings that reads anything else from the
    remote. Made when missing; safe to delete."""
    path = os.path.join(repo.vml_dir, "cache", "entries", hashlib.sha256(url.encode()).hexdigest()[:16])
    if not os.path.exists(os.path.join(path, "store")):
        GitDag.init(path)
        ChunkStore.create(os.path.join(path, "store"))
    return GitDag.open(path), ChunkStore(os.path.join(path, "store"), source=RemoteSource(remote)).open()


@dataclass(frozen=True, slots=True)
class RemoteGcResult:
    remote: str
    url: str
    packs_deleted: int
    packs_rewritten: int
    blobs_removed: int
    bytes_freed: int
    condemned_blobs: int  # found dead now: removed by a gc at least `sweep_delay` seconds later
    pending_records: int  # what earlier runs condemned, not yet due
    sweep_delay: float
    requests: dict[str, int]
    replica_bytes_freed: int = 0  # vml serve gc: the bucket's data chunks dropped from the server's own copy

    @classmethod
    def of(cls, remote: str, url: str, stats: RemoteGcStats, replica_bytes_freed: int = 0) -> RemoteGcResult:
        return cls(remote, url, stats.packs_deleted, stats.packs_rewritten, stats.blobs_removed, stats.bytes_freed,
                   stats.condemned_blobs, stats.pending_records, SWEEP_DELAY, stats.requests, replica_bytes_freed)


def gc_remote(repo: Repository, remote_name: str = "origin", *, progress: Progress = None) -> RemoteGcResult:
    """Remove from a repository in object storage the blobs no ref there reaches, in two
    runs at least an hour apart (vml/exchange/remote_gc.py says why): read the entries the
    remote's refs reach, delete what the due records of earlier runs name and is still dead,
    and record what is dead now. The entries are read into a cache of this repository
    (their git objects and listings; no data), not into it: the remote may be far larger
    than this disk."""
    url = remote_url(repo.git, remote_name)
    if parse_url(url).scheme != "s3":
        raise UsageError(f"'vml gc --remote' is for a repository in object storage (s3://); run 'vml gc' where {url} is")
    with _connected(repo, url, False) as remote:
        stray = [ref for ref in remote.transport.list_tree("refs") if not ref.startswith(EXCHANGED)]
        if stray:
            raise UsageError(f"{url} has refs this repository does not fetch ({stray[0]}, ...): a server's bucket is "
                             f"collected by 'vml serve gc' on a server")
        due, pending, now = due_records(remote)  # before the refs are read: see remote_gc.py
        git, store = _entries_cache(repo, url, remote)
        try:
            tips = sorted(set(remote.refs().values()))
            missing = [tip for tip in tips if not git.has_object(tip)]
            if missing:
                fetch_entries(git, store, remote, missing, progress)  # git objects: the blobs are the remote's, none copied
            live = live_blobs(git, store, list(git.walk(tips)))
        finally:
            store.close()
        stats = collect_remote(remote, due, pending, now, live, repo.temp_dir())
    return RemoteGcResult.of(remote_name, url, stats)

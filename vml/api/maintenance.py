"""vml init, vml fsck and vml gc: the repository as a whole."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from vml.api._common import entry_info
from vml.errors import CorruptObject, UnknownEntry, UsageError
from vml.exchange.remote import check_no_push, init_remote
from vml.history import live_blobs, reachable_entries
from vml.objects.fsck import TreeChecker, check_packs
from vml.objects.gc import collect
from vml.objects.walk import listing_loader
from vml.pathnames import quote_path
from vml.refs.reflogs import EXPIRE_ALL, EXPIRE_UNREACHABLE, parse_when, rewrite_lost_predecessors
from vml.refs.reflogs import expire as expire_reflogs
from vml.repo import Repository
from vml.transport.base import open_transport, parse_url


@dataclass(frozen=True, slots=True)
class InitResult:
    path: str
    bare: bool


def init(path: str = ".", *, bare: bool = False) -> InitResult:
    """A repository: PATH/.vml, PATH itself with `bare`, or a bare one in a bucket (s3://)."""
    if "://" in path and parse_url(path).scheme == "s3":
        if not bare:
            raise UsageError(f"{path}: a repository in a bucket has no working area: use 'vml init --bare {path}'")
        transport = open_transport(path)
        try:
            init_remote(transport)
        finally:
            transport.close()
        return InitResult(str(transport.location), bare)
    repo = Repository.init(path, bare=bare)
    return InitResult(repo.path, bare)


@dataclass(frozen=True, slots=True)
class DamagedEntry:
    entry: str
    message: str
    paths: list[tuple[str, str]]  # (path, reason)


@dataclass(frozen=True, slots=True)
class FsckReport:
    entries: int
    packs: int
    blobs: int
    bytes: int
    damaged: list[DamagedEntry]
    problems: list[str]
    warnings: list[str]  # defects that lost nothing (a damaged index whose packs were read directly)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems


def fsck(repo: Repository, *, progress: Callable[[int, int], None] | None = None) -> FsckReport:
    with repo.shared_lock():
        store = repo.store
        packs = check_packs(store, progress)
        checker = TreeChecker(store, listing_loader(store), packs.damaged_blobs)
        damaged = []
        problems = list(packs.problems)
        git_problems, git_warnings = repo.git.git_fsck()
        problems += git_problems
        warnings = list(packs.warnings) + git_warnings
        entries = reachable_entries(repo.git)
        for entry_id in entries:
            message = repo.git.commit(entry_id).summary
            try:
                roots = entry_info(repo, entry_id).manifests()
            except (UnknownEntry, CorruptObject, UsageError) as error:
                damaged.append(DamagedEntry(entry_id, message, [("/", str(error))]))
                continue
            found = [problem for root_id in roots for problem in checker.check_root(root_id)]
            if found:
                damaged.append(DamagedEntry(entry_id, message, [(quote_path(p), why) for p, why in found]))
        return FsckReport(len(entries), packs.packs, packs.blobs, packs.bytes, damaged, problems, warnings)


@dataclass(frozen=True, slots=True)
class GcResult:
    bytes_freed: int  # chunk store and git objects together
    bytes_after: int
    blobs_removed: int
    packs_deleted: int
    packs_rewritten: int
    packs_after: int
    reflog_lines_expired: int
    git_objects_removed: int


def gc(repo: Repository, *, expire: str | None = None, progress: Callable[[int, int], None] | None = None) -> GcResult:
    """Expire old reflog lines, then remove every chunk, listing and git object no ref or
    remaining reflog line reaches. `expire`: when lines of unreachable entries go (default 30 days)."""
    now = time.time()
    unreachable_before = parse_when(expire, now) if expire is not None else now - EXPIRE_UNREACHABLE
    with repo.exclusive_lock():
        expired = expire_reflogs(
            repo.git,
            set(reachable_entries(repo.git, reflogs=False)),
            unreachable_before=unreachable_before,
            all_before=now - EXPIRE_ALL,
        )
        check_no_push(repo.path)
        entries = reachable_entries(repo.git)
        # Before anything is deleted: no kept reflog line may name a commit that goes.
        rewrite_lost_predecessors(repo.git, set(entries))
        stats = collect(repo.store, live_blobs(repo.git, repo.store, entries), progress, before_delete=lambda: check_no_push(repo.path))
        git_removed, git_freed = repo.git.prune_loose_objects(repo.git.objects_of(entries))
        repo.close()
    return GcResult(
        bytes_freed=stats.bytes_freed + git_freed,
        bytes_after=stats.bytes_after,
        blobs_removed=stats.blobs_removed,
        packs_deleted=stats.packs_deleted,
        packs_rewritten=stats.packs_rewritten,
        packs_after=stats.packs_after,
        reflog_lines_expired=expired,
        git_objects_removed=git_removed,
    )



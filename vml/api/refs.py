"""vml branch, vml tag, vml rm and vml reflog: names for entries, dropping one, where refs were."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from vml.api._common import resolve_entry
from vml.errors import UnknownArea, UsageError
from vml.refs.branches import RefInfo, create_ref, delete_branch, delete_tag, list_refs
from vml.refs.git import ZERO
from vml.refs.namespace import AREA_PREFIX, BRANCH_PREFIX, REFS_PREFIX, REMOTE_PREFIX, TAG_PREFIX
from vml.refs.rewrite import drop_entry
from vml.repo import Repository


@dataclass(frozen=True, slots=True)
class RefResult:
    name: str
    entry: str
    summary: str
    areas: list[str] = field(default_factory=list)


def _ref_result(repo: Repository, info: RefInfo) -> RefResult:
    return RefResult(info.name, info.entry, repo.git.commit(info.entry).summary, info.areas)


def branch_list(repo: Repository) -> list[RefResult]:
    return [_ref_result(repo, info) for info in list_refs(repo.git, BRANCH_PREFIX)]


def tag_list(repo: Repository) -> list[RefResult]:
    return [_ref_result(repo, info) for info in list_refs(repo.git, TAG_PREFIX)]


def ref_create(repo: Repository, kind: str, name: str, start: str | None = None, *, area: str | None = None) -> RefResult:
    """A new branch or tag at `start` (default: the area's current entry)."""
    with repo.shared_lock():  # gc must not drop an entry between resolving and naming it
        entry = resolve_entry(repo, start or "HEAD", area)
        create_ref(repo.git, kind, name, entry, f"{kind}: created from {start or 'HEAD'}")
    return RefResult(name, entry, repo.git.commit(entry).summary)


def branch_delete(repo: Repository, name: str, *, force: bool = False) -> RefResult:
    entry = delete_branch(repo.git, name, force=force, message="branch: deleted")
    return RefResult(name, entry, repo.git.commit(entry).summary)


def tag_delete(repo: Repository, name: str) -> RefResult:
    entry = delete_tag(repo.git, name)
    return RefResult(name, entry, repo.git.commit(entry).summary)


@dataclass(frozen=True, slots=True)
class RmResult:
    entry: str
    summary: str
    moved: dict[str, tuple[str, str]]  # ref -> (old tip, new tip)
    rewritten: int
    kept_by: list[str]
    areas_moved: list[str]


def rm(repo: Repository, spec: str, *, area: str | None = None) -> RmResult:
    """Drop one entry from every branch and detached area HEAD whose history holds it."""
    with repo.shared_lock(), contextlib.ExitStack() as area_locks:
        for config in repo.areas():  # no commit may move a branch while it is rewritten
            area_locks.enter_context(repo.area_lock(config.name))
        entry = resolve_entry(repo, spec, area)
        summary = repo.git.commit(entry).summary
        dropped = drop_entry(repo.git, entry, f"rm: dropped {entry[:12]} {summary}")
    return RmResult(entry, summary, dropped.moved, dropped.rewritten, dropped.kept_by, dropped.areas_moved)


@dataclass(frozen=True, slots=True)
class ReflogEntry:
    selector: str  # what to type to name this position: HEAD@{2}, main@{0}
    entry: str | None  # None when the line records a deletion
    message: str
    time: int


def reflog(repo: Repository, ref: str | None = None, *, area: str | None = None, all_refs: bool = False, limit: int | None = None) -> list[ReflogEntry]:
    if all_refs:
        # The repository's own HEAD only mirrors its default branch: leave it out.
        names = [name for name in repo.git.reflog_names() if name != "HEAD" or not repo.areas()]
        shown = {name: name for name in names}
    elif ref is not None and ref not in ("HEAD", "@"):
        candidates = [ref] if ref.startswith(REFS_PREFIX) else [p + ref for p in (BRANCH_PREFIX, TAG_PREFIX, REMOTE_PREFIX)]
        full = next((name for name in candidates if repo.git.has_reflog(name)), None)
        if full is None:
            raise UsageError(f"no reflog for {ref!r}")
        names, shown = [full], {full: ref}
    else:
        try:
            config = repo.choose_area(area)
        except UnknownArea:
            if area is not None or repo.areas():
                raise
            config = None
        name = AREA_PREFIX + config.name if config else "HEAD"
        names, shown = [name], {name: "HEAD"}
    found = []
    for name in names:
        for position, line in enumerate(repo.git.reflog(name)):
            entry = line.new if line.new != ZERO else None
            found.append(ReflogEntry(f"{shown[name]}@{{{position}}}", entry, line.message, line.time))
    if all_refs:
        found.sort(key=lambda e: -e.time)
    return found[:limit] if limit is not None else found

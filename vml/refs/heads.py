"""Per-area HEADs, like git worktrees: each area is on a branch or detached at an entry.

An area's HEAD is the ref `refs/vml/areas/NAME`: symbolic (-> refs/heads/BRANCH) when the
area is on a branch, direct when detached. Moving a branch is one compare-and-swap of that
branch, so a crash never leaves the area and its branch disagreeing.

An area on a branch that has no entry yet has no such ref (git calls a symbolic ref to a
missing branch broken, unlike its own HEAD): the branch it waits for is the config key
`vml-unborn.NAME.branch`, and its first commit makes the ref.
"""

from __future__ import annotations

from dataclasses import dataclass

from vml.config import clear_unborn_branch, set_unborn_branch, unborn_branch, unborn_branches
from vml.errors import UsageError
from vml.refs.git import ZERO, GitDag
from vml.refs.namespace import AREA_PREFIX, BRANCH_PREFIX


@dataclass(frozen=True, slots=True)
class AreaHead:
    area: str
    branch: str | None  # short branch name, None when detached
    entry: str | None  # None before the area's first entry

    @property
    def ref(self) -> str:
        return AREA_PREFIX + self.area


def read_head(git: GitDag, area: str) -> AreaHead:
    ref = AREA_PREFIX + area
    target = git.symbolic_target(ref)
    if target is not None:
        branch = target[len(BRANCH_PREFIX) :] if target.startswith(BRANCH_PREFIX) else target
        return AreaHead(area, branch, git.ref_target(target))
    entry = git.ref_target(ref)
    if entry is None:
        # A branch the area waits for (born meanwhile if a first commit stopped short of the ref).
        branch = unborn_branch(git, area)
        if branch is not None:
            return AreaHead(area, branch, git.ref_target(BRANCH_PREFIX + branch))
    return AreaHead(area, None, entry)


def areas_on_branch(git: GitDag, branch: str) -> list[str]:
    found = []
    for ref in git.ref_names(AREA_PREFIX):
        if git.symbolic_target(ref) == BRANCH_PREFIX + branch:
            found.append(ref[len(AREA_PREFIX) :])
    for area, waiting_for in unborn_branches(git).items():
        if waiting_for == branch and area not in found and read_head(git, area).branch == branch:
            found.append(area)
    return sorted(found)


def check_branch_free(git: GitDag, area: str, branch: str) -> None:
    """Refuse a branch another area is on: two areas on one branch would disagree about it."""
    others = [a for a in areas_on_branch(git, branch) if a != area]
    if others:
        raise UsageError(f"branch {branch!r} is in use by area {others[0]!r}; each area needs its own branch")


def attach(git: GitDag, area: str, branch: str, message: str) -> None:
    """Put the area on `branch` (which may not exist yet); refuses a branch another area is on."""
    check_branch_free(git, area, branch)
    old = read_head(git, area).entry
    new = git.ref_target(BRANCH_PREFIX + branch)
    if new is None:
        _drop_ref_keep_log(git, area)
        set_unborn_branch(git, area, branch)
        return
    git.ensure_reflog(AREA_PREFIX + area)
    git.set_symbolic(AREA_PREFIX + area, BRANCH_PREFIX + branch)
    clear_unborn_branch(git, area)
    git.append_reflog(AREA_PREFIX + area, old, new, message)


def detach(git: GitDag, area: str, entry: str, message: str) -> None:
    git.ensure_reflog(AREA_PREFIX + area)
    git.set_direct(AREA_PREFIX + area, entry, message)
    clear_unborn_branch(git, area)


def advance(git: GitDag, head: AreaHead, new_entry: str, message: str) -> None:
    """Move the area (and its branch) from head.entry to new_entry, compare-and-swap."""
    if head.branch is not None:
        git.update_ref(BRANCH_PREFIX + head.branch, new_entry, head.entry, message)
        if head.entry is None:  # the branch is born: the area's ref can point at it now
            git.ensure_reflog(head.ref)
            git.set_symbolic(head.ref, BRANCH_PREFIX + head.branch)
            clear_unborn_branch(git, head.area)
        git.append_reflog(head.ref, head.entry, new_entry, message)
    else:
        git.update_ref(head.ref, new_entry, head.entry, message)


def _drop_ref_keep_log(git: GitDag, area: str) -> None:
    ref = AREA_PREFIX + area
    kept = git.reflog(ref)
    git.delete_ref(ref)  # libgit2 drops the reflog with the ref: write it back
    if kept:
        git.write_reflog(ref, kept)


def branch_exists(git: GitDag, branch: str) -> bool:
    return git.ref_target(BRANCH_PREFIX + branch) is not None


def remove_head(git: GitDag, area: str, message: str) -> None:
    """Drop an area's HEAD; its reflog stays, so gc keeps what it reached for a while."""
    ref = AREA_PREFIX + area
    entry = read_head(git, area).entry
    _drop_ref_keep_log(git, area)
    clear_unborn_branch(git, area)
    if entry:
        git.append_reflog(ref, entry, ZERO, message)

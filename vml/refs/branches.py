"""Branches and tags: the names users give to lines of history and to single entries.

A deleted branch keeps its reflog, with a last line recording the deletion, so its entries
stay recoverable (and protected from gc) until those lines expire.
"""

from __future__ import annotations

from dataclasses import dataclass

from vml.errors import UsageError
from vml.refs.git import ZERO, GitDag
from vml.refs.heads import areas_on_branch
from vml.refs.namespace import AREA_PREFIX, BRANCH_PREFIX, PUBLIC_PREFIX, TAG_PREFIX, short_name

RESERVED = {"HEAD", "@", "FETCH_HEAD", "ORIG_HEAD"}


@dataclass(frozen=True, slots=True)
class RefInfo:
    name: str
    entry: str
    areas: list[str]  # areas on this branch (always empty for tags)


def check_name(git: GitDag, kind: str, name: str) -> None:
    prefix = BRANCH_PREFIX if kind == "branch" else TAG_PREFIX
    if name in RESERVED or name.startswith("-") or "@{" in name or not git.is_valid_ref_name(prefix + name):
        raise UsageError(f"{name!r} is not a valid {kind} name (git's ref-name rules: no '..', spaces, '~', '^', ':', leading '-')")


def list_refs(git: GitDag, prefix: str) -> list[RefInfo]:
    found = []
    for ref in git.ref_names(prefix):
        target = git.ref_target(ref)
        if target is None:
            continue
        name = ref[len(prefix) :]
        found.append(RefInfo(name, target, areas_on_branch(git, name) if prefix == BRANCH_PREFIX else []))
    return found


def create_ref(git: GitDag, kind: str, name: str, entry: str, message: str) -> None:
    check_name(git, kind, name)
    ref = (BRANCH_PREFIX if kind == "branch" else TAG_PREFIX) + name
    if git.ref_target(ref) is not None:
        raise UsageError(f"a {kind} named {name!r} exists already (at {git.ref_target(ref)[:12]})")
    git.update_ref(ref, entry, None, message)


def delete_tag(git: GitDag, name: str) -> str:
    ref = TAG_PREFIX + name
    target = git.ref_target(ref)
    if target is None:
        raise UsageError(f"no tag named {name!r}")
    git.delete_ref(ref)
    return target


def delete_branch(git: GitDag, name: str, *, force: bool, message: str) -> str:
    """Delete branch `name`; returns the entry it pointed at. Without `force`, refuses unless
    another branch, tag or area HEAD reaches that entry."""
    ref = BRANCH_PREFIX + name
    tip = git.ref_target(ref)
    if tip is None:
        raise UsageError(f"no branch named {name!r}")
    on_it = areas_on_branch(git, name)
    if on_it:
        raise UsageError(f"branch {name!r} is the branch of area {on_it[0]!r}; switch that area to another branch first")
    if not force and not _reached_elsewhere(git, ref, tip):
        raise UsageError(f"branch {name!r} has entries no other branch, tag or area holds; delete it anyway with -D")
    kept = git.reflog(ref)
    git.delete_ref(ref)  # libgit2 drops the reflog with the ref: write it back
    git.write_reflog(ref, kept)
    git.append_reflog(ref, tip, ZERO, message)
    return tip


def _reached_elsewhere(git: GitDag, ref: str, tip: str) -> bool:
    for other in git.ref_names():
        if other == ref or not other.startswith((BRANCH_PREFIX, TAG_PREFIX, AREA_PREFIX)):
            continue
        target = git.ref_target(other)
        if target is not None and (target == tip or git.is_ancestor(tip, target)):
            return True
    return False


def decorations(git: GitDag) -> dict[str, list[str]]:
    """Entry id -> what `log` writes beside it: "area -> branch", "area (detached)", branches
    no area is on, "tag: NAME", "public/NAME"."""
    labels: dict[str, list[str]] = {}
    for ref in git.ref_names():
        target = git.ref_target(ref)
        if target is None:
            continue
        if ref.startswith(AREA_PREFIX):
            area = ref[len(AREA_PREFIX) :]
            symbolic = git.symbolic_target(ref)
            label = f"{area} -> {symbolic[len(BRANCH_PREFIX):]}" if symbolic else f"{area} (detached)"
            labels.setdefault(target, []).insert(0, label)
        elif ref.startswith(BRANCH_PREFIX):
            branch = ref[len(BRANCH_PREFIX) :]
            if not areas_on_branch(git, branch):  # else "area -> branch" says it
                labels.setdefault(target, []).append(branch)
        elif ref.startswith(TAG_PREFIX):
            labels.setdefault(target, []).append("tag: " + ref[len(TAG_PREFIX) :])
        elif ref.startswith(PUBLIC_PREFIX):
            labels.setdefault(target, []).append(short_name(ref))
    return labels

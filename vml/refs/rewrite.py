"""Dropping one entry from history: its descendants are recorded again, unchanged but for
their parents, and every branch and detached area HEAD that held it moves to the new line.

New commits are written first; then each ref moves by compare-and-swap. A crash between
two ref moves leaves some refs on the old line and some on the new: both are whole
histories, and the reflogs say which moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vml.errors import UsageError
from vml.refs.git import GitDag
from vml.refs.heads import read_head
from vml.refs.namespace import AREA_PREFIX, BRANCH_PREFIX, TAG_PREFIX, short_name


@dataclass(slots=True)
class DropResult:
    entry: str
    moved: dict[str, tuple[str, str]] = field(default_factory=dict)  # ref -> (old tip, new tip)
    rewritten: int = 0  # later entries recorded again
    kept_by: list[str] = field(default_factory=list)  # tags that still reach the entry
    areas_moved: list[str] = field(default_factory=list)  # areas whose current entry was dropped


def drop_entry(git: GitDag, entry: str, message: str) -> DropResult:
    result = DropResult(entry)
    holders = _refs_holding(git, entry)
    if not holders:
        raise UsageError(f"entry {entry[:12]} is on no branch and no area's HEAD; nothing to drop it from")
    parents = list(git.commit(entry).parents)
    for ref, tip in holders.items():
        if tip == entry and not parents:
            raise UsageError(f"entry {entry[:12]} is the only entry of {short_name(ref)}; delete the branch instead (vml branch -D)")
    replaced: dict[str, list[str]] = {entry: parents}
    new_tips = {ref: _rewrite(git, tip, replaced) for ref, tip in holders.items()}
    result.rewritten = len(replaced) - 1
    result.kept_by = [short_name(ref) for ref in git.ref_names(TAG_PREFIX) if _reaches(git, git.ref_target(ref), entry)]
    for ref, tip in holders.items():
        new_tip = new_tips[ref]
        git.update_ref(ref, new_tip, tip, message)
        result.moved[ref] = (tip, new_tip)
        if ref.startswith(BRANCH_PREFIX):
            for area_ref in git.ref_names(AREA_PREFIX):
                if git.symbolic_target(area_ref) == ref:
                    git.append_reflog(area_ref, tip, new_tip, message)
                    if tip == entry:
                        result.areas_moved.append(area_ref[len(AREA_PREFIX) :])
        elif tip == entry:
            result.areas_moved.append(ref[len(AREA_PREFIX) :])
    return result


def _refs_holding(git: GitDag, entry: str) -> dict[str, str]:
    """Branches and detached area HEADs whose history contains `entry`, with their tips."""
    holders = {}
    for ref in git.ref_names(BRANCH_PREFIX):
        tip = git.ref_target(ref)
        if tip is not None and _reaches(git, tip, entry):
            holders[ref] = tip
    for ref in git.ref_names(AREA_PREFIX):
        head = read_head(git, ref[len(AREA_PREFIX) :])
        if head.branch is None and head.entry is not None and _reaches(git, head.entry, entry):
            holders[ref] = head.entry
    return holders


def _reaches(git: GitDag, tip: str | None, entry: str) -> bool:
    return tip is not None and (tip == entry or git.is_ancestor(entry, tip))


def _rewrite(git: GitDag, tip: str, replaced: dict[str, list[str]]) -> str:
    """The tip of the line from `tip` with the dropped entry left out. `replaced` maps each
    old commit to what stands for it now (the dropped entry to its parents) and grows."""
    for commit_id in reversed(list(git.walk([tip]))):  # parents before children
        if commit_id in replaced:
            continue
        old_parents = git.commit(commit_id).parents
        if not any(p in replaced for p in old_parents):
            continue
        new_parents: list[str] = []
        for parent in old_parents:
            for stand_in in replaced.get(parent, [parent]):
                if stand_in not in new_parents:
                    new_parents.append(stand_in)
        replaced[commit_id] = [git.recommit(commit_id, new_parents)]
    return replaced[tip][0] if tip in replaced else tip

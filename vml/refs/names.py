"""What users type for an entry, resolved to an entry id: full or abbreviated ids, branch and
tag names, full ref names, HEAD and @, reflog positions X@{N} and ancestry suffixes ~N, ^N.

Parsed here rather than by libgit2's revparse so that an ambiguous name can be refused with
the list of what it matched, and HEAD can mean a working area's HEAD.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from vml.errors import UnknownEntry, UsageError
from vml.refs.git import ZERO, GitDag
from vml.refs.heads import AreaHead
from vml.refs.namespace import BRANCH_PREFIX, REFS_PREFIX, REMOTE_PREFIX, TAG_PREFIX, ref_kind, short_name

SPEC = re.compile(r"(?P<base>.*?)(?:@\{(?P<reflog>[^}]*)\})?(?P<suffixes>(?:[~^][0-9]*)*)", re.DOTALL)
SUFFIX = re.compile(r"([~^])([0-9]*)")
HEX = re.compile(r"[0-9a-fA-F]{4,40}")


@dataclass(frozen=True, slots=True)
class Match:
    label: str  # what matched, for messages: "branch main", "entry 3f2a…"
    commit: str
    ref: str | None  # the ref that matched, None for an id


def resolve(git: GitDag, spec: str, area_head: Callable[[], AreaHead | None]) -> str:
    """The entry id `spec` names. `area_head` gives the HEAD that HEAD and @ mean (None: the
    repository's own HEAD, for a repository without areas); it may raise to say why none."""
    parsed = SPEC.fullmatch(spec)
    base, reflog, suffixes = parsed["base"], parsed["reflog"], parsed["suffixes"]
    if not spec or (not base and reflog is None):
        raise UnknownEntry(f"{spec!r} does not name an entry")
    if base in ("HEAD", "@") or (not base and reflog is not None):
        match = _head_match(git, area_head(), own_ref=(base == "HEAD"), want_reflog=reflog is not None)
    else:
        found = _matches(git, base)
        if not found and reflog is not None:  # a deleted branch still has its reflog
            found = [Match(f"deleted branch {base}", ZERO, ref) for ref in (BRANCH_PREFIX + base,) if git.reflog(ref)]
        match = _only_match(spec, base, found)
    commit = match.commit
    if reflog is not None:
        commit = _reflog_position(git, spec, match, reflog)
    for operator, digits in SUFFIX.findall(suffixes):
        commit = _step(git, spec, commit, operator, digits)
    git.commit(commit)  # an entry, not a tree or a blob
    return commit


def _head_match(git: GitDag, head: AreaHead | None, *, own_ref: bool, want_reflog: bool) -> Match:
    if head is None:  # no area: the repository's HEAD, as in a bare git repository
        target = git.ref_target("HEAD")
        if target is None:
            raise UnknownEntry("HEAD names no entry yet")
        return Match("HEAD", target, "HEAD")
    if head.entry is None:
        raise UnknownEntry(f"area {head.area} has no entry yet")
    # git: HEAD@{N} is HEAD's own log, @{N} the log of the branch HEAD is on.
    ref = head.ref if own_ref or head.branch is None or not want_reflog else BRANCH_PREFIX + head.branch
    return Match(f"HEAD of area {head.area}", head.entry, ref)


def _matches(git: GitDag, base: str) -> list[Match]:
    found = []
    candidates = [base] if base.startswith(REFS_PREFIX) else [BRANCH_PREFIX + base, TAG_PREFIX + base, REMOTE_PREFIX + base]
    if base.startswith("public/"):
        candidates.append(REFS_PREFIX + base)  # public/NAME: refs/public/NAME
    for ref in candidates:
        target = git.ref_target(ref)
        if target is not None:
            found.append(Match(f"{ref_kind(ref)} {short_name(ref)} (-> {target[:12]})", target, ref))
    if HEX.fullmatch(base):
        for commit in git.commits_with_prefix(base.lower()):
            found.append(Match(f"entry {commit[:12]}", commit, None))
    return found


def _only_match(spec: str, base: str, found: list[Match]) -> Match:
    if not found:
        raise UnknownEntry(f"no entry matches {spec!r} (no branch, tag or entry id {base!r})")
    if len({m.commit for m in found}) > 1:
        listed = ", ".join(m.label for m in found)
        raise UnknownEntry(f"{base!r} is ambiguous: {listed}; use more digits or a full ref name ({BRANCH_PREFIX}..., {TAG_PREFIX}...)")
    # The same entry reached several ways (a tag on a branch's tip): any of them will do, but
    # a reflog position needs a ref, and a branch's log is the one users mean.
    return next((m for m in found if m.ref is not None), found[0])


def _reflog_position(git: GitDag, spec: str, match: Match, position: str) -> str:
    if match.ref is None:
        raise UnknownEntry(f"{spec!r}: @{{N}} needs a branch, tag or HEAD, not an entry id")
    if not position.isdigit():
        raise UsageError(f"{spec!r}: only numeric reflog positions like @{{1}} are supported")
    lines = git.reflog(match.ref)
    number = int(position)
    if number == 0 and not lines:
        return match.commit
    if number >= len(lines):
        raise UnknownEntry(f"{spec!r}: the reflog of {short_name(match.ref)} has only {len(lines)} lines")
    commit = lines[number].new
    if commit == ZERO:
        raise UnknownEntry(f"{spec!r}: at that point {short_name(match.ref)} was deleted")
    return commit


def _step(git: GitDag, spec: str, commit: str, operator: str, digits: str) -> str:
    count = int(digits) if digits else 1
    if operator == "^":
        if count == 0:
            return commit
        parents = git.commit(commit).parents
        if count > len(parents):
            raise UnknownEntry(f"{spec!r}: entry {commit[:12]} has {len(parents)} parent{'' if len(parents) == 1 else 's'}")
        return parents[count - 1]
    for _ in range(count):
        parents = git.commit(commit).parents
        if not parents:
            raise UnknownEntry(f"{spec!r} goes back past the first entry ({commit[:12]})")
        commit = parents[0]
    return commit


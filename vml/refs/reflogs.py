"""Reflog expiry: which lines of where refs have been are old enough to forget.

Each line protects one entry from gc: the entry the ref moved to, or for a deletion line
the entry the ref held. Like git, lines go after 90 days, and lines whose entry no ref
reaches any more go sooner (30 days by default, `--expire` to choose).
"""

from __future__ import annotations

import datetime
import re
import time

from vml.errors import UsageError
from vml.refs.git import ZERO, GitDag, ReflogLine

DAY = 86400
EXPIRE_ALL = 90 * DAY
EXPIRE_UNREACHABLE = 30 * DAY
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": DAY, "week": 7 * DAY, "month": 30 * DAY, "year": 365 * DAY}
AGO = re.compile(r"(\d+)[. ]?(second|minute|hour|day|week|month|year)s?(?:[. ]ago)?")


def protected_entry(line: ReflogLine) -> str | None:
    entry = line.new if line.new != ZERO else line.old
    return None if entry == ZERO else entry


def parse_when(text: str, now: float | None = None) -> float | None:
    """A cutoff time from `now`, `never` (None), `2.weeks`, `3 days ago`, or an ISO date."""
    now = time.time() if now is None else now
    value = text.strip().lower()
    if value in ("now", "all"):
        return now + 1  # lines written this very second expire too
    if value == "never":
        return None
    relative = AGO.fullmatch(value)
    if relative:
        return now - int(relative[1]) * UNITS[relative[2]]
    return parse_date(text, "use now, never, 2.weeks, '3 days', or a date like 2026-11-01")


def parse_date(text: str, forms: str) -> float:
    """An ISO date or time (local time unless it says otherwise); `forms`: what the error
    suggests instead."""
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"cannot read {text!r} as a time: {forms}") from None
    if when.tzinfo is None:
        when = when.astimezone()
    return when.timestamp()


def expire(git: GitDag, reachable: set[str], *, unreachable_before: float | None, all_before: float | None) -> int:
    """Drop old reflog lines; returns how many went. `reachable` holds every entry a ref reaches."""
    dropped = 0
    for name in git.reflog_names():
        lines = git.reflog(name)
        kept = [line for line in lines if not _expired(line, reachable, unreachable_before, all_before)]
        if len(kept) == len(lines):
            continue
        dropped += len(lines) - len(kept)
        if kept or git.ref_target(name) is not None or git.symbolic_target(name) is not None:
            git.write_reflog(name, kept)
        else:
            git.delete_reflog(name)  # a deleted branch whose history is now forgotten
    return dropped


def rewrite_lost_predecessors(git: GitDag, kept: set[str]) -> int:
    """Make every line's previous value an entry that stays: a line whose old id gc is about
    to delete (the lines that led there expired) names instead the new id of the line
    before it, or none — as git's `reflog expire --rewrite` does, so `git fsck` finds no
    reflog entry naming a missing commit. `kept` holds every entry gc keeps; returns how
    many lines changed."""
    rewritten = 0
    for name in git.reflog_names():
        lines = git.reflog(name)  # newest first
        repaired = []
        for position, line in enumerate(lines):
            if line.old != ZERO and line.old not in kept:
                earlier = lines[position + 1].new if position + 1 < len(lines) else ZERO
                line = line.with_old(earlier if earlier in kept else ZERO)
                rewritten += 1
            repaired.append(line)
        if repaired != lines:
            git.write_reflog(name, repaired)
    return rewritten


def _expired(line: ReflogLine, reachable: set[str], unreachable_before: float | None, all_before: float | None) -> bool:
    if all_before is not None and line.time < all_before:
        return True
    entry = protected_entry(line)
    return unreachable_before is not None and line.time < unreachable_before and (entry is None or entry not in reachable)

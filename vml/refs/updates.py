"""THE rule for how a branch or tag may move to another entry, the same for push, pull,
import and fetched tags: a branch moves forward (fast-forward) or, when forced, anywhere; a
tag never moves unless forced; a ref that does not exist yet is new."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vml.refs.git import GitDag

UP_TO_DATE, NEW, FAST_FORWARD, FORCED, REJECTED = "up to date", "new", "fast-forward", "forced", "rejected"
MOVES = (NEW, FAST_FORWARD, FORCED)


def classify(git: GitDag, old: str | None, new: str, *, tag: bool = False, force: bool = False,
             descends: Callable[[str], bool] | None = None, held_is_up_to_date: bool = False) -> str:
    """How a ref at `old` (None: absent) may move to `new`. `descends(old)` says whether `new`
    descends from `old` when the commits are not stored yet (an import judges before it
    stores); by default the repository answers. With `held_is_up_to_date` (a pull), a branch
    whose entries already include `new` is up to date."""
    if old == new:
        return UP_TO_DATE
    if old is None:
        return NEW
    if held_is_up_to_date and git.has_object(new) and git.is_ancestor(new, old):
        return UP_TO_DATE
    if not tag and (descends(old) if descends is not None else git.has_object(old) and git.is_ancestor(old, new)):
        return FAST_FORWARD
    return FORCED if force else REJECTED


@dataclass(frozen=True, slots=True)
class RefChange:
    """How one ref moved (or was refused), as a command reports it."""

    ref: str  # short name: main, v1
    old: str | None
    new: str
    status: str  # up to date, new, fast-forward, forced, rejected
    reason: str = ""

"""Where each kind of ref lives in git's namespace, and the short name a user sees for one:
the one home of every ref prefix. Imports nothing, so every module may import it."""

from __future__ import annotations

REFS_PREFIX = "refs/"
BRANCH_PREFIX = "refs/heads/"
TAG_PREFIX = "refs/tags/"
REMOTE_PREFIX = "refs/remotes/"  # REMOTE_PREFIX + "origin/main": what a fetch saw there
PUBLIC_PREFIX = "refs/public/"  # PUBLIC_PREFIX + NAME: a public entry's lineage (vml publish), shown as public/NAME
VML_PREFIX = "refs/vml/"  # vml's own refs, which git tools leave alone
AREA_PREFIX = VML_PREFIX + "areas/"  # an area's HEAD
BASE_PREFIX = VML_PREFIX + "bases/"  # BASE_PREFIX + "NAME/VERSION": a base image's entry

# The refs a short name can stand for, each with the word messages use for it. A short name
# is tried as a branch, a tag, then a remote branch; an area's HEAD is only shown short.
_KINDS = ((BRANCH_PREFIX, "branch"), (TAG_PREFIX, "tag"), (REMOTE_PREFIX, "remote branch"), (AREA_PREFIX, "area"))


def tracking_ref(remote: str, branch: str = "") -> str:
    """Where a fetch keeps what `remote` has as `branch`: refs/remotes/REMOTE/BRANCH (with no
    branch, the prefix of all of that remote's)."""
    return f"{REMOTE_PREFIX}{remote}/{branch}"


def short_name(ref: str) -> str:
    """The name shown for a ref: main for refs/heads/main, origin/main for
    refs/remotes/origin/main; other refs (a base's) in full."""
    if ref.startswith(PUBLIC_PREFIX):
        return ref[len(REFS_PREFIX) :]
    for prefix, _kind in _KINDS:
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def ref_kind(ref: str) -> str:
    """What a ref is, in a message's words: branch, tag, remote branch, area, public entry or ref."""
    if ref.startswith(PUBLIC_PREFIX):
        return "public entry"
    return next((kind for prefix, kind in _KINDS if ref.startswith(prefix)), "ref")

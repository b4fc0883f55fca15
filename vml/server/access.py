"""What a caller may do in a namespace, and where a namespace's refs live.

Every user has a private namespace of the same name; a group is a namespace whose members
have a role in it. Roles, each including the one before: read (fetch), append (add entries:
new refs, fast-forwards), write (also move refs anywhere: forced pushes). A token's mode caps
what its user may. Public entries (refs/public/*) of every namespace are readable by every
user, and by anonymous callers when the server allows it. Admins may do everything.

On disk a namespace's refs are git namespaces: refs/namespaces/NS/refs/heads/main, so the
repository stays one git repository that `git fsck`, `vml fsck` and `vml gc` see whole.
"""

from __future__ import annotations

from vml.refs.namespace import BASE_PREFIX, BRANCH_PREFIX, PUBLIC_PREFIX, REFS_PREFIX, TAG_PREFIX
from vml.server.accounts import APPEND, READ, ROLES, WRITE, Caller

NAMESPACES = "refs/namespaces/"
CARRIED = (BRANCH_PREFIX, TAG_PREFIX, PUBLIC_PREFIX, BASE_PREFIX)  # the refs a namespace holds


def stored_ref(namespace: str, ref: str) -> str:
    return f"{NAMESPACES}{namespace}/{ref}"


def namespace_prefix(namespace: str) -> str:
    return f"{NAMESPACES}{namespace}/{REFS_PREFIX}"


def role(caller: Caller, namespace: str) -> str | None:
    """The most `caller` may do in `namespace` (None: only its public entries, if those)."""
    if caller.anonymous:
        return None
    if caller.admin or caller.user == namespace:
        held: str | None = WRITE
    else:
        held = dict(caller.groups).get(namespace)
    if held is None:
        return None
    return min(held, caller.limit, key=ROLES.index)


def may(caller: Caller, namespace: str, needed: str) -> bool:
    held = role(caller, namespace)
    return held is not None and ROLES.index(held) >= ROLES.index(needed)


def reads_public(caller: Caller, anonymous_public: bool) -> bool:
    return not caller.anonymous or anonymous_public


__all__ = ["APPEND", "READ", "WRITE", "CARRIED", "NAMESPACES", "may", "namespace_prefix", "reads_public", "role", "stored_ref"]

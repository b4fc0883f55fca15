"""Include/exclude rules: gitignore semantics (pathspec), and the fast path for simple
patterns giving exactly pathspec's answers."""

from __future__ import annotations

import os

import pathspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vml.areas.kinds import default_rules
from vml.areas.rules import EPHEMERAL, GUEST_EXCLUDE, GUEST_INCLUDE, PATHSPEC_BACKEND, Rules, Scope
from vml.errors import UsageError

NAMES = st.sampled_from([b"proc", b"var", b"cache", b"tmp", b"a.swp", b"x.swap", b"swapfile", b"home", b"etc", b"lib", b"b", b"swp",
                         b".swp", b"profile.d", b"vml-environment.sh", b"usr", b"local", b"cachex", "é.swp".encode(), b"\xff.swp",
                         b"\xc3.swp", b"krb5cc_0", b"x509up_u1000", b"\xffkrb5cc_", b"sss", b"secrets"])


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(NAMES, min_size=1, max_size=5), is_dir=st.booleans())
def test_fast_exclusion_answers_as_pathspec_does(parts, is_dir):
    """Asked top-down, as a walk asks: a path is only asked about if no directory above it
    was excluded."""
    rules = Rules(("/",), GUEST_EXCLUDE + EPHEMERAL)
    assert rules._simple_excludes is not None
    spec = pathspec.GitIgnoreSpec.from_lines(GUEST_EXCLUDE + EPHEMERAL, backend=PATHSPEC_BACKEND)
    for depth in range(1, len(parts) + 1):
        rel, leaf_is_dir = b"/".join(parts[:depth]), depth < len(parts) or is_dir
        text = os.fsdecode(rel)  # (the fast path reads the bytes; pathspec, their text)
        expected = spec.match_file(text + "/" if leaf_is_dir else text)
        assert rules._is_excluded(rel, leaf_is_dir) == expected, rel
        if expected:
            break


def test_scopes_of_the_guest_defaults():
    rules = default_rules("ssh")
    assert rules.include == GUEST_INCLUDE
    root = rules.root_scope()
    assert root is Scope.ON_THE_WAY
    assert rules.scope(b"usr", True, root) is Scope.ON_THE_WAY
    assert rules.scope(b"usr/local", True, Scope.ON_THE_WAY) is Scope.IN
    assert rules.scope(b"usr/bin", True, Scope.ON_THE_WAY) is Scope.OUT
    assert rules.scope(b"proc", True, root) is Scope.OUT
    assert rules.scope(b"home/u/x.swp", False, Scope.IN) is Scope.OUT
    assert rules.scope(b"etc/profile.d/vml-environment.sh", False, Scope.IN) is Scope.OUT
    assert rules.scope(b"var", True, root) is Scope.ON_THE_WAY and rules.scope(b"var/cache", True, Scope.ON_THE_WAY) is Scope.OUT
    assert rules.walk_roots() == ["etc", "home", "opt", "root", "usr/local", "var/lib"]


def test_negation_and_wildcards_fall_back_to_pathspec():
    rules = Rules(("/home/*/data",), ("*.tmp", "!keep.tmp"))
    assert rules._simple_excludes is None and rules.walk_roots() is None
    assert rules.scope(b"home/a/data/x.tmp", False, Scope.IN) is Scope.OUT
    assert rules.scope(b"home/a/data/keep.tmp", False, Scope.IN) is Scope.IN
    assert rules.scope(b"home/a", True, Scope.ON_THE_WAY) is Scope.ON_THE_WAY
    assert rules.scope(b"home/a/data", True, Scope.ON_THE_WAY) is Scope.IN
    # A name that is not UTF-8 (its text holds lone surrogates) is matched, not refused.
    assert rules.scope(b"home/a/data/\xff.tmp", False, Scope.IN) is Scope.OUT
    assert rules.scope(b"home/\xff", True, Scope.ON_THE_WAY) is Scope.ON_THE_WAY
    assert rules.scope(b"home/\xff/data", True, Scope.ON_THE_WAY) is Scope.IN


def test_rules_file_round_trip_and_errors():
    rules = Rules(("/home", "/opt"), ("*.o", "/build/"))
    assert Rules.from_text(rules.to_text(), "rules") == rules
    with pytest.raises(UsageError, match="expected 'include PATTERN'"):
        Rules.from_text("keep /home\n", "rules")
    with pytest.raises(UsageError, match="one gitignore pattern"):
        Rules(("/a\n/b",))

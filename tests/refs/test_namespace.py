"""Ref names: the short name a user sees for each kind of ref, and the word for its kind."""

from __future__ import annotations

import pytest

from vml.refs import bases, heads, names
from vml.refs.namespace import AREA_PREFIX, BASE_PREFIX, BRANCH_PREFIX, REMOTE_PREFIX, TAG_PREFIX, ref_kind, short_name


@pytest.mark.parametrize("ref, short, kind", [
    ("refs/heads/main", "main", "branch"),
    ("refs/heads/feature/x", "feature/x", "branch"),
    ("refs/tags/v1", "v1", "tag"),
    ("refs/remotes/origin/main", "origin/main", "remote branch"),
    ("refs/vml/areas/guest", "guest", "area"),
    ("refs/vml/bases/debian/12", "refs/vml/bases/debian/12", "ref"),  # shown in full
    ("HEAD", "HEAD", "ref"),
])
def test_short_name_and_kind(ref, short, kind):
    assert short_name(ref) == short
    assert ref_kind(ref) == kind


def test_the_old_homes_still_export_the_prefixes():
    assert (heads.AREA_PREFIX, heads.BRANCH_PREFIX) == (AREA_PREFIX, BRANCH_PREFIX)
    assert (names.TAG_PREFIX, names.REMOTE_PREFIX) == (TAG_PREFIX, REMOTE_PREFIX)
    assert bases.BASE_PREFIX == BASE_PREFIX == "refs/vml/bases/"

"""Property: any small tree committed then checked out --to a new directory comes back identical,
and the same tree captured in two repositories gives the same manifest root (canonical bytes).

Calls the library directly (vml.api) for speed; each example gets its own temp directory.
"""

from __future__ import annotations

import os
import random
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.treecompare import compare, snapshot

from vml import api
from vml.repo import Repository

os.environ.setdefault("VML_AUTHOR_NAME", "Test User")
os.environ.setdefault("VML_AUTHOR_EMAIL", "test@example.org")

KiB = 1024

names = st.binary(min_size=1, max_size=16).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)
mtimes = st.integers(min_value=-(10**18), max_value=4 * 10**18)
# (0o664, 0o777, 0o620: modes a umask of 022 keeps a file from being born with)
file_modes = st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2711, 0o444, 0o000, 0o6777, 0o1644, 0o664, 0o777, 0o620])
dir_modes = st.sampled_from([0o755, 0o700, 0o1777, 0o2775, 0o555, 0o3750])
# (seed, size): contents are generated from a seed, so large files cost nothing to shrink
sizes = st.one_of(
    st.just(0),
    st.integers(min_value=1, max_value=4 * KiB),
    st.integers(min_value=300 * KiB, max_value=1200 * KiB),
)
contents = st.one_of(st.binary(max_size=64), st.tuples(st.integers(0, 2**32), sizes))
files = st.tuples(st.just("file"), contents, file_modes, mtimes)
symlinks = st.tuples(st.just("link"), st.binary(min_size=1, max_size=40).filter(lambda t: b"\0" not in t), mtimes)


def _dirs(children):
    return st.tuples(st.just("dir"), st.dictionaries(names, children, max_size=5), dir_modes, mtimes)


nodes = st.recursive(st.one_of(files, symlinks), _dirs, max_leaves=12)
trees = st.tuples(st.just("dir"), st.dictionaries(names, nodes, max_size=6), dir_modes, mtimes)


def _data(content) -> bytes:
    if isinstance(content, bytes):
        return content
    seed, size = content
    return random.Random(seed).randbytes(size)


def write_tree(path: bytes, node) -> None:
    """Create `node` at `path`: contents first, then modes, then times (children before parents)."""
    kind = node[0]
    if kind == "file":
        _, content, mode, mtime = node
        with open(path, "wb") as f:
            f.write(_data(content))
        os.chmod(path, mode)
        os.utime(path, ns=(mtime, mtime))
    elif kind == "link":
        _, target, mtime = node
        os.symlink(target, path)
        os.utime(path, ns=(mtime, mtime), follow_symlinks=False)
    else:
        _, children, mode, mtime = node
        os.makedirs(path, exist_ok=True)
        for name, child in children.items():
            write_tree(os.path.join(path, name), child)
        os.chmod(path, mode)
        os.utime(path, ns=(mtime, mtime))


def _commit_tree(base: bytes, tree) -> tuple[Repository, str, bytes]:
    src = os.path.join(base, b"src")
    write_tree(src, tree)
    api.init(os.fsdecode(base))
    repo = Repository.discover(os.fsdecode(base))
    api.area_add(repo, "wa", directory=os.fsdecode(src))
    result = api.commit(repo, "roundtrip", area="wa")
    assert result.created and result.skipped == []
    return repo, result.entry, src


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tree=trees, umask=st.sampled_from([0o022, 0o077, 0o002, 0]))
def test_commit_then_checkout_gives_the_same_tree(tree, umask):
    """(Under any umask: a checkout gives a file its mode as it is made where the umask lets it.)"""
    with tempfile.TemporaryDirectory(prefix="vml-roundtrip-") as tmp:
        base = os.fsencode(tmp)
        repo, entry, src = _commit_tree(base, tree)
        try:
            out = os.path.join(base, b"out")
            before = snapshot(src)
            was = os.umask(umask)
            try:
                api.checkout(repo, entry, to=os.fsdecode(out))
            finally:
                os.umask(was)
            assert compare(src, out) == []
            assert snapshot(src) == before  # commit and checkout left the source alone
            info = api.entry_info(repo, entry)
            assert info.files == sum(1 for v in before.values() if v["type"] == "file")
            assert api.fsck(repo).ok
        finally:
            repo.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tree=trees)
def test_same_tree_gives_same_manifest_in_two_repositories(tree):
    with tempfile.TemporaryDirectory(prefix="vml-canon-a-") as tmp_a, tempfile.TemporaryDirectory(prefix="vml-canon-b-") as tmp_b:
        repo_a, entry_a, src_a = _commit_tree(os.fsencode(tmp_a), tree)
        repo_b, entry_b, src_b = _commit_tree(os.fsencode(tmp_b), tree)
        try:
            assert compare(src_a, src_b) == []
            manifest_a = api.entry_info(repo_a, entry_a).manifest
            manifest_b = api.entry_info(repo_b, entry_b).manifest
            assert manifest_a == manifest_b
            # and capturing again in the same repository (now with a warm stat cache) changes nothing
            again = api.commit(repo_a, "again", area="wa")
            assert again.created is False and again.entry == entry_a
            assert api.fsck(repo_a).ok and api.fsck(repo_b).ok
        finally:
            repo_a.close()
            repo_b.close()

"""A hostile or damaged manifest must never make checkout write outside its target.

Each test makes a real repository and entry with the CLI, then crafts listings directly in
the repository's chunk store, records an entry (a git commit with entry.toml) whose manifest
is the crafted root, points branch `evil` at it and runs `vml checkout evil --to DIR`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.treecompare import snapshot

from vml import api
from vml.objects.manifest import KIND_DIR, KIND_FILE, KIND_SYMLINK, Node, Totals, encode_listing, encode_root
from vml.objects.pack import TYPE_DATA, TYPE_TREE
from vml.repo import Repository

PAYLOAD = b"PWNED by a hostile manifest\n"


def file_node(name: bytes, *, data_id: bytes, hardlink: bytes | None = None, mode: int = 0o644) -> Node:
    return Node(name=name, kind=KIND_FILE, mode=mode, uid=0, gid=0, user=None, group=None,
                mtime_ns=1_000_000_000, size=len(PAYLOAD), chunks=data_id, hardlink=hardlink)


def symlink_node(name: bytes, target: bytes) -> Node:
    return Node(name=name, kind=KIND_SYMLINK, mode=0o777, uid=0, gid=0, user=None, group=None,
                mtime_ns=1_000_000_000, target=target)


def dir_node(name: bytes, tree: bytes, mode: int = 0o755) -> Node:
    return Node(name=name, kind=KIND_DIR, mode=mode, uid=0, gid=0, user=None, group=None,
                mtime_ns=1_000_000_000, tree=tree)


class Hostile:
    """A repository with one honest entry, and a way to add an entry with a crafted tree."""

    def __init__(self, vml, tmp_path: Path, guest: Path):
        self.vml = vml
        self.tmp_path = tmp_path
        vml("init")
        vml("area", "add", "wa1", "--dir", str(guest))
        self.honest = vml("commit", "-m", "honest", "--json").json()["entry"]
        self.repo_path = str(tmp_path / ".vml")
        # the target's parent holds only the target: anything else appearing there escaped
        self.sandbox = tmp_path / "sandbox"
        self.sandbox.mkdir()
        self.target = self.sandbox / "out"
        # a directory outside, with a file a hostile manifest would like to reach
        self.outside = tmp_path / "outside-dir"
        self.outside.mkdir()
        (self.outside / "victim").write_bytes(b"victim's own content\n")
        os.chmod(self.outside / "victim", 0o600)
        self.outside_before = snapshot(self.outside)

    def entry_with_top(self, build) -> str:
        """`build(put_data, put_listing)` returns the top directory's listing id."""
        repo = Repository(self.repo_path)
        store = repo.store
        try:
            totals_of: dict[bytes, Totals] = {}

            def put_data(data: bytes) -> bytes:
                return store.put(data, TYPE_DATA)

            def put_listing(nodes: list[Node]) -> bytes:
                # Honest totals: these tests are about names and links, not about counts.
                totals = Totals(len(nodes), sum(n.kind == KIND_FILE for n in nodes), sum(n.size for n in nodes))
                for node in nodes:
                    if node.kind == KIND_DIR and node.tree in totals_of:
                        totals.add(totals_of[node.tree])
                listing_id = store.put(encode_listing(nodes, totals), TYPE_TREE)
                totals_of[listing_id] = totals
                return listing_id

            top = build(put_data, put_listing)
            root = store.put(encode_root(dir_node(b"", top), totals_of.get(top, Totals()), []), TYPE_TREE)
            store.flush()
            info = api.entry_info(repo, self.honest)
            info.manifest = root.hex()
            commit = repo.git.create_commit({"entry.toml": info.to_toml()}, "evil", [self.honest])
            repo.git.set_direct("refs/heads/evil", commit, "test: hostile entry")
            return commit
        finally:
            repo.close()

    def checkout(self):
        return self.vml("checkout", "evil", "--to", str(self.target), check=False)

    def assert_contained(self) -> None:
        assert sorted(os.listdir(self.sandbox)) in ([], ["out"]), os.listdir(self.sandbox)
        assert snapshot(self.outside) == self.outside_before
        assert (self.outside / "victim").read_bytes() == b"victim's own content\n"
        assert sorted(os.listdir(self.tmp_path)) == sorted([".vml", "guest", "sandbox", "outside-dir"]), os.listdir(self.tmp_path)
        for dirpath, _dirs, files in os.walk(self.target):  # never follows symlinks
            for name in files:
                found = os.path.join(dirpath, name)
                if os.path.isfile(found) and not os.path.islink(found):
                    assert os.lstat(found).st_ino != os.lstat(self.outside / "victim").st_ino

    def assert_refused(self, result) -> None:
        assert result.returncode != 0, (result.stdout, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert "error" in lines[0]


@pytest.fixture
def hostile(vml, tmp_path: Path, guest: Path) -> Hostile:
    return Hostile(vml, tmp_path, guest)


@pytest.mark.parametrize(
    "name",
    [b"..", b".", b"", b"a/b", b"../outside-dir/victim", b"../../outside-dir/victim", b"/tmp/abs", b"nul\0byte"],
    ids=["dotdot", "dot", "empty", "slash", "dotdot-path", "dotdot-dotdot-path", "absolute", "nul"],
)
def test_unsafe_file_names_are_refused(hostile: Hostile, name: bytes):
    def build(put_data, put_listing):
        data = put_data(PAYLOAD)
        return put_listing([file_node(name, data_id=data)])

    hostile.entry_with_top(build)
    result = hostile.checkout()
    hostile.assert_refused(result)
    hostile.assert_contained()
    assert not (hostile.sandbox / "a").exists()


@pytest.mark.parametrize("name", [b"..", b"a/b", b"."], ids=["dotdot", "slash", "dot"])
def test_unsafe_directory_names_are_refused(hostile: Hostile, name: bytes):
    def build(put_data, put_listing):
        data = put_data(PAYLOAD)
        inner = put_listing([file_node(b"victim", data_id=data)])
        return put_listing([dir_node(name, inner)])

    hostile.entry_with_top(build)
    hostile.assert_refused(hostile.checkout())
    hostile.assert_contained()


def test_unsafe_name_after_a_valid_one_is_refused(hostile: Hostile):
    """Names are sorted by bytes: b'..' sorts before letters, b'a/b' after b'a'. A hostile
    listing puts a valid node first so the restore has started when it meets the bad one."""

    def build(put_data, put_listing):
        data = put_data(PAYLOAD)
        return put_listing([file_node(b"a", data_id=data), file_node(b"a/b", data_id=data)])

    hostile.entry_with_top(build)
    hostile.assert_refused(hostile.checkout())
    hostile.assert_contained()


@pytest.mark.parametrize(
    "order",
    [[b"b", b"a"], [b"x", b"x"], [b"a", b"c", b"b"]],
    ids=["unsorted", "duplicate", "unsorted-tail"],
)
def test_unsorted_or_duplicate_names_are_corrupt(hostile: Hostile, order: list[bytes]):
    def build(put_data, put_listing):
        data = put_data(PAYLOAD)
        return put_listing([file_node(n, data_id=data) for n in order])

    hostile.entry_with_top(build)
    result = hostile.checkout()
    hostile.assert_refused(result)
    assert result.returncode == 1  # CorruptObject
    assert "sorted" in result.stderr or "damaged" in result.stderr
    hostile.assert_contained()


def test_symlink_and_directory_with_the_same_name_are_corrupt(hostile: Hostile):
    """A symlink 'x' -> outside, then a directory 'x' whose files would be written through it."""

    def build(put_data, put_listing):
        data = put_data(PAYLOAD)
        inner = put_listing([file_node(b"victim", data_id=data)])
        return put_listing([symlink_node(b"x", os.fsencode(hostile.outside)), dir_node(b"x", inner)])

    hostile.entry_with_top(build)
    result = hostile.checkout()
    hostile.assert_refused(result)
    assert result.returncode == 1
    hostile.assert_contained()


def test_fsck_reports_a_hostile_entry(hostile: Hostile):
    def build(put_data, put_listing):
        data = put_data(PAYLOAD)
        return put_listing([file_node(b"..", data_id=data)])

    evil = hostile.entry_with_top(build)
    result = hostile.vml("fsck", "--json", check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    report = result.json()
    assert [d["entry"] for d in report["damaged"]] == [evil]
    hostile.assert_contained()


def _hardlink_through_symlink(hostile: Hostile, link_name: bytes, hardlink: bytes) -> None:
    def build(put_data, put_listing):
        data = put_data(PAYLOAD)
        return put_listing([
            symlink_node(b"evil", os.fsencode(hostile.outside)),
            file_node(link_name, data_id=data, hardlink=hardlink, mode=0o4777),
        ])

    hostile.entry_with_top(build)


def test_hardlink_through_a_symlink_does_not_escape(hostile: Hostile):
    """'evil' -> the outside dir, then 'f' claims to be a hardlink of 'evil/victim'."""
    _hardlink_through_symlink(hostile, b"f", b"evil/victim")
    result = hostile.checkout()
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    hostile.assert_contained()
    victim = os.lstat(hostile.outside / "victim")
    assert victim.st_nlink == 1
    f = hostile.target / "f"
    if os.path.lexists(f):
        assert os.lstat(f).st_ino != victim.st_ino
        assert f.read_bytes() == PAYLOAD


def test_hardlink_through_a_symlink_is_refused(hostile: Hostile):
    """A hardlink path that names no earlier regular file of the tree is a damaged manifest."""
    _hardlink_through_symlink(hostile, b"f", b"evil/victim")
    hostile.assert_refused(hostile.checkout())
    hostile.assert_contained()


@pytest.mark.parametrize(
    "hardlink",
    [b"../outside-dir/victim", b"/" + b"/".join(os.fsencode(p) for p in ("tmp", "x")), b"evil/../../outside-dir/victim"],
    ids=["dotdot", "absolute", "through-symlink-then-dotdot"],
)
def test_hardlink_paths_that_leave_the_tree_are_refused(hostile: Hostile, hardlink: bytes):
    _hardlink_through_symlink(hostile, b"f", hardlink)
    result = hostile.checkout()
    hostile.assert_refused(result)
    hostile.assert_contained()
    assert os.lstat(hostile.outside / "victim").st_nlink == 1


def test_file_in_a_directory_named_like_a_symlink_target(hostile: Hostile):
    """A symlink 'd' -> outside, and a real directory 'e' (valid): files land in 'e', not outside."""

    def build(put_data, put_listing):
        data = put_data(PAYLOAD)
        inner = put_listing([file_node(b"victim", data_id=data)])
        return put_listing([symlink_node(b"d", os.fsencode(hostile.outside)), dir_node(b"e", inner)])

    hostile.entry_with_top(build)
    result = hostile.checkout()
    assert result.returncode == 0, result.stderr
    hostile.assert_contained()
    assert (hostile.target / "e" / "victim").read_bytes() == PAYLOAD
    assert os.readlink(hostile.target / "d") == str(hostile.outside)

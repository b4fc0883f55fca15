"""The contract every kind of working area keeps, one suite run on each: a directory, a guest
over ssh (a real sshd on 127.0.0.1 serving a tree under a temp directory) and a libvirt domain
(libvirt's test:///default driver) whose guest's files come from the same sshd.

A capture equals the capture of the same tree through a directory area; a checkout puts the
tree back exactly, metadata included; an unchanged re-commit reads nothing and makes no entry;
include and exclude rules hold; errors are one line with the right exit code. Everything goes
through the command line, so the suite holds whatever the area's code looks like inside.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import USAGE, Run, Vml, one_line_error
from support.treecompare import compare_snapshots, snapshot
from system.test_fidelity import _modify_area, build_everything

KINDS = ("dir", "ssh", "libvirt")
# The one domain every process's test:///default driver starts with (running, and never
# changed here): it exists in vml's process also when VML_TEST_SUBPROCESS=1 runs vml apart.
TEST_DOMAIN = "test"
# A file changed within the stat cache's racy window (2 s) is read again whatever its stat
# says; a tree this much older is judged from metadata alone.
PAST_THE_RACY_WINDOW = 2.1
SOCKET = b"special/sock"  # no kind can save a socket: it is skipped, and said so

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the full tree needs root (chown, mknod, capabilities)")


def area_arguments(kind: str, tree: Path, *rules: str) -> list[str]:
    """`vml area add NAME` arguments for an area of `kind` whose files are `tree`."""
    if kind == "dir":
        return ["--dir", str(tree), *rules]
    if "--include" not in rules:  # a guest's default rules keep /home, /etc, ...: here the whole tree
        rules = ("--include", "/", *rules)
    over_ssh = ["--ssh", "testhost", "--root", str(tree), *rules]
    if kind == "ssh":
        return over_ssh
    return ["--libvirt", "test:///default", "--domain", TEST_DOMAIN, *over_ssh]


@dataclass
class Area:
    """A repository at the test's tmp_path with area `a` of one kind on `tree`."""

    kind: str
    vml: Vml
    tree: Path
    env: dict  # the ssh client's settings (HOME with its config and keys); none for a directory

    def __call__(self, *args: str, check: bool = True) -> Run:
        return self.vml(*args, env=self.env, check=check)

    def add(self, name: str, tree: Path, *rules: str) -> None:
        self("area", "add", name, *area_arguments(self.kind, tree, *rules))

    def commit(self, *args: str) -> dict:
        return self("commit", "--json", *args).json()

    def manifest(self, entry: str) -> str:
        return self("show", entry, "--json").json()["info"]["manifest"]


@pytest.fixture(params=KINDS)
def area(request, vml: Vml, tmp_path: Path) -> Area:
    env = request.getfixturevalue("sshd").env if request.param != "dir" else {}
    tree = tmp_path / "tree"
    tree.mkdir()
    subject = Area(request.param, vml, tree, env)
    vml("init")
    subject.add("a", tree)
    yield subject
    vml.fsck_clean()


@needs_root
def test_a_capture_equals_the_capture_of_the_same_tree_through_a_dir_area(area: Area):
    build_everything(area.tree)
    captured = area.commit("-a", "a", "-m", area.kind)
    area("area", "add", "reference", "--dir", str(area.tree))
    reference = area.commit("-a", "reference", "-m", "the same tree as a directory")
    # Node for node: types, owners, modes, xattrs, ACLs, capabilities, hardlinks, sparse
    # maps, devices, fifos, undecodable names, times to the nanosecond.
    assert area.manifest(captured["entry"]) == area.manifest(reference["entry"])
    assert captured["skipped"] == reference["skipped"] == ["special/sock (socket)"]
    assert reference["added_bytes"] == 0  # the area's commit stored every chunk already


@needs_root
def test_a_checkout_puts_the_tree_back_exactly(area: Area):
    build_everything(area.tree)
    entry = area.commit("-m", "everything")["entry"]
    before = snapshot(area.tree, ignore={SOCKET})
    _modify_area(area.tree)  # every kind of change: content, type, links, owners, modes, xattrs, times
    assert compare_snapshots(before, snapshot(area.tree, ignore={SOCKET})) != []
    result = area("checkout", entry, "--force", "--json").json()
    assert result["not_reproduced"] == [], result
    assert compare_snapshots(before, snapshot(area.tree, ignore={SOCKET})) == []
    assert area("status", "--json").json()["clean"]
    again = area.commit("-m", "again")
    assert again["created"] is False and again["entry"] == entry


def test_an_unchanged_recommit_reads_nothing_and_makes_no_entry(area: Area):
    (area.tree / "data" / "sub").mkdir(parents=True)
    for i in range(30):
        (area.tree / "data" / f"f{i}").write_bytes(os.urandom(100) * (i + 1))
    (area.tree / "data" / "sub" / "deep").write_text("deep\n")
    os.symlink("f1", area.tree / "data" / "link")
    built = time.monotonic()
    time.sleep(max(0.0, built + PAST_THE_RACY_WINDOW - time.monotonic()))
    first = area.commit("-m", "first")
    assert first["created"] and first["files_read"] == 31
    again = area.commit("-m", "again")
    assert again["created"] is False and again["entry"] == first["entry"]
    assert again["files_read"] == 0 and again["bytes_read"] == 0
    assert [e["id"] for e in area("log", "--json").json()] == [first["entry"]]
    # A change is read, and only the change.
    (area.tree / "data" / "f7").write_bytes(b"changed\n")
    changed = area.commit("-m", "one changed")
    assert changed["created"] and changed["files_read"] == 1 and changed["bytes_read"] == len(b"changed\n")
    diff = area("diff", first["entry"], changed["entry"], "--json").json()
    assert [(d["path"], d["status"]) for d in diff] == [("data/f7", "M")]


def test_area_rules_hold(area: Area, tmp_path: Path):
    tree = tmp_path / "ruled"
    for directory in ("home/user/cache", "etc", "srv"):
        (tree / directory).mkdir(parents=True)
    (tree / os.fsdecode(b"\xfftop")).mkdir()  # names that are not UTF-8, asked of the rules (pathspec's Hyperscan refused them)
    for name in ("home/user/notes", "home/user/core", "home/user/x.o", "home/user/cache/big", "etc/hosts", "srv/data",
                 os.fsdecode(b"home/user/\xffnotes"), os.fsdecode(b"home/user/\xff.o"), os.fsdecode(b"\xfftop/data")):
        (tree / name).write_bytes(os.fsencode(name) + b"\n")
    rules = ["--include", "/home", "--include", "/etc", "--exclude", "/home/user/cache/", "--exclude", "core",
             "--exclude", "*.o"]  # (core: not a pattern of the fast path, so pathspec answers)
    area.add("r", tree, *rules)
    shown = area("area", "show", "r", "--json").json()
    assert {"/home", "/etc"} <= set(shown["include"]) and {"/home/user/cache/", "core", "*.o"} <= set(shown["exclude"])
    entry = area.commit("-a", "r", "-m", "ruled")["entry"]
    area("area", "add", "reference", "--dir", str(tree), *rules)
    reference = area.commit("-a", "reference", "-m", "the same rules on a directory")["entry"]
    assert area.manifest(entry) == area.manifest(reference)

    area("checkout", entry, "--to", str(tmp_path / "out"))
    saved = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*"))
    assert saved == ["etc", "etc/hosts", "home", "home/user", "home/user/notes", os.fsdecode(b"home/user/\xffnotes")]
    # What the rules leave out is no change, and a checkout neither deletes nor writes it.
    for name in ("home/user/core", "home/user/x.o", "home/user/cache/big", "srv/data"):
        (tree / name).write_text("changed outside the rules\n")
    assert area("status", "-a", "r", "--json").json()["clean"]
    (tree / "home/user/added").write_text("added\n")
    area("checkout", entry, "-a", "r", "--force")
    assert not (tree / "home/user/added").exists()
    for name in ("home/user/core", "home/user/x.o", "home/user/cache/big", "srv/data"):
        assert (tree / name).read_text() == "changed outside the rules\n", name


def test_errors_are_one_line_with_the_right_exit_code(area: Area):
    (area.tree / "notes").write_text("saved\n")
    entry = area.commit("-m", "one")["entry"]

    line = one_line_error(area("checkout", "nosuch", "-a", "a", check=False), USAGE)
    assert "nosuch" in line

    (area.tree / "notes").write_text("unsaved work\n")
    line = one_line_error(area("checkout", entry, "-a", "a", check=False), USAGE)
    assert "notes" in line and "--force" in line
    assert (area.tree / "notes").read_text() == "unsaved work\n"

    shutil.rmtree(area.tree)
    gone = area("commit", "-m", "two", check=False)
    # Files that cannot be reached are the environment failing (vml/errors.py: exit 3): one
    # line, and nothing recorded.
    line = one_line_error(gone, 3)
    assert str(area.tree) in line, line
    assert [e["id"] for e in area("log", "--json").json()] == [entry]

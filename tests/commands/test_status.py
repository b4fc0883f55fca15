"""`vml status` (alias `consult`): the area, its branch and entry, and what changed since that
entry, grouped; --short and --json; and an unchanged area is judged from metadata alone."""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import time
from pathlib import Path

from conftest import USAGE, one_line_error

ROOT_NAMES = (".", "", "/")
GROUPS = ("added", "deleted", "modified", "type changed", "properties only")


def short_lines(result) -> set[tuple[str, str]]:
    pairs = []
    for line in result.stdout.splitlines():
        if line.strip():
            letter, path = line.split(None, 1)
            pairs.append((letter, path.strip()))
    assert len(pairs) == len(set(pairs)), result.stdout
    return set(pairs)


def make_changes(guest: Path) -> set[tuple[str, str]]:
    """Add, delete, modify, chmod; returns the (letter, path) pairs status must report."""
    (guest / "home" / "user" / "new.txt").write_text("new file\n")  # also home/user's mtime
    (guest / "etc" / "hosts").unlink()  # also etc's mtime
    (guest / "home" / "user" / "notes.txt").write_text("analysis notes, edited\n")
    (guest / "home" / "user" / "run.sh").chmod(0o755)
    return {
        ("A", "home/user/new.txt"),
        ("D", "etc/hosts"),
        ("M", "home/user/notes.txt"),
        ("P", "home/user/run.sh"),
        ("P", "home/user"),
        ("P", "etc"),
    }


def test_clean_area(repo, guest: Path):
    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    report = repo("status", "--json").json()
    assert {k: report.get(k) for k in ("area", "kind", "location", "branch", "entry", "clean", "changes")} == {
        "area": "wa1",
        "kind": "dir",
        "location": str(guest),
        "branch": "main",
        "entry": entry,
        "clean": True,
        "changes": [],
    }
    assert repo("consult", "--json").json() == report
    assert repo("status", "--short").stdout.strip() == ""
    text = repo("status").stdout
    assert "wa1" in text and str(guest) in text and "main" in text and entry[:7] in text, text
    assert "detached" not in text
    assert text == repo("consult").stdout


def test_changes_grouped(repo, guest: Path):
    (guest / "home" / "user" / "run.sh").write_text("#!/bin/sh\n")
    (guest / "home" / "user" / "run.sh").chmod(0o644)
    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    expected = make_changes(guest)

    report = repo("status", "--json").json()
    assert report["clean"] is False and report["entry"] == entry and report["branch"] == "main"
    assert {(c["status"], c["path"]) for c in report["changes"]} == expected
    assert len(report["changes"]) == len(expected)
    # The changes are the objects `diff --json` prints for the area's entry against its files.
    assert report["changes"] == repo("diff", "HEAD", "--json").json()
    assert repo("consult", "--json").json() == report

    assert short_lines(repo("status", "--short")) == expected
    assert repo("consult", "--short").stdout == repo("status", "--short").stdout
    assert {tuple(line.split(None, 1)) for line in repo("diff", "HEAD", "--name-status").stdout.splitlines()} == expected

    # Text: grouped as added / deleted / modified / properties only, in that order; each path's
    # group is named on its own line or on the nearest heading above it.
    lines = repo("status").stdout.splitlines()
    group_of = {"A": "added", "D": "deleted", "M": "modified", "T": "type changed", "P": "properties only"}
    seen_order = []
    for letter, path in sorted(expected, key=lambda lp: "ADMTP".index(lp[0])):
        hits = [i for i, line in enumerate(lines) if path in line.replace(":", " ").split()]
        assert len(hits) == 1, (path, lines)
        group = None
        for j in range(hits[0], -1, -1):
            named = [g for g in GROUPS if g in lines[j].lower()]
            if len(named) == 1:
                group = named[0]
                break
        assert group == group_of[letter], (letter, path, lines)
        seen_order.append(hits[0])
    # Groups come in the documented order (paths are sorted by group above).
    firsts = {}
    for (letter, _path), i in zip(sorted(expected, key=lambda lp: "ADMTP".index(lp[0])), seen_order):
        firsts.setdefault(letter, []).append(i)
    for earlier, later in zip("ADM", "DMP"):
        assert max(firsts[earlier]) < min(firsts[later]), lines

    # After a commit the area is clean again.
    repo("commit", "-m", "two")
    assert repo("status", "--json").json()["clean"] is True


def test_status_letters_for_type_change_and_mtime(repo, guest: Path):
    repo("commit", "-m", "one")
    hosts = guest / "etc" / "hosts"
    before = (guest / "etc").stat().st_mtime_ns
    hosts.unlink()
    hosts.symlink_to("/nowhere")
    os.utime(guest / "home" / "user" / "notes.txt", ns=(0, 12345))
    os.setxattr(guest / "home", "user.note", b"x")
    os.utime(guest / "etc", ns=(before, before))
    changes = {c["path"]: c for c in repo("status", "--json").json()["changes"]}
    # git's letters: T for a file that became a symlink; vml's P for properties alone.
    assert {p: c["status"] for p, c in changes.items()} == {"etc/hosts": "T", "home/user/notes.txt": "P", "home": "P"}
    assert changes["etc/hosts"]["changes"][0] == "type"
    assert changes["etc/hosts"]["new"]["kind"] == "symlink" and changes["etc/hosts"]["old"]["kind"] == "file"
    assert [c.split()[0] for c in changes["home/user/notes.txt"]["changes"]] == ["mtime"]
    assert [c.split()[0] for c in changes["home"]["changes"]] == ["xattrs"]


def test_detached_area(repo, guest: Path):
    first = repo("commit", "-m", "one", "--json").json()["entry"]
    (guest / "etc" / "hosts").write_text("10.0.0.1 other\n")
    repo("commit", "-m", "two")
    repo("checkout", first, "-a", "wa1")
    report = repo("status", "--json").json()
    assert report["entry"] == first and report["clean"] is True and report["changes"] == []
    assert report["branch"] in (None, "detached"), report
    text = repo("status").stdout
    assert "detached" in text and first[:7] in text, text
    # A change while detached is reported against the detached entry.
    (guest / "etc" / "hosts").write_text("10.0.0.2 again\n")
    assert short_lines(repo("status", "--short")) == {("M", "etc/hosts")}


def test_two_areas_need_a_choice(repo, tmp_path: Path, guest: Path):
    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    second = tmp_path / "second"
    repo("area", "add", "wa2", "--dir", str(second))
    for command in ("status", "consult"):
        result = repo(command, check=False)
        line = one_line_error(result, USAGE)
        assert "wa1" in line and "wa2" in line and "-a" in line, line
        assert result.stdout == ""
    report = repo("status", "-a", "wa1", "--json").json()
    assert report["area"] == "wa1" and report["entry"] == entry and report["clean"] is True
    line = one_line_error(repo("status", "-a", "nosuch", check=False), USAGE)
    assert "nosuch" in line


def test_before_the_first_entry(repo, guest: Path):
    report = repo("status", "--json").json()
    assert report["area"] == "wa1" and report["location"] == str(guest)
    assert report["entry"] is None and report["clean"] is False
    everything = {"etc", "etc/hosts", "home", "home/user", "home/user/notes.txt"}
    changes = [c for c in report["changes"] if c["path"] not in ROOT_NAMES]
    assert {c["path"] for c in changes} == everything
    assert all(c["status"] == "A" and c["old"] is None for c in changes)
    assert {p for letter, p in short_lines(repo("status", "--short")) if p not in ROOT_NAMES} == everything
    assert {letter for letter, p in short_lines(repo("status", "--short"))} == {"A"}
    text = repo("status").stdout
    assert "wa1" in text and "etc/hosts" in text


def test_empty_area_directory_before_first_entry(repo, tmp_path: Path):
    repo("area", "add", "wa2", "--dir", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    report = repo("status", "-a", "wa2", "--json").json()
    assert report["area"] == "wa2" and report["branch"] == "wa2"  # main is taken by wa1
    assert report["entry"] is None and [c for c in report["changes"] if c["path"] not in ROOT_NAMES] == []


# -- an unchanged area costs a metadata scan only: no file is read

IN_ACCESS = 0x00000001
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
_EVENT = struct.Struct("iIII")


class ReadWatcher:
    """inotify IN_ACCESS on every directory of a tree: which files had content read()."""

    def __init__(self, root: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(IN_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.dirs = {}
        for path in [root, *root.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), IN_ACCESS)
                assert wd >= 0, os.strerror(ctypes.get_errno())
                self.dirs[wd] = path

    def files_read(self) -> set[Path]:
        found = set()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return found
            except OSError as error:
                if error.errno == errno.EAGAIN:
                    return found
                raise
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size: offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if name and not mask & IN_ISDIR:
                    found.add(self.dirs[wd] / os.fsdecode(name))

    def close(self):
        os.close(self.fd)


def test_unchanged_area_reads_no_file(repo, guest: Path):
    user = guest / "home" / "user"
    (user / "big.bin").write_bytes(os.urandom(1024) * 8 * 1024)  # 8 MiB
    for i in range(30):
        (user / f"f{i}.txt").write_text(f"file {i}\n")
    repo("commit", "-m", "one")
    time.sleep(2.2)  # out of the racy window: the next scan can trust the stat cache
    repo("commit", "-m", "cache", "--allow-empty")

    watcher = ReadWatcher(guest)
    try:
        started = time.monotonic()
        report = repo("status", "--json").json()
        elapsed = time.monotonic() - started
        assert report["clean"] is True and report["changes"] == []
        assert watcher.files_read() == set(), "status read file contents of an unchanged area"
        assert elapsed < 10
        assert repo("consult", "--short").stdout.strip() == ""
        assert watcher.files_read() == set()
        # diff against the area uses the same scan.
        assert repo("diff", "HEAD", "--json").json() == []
        assert watcher.files_read() == set(), "diff HEAD read file contents of an unchanged area"
        # And status left the stat cache valid: a commit now reads nothing either.
        again = repo("commit", "-m", "again", "--json").json()
        assert again["created"] is False and again["files_read"] == 0 and again["bytes_read"] == 0
        assert watcher.files_read() == set()

        # Control: the watcher does see reads. A changed file is read, and only that one.
        (user / "f3.txt").write_text("FILE 3\n")
        watcher.files_read()  # our own write is not a read, but drain anyway
        assert short_lines(repo("status", "--short")) == {("M", "home/user/f3.txt")}
        assert watcher.files_read() == {user / "f3.txt"}
    finally:
        watcher.close()


def test_status_after_rm_of_the_current_entry(repo, guest: Path):
    first = repo("commit", "-m", "one", "--json").json()["entry"]
    (guest / "etc" / "hosts").write_text("10.9.9.9 second\n")
    second = repo("commit", "-m", "two", "--json").json()["entry"]
    repo("rm", second)
    # The area moves to the parent and keeps its files: they show as changes.
    report = repo("status", "--json").json()
    assert report["entry"] == first and report["branch"] == "main" and report["clean"] is False
    assert [(c["status"], c["path"]) for c in report["changes"]] == [("M", "etc/hosts")]
    assert (guest / "etc" / "hosts").read_text() == "10.9.9.9 second\n"


# -- generated change sets against a warm stat cache (the path status takes on a real area)


def _random_tree(rng, depth: int = 0) -> dict:
    tree = {}
    for name in rng.sample("abcde", rng.randint(1, 4)):
        roll = rng.random()
        if roll < 0.25 and depth < 3:
            tree[name] = ("dir", _random_tree(rng, depth + 1), rng.choice([0o755, 0o700]),
                          rng.choice([None, b"d"]))
        elif roll < 0.4:
            tree[name] = ("link", rng.choice(["a", "../b", "/etc/hosts"]))
        else:
            tree[name] = ("file", rng.randbytes(rng.randint(0, 40)), rng.choice([0o644, 0o600, 0o755]),
                          rng.choice([None, None, b"v"]))
    return tree


def test_generated_change_sets_with_a_warm_stat_cache(tmp_path: Path):
    """Unchanged files come from the stat cache, changed ones are re-read: status, `diff A`
    and `diff A B` must all report exactly the change set."""
    import random

    from conftest import Vml

    from commands.test_diff import OPS, apply_keeping_dir_mtimes, build, check_json_diff, fs_snapshot
    from vml import api
    from vml.repo import Repository

    seeds = range(5)
    cases = []
    for seed in seeds:
        rng = random.Random(seed)
        base = tmp_path / f"case{seed}"
        base.mkdir()
        root = str(base / "area")
        build(root, ("dir", _random_tree(rng), 0o755, None))
        api.init(str(base))
        repo = Repository.discover(str(base))
        try:
            api.area_add(repo, "wa", directory=root)
            first = api.commit(repo, "before", area="wa").entry
        finally:
            repo.close()
        ops = [(rng.choice(OPS), rng.randrange(10**6), rng.randrange(10**6)) for _ in range(rng.randint(1, 8))]
        cases.append((base, root, first, ops))
    time.sleep(2.2)  # every file is now old enough to be cached by the next scan
    for base, root, first, ops in cases:
        repo = Repository.discover(str(base))
        try:
            warm = api.commit(repo, "warm", area="wa", allow_empty=True)
        finally:
            repo.close()
        before = fs_snapshot(root)
        _after, expected = apply_keeping_dir_mtimes(root, ops, before)
        vml = Vml(base)
        report = vml("status", "--json").json()
        assert report["entry"] == warm.entry and report["clean"] is (not expected), (ops, report)
        check_json_diff(report["changes"], expected)
        check_json_diff(vml("diff", first, "--json").json(), expected)
        repo = Repository.discover(str(base))
        try:
            second = api.commit(repo, "after", area="wa", allow_empty=True).entry
            check_json_diff(vml("diff", first, second, "--json").json(), expected)
            assert vml("status", "--json").json()["clean"] is True
            report = api.fsck(repo)
            assert report.damaged == [] and report.problems == [], report
        finally:
            repo.close()


def test_area_that_contains_its_own_repository(vml, tmp_path: Path):
    """`vml init; vml area add w --dir .`: either refused, or the repository's own files are
    not part of the area, so status right after a commit is clean."""
    (tmp_path / "data.txt").write_text("data\n")
    vml("init")
    added = vml("area", "add", "w", "--dir", str(tmp_path), check=False)
    if added.returncode != 0:
        one_line_error(added, USAGE)
        return
    vml("commit", "-m", "one")
    report = vml("status", "--json").json()
    assert report["clean"] is True, [(c["status"], c["path"]) for c in report["changes"]][:10]
    assert not any(c["path"].startswith(".vml") for c in vml("diff", "HEAD", "--json").json())
    vml.fsck_clean()

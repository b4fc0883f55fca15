"""`vml diff`: exactly the changed paths with the right status and parts, in every output form,
limited to paths, with unified text diffs, and clear errors (docs/HISTORY.md, "diff")."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import USAGE, Vml, one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vml import api
from vml.repo import Repository

os.environ.setdefault("VML_AUTHOR_NAME", "Test User")
os.environ.setdefault("VML_AUTHOR_EMAIL", "test@example.org")

OLD_MTIME = 1_650_000_000_123_456_789
JSON_NODE_KEYS = {"kind", "mode", "uid", "gid", "user", "group", "size", "mtime_ns", "xattrs", "target", "flags"}
SUMMARY = re.compile(
    r"^(\d+) paths? changed: (\d+) added, (\d+) deleted, (\d+) modified, (\d+) type changed, (\d+) properties only; "
    r"\+(\d+) bytes?, -(\d+) bytes?$"
)
DEFAULT_LINE = re.compile(r"^([ADMTP])  (.+?)(?:  \((.*)\))?$")


# -- helpers: an independent model of the tree, read from the file system


def fs_snapshot(root: str) -> dict[str, dict]:
    """Every path under root ("." for root itself): kind, mode, mtime, xattrs, content or target."""
    found: dict[str, dict] = {}

    def visit(path: str, rel: str) -> None:
        st_ = os.lstat(path)
        if stat.S_ISLNK(st_.st_mode):
            node = {"kind": "symlink", "target": os.readlink(path), "xattrs": {}}
        else:
            node = {"xattrs": {n: os.getxattr(path, n) for n in os.listxattr(path) if n.startswith("user.")}}
            if stat.S_ISDIR(st_.st_mode):
                node["kind"] = "dir"
            elif stat.S_ISFIFO(st_.st_mode):
                node["kind"] = "fifo"
            else:
                node["kind"] = "file"
                with open(path, "rb") as f:
                    node["content"] = f.read()
        node["mode"] = stat.S_IMODE(st_.st_mode)
        node["mtime"] = st_.st_mtime_ns
        node["owner"] = (st_.st_uid, st_.st_gid)
        found[rel] = node
        if node["kind"] == "dir":
            for name in sorted(os.listdir(path)):
                visit(os.path.join(path, name), name if rel == "." else f"{rel}/{name}")

    visit(root, ".")
    return found


def expected_diff(old: dict[str, dict], new: dict[str, dict]) -> dict[str, tuple[str, frozenset]]:
    """path -> (status, parts). For a type change, parts is just {"type"} (the minimum required).
    As in git, a directory replaced by another type, or the reverse, is "DA": the path deleted, then added."""
    result = {}
    for path in old.keys() | new.keys():
        o, n = old.get(path), new.get(path)
        if n is None:
            result[path] = ("D", frozenset())
        elif o is None:
            result[path] = ("A", frozenset())
        elif o["kind"] != n["kind"]:
            result[path] = ("DA", frozenset()) if "dir" in (o["kind"], n["kind"]) else ("T", frozenset({"type"}))
        else:
            parts = set()
            if o.get("content") != n.get("content") or o.get("target") != n.get("target"):
                parts.add("content")
            if o["mode"] != n["mode"]:
                parts.add("mode")
            if o["owner"] != n["owner"]:
                parts.add("owner")
            if o["mtime"] != n["mtime"]:
                parts.add("mtime")
            if o["xattrs"] != n["xattrs"]:
                parts.add("xattrs")
            if parts:
                result[path] = ("M" if "content" in parts else "P", frozenset(parts))
    return result


def parts_of(changes) -> frozenset:
    """The kinds of change named: "mode 0644 -> 0600" counts as "mode"."""
    assert isinstance(changes, list), changes
    return frozenset(c.split()[0] for c in changes)


def _mode(value) -> int:
    return int(value, 8) if isinstance(value, str) else value


def check_sides(d: dict, old: dict | None, new: dict | None) -> None:
    """The old/new objects of one change agree with what the file system held."""
    kinds = {"file": "file", "dir": "dir", "symlink": "symlink", "fifo": "fifo"}
    for side, node in ((d["old"], old), (d["new"], new)):
        if node is None:
            assert side is None, d
            continue
        assert side["kind"] == kinds[node["kind"]], (d, node["kind"])
        assert _mode(side["mode"]) == node["mode"] and side["mtime_ns"] == node["mtime"], d
        assert (side["uid"], side["gid"]) == node["owner"], d
        if node["kind"] == "file":
            assert side["size"] == len(node["content"]), d
        if node["kind"] == "symlink":
            assert side["target"] == node["target"], d
        assert set(side["xattrs"]) >= set(node["xattrs"]), d


def check_json_diff(got: list[dict], expected: dict[str, tuple[str, frozenset]], before=None, after=None) -> None:
    got_status: dict[str, str] = {}
    for d in got:
        got_status[d["path"]] = got_status.get(d["path"], "") + d["status"]  # "DA" for a path listed twice
    want_status = {p: s for p, (s, _) in expected.items()}
    assert got_status == want_status
    assert [d["path"] for d in got] == sorted((d["path"] for d in got), key=lambda p: p.split("/")), "not in walk order"
    for d in got:
        status, parts = expected[d["path"]]
        if status == "DA":
            status = d["status"]  # one of the two lines of a directory replaced, or replacing
        if status in "MTP":
            named = parts_of(d["changes"])
            if "type" in parts:
                assert "type" in named, d
            else:
                assert named == parts, d
        assert (d["old"] is None) == (status == "A"), d
        assert (d["new"] is None) == (status == "D"), d
        if before is not None and after is not None:
            check_sides(d, before.get(d["path"]) if status != "A" else None, after.get(d["path"]) if status != "D" else None)


@contextmanager
def keep_dir_mtimes(root: Path):
    """Put back the mtime of every directory that still exists (adding or removing a child changes it)."""
    saved = {p: p.stat().st_mtime_ns for p in [root, *root.rglob("*")] if p.is_dir() and not p.is_symlink()}
    yield
    for path, mtime in saved.items():
        if path.is_dir() and not path.is_symlink():
            os.utime(path, ns=(mtime, mtime))


def name_status(result) -> set[tuple[str, str]]:
    """(letter, path) pairs; the exact `X<TAB>path` form is checked by test_name_status_separates_with_a_tab."""
    lines = [line for line in result.stdout.splitlines() if line]
    pairs = [tuple(line.split(None, 1)) for line in lines]
    assert all(len(p) == 2 for p in pairs), result.stdout
    assert len(pairs) == len(set(pairs)), result.stdout
    return set(pairs)


# -- the property: a generated change set is reported exactly

names = st.text("abcd", min_size=1, max_size=2)
modes = st.sampled_from([0o644, 0o600, 0o755, 0o640])
xattr_values = st.one_of(st.none(), st.binary(min_size=1, max_size=8))
files = st.tuples(st.just("file"), st.binary(max_size=40), modes, xattr_values)
links = st.tuples(st.just("link"), st.text("xyz/.", min_size=1, max_size=6))


def _dirs(children):
    return st.tuples(st.just("dir"), st.dictionaries(names, children, max_size=4), st.sampled_from([0o755, 0o700]), xattr_values)


nodes = st.recursive(st.one_of(files, links), _dirs, max_leaves=10)
trees = st.dictionaries(names, nodes, min_size=1, max_size=5)

OPS = [
    "add_file", "add_dir", "add_symlink", "delete_file", "delete_dir", "modify", "chmod", "touch",
    "xattr", "modify_and_chmod", "file_to_dir", "file_to_symlink", "dir_to_file", "retarget",
    "chown", "file_to_fifo",
]
op_lists = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 10**6), st.integers(0, 10**6)), min_size=1, max_size=7)


def build(path: str, node) -> None:
    kind = node[0]
    if kind == "file":
        _, content, mode, xattr = node
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
        if xattr is not None:
            os.setxattr(path, "user.tag", xattr)
        os.utime(path, ns=(OLD_MTIME, OLD_MTIME))
    elif kind == "link":
        os.symlink(node[1], path)
        os.utime(path, ns=(OLD_MTIME, OLD_MTIME), follow_symlinks=False)
    else:
        _, children, mode, xattr = node
        os.mkdir(path)
        for name, child in children.items():
            build(os.path.join(path, name), child)
        os.chmod(path, mode)
        if xattr is not None:
            os.setxattr(path, "user.tag", xattr)
        os.utime(path, ns=(OLD_MTIME, OLD_MTIME))


def _walk(root: str) -> tuple[list[str], list[str], list[str]]:
    """(files, dirs without root, symlinks), sorted."""
    files_, dirs, links_ = [], [], []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                links_.append(p)
            elif os.path.isdir(p):
                dirs.append(p)
            elif os.path.isfile(p):
                files_.append(p)
            else:
                links_.append(p)  # a fifo: deleted, touched or chowned like a symlink, never opened
    return sorted(files_), sorted(dirs), sorted(links_)


def apply_ops(root: str, ops) -> set[str]:
    """Apply the generated operations; return the directories whose mtime was set on purpose."""
    touched_dirs: set[str] = set()
    for n, (op, k, k2) in enumerate(ops):
        files_, dirs, links_ = _walk(root)
        new_name = f"new{n}"

        def pick(candidates, k=k, op=op):
            if isinstance(k, str):  # an explicit path, relative to root ("" for root itself)
                chosen = os.path.join(root, k) if k else root
                assert chosen in candidates, (op, k)
                return chosen
            return candidates[k % len(candidates)] if candidates else None

        if op == "add_file":
            parent = pick([root, *dirs])
            Path(parent, new_name).write_bytes(b"added %d\n" % n)
        elif op == "add_dir":
            parent = pick([root, *dirs])
            os.makedirs(os.path.join(parent, new_name, "sub"))
            Path(parent, new_name, "inside.txt").write_bytes(b"inside %d\n" % n)
        elif op == "add_symlink":
            os.symlink(f"target-{n}", os.path.join(pick([root, *dirs]), new_name))
        elif op == "delete_file" and (target := pick(files_ + links_)):
            os.unlink(target)
        elif op == "delete_dir" and (target := pick(dirs)):
            shutil.rmtree(target)
        elif op in ("modify", "modify_and_chmod") and (target := pick(files_)):
            with open(target, "ab") as f:
                f.write(b"changed %d\n" % n)
            if op == "modify_and_chmod":
                os.chmod(target, stat.S_IMODE(os.stat(target).st_mode) ^ 0o111)
        elif op == "chmod" and (target := pick(files_ + dirs)):
            bit = [0o020, 0o004, 0o001, 0o040][k2 % 4]
            os.chmod(target, stat.S_IMODE(os.lstat(target).st_mode) ^ bit)
        elif op == "touch" and (target := pick(files_ + dirs + links_)):
            t = os.lstat(target).st_mtime_ns + 1 + k2
            os.utime(target, ns=(t, t), follow_symlinks=False)
            if target in dirs:
                touched_dirs.add(target)
        elif op == "xattr" and (target := pick(files_ + dirs)):
            os.setxattr(target, f"user.x{k2 % 2}", b"value %d" % n)
        elif op in ("file_to_dir", "file_to_symlink") and (target := pick(files_)):
            os.unlink(target)
            if op == "file_to_dir":
                os.mkdir(target)
                Path(target, "child").write_bytes(b"child\n")
            else:
                os.symlink("replaced", target)
        elif op == "chown" and (target := pick(files_ + dirs + links_)):
            os.chown(target, 1000 + k2 % 3, 1000 + k2 % 2, follow_symlinks=False)
        elif op == "file_to_fifo" and (target := pick(files_)):
            os.unlink(target)
            os.mkfifo(target)
        elif op == "retarget" and (target := pick(links_)):
            os.unlink(target)
            os.symlink(f"elsewhere-{n}", target)
        elif op == "dir_to_file" and (target := pick(dirs)):
            shutil.rmtree(target)
            Path(target).write_bytes(b"was a directory\n")
    return touched_dirs


def apply_keeping_dir_mtimes(root: str, ops, before: dict) -> tuple[dict, dict]:
    """Apply `ops`, then put back the mtime of every directory that existed before unless an
    operation set it; returns the snapshot after and the diff a model expects."""
    touched = apply_ops(root, ops)
    for dirpath, _dirnames, _files in os.walk(root, topdown=False):
        rel = "." if dirpath == root else os.path.relpath(dirpath, root)
        old = before.get(rel)
        if old is not None and old["kind"] == "dir" and dirpath not in touched:
            os.utime(dirpath, ns=(old["mtime"], old["mtime"]))
    after = fs_snapshot(root)
    return after, expected_diff(before, after)


def run_change_set(tmp: str, tree: dict, ops, vml_runner=None) -> dict:
    root = os.path.join(tmp, "area")
    build(root, ("dir", tree, 0o755, None))
    api.init(tmp)
    repo = Repository.discover(tmp)
    try:
        api.area_add(repo, "wa", directory=root)
        first = api.commit(repo, "before", area="wa").entry
    finally:
        repo.close()
    before = fs_snapshot(root)

    after, expected = apply_keeping_dir_mtimes(root, ops, before)
    assert "." not in expected  # the top directory itself is left as it was

    vml = vml_runner or Vml(Path(tmp))
    against_area = vml("diff", first, "--json").json()
    check_json_diff(against_area, expected, before, after)

    repo = Repository.discover(tmp)
    try:
        second = api.commit(repo, "after", area="wa", allow_empty=True).entry
    finally:
        repo.close()
    between = vml("diff", first, second, "--json").json()
    check_json_diff(between, expected, before, after)
    assert sorted((d["path"], d["status"]) for d in between) == sorted((d["path"], d["status"]) for d in against_area)
    if not expected:
        assert vml("diff", first, second).stdout.strip() == ""

    repo = Repository.discover(tmp)
    try:
        report = api.fsck(repo)
        assert report.damaged == [] and report.problems == [], report
    finally:
        repo.close()
    return expected


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(tree=trees, ops=op_lists)
def test_generated_change_set_is_reported_exactly(tree, ops):
    with tempfile.TemporaryDirectory(prefix="vml-diff-") as tmp:
        run_change_set(tmp, tree, ops)


def test_every_kind_of_change_once(tmp_path: Path):
    file = ("file", b"text\n", 0o644, None)
    tree = {
        "a": file, "b": ("file", b"beta\n", 0o644, b"x"), "c": ("file", b"gamma\n", 0o600, None),
        "f": file, "g": file, "h": file, "l": ("link", "a"), "r": ("link", "a"),
        "d": ("dir", {"a": file, "b": ("link", "../a")}, 0o755, None),
        "e": ("dir", {"a": ("dir", {"a": file}, 0o755, None)}, 0o755, None),
        "k": ("dir", {}, 0o755, None),
        "m": ("dir", {"x": file}, 0o755, None),
        "n": ("dir", {"y": file}, 0o755, None),
        "o": file, "p": file,
    }
    ops = [
        ("modify", "a", 0), ("chmod", "b", 0), ("xattr", "c", 0), ("touch", "d/a", 0), ("touch", "l", 0),
        ("touch", "k", 0), ("chmod", "m", 1), ("xattr", "m", 0), ("add_file", "d", 0), ("add_symlink", "", 0),
        ("add_dir", "", 0), ("delete_file", "d/b", 0), ("delete_dir", "e/a", 0), ("modify_and_chmod", "f", 0),
        ("file_to_dir", "g", 0), ("file_to_symlink", "h", 0), ("dir_to_file", "n", 0), ("retarget", "r", 0),
        ("chown", "o", 1), ("file_to_fifo", "p", 0),
    ]
    expected = run_change_set(str(tmp_path), tree, ops)
    assert expected == {
        "a": ("M", {"content", "mtime"}), "b": ("P", {"mode"}), "c": ("P", {"xattrs"}), "d/a": ("P", {"mtime"}),
        "l": ("P", {"mtime"}), "k": ("P", {"mtime"}), "m": ("P", {"mode", "xattrs"}), "d/new8": ("A", set()),
        "new9": ("A", set()), "new10": ("A", set()), "new10/sub": ("A", set()), "new10/inside.txt": ("A", set()),
        "d/b": ("D", set()), "e/a": ("D", set()), "e/a/a": ("D", set()), "f": ("M", {"content", "mode", "mtime"}),
        "g": ("DA", set()), "g/child": ("A", set()), "h": ("T", {"type"}), "n": ("DA", set()), "n/y": ("D", set()),
        "r": ("M", {"content", "mtime"}), "o": ("P", {"owner"}), "p": ("T", {"type"}),
    }


# -- output forms: one module-wide repository (read-only tests), entries A and B


@pytest.fixture(scope="module")
def hist(tmp_path_factory):
    """Entry A, then: hosts content + an xattr, notes.txt mode, todo.txt content, new.txt added,
    data.bin changed (binary), old.txt deleted, run.sh owner; entry B. Directory mtimes are kept,
    and the area is left as B (so `diff A` and `diff A B` must agree)."""
    base = tmp_path_factory.mktemp("diff-forms")
    guest = base / "guest"
    user = guest / "home" / "user"
    user.mkdir(parents=True)
    (guest / "etc").mkdir()
    (guest / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (user / "notes.txt").write_text("analysis notes\n")
    (user / "notes.txt").chmod(0o644)
    (user / "todo.txt").write_text("first line\n")
    (user / "old.txt").write_text("to be removed\n")
    (user / "data.bin").write_bytes(b"\x00\x01binary\x00" * 10)
    (user / "run.sh").write_text("#!/bin/sh\n")
    vml = Vml(base)
    vml("init")
    vml("area", "add", "wa1", "--dir", str(guest))
    a = vml("commit", "-m", "A", "--json").json()["entry"]
    with keep_dir_mtimes(guest):
        (guest / "etc" / "hosts").write_text("127.0.0.1 localhost vm1\n")
        (guest / "etc" / "hosts.bak").write_text("a name that starts like etc/hosts\n")
        os.setxattr(guest / "etc" / "hosts", "user.tag", b"v1")
        (user / "notes.txt").chmod(0o600)
        (user / "todo.txt").write_text("first line\nsecond line\n")
        (user / "new.txt").write_text("hello\n")
        (user / "data.bin").write_bytes(b"\x00\x02binary\x00" * 10)
        (user / "old.txt").unlink()
        os.chown(user / "run.sh", 1000, 1000)
    b = vml("commit", "-m", "B", "--json").json()["entry"]
    yield SimpleNamespace(vml=vml, guest=guest, a=a, b=b, forms=((a, b), (a,)))
    vml.fsck_clean()


EXPECTED_CHANGES = {
    ("M", "etc/hosts"),
    ("A", "etc/hosts.bak"),
    ("P", "home/user/notes.txt"),
    ("M", "home/user/todo.txt"),
    ("A", "home/user/new.txt"),
    ("M", "home/user/data.bin"),
    ("D", "home/user/old.txt"),
    ("P", "home/user/run.sh"),
}


def test_default_output(hist):
    for args in hist.forms:
        out = hist.vml("diff", *args).stdout
        lines = [line for line in out.splitlines() if line.strip()]
        parsed = {}
        for line in lines:
            m = DEFAULT_LINE.match(line)
            assert m, f"not 'X  path  (what)': {line!r}"
            parsed[m.group(2)] = (m.group(1), m.group(3) or "")
        assert {(s, p) for p, (s, _) in parsed.items()} == EXPECTED_CHANGES, out
        hosts = parsed["etc/hosts"][1]
        assert "content" in hosts and "xattrs" in hosts and "mtime" in hosts and "mode" not in hosts, hosts
        assert parsed["home/user/notes.txt"][1] == "mode 0644 -> 0600"
        assert parsed["home/user/run.sh"][1] == "owner 0:0 -> 1000:1000"
        assert "content" in parsed["home/user/data.bin"][1]


def test_name_status(hist):
    vml, a, b = hist.vml, hist.a, hist.b
    assert name_status(vml("diff", a, b, "--name-status")) == EXPECTED_CHANGES
    assert name_status(vml("diff", a, "--name-status")) == EXPECTED_CHANGES
    # The other way round, added and deleted swap.
    swap = {"A": "D", "D": "A"}
    assert name_status(vml("diff", b, a, "--name-status")) == {(swap.get(x, x), p) for x, p in EXPECTED_CHANGES}
    # No differences: nothing at all.
    assert vml("diff", b, b, "--name-status").stdout == ""
    assert vml("diff", b, "--name-status").stdout == ""
    assert vml("diff", b, b, "--json").json() == []


def test_name_status_separates_with_a_tab(hist):
    for args in hist.forms:
        lines = hist.vml("diff", *args, "--name-status").stdout.splitlines()
        assert {tuple(line.split("\t")) for line in lines} == EXPECTED_CHANGES, f"not X<TAB>path: {lines}"


def test_json_fields(hist):
    vml, a, b, guest = hist.vml, hist.a, hist.b, hist.guest
    got = {d["path"]: d for d in vml("diff", a, b, "--json").json()}
    assert {(d["status"], p) for p, d in got.items()} == EXPECTED_CHANGES
    for d in got.values():
        assert set(d) >= {"path", "status", "changes", "old", "new"}
        for side in (d["old"], d["new"]):
            if side is not None:
                assert set(side) >= JSON_NODE_KEYS, side

    added = got["home/user/new.txt"]
    assert added["old"] is None
    new = added["new"]
    assert new["kind"] == "file" and new["size"] == 6 and new["target"] is None
    assert new["mtime_ns"] == (guest / "home" / "user" / "new.txt").stat().st_mtime_ns
    assert new["uid"] == 0 and new["gid"] == 0

    deleted = got["home/user/old.txt"]
    assert deleted["new"] is None and deleted["old"]["kind"] == "file" and deleted["old"]["size"] == 14

    hosts = got["etc/hosts"]
    assert {"content", "xattrs", "mtime"} <= parts_of(hosts["changes"]) and "mode" not in parts_of(hosts["changes"])
    assert hosts["old"]["size"] == 20 and hosts["new"]["size"] == 24
    assert "user.tag" in hosts["new"]["xattrs"] and "user.tag" not in hosts["old"]["xattrs"]

    notes = got["home/user/notes.txt"]
    assert parts_of(notes["changes"]) == {"mode"}
    assert notes["old"]["mode"] in ("0644", 0o644) and notes["new"]["mode"] in ("0600", 0o600)
    assert notes["old"]["mtime_ns"] == notes["new"]["mtime_ns"]

    run = got["home/user/run.sh"]
    assert parts_of(run["changes"]) == {"owner"}
    assert (run["old"]["uid"], run["old"]["gid"], run["new"]["uid"], run["new"]["gid"]) == (0, 0, 1000, 1000)

    # Against the area: the same objects.
    area = {d["path"]: d for d in vml("diff", a, "--json").json()}
    assert area == got


def test_stat_summary_counts(hist):
    for args in hist.forms:
        lines = [line for line in hist.vml("diff", *args, "--stat").stdout.splitlines() if line.strip()]
        assert len(lines) == 9, lines
        m = SUMMARY.match(lines[-1].strip())
        assert m, lines[-1]
        assert tuple(int(x) for x in m.groups()[:6]) == (8, 2, 1, 3, 0, 2)
        for _status, path in EXPECTED_CHANGES:
            assert sum(path in line.split() for line in lines[:-1]) == 1, (path, lines)
        # Limited to paths, the summary counts only those.
        limited = [line for line in hist.vml("diff", *args, "--stat", "--", "etc").stdout.splitlines() if line.strip()]
        assert len(limited) == 3, limited
        m = SUMMARY.match(limited[-1].strip())
        assert m and tuple(int(x) for x in m.groups()[:6]) == (2, 1, 0, 1, 0, 0), limited[-1]


def test_path_limits(hist):
    vml, a, b = hist.vml, hist.a, hist.b

    def ns(*paths, base=(a, b)):
        return name_status(vml("diff", *base, "--name-status", "--", *paths))

    home = {c for c in EXPECTED_CHANGES if c[1].startswith("home/")}
    assert ns("etc/hosts") == {("M", "etc/hosts")}
    assert ns("/etc/hosts") == {("M", "etc/hosts")}
    assert ns("home") == home
    assert ns("etc/hosts", "home/user/new.txt") == {("M", "etc/hosts"), ("A", "home/user/new.txt")}
    assert ns("etc") == {("M", "etc/hosts"), ("A", "etc/hosts.bak")}
    assert ns("etc", "etc/hosts", "/etc/hosts") == {("M", "etc/hosts"), ("A", "etc/hosts.bak")}
    assert ns("home/user/old.txt") == {("D", "home/user/old.txt")}
    # Paths are whole components: "home/us" is not "home/user".
    assert ns("home/us") == set()
    # A path in neither entry: no output, no error.
    result = vml("diff", a, b, "--", "no/such/path")
    assert result.stdout == "" and result.returncode == 0
    got = vml("diff", a, b, "--json", "--", "/home/user/notes.txt").json()
    assert [(d["path"], d["status"]) for d in got] == [("home/user/notes.txt", "P")]
    # The same against the area.
    assert ns("/home/user", base=(a,)) == home
    assert ns("home/user/new.txt", base=(a,)) == {("A", "home/user/new.txt")}
    result = vml("diff", a, "--json", "--", "no/such/path")
    assert result.returncode == 0 and result.json() == []


def test_unified_diff_for_one_changed_text_file(hist):
    vml = hist.vml
    for base in hist.forms:
        out = vml("diff", *base, "--", "etc/hosts").stdout.splitlines()
        assert "--- a/etc/hosts" in out and "+++ b/etc/hosts" in out, out
        assert out.index("--- a/etc/hosts") + 1 == out.index("+++ b/etc/hosts")
        assert "-127.0.0.1 localhost" in out and "+127.0.0.1 localhost vm1" in out, out
        assert any(line.startswith("@@ ") for line in out), out
        assert out.index("-127.0.0.1 localhost") < out.index("+127.0.0.1 localhost vm1")
        # A leading '/' names the same file; the headers stay relative.
        slash = vml("diff", *base, "--", "/etc/hosts").stdout.splitlines()
        assert "--- a/etc/hosts" in slash and "+++ b/etc/hosts" in slash and "+127.0.0.1 localhost vm1" in slash, slash
        # Only a limit to one changed file prints contents: two paths, or none, do not.
        two = vml("diff", *base, "--", "etc/hosts", "home/user/todo.txt").stdout
        assert "--- a/" not in two and "+++ b/" not in two and "localhost" not in two and "second line" not in two
        plain = vml("diff", *base).stdout
        assert "--- a/" not in plain and "localhost" not in plain
        # A file whose content did not change prints no content difference.
        mode_only = vml("diff", *base, "--", "home/user/notes.txt").stdout
        assert "--- a/" not in mode_only and "+++ b/" not in mode_only


def test_one_directory_path_prints_no_contents(repo, guest: Path):
    a = repo("commit", "-m", "A", "--json").json()["entry"]
    (guest / "home" / "user" / "new.txt").write_text("brand new\n")  # home/user's mtime changes too
    (guest / "home" / "user" / "notes.txt").write_text("analysis notes, edited\n")
    b = repo("commit", "-m", "B", "--json").json()["entry"]
    for base, limit in (((a, b), "home/user"), ((a,), "home/user"), ((a, b), "home")):
        assert name_status(repo("diff", *base, "--name-status", "--", limit)) == {
            ("P", "home/user"), ("A", "home/user/new.txt"), ("M", "home/user/notes.txt")}
        # The one PATH is a directory, not a file: no content differences without -p.
        out = repo("diff", *base, "--", limit).stdout
        assert "+++ b/" not in out and "brand new" not in out and "edited" not in out, (limit, out)
    for base in ((a, b), (a,)):
        patched = repo("diff", *base, "-p", "--", "home/user").stdout.splitlines()
        assert "+brand new" in patched and "+analysis notes, edited" in patched


def test_binary_file_message(hist):
    for base in hist.forms:
        out = hist.vml("diff", *base, "--", "home/user/data.bin").stdout
        assert "Binary files a/home/user/data.bin and b/home/user/data.bin differ" in out.splitlines(), out
        assert "\x00" not in out and "--- a/home/user/data.bin" not in out


def test_patch_flag(hist):
    for base in hist.forms:
        out = hist.vml("diff", *base, "-p").stdout.splitlines()
        for path in ("etc/hosts", "home/user/todo.txt"):
            assert f"--- a/{path}" in out and f"+++ b/{path}" in out, out
        assert " first line" in out and "+second line" in out and "+127.0.0.1 localhost vm1" in out, out
        assert "Binary files a/home/user/data.bin and b/home/user/data.bin differ" in out
        assert "+++ b/home/user/run.sh" not in out and "+++ b/home/user/notes.txt" not in out  # no content change
        # -p with a limit to a directory: only the files below it.
        limited = hist.vml("diff", *base, "-p", "--", "home").stdout.splitlines()
        assert "+second line" in limited and "--- a/etc/hosts" not in limited


# -- output forms that write


def test_paths_are_relative_to_the_area_top_not_the_current_directory(repo, guest: Path):
    a = repo("commit", "-m", "A", "--json").json()["entry"]
    with keep_dir_mtimes(guest):
        (guest / "etc" / "hosts").write_text("10.1.1.1 changed\n")
    deep = Vml(guest / "home" / "user")
    assert name_status(deep("diff", a, "--name-status", "--", "etc/hosts")) == {("M", "etc/hosts")}
    assert deep("diff", a, "--name-status", "--", "notes.txt").stdout == ""
    assert [(c["status"], c["path"]) for c in deep("status", "--json").json()["changes"]] == [("M", "etc/hosts")]


def test_json_symlink_and_directory(repo, guest: Path):
    a = repo("commit", "-m", "A", "--json").json()["entry"]
    (guest / "link").symlink_to("etc/hosts")
    (guest / "opt" / "tool").mkdir(parents=True)
    b = repo("commit", "-m", "B", "--json").json()["entry"]
    got = {d["path"]: d for d in repo("diff", a, b, "--json").json()}
    assert got["link"]["status"] == "A" and got["link"]["new"]["kind"] == "symlink"
    assert got["link"]["new"]["target"] == "etc/hosts"
    assert got["opt"]["status"] == "A" and got["opt"]["new"]["kind"] == "dir"
    assert got["opt/tool"]["status"] == "A"
    # The top directory's mtime changed (two names were added to it).
    assert set(got) - {"link", "opt", "opt/tool"} <= {".", "", "/"}
    # Deleting a whole directory lists it and everything below it.
    shutil.rmtree(guest / "home")
    c = repo("commit", "-m", "C", "--json").json()["entry"]
    gone = {(d["path"], d["status"]) for d in repo("diff", b, c, "--json").json() if d["path"] not in (".", "", "/")}
    assert gone == {("home", "D"), ("home/user", "D"), ("home/user/notes.txt", "D")}
    # A limit reaches into a deleted directory, and into one that replaced a file.
    assert name_status(repo("diff", b, c, "--name-status", "--", "home/user/notes.txt")) == {("D", "home/user/notes.txt")}
    (guest / "link").unlink()
    (guest / "link").mkdir()
    (guest / "link" / "inside").write_text("x\n")
    assert name_status(repo("diff", c, "--name-status", "--", "link/inside")) == {("A", "link/inside")}
    # A symlink replaced by a directory: as in git, the old path is deleted and the new one added.
    assert name_status(repo("diff", c, "--name-status", "--", "link")) == {("D", "link"), ("A", "link"), ("A", "link/inside")}
    assert repo("diff", c, "--name-status", "--", "link").stdout.splitlines() == ["D\tlink", "A\tlink", "A\tlink/inside"]


def test_unified_diff_of_a_large_file_with_an_unusual_name(repo, guest: Path):
    name = "dir with space/café ü.txt"
    big = guest / name
    big.parent.mkdir()
    lines = [f"line {i}\n" for i in range(100_000)]  # about 1 MiB: several chunks
    big.write_text("".join(lines))
    a = repo("commit", "-m", "A", "--json").json()["entry"]
    lines[70_000] = "line 70000 changed\n"
    big.write_text("".join(lines))
    for base in ((a,), (a, repo("commit", "-m", "B", "--json").json()["entry"])):
        out = repo("diff", *base, "--", name).stdout.splitlines()
        assert f"--- a/{name}" in out and f"+++ b/{name}" in out, out[:5]
        assert "-line 70000" in out and "+line 70000 changed" in out
        assert "+line 69999" not in out and "-line 69999" not in out
        assert len(out) < 30, "only the changed region is printed"
        assert name_status(repo("diff", *base, "--name-status", "--", "dir with space")) == {("M", name)}


def test_unified_diff_prints_lines_exactly(repo, guest: Path):
    """Tabs, carriage returns, trailing blanks and markup-like text come out as they are in the file."""
    make, dos = guest / "Makefile", guest / "dos.txt"
    make.write_text("all:\n\techo hi\n")
    dos.write_bytes(b"one\r\ntwo\r\n")
    a = repo("commit", "-m", "A", "--json").json()["entry"]
    make.write_text("all:\n\techo bye [red]x[/red]  \n")
    dos.write_bytes(b"one\r\nTWO\r\n")

    def raw_diff(path: str) -> list[str]:
        # Bytes, not text: text mode would turn the file's \r\n into \n on our side.
        env = {**os.environ, "VML_AUTHOR_NAME": "Test User", "VML_AUTHOR_EMAIL": "test@example.org"}
        env.pop("VML_REPO", None)
        done = subprocess.run([sys.executable, "-m", "vml", "diff", a, "--", path], cwd=repo.cwd, env=env,
                              capture_output=True, timeout=300, check=True)
        return done.stdout.decode().split("\n")

    problems = []
    out = raw_diff("Makefile")
    if not (" all:" in out and "-\techo hi" in out and "+\techo bye [red]x[/red]  " in out):
        problems.append(("tabs", out))
    out = raw_diff("dos.txt")
    if not (" one\r" in out and "-two\r" in out and "+TWO\r" in out):
        problems.append(("carriage returns", out))
    assert problems == []


def test_a_new_hard_link_does_not_modify_the_existing_file(repo, guest: Path):
    """`ln notes.txt copy.txt`: copy.txt is added; notes.txt's content is what it was, so it is
    not M ("content changed"); at most a metadata-only change. Against the area and between entries."""
    a = repo("commit", "-m", "A", "--json").json()["entry"]
    with keep_dir_mtimes(guest):
        os.link(guest / "home" / "user" / "notes.txt", guest / "home" / "user" / "copy.txt")
    b = repo("commit", "-m", "B", "--json").json()["entry"]
    for args in ((a,), (a, b)):
        got = {d["path"]: d for d in repo("diff", *args, "--json").json()}
        assert got["home/user/copy.txt"]["status"] == "A"
        assert set(got) <= {"home/user/copy.txt", "home/user/notes.txt"}, got
        if "home/user/notes.txt" in got:
            notes = got["home/user/notes.txt"]
            assert notes["status"] == "P" and notes["changes"] == ["links"], notes


def test_json_user_and_group_names_from_the_tree(repo, guest: Path):
    (guest / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n")
    (guest / "etc" / "group").write_text("root:x:0:\nstaff:x:1000:\n")
    a = repo("commit", "-m", "A", "--json").json()["entry"]
    os.chown(guest / "home" / "user" / "notes.txt", 1000, 1000)
    [change] = repo("diff", a, "--json", "--", "home/user/notes.txt").json()
    assert change["status"] == "P" and parts_of(change["changes"]) == {"owner"}
    assert (change["old"]["user"], change["old"]["group"]) == ("root", "root")
    assert (change["new"]["user"], change["new"]["group"]) == ("alice", "staff")
    assert (change["new"]["uid"], change["new"]["gid"]) == (1000, 1000)


def test_stat_summary_bytes(repo, guest: Path):
    a = repo("commit", "-m", "A", "--json").json()["entry"]
    with keep_dir_mtimes(guest):
        (guest / "home" / "user" / "new.txt").write_bytes(b"x" * 100)
        (guest / "etc" / "hosts").unlink()  # 20 bytes
        (guest / "home" / "user" / "notes.txt").chmod(0o600)
    b = repo("commit", "-m", "B", "--json").json()["entry"]
    for args in ((a, b), (a,)):
        lines = [line for line in repo("diff", *args, "--stat").stdout.splitlines() if line.strip()]
        assert len(lines) == 4, lines
        assert lines[-1].strip() == "3 paths changed: 1 added, 1 deleted, 0 modified, 0 type changed, 1 properties only; +100 bytes, -20 bytes"
        body = lines[:-1]
        for path, size in (("home/user/new.txt", "100"), ("etc/hosts", "20"), ("home/user/notes.txt", "15")):
            [line] = [line for line in body if path in line]
            assert size in line, line


# -- errors


def test_unknown_entry(hist):
    for args in (["nosuch", hist.a], [hist.a, "nosuch"], ["nosuch"]):
        result = hist.vml("diff", *args, check=False)
        line = one_line_error(result, USAGE)
        assert "no entry matches 'nosuch'" in line and result.stdout == "", line


def test_diff_against_the_area_with_two_areas(repo, tmp_path: Path, guest: Path):
    a = repo("commit", "-m", "A", "--json").json()["entry"]
    repo("area", "add", "wa2", "--dir", str(tmp_path / "second"))
    line = one_line_error(repo("diff", a, check=False), USAGE)
    assert "wa1" in line and "wa2" in line and "-a" in line, line
    (guest / "etc" / "hosts").write_text("changed\n")
    assert ("M", "etc/hosts") in name_status(repo("diff", a, "-a", "wa1", "--name-status"))
    # HEAD is the chosen area's entry.
    assert ("M", "etc/hosts") in name_status(repo("diff", "HEAD", "-a", "wa1", "--name-status"))
    one_line_error(repo("diff", "HEAD", check=False), USAGE)
    # Two entries need no area.
    assert repo("diff", a, a, "--json").json() == []
    line = one_line_error(repo("diff", a, "-a", "nosuch", check=False), USAGE)
    assert "nosuch" in line


def test_bad_flags(hist):
    a = hist.a
    for args in (["diff", a, a, "--bogus"], ["diff", a, "--stat=3x"], ["diff"]):
        result = hist.vml(*args, check=False)
        assert result.returncode == USAGE, (args, result)
        assert "Traceback" not in result.stderr and result.stdout == ""
        if "--bogus" in args:
            assert "--bogus" in result.stderr


# -- hardlinks: `links` follows the group's membership (issue 16, point 6)


def _group_of_three(guest: Path) -> list[Path]:
    """a (the group's first member in walk order), b and c: one inode; d a plain file."""
    (guest / "g").mkdir()
    first = guest / "g" / "a"
    first.write_text("one inode, three names\n")
    others = [guest / "g" / "b", guest / "h" / "c"]
    (guest / "h").mkdir()
    for other in others:
        os.link(first, other)
    (guest / "g" / "d").write_text("alone\n")
    return [first, *others]


@pytest.mark.parametrize("gone", [0, 1, 2], ids=["first-member", "second-member", "last-member"])
def test_links_is_set_by_the_group_membership_whichever_member_goes(repo, guest: Path, gone: int):
    """Deleting any one name of three: it is D, the two that stay are P with `links` alone
    (their content is the same and they still share an inode), between entries and against
    the area; nothing else is listed."""
    members = _group_of_three(guest)
    a = repo("commit", "-m", "three names", "--json").json()["entry"]
    with keep_dir_mtimes(guest):
        members[gone].unlink()
    rel = [str(p.relative_to(guest)) for p in members]
    expected = {rel[gone]: ("D", [])} | {rel[i]: ("P", ["links"]) for i in range(3) if i != gone}
    b = repo("commit", "-m", "two names", "--json").json()["entry"]
    for args in ((a, b), (a,)):
        got = {d["path"]: (d["status"], d["changes"]) for d in repo("diff", *args, "--json").json()}
        assert got == expected, (args, got)
    assert {(c["status"], c["path"]) for c in repo("status", "--json").json()["changes"]} == set()
    # The other way round: the name comes back, the same two gain a member.
    back = {path: ("A" if status == "D" else status, parts) for path, (status, parts) in expected.items()}
    assert {d["path"]: (d["status"], d["changes"]) for d in repo("diff", b, a, "--json").json()} == back


def test_links_when_a_name_joins_or_leaves_and_a_file_with_outside_names(repo, guest: Path, tmp_path: Path):
    members = _group_of_three(guest)
    outside = tmp_path / "outside-name"
    os.link(guest / "g" / "d", outside)  # d has a second name, outside the area: no group in the tree
    a = repo("commit", "-m", "A", "--json").json()["entry"]
    with keep_dir_mtimes(guest):
        os.link(guest / "g" / "d", guest / "h" / "d2")  # d joins a group of two
        before = os.lstat(members[2])
        members[2].unlink()
        members[2].write_text("one inode, three names\n")  # c leaves: the same bytes, its own inode now
        os.utime(members[2], ns=(before.st_atime_ns, before.st_mtime_ns))
    got = {d["path"]: (d["status"], d["changes"]) for d in repo("diff", a, "--json").json()}
    assert got == {"g/a": ("P", ["links"]), "g/b": ("P", ["links"]), "h/c": ("P", ["links"]),
                   "g/d": ("P", ["links"]), "h/d2": ("A", [])}, got
    # A name whose other names are all outside the tree is no group: it comes back as a
    # file of one name, and saving the restored tree gives the same tree.
    out = tmp_path / "out"
    repo("checkout", a, "--to", str(out))
    assert os.lstat(out / "g" / "d").st_nlink == 1
    assert os.lstat(out / "g" / "a").st_nlink == 3
    repo("area", "add", "copy", "--dir", str(out))
    copy = repo("commit", "-a", "copy", "-m", "copy", "--json").json()
    assert repo("diff", a, copy["entry"], "--json").json() == []
    assert repo("show", a, "--json").json()["info"]["manifest"] == repo("show", copy["entry"], "--json").json()["info"]["manifest"]


# -- paths are quoted as git quotes them, and exact in JSON (issue 16, point 3)

ODD_NAMES = [b"new\nline", b"raw\xffbyte", b"raw\\xffbyte", b'q"uote', b"tab\there", b"caf\xc3\xa9", b"plain"]


def test_odd_names_are_one_unambiguous_token_in_text_and_exact_in_json(repo, guest: Path):
    import base64

    from vml.pathnames import unquote_path

    a = repo("commit", "-m", "A", "--json").json()["entry"]
    odd = os.fsencode(guest / "odd")
    os.mkdir(odd)
    for name in ODD_NAMES:
        with open(os.path.join(odd, name), "wb") as f:
            f.write(name)
    b = repo("commit", "-m", "B", "--json").json()["entry"]
    wanted = {b"odd/" + name for name in ODD_NAMES}
    expected_text = {b"odd/new\nline": '"odd/new\\nline"', b"odd/raw\xffbyte": '"odd/raw\\377byte"',
                     b"odd/raw\\xffbyte": '"odd/raw\\\\xffbyte"', b'odd/q"uote': '"odd/q\\"uote"',
                     b"odd/tab\there": '"odd/tab\\there"', b"odd/caf\xc3\xa9": "odd/café", b"odd/plain": "odd/plain"}
    for args in ((a, b), (a,)):
        lines = repo("diff", *args, "--name-status").stdout.splitlines()
        found = {}
        for line in lines:
            status, text = line.split("\t")
            found[unquote_path(text)] = text
        assert {path: text for path, text in found.items() if path.startswith(b"odd/")} == expected_text, lines
        default = repo("diff", *args).stdout.splitlines()
        assert len(default) == len(lines), "every change is one line"
        changes = repo("diff", *args, "--json").json()
        exact = {}
        for change in changes:
            path = os.fsencode(change["path"])  # lossless: undecodable bytes are \udcXX
            if change["path_bytes"] is not None:
                assert base64.b64decode(change["path_bytes"]) == path
            exact[path] = change["path_bytes"]
        assert wanted <= set(exact)
        assert exact[b"odd/raw\xffbyte"] is not None and exact[b"odd/raw\\xffbyte"] is None  # never the same string
        assert len({c["path"] for c in changes}) == len(changes)
        raw = subprocess.run([sys.executable, "-m", "vml", "diff", *args, "--name-status", "-z"], cwd=repo.cwd,
                             capture_output=True, check=True).stdout
        fields = raw.split(b"\0")[:-1]
        assert {path for path in fields[1::2] if path.startswith(b"odd/")} == wanted
    with open(os.path.join(odd, b"late\nline\xfe"), "wb") as f:
        f.write(b"x")
    short = [line.split("\t") for line in repo("status", "--short").stdout.splitlines()]
    assert ["A", '"odd/late\\nline\\376"'] in short, short
    long_form = repo("status").stdout.splitlines()
    assert '    "odd/late\\nline\\376"' in long_form, long_form
    os.unlink(os.path.join(odd, b"late\nline\xfe"))
    # Patch headers quote the whole a/PATH, as git does.
    patch = repo("diff", a, b, "--", "odd/new\nline").stdout.splitlines()
    assert '+++ "b/odd/new\\nline"' in patch and "--- /dev/null" in patch, patch

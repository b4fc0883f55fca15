"""Naming entries as a git user would (docs/HISTORY.md, "Naming entries"): ids and prefixes,
branch and tag names, full ref names, HEAD and @, ~N and ^N, reflog positions X@{N}, and the
one-line errors for ambiguous and unknown names."""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Vml, one_line_error


def git(root: Path, *args: str, data: bytes | None = None) -> str:
    done = subprocess.run(["git", "--git-dir", str(root / ".vml"), *args], input=data, capture_output=True, check=True)
    return done.stdout.decode().strip()


def shown(v: Vml, spec: str, *extra: str) -> str:
    return v("show", spec, *extra, "--json").json()["entry"]["id"]


def logged(v: Vml, spec: str, *extra: str) -> str:
    entries = v("log", spec, "-n1", *extra, "--json").json()
    assert len(entries) == 1, entries
    return entries[0]["id"]


def _commit_header(root: Path, like: str, parents: list[str]) -> str:
    """The header of entry `like` (tree, author, committer) with `parents` instead of its own."""
    header = git(root, "cat-file", "commit", like).partition("\n\n")[0]
    lines = [line for line in header.splitlines() if not line.startswith("parent ")]
    lines[1:1] = [f"parent {p}" for p in parents]
    return "\n".join(lines) + "\n\n"


def _commit_id(body: bytes) -> str:
    return hashlib.sha1(b"commit %d\0" % len(body) + body).hexdigest()


def craft_commit(root: Path, like: str, parents: list[str], message: str) -> str:
    """A commit with the tree and author of entry `like`, the given parents and message."""
    body = (_commit_header(root, like, parents) + message + "\n").encode()
    made = git(root, "hash-object", "-t", "commit", "-w", "--stdin", data=body)
    assert made == _commit_id(body)
    return made


def commit_with_prefix(root: Path, like: str, parents: list[str], prefix: str) -> str:
    """Brute force a message so that the crafted commit's id starts with `prefix`."""
    start = _commit_header(root, like, parents).encode()
    n = next(n for n in range(10_000_000) if _commit_id(start + b"filler %d\n" % n).startswith(prefix))
    return craft_commit(root, like, parents, f"filler {n}")


@dataclass
class History:
    v: Vml
    root: Path
    guest: Path
    c1: str
    c2: str
    c3: str
    merge: str


@pytest.fixture(scope="module")
def hist(tmp_path_factory) -> History:
    """main: c1 - c2 - c3 (area wa1 on main at c3); tag v1 -> c1; branch side -> c2;
    branch dup -> c2 and tag dup -> c1; branch same and tag same -> c3; branch merged -> a
    merge entry with parents c3 and c1. Refs other than main are written with git itself, so
    these tests do not depend on `vml branch` and `vml tag`."""
    root = tmp_path_factory.mktemp("refsyntax")
    guest = root / "guest"
    (guest / "etc").mkdir(parents=True)
    (guest / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    v = Vml(root)
    v("init")
    v("area", "add", "wa1", "--dir", str(guest))
    c1 = v("commit", "-m", "first", "--json").json()["entry"]
    (guest / "etc" / "hosts").write_text("10.0.0.2 second\n")
    c2 = v("commit", "-m", "second", "--json").json()["entry"]
    (guest / "etc" / "motd").write_text("welcome\n")
    c3 = v("commit", "-m", "third", "--json").json()["entry"]
    assert len({c1, c2, c3}) == 3
    merge = craft_commit(root, c3, [c3, c1], "merge of c3 and c1")
    for ref, target in [("refs/tags/v1", c1), ("refs/heads/side", c2), ("refs/heads/dup", c2), ("refs/tags/dup", c1),
                        ("refs/heads/same", c3), ("refs/tags/same", c3), ("refs/heads/merged", merge)]:
        git(root, "update-ref", ref, target)
    yield History(v, root, guest, c1, c2, c3, merge)
    v.fsck_clean()


def unique_prefix(entry: str, others: list[str], at_least: int = 4) -> str:
    n = at_least
    while any(o != entry and o.startswith(entry[:n]) for o in others):
        n += 1
    return entry[:n]


def test_full_and_abbreviated_ids(hist: History):
    v, ids = hist.v, [hist.c1, hist.c2, hist.c3]
    everything = [e["id"] for e in v("log", "--all", "--json").json()]
    for entry in ids:
        assert shown(v, entry) == entry
        assert shown(v, unique_prefix(entry, everything)) == entry
    assert shown(v, hist.c2[:9]) == hist.c2
    assert logged(v, unique_prefix(hist.c1, everything)) == hist.c1


def test_branch_tag_and_full_ref_names(hist: History):
    v = hist.v
    assert shown(v, "main") == hist.c3
    assert shown(v, "refs/heads/main") == hist.c3
    assert shown(v, "v1") == hist.c1
    assert shown(v, "refs/tags/v1") == hist.c1
    assert shown(v, "side") == hist.c2
    assert logged(v, "refs/heads/side") == hist.c2
    # A branch and a tag on the same entry are not ambiguous.
    assert shown(v, "same") == hist.c3


def test_head_and_at(hist: History):
    v = hist.v
    for spec in ("HEAD", "@"):
        assert shown(v, spec) == hist.c3
    assert shown(v, "HEAD", "-a", "wa1") == hist.c3
    assert logged(v, "@") == hist.c3


@pytest.mark.parametrize("spec,expected", [
    ("HEAD~2", "c1"), ("HEAD~", "c2"), ("HEAD~0", "c3"), ("main^", "c2"), ("main~", "c2"), ("main^^", "c1"),
    ("@~2", "c1"), ("side~1", "c1"), ("refs/heads/main~2", "c1"), ("merged^2", "c1"), ("merged^", "c3"),
    ("merged~2", "c2"),
])
def test_ancestry_suffixes(hist: History, spec: str, expected: str):
    assert shown(hist.v, spec) == getattr(hist, expected)


def test_ancestry_with_log_and_prefix(hist: History):
    v = hist.v
    assert logged(v, "HEAD~2") == hist.c1
    assert logged(v, hist.c3[:10] + "~1") == hist.c2
    assert [e["id"] for e in v("log", "HEAD~1", "--json").json()] == [hist.c2, hist.c1]


def test_second_parent_of_a_non_merge(hist: History):
    v = hist.v
    for spec in ("HEAD^2", "main^2", "side^3", "merged^3"):
        line = one_line_error(v("show", spec, "--json", check=False))
        assert spec in line, line
    line = one_line_error(v("log", "HEAD^2", check=False))
    assert "HEAD^2" in line


def test_past_the_first_entry(hist: History):
    v = hist.v
    for spec in ("HEAD~10", "main~3", "v1^", "HEAD^^^"):
        line = one_line_error(v("show", spec, check=False))
        assert spec in line, line
    one_line_error(v("log", "HEAD~10", check=False))
    assert v("show", "HEAD~10", check=False).stdout == ""


def test_reflog_positions(hist: History):
    v = hist.v
    # The area's HEAD and branch main each moved three times: c1, c2, c3.
    for n, expected in enumerate([hist.c3, hist.c2, hist.c1]):
        assert shown(v, f"HEAD@{{{n}}}") == expected
    assert shown(v, "@{1}") == hist.c2
    assert shown(v, "main@{0}") == hist.c3
    assert logged(v, "main@{2}") == hist.c1
    assert shown(v, "main@{1}^") == hist.c1
    for spec in ("HEAD@{3}", "main@{10}"):
        line = one_line_error(v("show", spec, check=False))
        assert spec in line, line


def test_diff_between_references(hist: History):
    v = hist.v
    by_name = v("diff", "HEAD~2", "HEAD", "--json").json()
    by_id = v("diff", hist.c1, hist.c3, "--json").json()
    assert by_name == by_id
    files = sorted((c["path"].lstrip("/"), c["status"]) for c in by_id if c["path"].strip("/") != "etc")
    assert files == [("etc/hosts", "M"), ("etc/motd", "A")]
    assert v("diff", "v1", "side", "--json").json() == v("diff", hist.c1, hist.c2, "--json").json()
    assert v("diff", "main@{1}", "main", "--json").json() == v("diff", hist.c2, hist.c3, "--json").json()


def test_branch_and_tag_of_the_same_name_on_different_entries(hist: History):
    v = hist.v
    for args in (["show", "dup"], ["log", "dup"], ["diff", "dup", "main"], ["show", "dup~1"]):
        line = one_line_error(v(*args, check=False))
        assert "'dup' is ambiguous" in line, line
        assert "branch dup" in line and "tag dup" in line, line
        assert hist.c2[:6] in line and hist.c1[:6] in line, line
        assert "use more digits or a full ref name" in line, line
    assert shown(v, "refs/heads/dup") == hist.c2
    assert shown(v, "refs/tags/dup") == hist.c1
    assert shown(v, "refs/heads/dup~1") == hist.c1


def test_unknown_names(hist: History):
    v = hist.v
    everything = [e["id"] for e in v("log", "--all", "--json").json()]
    hexname = next(p for p in ("deadbeef", "feedface", "0badc0de") if not any(e.startswith(p) for e in everything))
    for spec in ("foo", "foo~2", "refs/tags/main", hexname):
        line = one_line_error(v("show", spec, check=False))
        assert f"no entry matches '{spec}'" in line, line
        assert "no branch, tag or entry id" in line, line
    line = one_line_error(v("diff", "foo", "HEAD", check=False))
    assert "no entry matches 'foo'" in line
    line = one_line_error(v("log", "foo", check=False))
    assert "no entry matches 'foo'" in line


def test_ambiguous_abbreviated_id(repo: Vml, guest: Path, tmp_path: Path):
    first = repo("commit", "-m", "one", "--json").json()["entry"]
    (guest / "etc" / "hosts").write_text("10.9.9.9 two\n")
    second = repo("commit", "-m", "two", "--json").json()["entry"]
    prefix = second[:4]
    # An entry on branch twin whose id shares its first 4 hex digits with `second`.
    twin = commit_with_prefix(tmp_path, first, [first], prefix)
    git(tmp_path, "update-ref", "refs/heads/twin", twin)
    everything = [e["id"] for e in repo("log", "--all", "--json").json()]
    assert twin in everything and twin != second
    for args in (["show", prefix], ["log", prefix], ["diff", prefix, "HEAD"], ["show", prefix + "~1"]):
        line = one_line_error(repo(*args, check=False))
        assert f"'{prefix}' is ambiguous" in line, line
        assert f"entry {second[:6]}" in line and f"entry {twin[:6]}" in line, line
        assert "use more digits or a full ref name" in line, line
    # More digits settle it.
    assert shown(repo, unique_prefix(second, everything)) == second
    assert shown(repo, unique_prefix(twin, everything)) == twin
    assert shown(repo, "twin") == twin


def test_branch_named_like_a_prefix_of_another_entry(repo: Vml, guest: Path, tmp_path: Path):
    first = repo("commit", "-m", "one", "--json").json()["entry"]
    (guest / "etc" / "hosts").write_text("10.9.9.9 two\n")
    second = repo("commit", "-m", "two", "--json").json()["entry"]
    name = first[:6]
    git(tmp_path, "update-ref", f"refs/heads/{name}", second)
    line = one_line_error(repo("show", name, check=False))
    assert f"'{name}' is ambiguous" in line, line
    assert f"entry {first[:6]}" in line and f"branch {name}" in line and second[:6] in line, line
    assert shown(repo, f"refs/heads/{name}") == second
    assert shown(repo, first[:8]) == first


def test_head_follows_the_area(repo: Vml, guest: Path, tmp_path: Path):
    c1 = repo("commit", "-m", "one", "--json").json()["entry"]
    (guest / "etc" / "hosts").write_text("10.9.9.9 two\n")
    c2 = repo("commit", "-m", "two", "--json").json()["entry"]
    (guest / "etc" / "hosts").write_text("10.9.9.9 three\n")
    c3 = repo("commit", "-m", "three", "--json").json()["entry"]
    repo("checkout", c1, "-a", "wa1")  # detached
    assert shown(repo, "HEAD") == c1 and shown(repo, "@") == c1
    assert shown(repo, "main") == c3
    # HEAD's own log: c1 (checkout), c3, c2, c1.
    assert [shown(repo, f"HEAD@{{{n}}}") for n in range(4)] == [c1, c3, c2, c1]
    # Detached: @{N} is the area's own HEAD log too; main's log did not move.
    assert shown(repo, "@{1}") == c3
    assert [shown(repo, f"main@{{{n}}}") for n in range(3)] == [c3, c2, c1]
    # Back on main: @{N} is main's log again, HEAD@{N} the area's own.
    repo("checkout", "main", "-a", "wa1")
    assert shown(repo, "HEAD@{1}") == c1 and shown(repo, "HEAD@{2}") == c3
    assert shown(repo, "@{1}") == c2
    # A second area on its own branch: HEAD means the chosen area's HEAD.
    repo("area", "add", "wa2", "--dir", str(tmp_path / "second"), "--branch", "other")
    repo("checkout", c2, "-a", "wa2")
    assert shown(repo, "HEAD", "-a", "wa2") == c2
    assert shown(repo, "HEAD", "-a", "wa1") == c3
    assert shown(repo, "HEAD~1", "-a", "wa2") == c1

"""Branches, switch, tags, rm and reflog from the command line (docs/HISTORY.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import Vml, one_line_error
from support.repofiles import tree_digest

HEX40 = re.compile(r"[0-9a-f]{40}")
REFLOG_LINE = re.compile(r"^([0-9a-f]{12}) (\S+)@\{(\d+)\}: (.*)$")


def commit(v: Vml, message: str) -> str:
    result = v("commit", "-m", message, "--json").json()
    assert result["created"], result
    return result["entry"]


def ids_in(value) -> list[str]:
    """Every full entry id among the values of a JSON object (not its keys), in order."""
    if isinstance(value, str):
        return [value] if HEX40.fullmatch(value) else []
    if isinstance(value, dict):
        return [i for v in value.values() for i in ids_in(v)]
    if isinstance(value, list):
        return [i for v in value for i in ids_in(v)]
    return []


def refs(v: Vml, command: str) -> dict[str, str]:
    """`vml branch --json` or `vml tag --json` as {name: entry id}."""
    return refs_of(v(command, "--json").json())


def refs_of(listed: list[dict]) -> dict[str, str]:
    found = {}
    for item in listed:
        tips = ids_in({k: x for k, x in item.items() if k != "areas"})
        assert len(tips) == 1, item
        found[item["name"]] = tips[0]
    return found


def area(v: Vml, name: str = "wa1") -> dict:
    return {a["name"]: a for a in v("area", "list", "--json").json()}[name]


def where(v: Vml, name: str = "wa1") -> tuple[str | None, str | None]:
    """The area's branch and entry."""
    info = area(v, name)
    return info["branch"], info["entry"]


def log_ids(v: Vml, *args: str) -> list[str]:
    return [e["id"] for e in v("log", *args, "--json").json()]


def shown(v: Vml, spec: str) -> str:
    return v("show", spec, "--json").json()["entry"]["id"]


def checked_out(v: Vml, spec: str, where: Path) -> dict[str, str]:
    v("checkout", spec, "--to", str(where))
    return tree_digest(where)


def history(v: Vml, guest: Path, count: int) -> tuple[list[str], list[dict[str, str]]]:
    """`count` entries on main with different files each time; their ids and tree digests."""
    ids, digests = [], []
    for n in range(count):
        if n == 1:
            (guest / "etc" / "hosts").write_text("10.0.0.2 second\n")
        elif n == 2:
            (guest / "etc" / "motd").write_text("third\n")
        elif n == 3:
            (guest / "home" / "user" / "notes.txt").unlink()
        elif n > 3:
            (guest / "etc" / "motd").write_text(f"entry {n + 1}\n")
        ids.append(commit(v, f"entry {n + 1}"))
        digests.append(tree_digest(guest))
    assert len(set(ids)) == count
    return ids, digests


def reflog_lines(v: Vml, *args: str) -> list[tuple[str, str, int, str]]:
    lines = [line for line in v("reflog", *args).stdout.splitlines() if line.strip()]
    parsed = [REFLOG_LINE.match(line) for line in lines]
    assert all(parsed), lines
    return [(m[1], m[2], int(m[3]), m[4]) for m in parsed]


# -- branch -------------------------------------------------------------------------------


def test_branch_create_list_and_refusals(repo: Vml, guest: Path, tmp_path: Path):
    (c1, c2), _ = history(repo, guest, 2)
    repo("branch", "feat")
    repo("branch", "old", c1[:8])
    repo("branch", "older", "HEAD~1")
    listed = repo("branch", "--json").json()
    assert refs_of(listed) == {"main": c2, "feat": c2, "old": c1, "older": c1}
    areas = {item["name"]: item.get("areas") for item in listed}
    assert areas["main"] == ["wa1"] and areas["feat"] == [] and areas["old"] == []
    text = repo("branch").stdout
    for name in ("main", "feat", "old", "older"):
        assert re.search(rf"(^|\s){name}(\s|$)", text, re.M), text
    assert repo("branch", "--list").stdout == text
    # An existing name is refused and the branch stays where it was.
    line = one_line_error(repo("branch", "old", c2, check=False))
    assert "old" in line
    # An unknown START is refused and creates nothing.
    line = one_line_error(repo("branch", "x", "nosuch", check=False))
    assert "nosuch" in line
    # Bad names.
    for name in ("../x", "a..b", "-x", "x.lock"):
        line = one_line_error(repo("branch", "--", name, check=False))
        assert name in line, line
    one_line_error(repo("tag", "--", "a..b", check=False))
    assert not (tmp_path / ".vml" / "refs" / "x").exists() and not (tmp_path / ".vml" / "x").exists()
    # The branch an area is on cannot be deleted, even with -D.
    for flag in ("-d", "-D"):
        line = one_line_error(repo("branch", flag, "main", check=False))
        assert "main" in line, line
    assert refs(repo, "branch") == {"main": c2, "feat": c2, "old": c1, "older": c1}
    assert where(repo) == ("main", c2)  # creating branches did not move the area


def test_branch_delete(repo: Vml, guest: Path, tmp_path: Path):
    c1 = commit(repo, "one")
    repo("switch", "-c", "feat")
    (guest / "etc" / "hosts").write_text("10.0.0.9 feature\n")
    c2 = commit(repo, "feature work")
    d2 = tree_digest(guest)
    repo("switch", "main")
    # feat holds an entry nothing else does: -d refuses, -D deletes.
    line = one_line_error(repo("branch", "-d", "feat", check=False))
    assert "feat" in line and "-D" in line, line
    assert refs(repo, "branch") == {"main": c1, "feat": c2}
    repo("branch", "-D", "feat")
    line = one_line_error(repo("branch", "-d", "feat", check=False))
    assert "feat" in line
    # The deleted branch's reflog still names its entry, and the entry can be brought back.
    assert c2[:12] in repo("reflog", "feat").stdout
    repo("branch", "back", c2)
    assert checked_out(repo, "back", tmp_path / "back") == d2
    # -d is allowed when another branch or a tag holds the entries.
    repo("branch", "old", c1)
    repo("branch", "-d", "old")
    repo("tag", "keep", "back")
    repo("branch", "-d", "back")
    assert refs(repo, "branch") == {"main": c1}
    assert shown(repo, "keep") == c2


# -- switch -------------------------------------------------------------------------------


def test_switch(repo: Vml, guest: Path):
    c1 = commit(repo, "one")
    d1 = tree_digest(guest)
    (guest / "home" / "user" / "notes.txt").write_text("work in progress\n")
    repo("switch", "-c", "feat")  # a new branch at the area's entry; files untouched
    assert (guest / "home" / "user" / "notes.txt").read_text() == "work in progress\n"
    assert where(repo) == ("feat", c1)
    (guest / "etc" / "hosts").unlink()
    (guest / "srv" / "data").mkdir(parents=True)
    (guest / "srv" / "data" / "table.csv").write_text("a,b\n1,2\n")
    c2 = commit(repo, "feature work")
    d2 = tree_digest(guest)
    assert refs(repo, "branch") == {"main": c1, "feat": c2}
    repo("switch", "main")
    assert tree_digest(guest) == d1
    assert where(repo) == ("main", c1)
    repo("switch", "feat")
    assert tree_digest(guest) == d2
    status = repo("status", "--json").json()
    assert (status["branch"], status["entry"], status["clean"], status["changes"]) == ("feat", c2, True, [])
    # Refusals change nothing.
    line = one_line_error(repo("switch", "nosuch", check=False))
    assert "nosuch" in line
    line = one_line_error(repo("switch", "-c", "main", check=False))
    assert "main" in line
    one_line_error(repo("switch", "-c", "a..b", check=False))
    one_line_error(repo("switch", c1, check=False))  # an entry is not a branch: use checkout
    (guest / "srv" / "data" / "table.csv").write_text("unsaved\n")
    before = tree_digest(guest)
    line = one_line_error(repo("switch", "main", check=False))
    assert "srv/data/table.csv" in line, line
    assert tree_digest(guest) == before
    assert where(repo) == ("feat", c2)
    assert refs(repo, "branch") == {"main": c1, "feat": c2}
    # -f switches anyway.
    repo("switch", "main", "-f")
    assert tree_digest(guest) == d1
    assert where(repo) == ("main", c1)


# -- tag ----------------------------------------------------------------------------------


def test_tags(repo: Vml, guest: Path):
    (c1, c2), _ = history(repo, guest, 2)
    repo("tag", "v2")
    repo("tag", "v1", "HEAD~1")
    assert refs(repo, "tag") == {"v1": c1, "v2": c2}
    text = repo("tag").stdout
    assert "v1" in text and "v2" in text
    assert repo("tag", "--list").stdout == text
    line = one_line_error(repo("tag", "v1", check=False))
    assert "v1" in line
    line = one_line_error(repo("tag", "bad", "nosuch", check=False))
    assert "nosuch" in line
    repo("tag", "-d", "v1")
    assert refs(repo, "tag") == {"v2": c2}
    line = one_line_error(repo("tag", "-d", "v1", check=False))
    assert "v1" in line
    assert shown(repo, "v2") == c2


# -- rm -----------------------------------------------------------------------------------


def test_rm_middle_entry(repo: Vml, guest: Path, tmp_path: Path):
    (c1, c2, c3, c4), (_, _, d3, d4) = history(repo, guest, 4)
    repo("branch", "side", c3)
    repo("tag", "keep", c2)
    repo("tag", "later", c3)
    done = repo("rm", c2)
    # Tags that reach the entry are left alone and named in the output.
    assert "keep" in done.stdout + done.stderr and "later" in done.stdout + done.stderr, done
    log = repo("log", "--json").json()
    assert [e["message"].strip() for e in log] == ["entry 4", "entry 3", "entry 1"]
    new4, new3, old1 = log
    assert old1["id"] == c1
    assert new3["parents"] == [c1] and new4["parents"] == [new3["id"]]
    assert new3["id"] != c3 and new4["id"] != c4
    # Later entries keep their content exactly.
    assert checked_out(repo, new3["id"], tmp_path / "e3") == d3
    assert checked_out(repo, new4["id"], tmp_path / "e4") == d4
    # Every branch containing it is rewritten (each entry once); tags are not.
    assert refs(repo, "branch") == {"main": new4["id"], "side": new3["id"]}
    assert refs(repo, "tag") == {"keep": c2, "later": c3}
    # The area follows its branch and has no changes.
    status = repo("status", "--json").json()
    assert (status["branch"], status["entry"], status["clean"]) == ("main", new4["id"], True)
    assert tree_digest(guest) == d4
    # The reflog still lists the dropped entry, and HEAD@{N} by its number finds it.
    lines = reflog_lines(repo)
    numbers = [n for entry12, name, n, _ in lines if entry12 == c2[:12] and name == "HEAD"]
    assert numbers, lines
    assert shown(repo, f"HEAD@{{{numbers[0]}}}") == c2


def test_rm_dropped_entry_stays_recoverable(repo: Vml, guest: Path, tmp_path: Path):
    (c1, c2, c3), (_, d2, _) = history(repo, guest, 3)
    repo("rm", c2)  # no tag holds it: only the reflog does
    assert c2 not in log_ids(repo, "--all")
    assert c2[:12] in repo("reflog").stdout
    repo("gc")  # the reflog line is fresh: gc keeps the entry's data
    assert c2[:12] in repo("reflog").stdout
    repo("branch", "rescued", c2)
    assert log_ids(repo, "rescued") == [c2, c1]
    assert checked_out(repo, "rescued", tmp_path / "rescued") == d2


def test_rm_root_then_tip(repo: Vml, guest: Path, tmp_path: Path):
    (c1, c2, c3), (_, d2, d3) = history(repo, guest, 3)
    repo("rm", c1)
    log = repo("log", "--json").json()
    assert [e["message"].strip() for e in log] == ["entry 3", "entry 2"]
    new3, new2 = log
    assert new2["parents"] == [] and new3["parents"] == [new2["id"]]
    assert checked_out(repo, new2["id"], tmp_path / "e2") == d2
    status = repo("status", "--json").json()
    assert status["entry"] == new3["id"] and status["clean"] is True
    # Dropping the tip: the branch moves to its parent, the area keeps its files.
    repo("rm", "HEAD")
    assert log_ids(repo) == [new2["id"]]
    assert where(repo) == ("main", new2["id"])
    assert tree_digest(guest) == d3
    status = repo("status", "--json").json()
    assert status["clean"] is False and status["entry"] == new2["id"] and status["branch"] == "main"
    changes = {c["path"].lstrip("/"): c["status"] for c in status["changes"]}
    assert changes.get("etc/motd") == "A", changes
    assert set(changes) <= {"etc/motd", "etc"}, changes
    short = repo("status", "--short").stdout.splitlines()
    assert any(re.fullmatch(r"A\s+/?etc/motd", line) for line in short), short


def test_rm_only_entry_of_a_branch_refused(repo: Vml, guest: Path):
    c1 = commit(repo, "one")
    one_line_error(repo("rm", c1, check=False))
    line = one_line_error(repo("rm", "nosuch", check=False))
    assert "nosuch" in line
    assert log_ids(repo) == [c1]
    # c1 is also the only entry of branch solo once main has moved on.
    (guest / "etc" / "hosts").write_text("10.0.0.2 second\n")
    c2 = commit(repo, "two")
    repo("branch", "solo", c1)
    line = one_line_error(repo("rm", c1, check=False))
    assert "solo" in line, line
    assert log_ids(repo) == [c2, c1] and where(repo) == ("main", c2)


def test_rm_detached_area_head(repo: Vml, guest: Path, tmp_path: Path):
    (c1, c2, c3), (_, _, d3) = history(repo, guest, 3)
    repo("checkout", c1, "-a", "wa1")
    repo("checkout", c3, "-a", "wa1")  # an id: detached, at the same entry as main
    assert where(repo) == (None, c3)
    repo("rm", c2)
    branch, entry = where(repo)
    assert branch is None and entry not in (c2, c3)
    assert [e["message"].strip() for e in repo("log", "HEAD", "--json").json()] == ["entry 3", "entry 1"]
    assert refs(repo, "branch")["main"] == entry
    assert tree_digest(guest) == d3
    assert repo("status", "--json").json()["clean"] is True


# -- reflog -------------------------------------------------------------------------------


def test_reflog_after_commit_checkout_and_switch(repo: Vml, guest: Path):
    c1 = commit(repo, "first entry")
    (guest / "etc" / "hosts").write_text("10.0.0.2 second\n")
    c2 = commit(repo, "second entry")
    repo("checkout", c1, "-a", "wa1")
    repo("switch", "main")
    lines = reflog_lines(repo)
    assert [(i, name, n) for i, name, n, _ in lines] == [
        (c2[:12], "HEAD", 0), (c1[:12], "HEAD", 1), (c2[:12], "HEAD", 2), (c1[:12], "HEAD", 3)]
    assert "second entry" in lines[2][3] and "first entry" in lines[3][3]
    assert "main" in lines[0][3]
    # HEAD@{N} means line N.
    for entry12, _, n, _ in lines:
        assert shown(repo, f"HEAD@{{{n}}}").startswith(entry12)
    assert reflog_lines(repo, "-n", "2") == lines[:2]
    as_json = repo("reflog", "--json").json()
    assert isinstance(as_json, list) and len(as_json) == 4
    for item, (entry12, _, _, _) in zip(as_json, lines):
        assert any(i.startswith(entry12) for i in ids_in(item)), item
    main = reflog_lines(repo, "main")
    assert [(i, name, n) for i, name, n, _ in main] == [(c2[:12], "main", 0), (c1[:12], "main", 1)]
    assert json.dumps(as_json).count(c2) >= 2

"""History and gc together (docs/HISTORY.md): deleted branches, `rm`, reflogs and their expiry,
what keeps data alive (tags, branches, other areas' HEADs, young reflog lines), and branching
one area's tree into a second area that shares every common chunk."""

from __future__ import annotations

import datetime
import random
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import one_line_error
from support.repofiles import pack_files, store_dir, tree_digest

KiB = 1024
MiB = 1024 * 1024
SLACK = 64 * KiB  # pack headers and tables, listings, index entries, git objects
USAGE = 2
DAY = 86400


# -- helpers


def randbytes(seed: int, size: int) -> bytes:
    """Incompressible bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def store_size(tmp_path: Path) -> int:
    return sum(p.stat().st_size for p in store_dir(tmp_path).rglob("*") if p.is_file())


def index_size(tmp_path: Path) -> int:
    return sum(p.stat().st_size for p in (store_dir(tmp_path) / "index").glob("*") if p.is_file())


def commit(repo, message: str, *args: str) -> str:
    result = repo("commit", "-m", message, "--json", *args).json()
    assert result["created"], result
    return result["entry"]


def checks_out(repo, tmp_path: Path, entry: str, expected: dict[str, str]) -> None:
    """`checkout ENTRY --to DIR` gives exactly the tree recorded at commit time."""
    target = tmp_path / f"out-{entry[:12]}-{time.monotonic_ns()}"
    repo("checkout", entry, "--to", str(target))
    assert tree_digest(target) == expected, f"{entry[:12]} does not check out as committed"


def is_gone(repo, tmp_path: Path, entry: str) -> None:
    """An entry gc removed: naming it is an unknown-entry error, nothing is restored."""
    target = tmp_path / f"gone-{entry[:12]}-{time.monotonic_ns()}"
    result = repo("checkout", entry, "--to", str(target), check=False)
    assert result.returncode == USAGE, (result.returncode, result.stdout, result.stderr)
    assert not target.exists() or not any(target.iterdir())


def gc(repo, *expire: str) -> dict:
    args = ["gc", "--json"] + (["--expire", *expire] if expire else [])
    return repo(*args).json()


def log_ids(repo, *args: str) -> list[str]:
    return [e["id"] for e in repo("log", "--json", *args).json()]


def reflog_ids(repo, *args: str) -> list[str]:
    """The entry column (first word, 12 digits) of `vml reflog` lines."""
    return [line.split()[0] for line in repo("reflog", *args).stdout.splitlines() if line.strip()]


def branch_exists(repo, name: str) -> bool:
    return repo("log", "-n", "1", "--json", f"refs/heads/{name}", check=False).returncode == 0


REFLOG_LINE = re.compile(rb"^([0-9a-f]{40}) ([0-9a-f]{40})( .*?) (\d+) ([+-]\d{4})(?=\t|$)")


def age_reflogs(tmp_path: Path, days: float, entries: tuple[str, ...] | None = None) -> int:
    """Make reflog lines `days` older (as if written then): every line, or those whose old or
    new entry is one of `entries`. Returns the lines changed."""
    changed = 0
    for path in (tmp_path / ".vml" / "logs").rglob("*"):
        if not path.is_file():
            continue
        out = []
        for line in path.read_bytes().splitlines(keepends=True):
            match = REFLOG_LINE.match(line)
            if match and (entries is None or match[1].decode() in entries or match[2].decode() in entries):
                when = int(match[4]) - int(days * DAY)
                line = b"%s %s%s %d %s" % (match[1], match[2], match[3], when, match[5]) + line[match.end():]
                changed += 1
            out.append(line)
        path.write_bytes(b"".join(out))
    assert changed, "no reflog lines found to age"
    return changed


def base_entry(repo, guest: Path, seed: int = 1, size: int = 256 * KiB) -> tuple[str, dict[str, str]]:
    """A first entry on main with some shared data and small files."""
    (guest / "data").mkdir(exist_ok=True)
    (guest / "data" / "common.bin").write_bytes(randbytes(seed, size))
    for i in range(5):
        (guest / "etc" / f"c{i}.conf").write_text(f"setting {i}\n")
    entry = commit(repo, "base")
    return entry, tree_digest(guest)


def side_entry(repo, guest: Path, branch: str, seed: int, size: int) -> tuple[str, dict[str, str], bytes]:
    """On a new branch from the area's entry, one entry holding `size` unique bytes; the area
    then switches back to main (its files back to main's tip)."""
    main_files = tree_digest(guest)
    repo("switch", "-c", branch)
    unique = randbytes(seed, size)
    (guest / "data" / f"{branch}.bin").write_bytes(unique)
    entry = commit(repo, f"on {branch}")
    files = tree_digest(guest)
    repo("switch", "main")
    assert tree_digest(guest) == main_files
    return entry, files, unique


# -- deleting a whole history


def test_deleted_branch_is_freed_only_when_its_reflog_expires(repo, guest: Path, tmp_path: Path):
    base, base_files = base_entry(repo, guest, size=2 * MiB)
    packs_before_side = pack_files(tmp_path)
    repo("switch", "-c", "side")
    side = []
    unique = 0
    for step in range(2):
        data = randbytes(100 + step, 2 * MiB)
        unique += len(data)
        (guest / "data" / f"side{step}.bin").write_bytes(data)
        (guest / "etc" / "hosts").write_text(f"10.0.0.{step} side\n")
        side.append((commit(repo, f"side {step}"), tree_digest(guest)))
    side_packs = pack_files(tmp_path) - packs_before_side
    side_pack_bytes = sum(p.stat().st_size for p in side_packs)
    assert side_pack_bytes >= unique  # incompressible: stored at least as large

    repo("switch", "main")
    assert tree_digest(guest) == base_files
    (guest / "home" / "user" / "notes.txt").write_text("more notes on main\n")
    main2 = commit(repo, "main 2")
    main = [(base, base_files), (main2, tree_digest(guest))]

    # -d refuses: side's entries are on no other branch, tag or area.
    refused = repo("branch", "-d", "side", check=False)
    assert refused.returncode == USAGE, refused
    assert branch_exists(repo, "side")
    repo("branch", "-D", "side")
    assert log_ids(repo, "--all") == [main2, base]
    listed = reflog_ids(repo, "side")
    for entry, _ in side:
        assert entry[:12] in listed

    # The reflog lines are minutes old: plain gc keeps all of side.
    stats = gc(repo)
    assert stats["blobs_removed"] == 0 and stats["bytes_freed"] < SLACK, stats
    for entry, files in side:
        checks_out(repo, tmp_path, entry, files)

    size_before = store_size(tmp_path)
    index_before = index_size(tmp_path)
    stats = gc(repo, "now")
    freed = stats["bytes_freed"]
    assert freed >= unique - SLACK, (stats, unique)
    assert freed <= side_pack_bytes + index_before + SLACK, (stats, side_pack_bytes)
    assert stats["blobs_removed"] >= 2, stats
    assert abs((size_before - store_size(tmp_path)) - freed) <= SLACK, (size_before, store_size(tmp_path), stats)
    for entry, _ in side:
        is_gone(repo, tmp_path, entry)
    remaining = reflog_ids(repo, "--all")
    assert all(entry[:12] not in remaining for entry, _ in side), remaining
    for entry, files in main:
        checks_out(repo, tmp_path, entry, files)
    again = gc(repo, "now")
    assert again["bytes_freed"] == 0 and again["blobs_removed"] == 0, again


# -- rm


def test_rm_drops_an_entry_recoverable_until_its_reflog_expires(repo, guest: Path, tmp_path: Path):
    e1, d1 = base_entry(repo, guest)
    doomed = randbytes(7, 3 * MiB)
    (guest / "data" / "doomed.bin").write_bytes(doomed)
    e2 = commit(repo, "two")
    d2 = tree_digest(guest)
    (guest / "data" / "doomed.bin").unlink()
    (guest / "data" / "later.bin").write_bytes(randbytes(8, MiB))
    (guest / "home" / "user" / "notes.txt").write_text("three\n")
    e3 = commit(repo, "three")
    d3 = tree_digest(guest)
    (guest / "etc" / "hosts").write_text("127.0.0.1 four\n")
    e4 = commit(repo, "four")
    d4 = tree_digest(guest)

    repo("rm", e2)
    log = repo("log", "--json").json()
    assert [e["message"].strip() for e in log] == ["four", "three", "base"]
    assert log[2]["id"] == e1  # older entries keep their ids
    assert log[0]["id"] != e4 and log[1]["id"] != e3  # later ones are recorded again
    assert list(log[1]["parents"]) == [e1] and list(log[0]["parents"]) == [log[1]["id"]]
    new3, new4 = log[1]["id"], log[0]["id"]
    assert e2 not in log_ids(repo, "--all")
    # The area was on main at e4: it follows main to the rewritten e4, same files, nothing changed.
    status = repo("status", "--json").json()
    assert status["entry"] == new4 and status["clean"] is True, status
    assert tree_digest(guest) == d4

    # Until expiry, the dropped entry is listed and recoverable.
    assert e2[:12] in reflog_ids(repo)
    stats = gc(repo)
    assert stats["blobs_removed"] == 0, stats
    repo("branch", "rescued", e2)
    checks_out(repo, tmp_path, "rescued", d2)
    repo("branch", "-D", "rescued")

    size_before = store_size(tmp_path)
    stats = gc(repo, "now")
    shrunk = size_before - store_size(tmp_path)
    assert len(doomed) - SLACK <= stats["bytes_freed"] <= len(doomed) + 2 * SLACK, stats
    assert len(doomed) - SLACK <= shrunk <= len(doomed) + 2 * SLACK, (shrunk, stats)
    is_gone(repo, tmp_path, e2)
    assert e2[:12] not in reflog_ids(repo, "--all")
    for entry, files in ((e1, d1), (new3, d3), (new4, d4)):
        checks_out(repo, tmp_path, entry, files)


def test_rm_of_the_current_entry_keeps_the_area_files(repo, guest: Path, tmp_path: Path):
    e1, d1 = base_entry(repo, guest)
    (guest / "data" / "extra.bin").write_bytes(randbytes(9, MiB))
    e2 = commit(repo, "two")
    d2 = tree_digest(guest)
    repo("rm", "HEAD")
    assert log_ids(repo) == [e1]
    assert tree_digest(guest) == d2  # files untouched
    status = repo("status", "--json").json()
    assert status["entry"] == e1 and status["branch"] == "main" and status["clean"] is False, status
    changed = {c["path"].lstrip("/"): c["status"] for c in status["changes"]}
    assert changed.get("data/extra.bin") == "A" and all(s == "P" for p, s in changed.items() if p != "data/extra.bin"), changed
    # The only entry of a branch cannot be dropped.
    refused = repo("rm", e1, check=False)
    assert refused.returncode == USAGE, refused
    # Committing again records the files anew on top of e1; e2 itself is still recoverable.
    e3 = commit(repo, "two again")
    assert e3 != e2 and log_ids(repo) == [e3, e1]
    checks_out(repo, tmp_path, e2, d2)
    checks_out(repo, tmp_path, e1, d1)


def test_rm_rewrites_a_detached_area_head_too_so_gc_frees_the_entry(repo, guest: Path, tmp_path: Path):
    e1, d1 = base_entry(repo, guest, size=256 * KiB)
    doomed = randbytes(18, 2 * MiB)
    (guest / "data" / "doomed.bin").write_bytes(doomed)
    e2 = commit(repo, "two")
    (guest / "data" / "doomed.bin").unlink()
    (guest / "etc" / "hosts").write_text("127.0.0.1 three\n")
    e3 = commit(repo, "three")
    d3 = tree_digest(guest)
    second = tmp_path / "second"
    repo("area", "add", "wa2", "--dir", str(second), "--branch", "unused")
    repo("checkout", e3, "-a", "wa2")  # detached at e3, whose history holds e2
    assert tree_digest(second) == d3

    repo("rm", e2)
    main_ids = log_ids(repo, "-a", "wa1")
    wa2_ids = log_ids(repo, "-a", "wa2")
    assert len(main_ids) == 2 and main_ids[1] == e1 and main_ids[0] != e3, main_ids
    assert len(wa2_ids) == 2 and wa2_ids[1] == e1 and wa2_ids[0] != e3, wa2_ids
    assert e2 not in log_ids(repo, "--all")
    areas = {a["name"]: a for a in repo("area", "list", "--json").json()}
    assert areas["wa2"]["branch"] is None and areas["wa2"]["entry"] == wa2_ids[0], areas
    assert tree_digest(second) == d3
    assert repo("status", "-a", "wa2", "--json").json()["clean"] is True

    stats = gc(repo, "now")
    assert len(doomed) - SLACK <= stats["bytes_freed"] <= len(doomed) + SLACK, stats
    is_gone(repo, tmp_path, e2)
    for entry, files in ((e1, d1), (main_ids[0], d3), (wa2_ids[0], d3)):
        checks_out(repo, tmp_path, entry, files)


# -- what keeps data alive


def test_a_tag_keeps_an_entry_rm_dropped(repo, guest: Path, tmp_path: Path):
    e1, d1 = base_entry(repo, guest)
    tagged = randbytes(11, 2 * MiB)
    (guest / "data" / "tagged.bin").write_bytes(tagged)
    e2 = commit(repo, "tagged")
    d2 = tree_digest(guest)
    repo("tag", "v1")
    assert repo("tag", "v1", e1, check=False).returncode == USAGE  # exists already
    (guest / "data" / "tagged.bin").unlink()
    e3 = commit(repo, "untagged")
    d3 = tree_digest(guest)

    out = repo("rm", e2)
    assert "v1" in out.stdout + out.stderr  # the tag that keeps the data alive is named
    new3 = log_ids(repo)[0]
    assert log_ids(repo) == [new3, e1] and new3 != e3
    assert repo("log", "-n", "1", "--json", "v1").json()[0]["id"] == e2  # the tag is left alone

    # Nothing but the tag reaches e2 once every reflog line is gone.
    age_reflogs(tmp_path, 100)
    gc(repo, "now")
    assert reflog_ids(repo, "--all") == []
    checks_out(repo, tmp_path, "v1", d2)

    repo("tag", "-d", "v1")
    size_before = store_size(tmp_path)
    stats = gc(repo, "now")
    assert stats["bytes_freed"] >= len(tagged) - SLACK, stats
    assert size_before - store_size(tmp_path) >= len(tagged) - SLACK
    is_gone(repo, tmp_path, e2)
    checks_out(repo, tmp_path, e1, d1)
    checks_out(repo, tmp_path, new3, d3)


def test_another_branch_keeps_its_entries(repo, guest: Path, tmp_path: Path):
    e1, d1 = base_entry(repo, guest)
    kept, kept_files, unique = side_entry(repo, guest, "other", seed=12, size=2 * MiB)
    assert log_ids(repo) == [e1]
    age_reflogs(tmp_path, 100)
    stats = gc(repo, "now")
    assert stats["blobs_removed"] == 0, stats
    checks_out(repo, tmp_path, "other", kept_files)

    repo("branch", "-D", "other")
    size_before = store_size(tmp_path)
    stats = gc(repo, "now")
    assert stats["bytes_freed"] >= len(unique) - SLACK, stats
    assert size_before - store_size(tmp_path) >= len(unique) - SLACK
    is_gone(repo, tmp_path, kept)
    checks_out(repo, tmp_path, e1, d1)


def test_another_areas_head_keeps_its_entry_attached_or_detached(repo, guest: Path, tmp_path: Path):
    e1, d1 = base_entry(repo, guest)
    second = tmp_path / "second"
    (second / "data").mkdir(parents=True)
    unique = randbytes(13, 2 * MiB)
    (second / "data" / "own.bin").write_bytes(unique)
    (second / "readme").write_text("second area\n")
    repo("area", "add", "wa2", "--dir", str(second), "--branch", "other")
    own = commit(repo, "second area", "-a", "wa2")
    own_files = tree_digest(second)
    (second / "readme").write_text("second area, later\n")
    later = commit(repo, "second area later", "-a", "wa2")
    assert log_ids(repo, "-a", "wa2") == [later, own]

    # wa2 is on branch other: the branch cannot be deleted, and gc keeps everything.
    refused = repo("branch", "-D", "other", check=False)
    assert refused.returncode == USAGE, refused
    assert branch_exists(repo, "other")
    age_reflogs(tmp_path, 100)
    assert gc(repo, "now")["blobs_removed"] == 0
    checks_out(repo, tmp_path, own, own_files)

    # Detached at `own`, with the branch gone and every reflog line expired,
    # only wa2's HEAD reaches it; `later` goes.
    repo("checkout", own, "-a", "wa2")
    assert tree_digest(second) == own_files
    areas = {a["name"]: a for a in repo("area", "list", "--json").json()}
    assert areas["wa2"]["branch"] is None and areas["wa2"]["entry"] == own, areas
    repo("branch", "-D", "other")
    age_reflogs(tmp_path, 100)
    stats = gc(repo, "now")
    assert 0 < stats["bytes_freed"] < SLACK, stats  # only later's small change
    assert reflog_ids(repo, "--all") == []
    is_gone(repo, tmp_path, later)
    checks_out(repo, tmp_path, own, own_files)
    assert tree_digest(second) == own_files

    # Move wa2 away: now nothing but expirable reflog lines reaches `own`.
    repo("checkout", e1, "-a", "wa2")
    assert tree_digest(second) == d1
    size_before = store_size(tmp_path)
    stats = gc(repo, "now")
    assert stats["bytes_freed"] >= len(unique) - SLACK, stats
    assert size_before - store_size(tmp_path) >= len(unique) - SLACK
    is_gone(repo, tmp_path, own)
    checks_out(repo, tmp_path, e1, d1)


def test_young_reflog_lines_keep_deleted_branches_and_expire_forms_choose_which(repo, guest: Path, tmp_path: Path):
    e1, d1 = base_entry(repo, guest)
    lost = {}
    for name, seed, size in (("ten", 14, MiB), ("old", 15, 3 * MiB // 2), ("five", 16, MiB // 2)):
        entry, files, unique = side_entry(repo, guest, name, seed=seed, size=size)
        repo("branch", "-D", name)
        lost[name] = (entry, files, len(unique))

    # Minutes-old lines: plain gc and every limit but `now` keep all three.
    for when in (None, "never", "3 days"):
        stats = gc(repo, when) if when else gc(repo)
        assert stats["blobs_removed"] == 0, (when, stats)
    assert lost["ten"][0][:12] in reflog_ids(repo, "ten")
    checks_out(repo, tmp_path, lost["old"][0], lost["old"][1])

    age_reflogs(tmp_path, 10, (lost["ten"][0],))
    age_reflogs(tmp_path, 25, (lost["old"][0],))
    age_reflogs(tmp_path, 5, (lost["five"][0],))
    today = datetime.date.today()

    def frees(when: str | None, name: str | None) -> None:
        size_before = store_size(tmp_path)
        stats = gc(repo, when) if when else gc(repo)
        if name is None:
            assert stats["blobs_removed"] == 0, (when, stats)
            return
        size = lost[name][2]
        assert size - SLACK <= stats["bytes_freed"] <= size + SLACK, (when, name, stats)
        assert size - SLACK <= size_before - store_size(tmp_path) <= size + SLACK
        is_gone(repo, tmp_path, lost[name][0])

    frees(None, None)  # 30 days (the default)
    frees((today - datetime.timedelta(days=40)).isoformat(), None)
    frees("2.weeks", "old")
    frees((today - datetime.timedelta(days=7)).isoformat(), "ten")
    checks_out(repo, tmp_path, lost["five"][0], lost["five"][1])
    frees("3 days", "five")
    checks_out(repo, tmp_path, e1, d1)


def test_default_expiry_is_30_days_for_unreachable_and_90_for_all(repo, guest: Path, tmp_path: Path):
    e1, d1 = base_entry(repo, guest)
    lost, _files, unique = side_entry(repo, guest, "side", seed=15, size=MiB)
    repo("branch", "-D", "side")
    age_reflogs(tmp_path, 40)
    assert len(repo("reflog", "main").stdout.strip().splitlines()) >= 1
    stats = gc(repo)
    assert stats["bytes_freed"] >= len(unique) - SLACK, stats
    is_gone(repo, tmp_path, lost)
    # main's lines are 40 days old and reachable: they stay until 90 days.
    assert e1[:12] in reflog_ids(repo, "main")
    age_reflogs(tmp_path, 60)
    gc(repo)
    assert e1[:12] not in reflog_ids(repo, "--all")
    checks_out(repo, tmp_path, e1, d1)  # expired lines never take a ref's entries along


# -- gc --expire forms


def test_bad_expire_value_is_a_one_line_error(repo, guest: Path, tmp_path: Path):
    base_entry(repo, guest, size=64 * KiB)
    lost, lost_files, _ = side_entry(repo, guest, "side", seed=17, size=256 * KiB)
    repo("branch", "-D", "side")
    size_before = store_size(tmp_path)
    for value in ("soon", "2.fortnights", "", "2026-13-45", "3 dayz"):
        line = one_line_error(repo("gc", "--expire", value, check=False), USAGE)
        assert "expire" in line.lower() or repr(value) in line, (value, line)
    assert store_size(tmp_path) == size_before
    assert lost[:12] in reflog_ids(repo, "side")
    checks_out(repo, tmp_path, lost, lost_files)


# -- branching between projects


def test_second_project_branches_from_the_first_and_shares_its_chunks(repo, guest: Path, tmp_path: Path):
    (guest / "data").mkdir()
    (guest / "data" / "image.bin").write_bytes(randbytes(21, 4 * MiB))
    for i in range(20):
        (guest / "etc" / f"c{i}.conf").write_text(f"project one setting {i}\n" * 20)
    fork = commit(repo, "fork point")
    fork_files = tree_digest(guest)
    tree_size = sum(p.stat().st_size for p in guest.rglob("*") if p.is_file())

    repo("branch", "proj2", "main")
    second = tmp_path / "proj2"
    repo("area", "add", "wa2", "--dir", str(second), "--branch", "proj2")
    repo("checkout", "proj2", "-a", "wa2")
    assert tree_digest(second) == fork_files
    areas = {a["name"]: a for a in repo("area", "list", "--json").json()}
    assert areas["wa2"]["branch"] == "proj2" and areas["wa2"]["entry"] == fork, areas

    # Both projects go on.
    (guest / "etc" / "hosts").write_text("10.1.1.1 project-one\n")
    (guest / "data" / "one.bin").write_bytes(randbytes(22, MiB))
    one = commit(repo, "project one", "-a", "wa1")
    one_files = tree_digest(guest)

    (second / "etc" / "c3.conf").write_text("project two setting\n")
    result = repo("commit", "-a", "wa2", "-m", "project two", "--json").json()
    assert result["created"] and result["branch"] == "proj2" and result["parent"] == fork, result
    assert result["added_bytes"] < max(tree_size // 100, 16 * KiB), (result["added_bytes"], tree_size)
    two = result["entry"]
    two_files = tree_digest(second)
    (second / "data" / "two.bin").write_bytes(randbytes(23, MiB))
    more = repo("commit", "-a", "wa2", "-m", "project two more", "--json").json()
    assert more["added_bytes"] >= MiB, more  # new data does cost its size
    two_more = more["entry"]
    two_more_files = tree_digest(second)

    assert log_ids(repo, "-a", "wa2") == [two_more, two, fork]
    assert sorted(log_ids(repo, "--all")) == sorted([one, two_more, two, fork])

    graph = repo("log", "--graph", "--all", "--oneline").stdout.splitlines()
    rows = {entry: [line for line in graph if entry[:12] in line] for entry in (one, two, two_more, fork)}
    assert all(len(found) == 1 for found in rows.values()), graph
    fork_row = graph.index(rows[fork][0])
    assert all(graph.index(rows[e][0]) < fork_row for e in (one, two, two_more)), graph
    assert re.match(r"^\* ", rows[fork][0]), graph  # one lane again at the fork
    assert any(re.match(r"^[*|] [*|]", line) for line in graph[:fork_row]), graph  # two lanes above it
    assert any("|/" in line or "|\\" in line for line in graph[:fork_row]), graph  # joining at the fork
    assert "proj2" in rows[two_more][0] and "main" in rows[one][0], graph

    stats = gc(repo, "now")
    assert stats["blobs_removed"] == 0, stats
    for entry, files in ((fork, fork_files), (one, one_files), (two, two_files), (two_more, two_more_files)):
        checks_out(repo, tmp_path, entry, files)


# -- git's own fsck agrees (issue 16, point 1)


def git_fsck(tmp_path: Path) -> tuple[int, str]:
    done = subprocess.run(["git", f"--git-dir={tmp_path / '.vml'}", "fsck", "--full", "--strict", "--no-dangling"],
                          capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("drop", ["branch", "rm"])
def test_plain_git_fsck_is_clean_after_gc_frees_a_dropped_history(repo, guest: Path, tmp_path: Path, drop: str):
    """gc deletes commits that kept reflog lines name as their previous value (the area
    HEAD moved off the dropped branch; rm moved main): those lines are rewritten as git's
    `reflog expire --rewrite` does, so git fsck finds no invalid reflog entry."""
    base, base_files = base_entry(repo, guest)
    if drop == "branch":
        side, _files, _unique = side_entry(repo, guest, "side", seed=31, size=256 * KiB)
        repo("branch", "-D", "side")
    else:
        (guest / "data" / "doomed.bin").write_bytes(randbytes(32, 256 * KiB))
        side = commit(repo, "doomed")
        (guest / "etc" / "hosts").write_text("127.0.0.1 after\n")
        commit(repo, "after")
        repo("rm", side)
    named = "\n".join(path.read_text() for path in (tmp_path / ".vml" / "logs").rglob("*") if path.is_file())
    assert side in named  # kept lines name it before gc
    gc(repo, "now")
    is_gone(repo, tmp_path, side)
    code, output = git_fsck(tmp_path)
    assert code == 0 and "invalid reflog entry" not in output, output
    named = "\n".join(path.read_text() for path in (tmp_path / ".vml" / "logs").rglob("*") if path.is_file())
    assert side not in named
    checks_out(repo, tmp_path, base, base_files)
    assert repo("reflog").stdout.strip()  # the lines that reached kept entries stay


def test_vml_fsck_reports_what_git_fsck_finds(repo, guest: Path, tmp_path: Path):
    """A reflog line naming a commit that does not exist (as gc left them before) is
    damage for git; vml fsck runs git's check and says so, with exit status 1."""
    entry, _files = base_entry(repo, guest)
    log = tmp_path / ".vml" / "logs" / "refs" / "heads" / "main"
    missing = "1234567890" * 4
    log.write_text(log.read_text() + f"{missing} {entry} Test User <t@example.org> 1700000000 +0000\tby hand\n")
    assert git_fsck(tmp_path)[0] != 0
    result = repo("fsck", "--json", check=False)
    assert result.returncode == 1, result
    problems = result.json()["problems"]
    assert any("git fsck" in p and missing in p for p in problems), problems
    text = repo("fsck", check=False)
    assert "invalid reflog entry" in text.stdout and text.returncode == 1
    # gc repairs it (the line's previous value becomes the line before it), and both agree again.
    gc(repo)
    assert git_fsck(tmp_path)[0] == 0
    assert repo("fsck", "--json").json()["problems"] == []


def test_a_temporary_object_file_a_killed_commit_left_is_no_damage(repo, guest: Path, tmp_path: Path):
    """kill -9 during libgit2's write of a git object leaves objects/XX/tmp_object_git2_*:
    git fsck mentions it and exits 0; vml fsck agrees (a warning, exit 0) and gc removes it.
    (vml fsck once called this damage: the random kills of system/test_crash.py found it.)"""
    base_entry(repo, guest)
    leftover = tmp_path / ".vml" / "objects" / "ab" / "tmp_object_git2_a1B2c3"
    leftover.parent.mkdir(exist_ok=True)
    leftover.write_bytes(b"x\x9c half an object")
    code, output = git_fsck(tmp_path)
    assert code == 0 and "tmp_object_git2" in output
    report = repo("fsck", "--json").json()
    assert report["problems"] == [] and any("tmp_object_git2" in w for w in report["warnings"]), report
    gc(repo)
    assert not leftover.exists()
    assert "tmp_object_git2" not in git_fsck(tmp_path)[1]

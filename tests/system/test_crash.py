"""Crashes and concurrency: kill -9 a committing process at random moments, and run commits at once.

Every check goes through the real command line: after each kill, `vml fsck` must pass, the
entries that completed must still be in the log, and the first entry must check out exactly.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from support.processes import kill_at, start, vml_env
from support.repofiles import pack_files, tree_digest

from vml.objects.pack import read_table

BIG_FILES = 3
BIG_SIZE = 8 * 1024 * 1024


def make_tree(root: Path, rng: random.Random, dirs: int = 40, files: int = 75) -> None:
    """A few thousand small files and a few multi-MB random (incompressible) files."""
    for d in range(dirs):
        sub = root / "usr" / f"d{d:02}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(files):
            (sub / f"f{f:03}.txt").write_bytes(rng.randbytes(rng.randrange(10, 3000)))
    big = root / "var" / "big"
    big.mkdir(parents=True, exist_ok=True)
    for i in range(BIG_FILES):
        (big / f"disk{i}.img").write_bytes(rng.randbytes(BIG_SIZE))


def modify_tree(root: Path, rng: random.Random) -> int:
    """Rewrite the big files and some small ones; return the bytes of new content."""
    new = 0
    for i in range(BIG_FILES):
        (root / "var" / "big" / f"disk{i}.img").write_bytes(rng.randbytes(BIG_SIZE))
        new += BIG_SIZE
    for d in range(0, 40, 4):
        data = rng.randbytes(500)
        (root / "usr" / f"d{d:02}" / "f000.txt").write_bytes(data)
        new += len(data)
    (root / "usr" / f"d{rng.randrange(1, 40, 4):02}" / f"f{rng.randrange(1, 75):03}.txt").unlink(missing_ok=True)
    (root / "etc" / "added.conf").write_text(f"new = {rng.random()}\n")
    return new


def log_ids(vml) -> list[str]:
    return [e["id"] for e in vml("log", "--json").json()]


def test_kill_9_during_commit_never_damages_the_repository(repo, guest: Path, tmp_path: Path):
    rng = random.Random(20240601)
    make_tree(guest, rng)
    entry1_tree = tree_digest(guest)
    first = repo("commit", "-m", "entry 1", "--json").json()
    assert first["created"]
    entry1 = first["entry"]

    # Measure a commit like the ones to be killed: same amount of new data, cache warm.
    modify_tree(guest, rng)
    entry2_tree = tree_digest(guest)
    started = time.monotonic()
    second = repo("commit", "-m", "entry 2", "--json").json()
    duration = time.monotonic() - started
    entry2 = second["entry"]
    assert second["created"] and second["parent"] == entry1
    packs_before_kills = pack_files(tmp_path)

    new_bytes = modify_tree(guest, rng)
    modified_tree = tree_digest(guest)

    recorded: list[str] = []  # entries a run recorded (it finished, or was killed just after)

    def start_commit(attempt: int) -> subprocess.Popen:
        return start(tmp_path, "commit", "-m", f"attempt {attempt}", "--json")

    def check_repository(attempt: int) -> None:
        fsck = repo("fsck", "--json", check=False)
        assert fsck.returncode == 0, f"after kill {attempt}: {fsck.stdout}\n{fsck.stderr}"
        report = fsck.json()
        assert report["damaged"] == [] and report["problems"] == []
        ids = log_ids(repo)
        assert ids[-2:] == [entry2, entry1]
        assert len(ids) <= 3 and all(e in ids for e in recorded), (ids, recorded)
        for entry in ids[:-2]:
            if entry not in recorded:
                # A run got as far as recording its entry: that entry must be whole and exact.
                recorded.append(entry)
                target = tmp_path / f"recorded{attempt}"
                repo("checkout", entry, "--to", str(target))
                assert tree_digest(target) == modified_tree
        target = tmp_path / f"restore{attempt}"
        repo("checkout", entry1, "--to", str(target))
        assert tree_digest(target) == entry1_tree

    kills = 0
    for attempt in range(6):
        kills += kill_at(start_commit(attempt), rng.uniform(0.1, 0.95) * duration)
        check_repository(attempt)

    if not recorded and not pack_files(tmp_path) - packs_before_kills:
        # No random kill fell after a pack was written: kill one run right after its first pack.
        proc = start_commit(6)
        deadline = time.monotonic() + 60
        while proc.poll() is None and not pack_files(tmp_path) - packs_before_kills and time.monotonic() < deadline:
            time.sleep(0.002)
        kills += kill_at(proc)
        check_repository(6)

    assert kills > 0, "every commit finished before its kill: the test did not test anything"

    leftover = pack_files(tmp_path) - packs_before_kills
    reusable = sum(e.length for p in leftover for e in read_table(str(p)))
    print(f"kills={kills} recorded={len(recorded)} leftover packs={len(leftover)} reusable={reusable}")
    final = repo("commit", "-m", "final", "--json").json()
    print("final added_bytes", final["added_bytes"], "new_bytes", new_bytes)
    if recorded:
        # A run recorded the modified tree already: nothing is left to save.
        assert not final["created"] and final["entry"] == recorded[-1]
        assert final["added_bytes"] < 1024 * 1024
    else:
        assert final["created"] and final["parent"] == entry2
        # Random data does not compress: a commit from scratch adds about new_bytes.
        if reusable > 1024 * 1024:
            assert final["added_bytes"] < new_bytes - reusable // 2, (final["added_bytes"], new_bytes, reusable)
        else:
            assert final["added_bytes"] >= new_bytes * 0.9
    final_entry = final["entry"]
    assert log_ids(repo) == [final_entry, entry2, entry1]
    target = tmp_path / "restore-final"
    repo("checkout", final_entry, "--to", str(target))
    assert tree_digest(target) == modified_tree
    target = tmp_path / "restore-entry2"
    repo("checkout", entry2, "--to", str(target))
    assert tree_digest(target) == entry2_tree
    repo.fsck_clean()


def _popen_commit(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vml", "commit", *args, "--json"],
        cwd=tmp_path, env=vml_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_commits_at_once_on_one_area_form_a_chain(repo, guest: Path, tmp_path: Path):
    import json

    make_tree(guest, random.Random(7), dirs=10, files=50)
    entry1 = repo("commit", "-m", "base", "--json").json()["entry"]
    (guest / "var" / "big" / "disk0.img").write_bytes(random.Random(8).randbytes(BIG_SIZE))

    a = _popen_commit(tmp_path, "-m", "first racer", "--allow-empty")
    b = _popen_commit(tmp_path, "-m", "second racer", "--allow-empty")
    results = []
    for proc in (a, b):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    assert all(r["created"] for r in results)
    made = {r["entry"] for r in results}
    assert len(made) == 2

    log = repo("log", "--json").json()
    assert [e["id"] for e in log][2] == entry1
    newest, middle = log[0], log[1]
    assert {newest["id"], middle["id"]} == made
    # One waited for the other: a chain, not two siblings of entry1.
    assert middle["parents"] == [entry1]
    assert newest["parents"] == [middle["id"]]
    by_id = {r["entry"]: r for r in results}
    assert by_id[middle["id"]]["parent"] == entry1
    assert by_id[newest["id"]]["parent"] == middle["id"]
    repo.fsck_clean()


def test_two_commits_at_once_on_two_areas(repo, guest: Path, tmp_path: Path):
    import json

    other = tmp_path / "guest2"
    make_tree(guest, random.Random(11), dirs=10, files=50)
    make_tree(other, random.Random(12), dirs=10, files=50)
    added = repo("area", "add", "wa2", "--dir", str(other), "--json").json()
    assert added["branch"] == "wa2"

    a = _popen_commit(tmp_path, "-a", "wa1", "-m", "on wa1")
    b = _popen_commit(tmp_path, "-a", "wa2", "-m", "on wa2")
    results = {}
    for name, proc in (("wa1", a), ("wa2", b)):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results[name] = json.loads(out)
    assert results["wa1"]["created"] and results["wa2"]["created"]
    assert results["wa1"]["branch"] == "main" and results["wa2"]["branch"] == "wa2"
    assert results["wa1"]["parent"] is None and results["wa2"]["parent"] is None

    assert [e["id"] for e in repo("log", "-a", "wa1", "--json").json()] == [results["wa1"]["entry"]]
    assert [e["id"] for e in repo("log", "-a", "wa2", "--json").json()] == [results["wa2"]["entry"]]
    for name, root in (("wa1", guest), ("wa2", other)):
        target = tmp_path / f"out-{name}"
        repo("checkout", results[name]["entry"], "--to", str(target))
        assert tree_digest(target) == tree_digest(root)
    repo.fsck_clean()

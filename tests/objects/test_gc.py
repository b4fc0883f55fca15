"""gc: everything reachable (from refs or reflogs) stays, unreachable data goes, sizes add up."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.repofiles import pack_files, store_dir, tree_digest

from vml.objects.store import ChunkStore


def store_size(tmp_path: Path) -> int:
    return sum(p.stat().st_size for p in store_dir(tmp_path).rglob("*") if p.is_file())


def make_history(repo, guest: Path) -> list[tuple[str, dict[str, str]]]:
    """Three entries with shared and unique data; returns (entry, file digests) per entry."""
    rng = random.Random(3)
    history = []
    (guest / "data").mkdir()
    for step in range(3):
        for i in range(20):
            (guest / "etc" / f"c{i}.conf").write_text(f"{step} {i} {rng.random()}\n")
        (guest / "data" / f"blob{step}.bin").write_bytes(rng.randbytes(1024 * 1024))
        if step == 2:
            (guest / "data" / "blob0.bin").unlink()
        entry = repo("commit", "-m", f"step {step}", "--json").json()["entry"]
        history.append((entry, tree_digest(guest)))
    return history


def check_history(repo, tmp_path: Path, history, tag: str) -> None:
    for n, (entry, files) in enumerate(history):
        target = tmp_path / f"{tag}-{n}"
        repo("checkout", entry, "--to", str(target))
        assert tree_digest(target) == files, f"entry {n} changed after gc"


def test_gc_keeps_reachable_and_frees_an_unreferenced_pack(repo, guest: Path, tmp_path: Path):
    history = make_history(repo, guest)
    first = repo("gc", "--json").json()
    # Nothing is unreachable yet: gc may only merge the index files (a few bytes).
    assert first["blobs_removed"] == 0 and first["packs_deleted"] == 0 and 0 <= first["bytes_freed"] < 1024, first
    check_history(repo, tmp_path, history, "before")

    # Data no entry references, written the way a commit writes it.
    store = ChunkStore(str(store_dir(tmp_path))).open()
    junk = random.Random(4).randbytes(3 * 1024 * 1024)
    store.put(junk)
    store.flush()
    store.close()
    orphan = pack_files(tmp_path)
    size_before = store_size(tmp_path)
    packs_before = len(orphan)

    stats = repo("gc", "--json").json()
    size_after = store_size(tmp_path)
    assert stats["bytes_freed"] >= len(junk), stats
    # The store shrank by what gc says it freed (index files included).
    assert abs((size_before - size_after) - stats["bytes_freed"]) <= 4096, (size_before, size_after, stats)
    assert len(pack_files(tmp_path)) < packs_before
    assert list((store_dir(tmp_path) / "tmp").iterdir()) == []

    repo.fsck_clean()
    check_history(repo, tmp_path, history, "after")
    again = repo("gc", "--json").json()
    assert again["bytes_freed"] == 0 and again["blobs_removed"] == 0, again
    assert store_size(tmp_path) == size_after


def test_gc_frees_packs_left_by_a_killed_commit(repo, guest: Path, tmp_path: Path):
    history = make_history(repo, guest)
    # New content bigger than one pack (16 MiB): a pack is written long before the entry.
    (guest / "data" / "huge.img").write_bytes(random.Random(9).randbytes(24 * 1024 * 1024))
    before = pack_files(tmp_path)
    env = {**os.environ, "VML_AUTHOR_NAME": "T", "VML_AUTHOR_EMAIL": "t@example.org"}
    env.pop("VML_REPO", None)
    proc = subprocess.Popen([sys.executable, "-m", "vml", "commit", "-m", "doomed"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not pack_files(tmp_path) - before and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, "the commit finished before a pack appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = pack_files(tmp_path) - before
    assert left
    left_bytes = sum(p.stat().st_size for p in left)
    assert [e["id"] for e in repo("log", "--json").json()] == [h[0] for h in reversed(history)]

    size_before = store_size(tmp_path)
    stats = repo("gc", "--json").json()
    assert stats["bytes_freed"] >= left_bytes * 0.9, (stats, left_bytes)
    assert abs((size_before - store_size(tmp_path)) - stats["bytes_freed"]) <= 4096
    assert not (pack_files(tmp_path) & left)
    repo.fsck_clean()
    check_history(repo, tmp_path, history, "after")
    assert repo("gc", "--json").json()["bytes_freed"] == 0


def test_gc_keeps_entries_reachable_only_from_the_reflog(repo, guest: Path, tmp_path: Path):
    history = make_history(repo, guest)
    entry1 = history[0][0]
    repo("gc", "--json")  # merges the index files, so the gc below has nothing of its own to do
    subprocess.run(["git", "--git-dir", str(tmp_path / ".vml"), "update-ref", "refs/heads/main", entry1], check=True)
    log = repo("log", "--json").json()
    assert [e["id"] for e in log] == [entry1]  # entries 2 and 3 are now only in reflogs

    size_before = store_size(tmp_path)
    stats = repo("gc", "--json").json()
    assert stats["bytes_freed"] == 0 and stats["blobs_removed"] == 0, stats
    assert store_size(tmp_path) == size_before
    repo.fsck_clean()
    check_history(repo, tmp_path, history, "after")


def test_a_rewritten_pack_with_the_name_of_a_doomed_one_stays(tmp_path: Path):
    """A blob held twice: alone in pack A, and beside a dead blob in pack B that gc reads
    first. B's rewrite is {the blob}, byte for byte pack A, under A's name, while A is to be
    deleted as a duplicate: the rewrite must survive the deletion."""
    from vml.objects.gc import collect
    from vml.objects.pack import TYPE_DATA, read_table

    root = str(tmp_path / "store")
    ChunkStore.create(root)
    kept = b"kept " * 4000
    for seed in range(200):
        ChunkStore.create(root)
        alone = ChunkStore(root).open()
        beside = ChunkStore(root).open()  # opened before the first flush: it stores the blob again
        blob_id = alone.put(kept, TYPE_DATA)
        alone.flush()
        beside.put(random.Random(seed).randbytes(5000), TYPE_DATA)
        beside.put(kept, TYPE_DATA)
        beside.flush()
        alone.close()
        beside.close()
        packs = ChunkStore(root).open().list_pack_files()
        (pack_alone,) = [pack_id for pack_id, path in packs.items() if len(read_table(path)) == 1]
        if min(packs) != pack_alone:  # gc reads the pack with the dead blob first
            break
        for sub in ("packs", "index"):
            for path in Path(root, sub).rglob("*"):
                if path.is_file():
                    path.unlink()
    store = ChunkStore(root).open()
    stats = collect(store, {blob_id})
    store.close()
    assert stats.packs_rewritten == 1 and stats.packs_deleted == 1
    again = ChunkStore(root).open()
    assert again.get(blob_id) == kept and list(again.list_pack_files()) == [pack_alone]
    again.close()

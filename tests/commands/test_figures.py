"""Every figure vml prints is exact: counts and sizes of commit, checkout and show are
compared with the tree they describe, measured independently with os.lstat."""

from __future__ import annotations

import os
import random
import re
import stat
from pathlib import Path

from vml.render import size

MiB = 1024 * 1024


def build_tree(root: Path, seed: int = 7) -> None:
    """Thousands of small files (batched onto worker threads), larger files written one per
    task, hardlinks and a sparse file: every path the restore's threads take."""
    rng = random.Random(seed)
    for d in range(20):
        directory = root / f"d{d:02}"
        directory.mkdir(parents=True)
        for f in range(150):
            (directory / f"f{f:03}.txt").write_bytes(rng.randbytes(rng.randrange(0, 6000)))
    big = root / "big"
    big.mkdir()
    for n in range(12):
        (big / f"blob{n}.bin").write_bytes(rng.randbytes(rng.randrange(MiB, 5 * MiB)))
    os.link(big / "blob0.bin", root / "d00" / "blob0-link.bin")
    os.link(root / "d01" / "f000.txt", root / "d02" / "f000-link.txt")
    os.symlink("d00/f000.txt", root / "link")
    with open(root / "sparse.img", "wb") as sparse:
        sparse.truncate(64 * MiB)
        sparse.seek(32 * MiB)
        sparse.write(b"middle")


def measure(root: Path) -> dict[str, int]:
    """What the figures must say, from the file system: regular file names, distinct
    inodes and their bytes, directories below the top, symlinks, and the bytes of all names."""
    names = directories = symlinks = 0
    inodes: dict[tuple[int, int], int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISDIR(st.st_mode):
                directories += 1
            elif stat.S_ISLNK(st.st_mode):
                symlinks += 1
            elif stat.S_ISREG(st.st_mode):
                names += 1
                inodes[(st.st_dev, st.st_ino)] = st.st_size
    return {"files": names, "inodes": len(inodes), "bytes": sum(inodes.values()), "directories": directories, "symlinks": symlinks,
            "logical": sum(os.lstat(os.path.join(d, f)).st_size for d, _, fs in os.walk(root) for f in fs
                           if stat.S_ISREG(os.lstat(os.path.join(d, f)).st_mode))}


def test_commit_show_and_checkout_figures_match_the_tree(repo, guest: Path, tmp_path: Path, worker_processes: str):
    build_tree(guest)
    tree = measure(guest)
    result = repo("commit", "-m", "figures", "--json").json()
    assert (result["files"], result["logical_bytes"]) == (tree["files"], tree["logical"]), (result, tree)
    # Each inode is read once, whatever its number of names.
    assert (result["files_read"], result["bytes_read"]) == (tree["inodes"], tree["bytes"]), (result, tree)
    shown = repo("show", "HEAD", "--json").json()
    assert (shown["directories"], shown["symlinks"], shown["other"]) == (tree["directories"], tree["symlinks"], 0), shown
    assert (shown["info"]["files"], shown["info"]["logical_bytes"]) == (tree["files"], tree["logical"])

    for attempt in range(3):  # the counts were once lost to a race between threads: more than one try
        out = tmp_path / f"out{attempt}"
        done = repo("checkout", "HEAD", "--to", str(out), "--json").json()
        counts = done["counts"]
        assert measure(out) == tree
        assert (counts["files_written"], counts["bytes_written"]) == (tree["files"], tree["bytes"]), (counts, tree)
        assert (counts["removed"], counts["metadata_only"]) == (0, 0), counts
    text = repo("checkout", "HEAD", "--to", str(tmp_path / "text")).stdout
    assert f": {tree['files']:,} files written ({size(tree['bytes'])}), 0 metadata updates, 0 removed" in text, text


def test_checkout_into_a_changed_area_counts_what_it_did(repo, guest: Path):
    build_tree(guest)
    tree = measure(guest)
    repo("commit", "-m", "figures")
    rewritten = [guest / "d03" / f"f{n:03}.txt" for n in range(10)]
    deleted = [guest / "d05" / f"f{n:03}.txt" for n in range(3)]
    expected_bytes = sum(os.lstat(path).st_size for path in rewritten + deleted)  # what goes back
    for path in rewritten:
        path.write_bytes(b"changed " + path.read_bytes())
    for n in range(5):
        os.chmod(guest / "d04" / f"f{n:03}.txt", 0o600)
    for path in deleted:
        path.unlink()
    for n in range(4):
        (guest / "d06" / f"added{n}").write_text("new\n")
    counts = repo("checkout", "HEAD", "--force", "--json").json()["counts"]
    assert counts["files_written"] == len(rewritten) + len(deleted), counts
    assert counts["bytes_written"] == expected_bytes, counts
    assert counts["metadata_only"] == 5 and counts["removed"] == 4, counts
    assert measure(guest) == tree
    text = repo("checkout", "HEAD", "--force").stdout
    assert re.search(r": 0 files written \(0 B\), 0 metadata updates, 0 removed", text), text


def test_one_of_a_thing_is_singular_and_show_names_the_host(vml, tmp_path: Path):
    import socket

    guest = tmp_path / "one"
    (guest / "d").mkdir(parents=True)
    (guest / "d" / "f").write_text("x")
    vml("init")
    vml("area", "add", "wa", "--dir", str(guest))
    committed = vml("commit", "-m", "one").stdout
    assert " 1 file, 1 B; read 1 file (1 B);" in committed, committed
    shown = vml("show", "HEAD").stdout
    assert "Files:  1 file, 1 directory, 0 symlinks, 0 other" in shown, shown
    assert f"Area:   wa (dir: {guest}), saved on host {socket.gethostname()}" in shown, shown
    assert "1 entry, 1 pack," in vml("fsck").stdout
    (guest / "d" / "g").write_text("y")
    vml("commit", "-m", "two")
    stat_line = vml("diff", "HEAD~1", "HEAD", "--stat", "--", "d/g").stdout.splitlines()[-1]
    assert stat_line.strip() == "1 path changed: 1 added, 0 deleted, 0 modified, 0 type changed, 0 properties only; +1 byte, -0 bytes"
    checked_out = vml("checkout", "HEAD~1", "--to", str(tmp_path / "out")).stdout
    assert ": 1 file written (1 B), 0 metadata updates, 0 removed" in checked_out, checked_out
    vml.fsck_clean()


def test_a_large_file_goes_to_the_reader_processes_however_early(repo, guest: Path, monkeypatch):
    """A file of PROCESSES_FOR bytes or more starts the reader processes even among the first
    files of a commit (which threads of vml's process read otherwise), and is read by them."""
    from vml.areas.capture import local, processes

    monkeypatch.setenv("VML_WORKER_PROCESSES", "2")
    given = []
    submit = processes.ReaderProcesses.submit

    def noting(readers, batch):
        given.extend(file[0] for file in batch)
        return submit(readers, batch)

    monkeypatch.setattr(processes.ReaderProcesses, "submit", noting)
    for n in range(3):
        (guest / f"small{n}").write_bytes(b"small %d\n" % n)
    large = random.Random(5).randbytes(local.PROCESSES_FOR)
    (guest / "t-large").write_bytes(large)
    repo("commit", "-m", "large")
    assert os.fsencode(guest / "t-large") in given  # (so may the small ones be, still in the batch being filled)
    out = repo.cwd / "out"
    repo("checkout", "HEAD", "--to", str(out))
    assert (out / "t-large").read_bytes() == large
    repo.fsck_clean()


def test_reader_processes_store_what_they_meet_once(repo, guest: Path, monkeypatch):
    """A commit's reader processes write packs of their own and tell each other what they
    wrote: content met again further down the tree, by whichever reader, is not stored
    again, and their packs are indexed like any other (the repository is clean)."""
    from collections import Counter

    from vml.areas.capture import local, processes
    from vml.objects.pack import read_table
    from vml.objects.store import ChunkStore

    monkeypatch.setattr(local, "PROCESSES_AFTER", 0)
    monkeypatch.setenv("VML_WORKER_PROCESSES", "2")
    # The walk is far ahead of the readers in a tree this small: the copies wait until every
    # file before them is read (readers are told what others wrote with their next batch).
    submitted = []
    submit = processes.ReaderProcesses.submit

    def submit_in_turn(readers, batch):
        if b"z-last" in batch[0][0]:
            for earlier in submitted:
                earlier.exception(timeout=60)
        submitted.append(submit(readers, batch))
        return submitted[-1]

    monkeypatch.setattr(processes.ReaderProcesses, "submit", submit_in_turn)
    rng = random.Random(11)
    contents = [rng.randbytes(300_000 + n) for n in range(16)]  # past one chunk: each file a request of its own
    for n, data in enumerate(contents):
        (guest / "a-first").mkdir(exist_ok=True)
        (guest / "a-first" / f"f{n}").write_bytes(data)
    for d in range(30):  # batches between, for the readers' answers to come back
        (guest / f"m{d:02}").mkdir()
        for f in range(64):
            (guest / f"m{d:02}" / f"f{f}").write_bytes(rng.randbytes(2000))
    (guest / "z-last").mkdir()
    for n in range(len(contents)):  # in another order: half the copies go to the other reader whatever the turns
        (guest / "z-last" / f"copy{n:02}").write_bytes(contents[n ^ 1 if n % 4 < 2 else n])
    result = repo("commit", "-m", "copies", "--json").json()
    store = ChunkStore(str(repo.cwd / ".vml" / "vml" / "store"))
    held = Counter(entry.id for path in store.list_pack_files().values() for entry in read_table(path))
    assert held and max(held.values()) == 1, [blob_id.hex()[:12] for blob_id, count in held.items() if count > 1]
    assert result["added_bytes"] < sum(map(len, contents)) + 30 * 64 * 2000 + 1_000_000, result
    repo.fsck_clean()

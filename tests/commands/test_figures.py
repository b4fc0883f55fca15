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

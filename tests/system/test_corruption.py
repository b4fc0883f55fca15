"""Damage to the store on disk: flipped bytes, truncated and missing packs, broken index files
and a garbage stat cache. vml must notice, name what is affected, fail in one line, and never
write wrong bytes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import msgpack
import pytest
from conftest import one_line_error
from support.repofiles import pack_files, store_dir, tree_digest

from vml import api
from vml.objects.ids import ObjectId
from vml.objects.pack import TYPE_DATA, read_table
from vml.objects.walk import listing_loader, walk_nodes
from vml.repo import Repository

BIG = "data/disk.img"


def chunks_of(tmp_path: Path, entry: str, rel: str) -> list[bytes]:
    """The chunk ids the entry's manifest lists for the file `rel` (read with vml's own code)."""
    repo = Repository(str(tmp_path / ".vml"))
    try:
        root = ObjectId.parse(api.entry_info(repo, entry).manifest)
        for path, node in walk_nodes(listing_loader(repo.store), root):
            if path.lstrip(b"/") == rel.encode():
                return node.chunk_ids()
    finally:
        repo.close()
    raise AssertionError(f"{rel} is not in entry {entry}")


def data_only_pack_of(tmp_path: Path, chunk_ids: list[bytes]) -> tuple[Path, list]:
    """A pack holding only chunks of the given file (so losing it loses nothing else)."""
    wanted = set(chunk_ids)
    for path in sorted(pack_files(tmp_path)):
        entries = read_table(str(path))
        if entries and all(e.id in wanted and e.blob_type == TYPE_DATA for e in entries):
            return path, entries
    raise AssertionError("no pack holds only the big file's chunks")


@pytest.fixture
def setup(vml, guest: Path, tmp_path: Path):
    """Like `repo`, without the final fsck (these tests damage the repository on purpose)."""
    vml("init")
    vml("area", "add", "wa1", "--dir", str(guest))
    rng = random.Random(99)
    for i in range(30):
        (guest / "etc" / f"conf{i}.txt").write_text(f"setting {i} = {rng.random()}\n" * 20)
    vml("commit", "-m", "small files")
    (guest / "data").mkdir()
    # Larger than one pack (16 MiB) and the only new content of the next commit: the first
    # pack that commit writes holds nothing but this file's chunks.
    (guest / BIG).write_bytes(rng.randbytes(20 * 1024 * 1024))
    return vml


def commit_all(vml, guest: Path) -> tuple[str, dict[str, str]]:
    result = vml("commit", "-m", "with the big file", "--json").json()
    assert result["created"] and result["parent"]
    return result["entry"], tree_digest(guest)


def test_flipped_byte_in_data_chunk(setup, guest: Path, tmp_path: Path, worker_processes: str):
    vml = setup
    entry, files = commit_all(vml, guest)
    original = (guest / BIG).read_bytes()
    ids = chunks_of(tmp_path, entry, BIG)
    assert len(ids) > 1
    victim = ids[len(ids) // 2]
    for pack in sorted(pack_files(tmp_path)):
        found = [e for e in read_table(str(pack)) if e.id == victim]
        if found:
            break
    else:
        raise AssertionError("the chunk is in no pack")
    spot = found[0].offset + found[0].length // 2
    with open(pack, "r+b") as f:
        f.seek(spot)
        byte = f.read(1)
        f.seek(spot)
        f.write(bytes([byte[0] ^ 0x40]))

    report = vml("fsck", "--json", check=False)
    assert report.returncode == 1
    damaged = report.json()["damaged"]
    assert [d["entry"] for d in damaged] == [entry]
    assert [p[0].lstrip("/") for p in damaged[0]["paths"]] == [BIG]
    text = vml("fsck", check=False)
    assert text.returncode == 1
    assert entry[:12] in text.stdout and BIG in text.stdout

    target = tmp_path / "out"
    result = vml("checkout", entry, "--to", str(target), check=False)
    assert result.returncode == 1
    one_line_error(result, None)
    written = target / BIG
    if written.exists():
        assert written.read_bytes() == original, "checkout wrote wrong bytes"
    # Nothing else under the target may hold partial or wrong data either.
    for rel, digest in tree_digest(target).items() if target.exists() else ():
        assert files.get(rel) == digest, f"{rel} was written with bytes no entry holds"


def test_truncated_pack(setup, guest: Path, tmp_path: Path, worker_processes: str):
    vml = setup
    entry, _files = commit_all(vml, guest)
    pack, _entries = data_only_pack_of(tmp_path, chunks_of(tmp_path, entry, BIG))
    size = pack.stat().st_size
    os.truncate(pack, size // 2)

    result = vml("fsck", "--json", check=False)
    assert result.returncode == 1
    report = result.json()
    problems = report["problems"]
    assert problems, report
    for problem in problems:
        assert "\n" not in problem
    assert any(pack.name[:12] in p and "truncated" in p for p in problems), problems
    text = vml("fsck", check=False)
    assert text.returncode == 1 and "Traceback" not in text.stderr

    result = vml("checkout", entry, "--to", str(tmp_path / "out"), check=False)
    assert result.returncode == 1
    assert "truncated" in one_line_error(result, None) or "damaged" in one_line_error(result, None)
    # The affected entry and file are named, as for any other lost data.
    assert [d["entry"] for d in report["damaged"]] == [entry], report
    assert BIG in [p[0].lstrip("/") for p in report["damaged"][0]["paths"]], report


def test_missing_pack(setup, guest: Path, tmp_path: Path):
    vml = setup
    entry, _files = commit_all(vml, guest)
    pack, _entries = data_only_pack_of(tmp_path, chunks_of(tmp_path, entry, BIG))
    pack.unlink()

    result = vml("fsck", "--json", check=False)
    assert result.returncode == 1
    report = result.json()
    assert [d["entry"] for d in report["damaged"]] == [entry], report
    assert [p[0].lstrip("/") for p in report["damaged"][0]["paths"]] == [BIG], report
    text = vml("fsck", check=False)
    assert text.returncode == 1 and entry[:12] in text.stdout

    result = vml("checkout", entry, "--to", str(tmp_path / "out"), check=False)
    assert result.returncode == 1
    assert "missing" in one_line_error(result, None)


def test_deleted_index_is_rebuilt_from_pack_tables(repo, guest: Path, tmp_path: Path):
    (guest / "data").mkdir()
    (guest / BIG).write_bytes(random.Random(5).randbytes(3 * 1024 * 1024))
    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    files = tree_digest(guest)
    indexes = list((store_dir(tmp_path) / "index").glob("*.idx"))
    assert indexes
    for path in indexes:
        path.unlink()
    repo.fsck_clean()
    repo("checkout", entry, "--to", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out") == files
    # A later commit still finds the old data (nothing is stored twice).
    (guest / "etc" / "hosts").write_text("changed\n")
    second = repo("commit", "-m", "two", "--json").json()
    assert second["created"] and second["added_bytes"] < 100_000


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_corrupt_index_falls_back_to_pack_tables(vml, guest: Path, tmp_path: Path, damage: str):
    repo = vml
    repo("init")
    repo("area", "add", "wa1", "--dir", str(guest))
    (guest / "data").mkdir()
    (guest / BIG).write_bytes(random.Random(6).randbytes(3 * 1024 * 1024))
    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    files = tree_digest(guest)
    (index,) = (store_dir(tmp_path) / "index").glob("*.idx")
    data = bytearray(index.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) - 13]
    else:
        data = bytearray(os.urandom(len(data)))
    index.write_bytes(bytes(data))

    repo("checkout", entry, "--to", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out") == files
    # The store recovers every object from the pack tables: no entry is damaged.
    result = repo("fsck", "--json", check=False)
    report = result.json()
    assert report["damaged"] == [], report
    assert result.returncode == 0, report
    repo("checkout", entry, "--to", str(tmp_path / "out2"))


@pytest.mark.parametrize("garbage", ["random", "truncated", "wrong-shape", "empty"])
def test_garbage_stat_cache(repo, guest: Path, tmp_path: Path, garbage: str):
    for i in range(50):
        (guest / "etc" / f"f{i}.conf").write_text(f"value {i}\n")
    repo("commit", "-m", "one", "--json")
    cache = tmp_path / ".vml" / "vml" / "areas" / "wa1" / "statcache"
    assert cache.exists()
    original = cache.read_bytes()
    if garbage == "random":
        cache.write_bytes(random.Random(1).randbytes(4096))
    elif garbage == "truncated":
        cache.write_bytes(original[: len(original) // 2])
    elif garbage == "wrong-shape":
        cache.write_bytes(msgpack.packb([1, {b"": [1, 2]}, 3][:2], use_bin_type=True))
    else:
        cache.write_bytes(b"")
    # Same size as before, so only reading the file tells the change apart.
    (guest / "etc" / "f7.conf").write_text("VALUE 7\n")
    result = repo("commit", "-m", "two", "--json", check=False)
    assert result.returncode == 0, result.stderr
    second = result.json()
    assert second["created"]
    repo("checkout", second["entry"], "--to", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out") == tree_digest(guest)
    # And the cache written by that commit is usable again: nothing changed, nothing created.
    assert repo("commit", "-m", "three", "--json").json()["created"] is False

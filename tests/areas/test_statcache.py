"""The stat cache: an unchanged re-commit reads no file contents; changes hidden from size and
mtime are still found through ctime; racily clean files are re-read."""

import os
import time
from pathlib import Path


def test_unchanged_recommit_reads_nothing_and_changes_are_found(repo, guest: Path):
    for i in range(50):
        (guest / "home" / "user" / f"f{i}.txt").write_text(f"file {i}\n")
    repo("commit", "-m", "first")  # everything is racy now: nothing cached yet
    time.sleep(2.2)
    second = repo("commit", "-m", "second", "--allow-empty", "--json").json()
    assert second["files_read"] == 52  # read once more, now old enough to be cached
    third = repo("commit", "-m", "third", "--allow-empty", "--json").json()
    assert third["files_read"] == 0 and third["bytes_read"] == 0

    # Same size, same mtime, different content: only the ctime tells.
    target = guest / "home" / "user" / "f7.txt"
    before = target.stat()
    target.write_text("FILE 7\n")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    changed = repo("commit", "-m", "edit", "--json").json()
    assert changed["created"] and changed["files_read"] == 1
    diff = repo("diff", "HEAD~1", "HEAD", "--json").json()
    assert [(d["path"], d["status"]) for d in diff] == [("home/user/f7.txt", "M")]

    # Modified right after a commit: racily clean, so re-read by the next one whatever stat says.
    target.write_text("file 7\n")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    racy = repo("commit", "-m", "racy", "--json").json()
    assert racy["created"] and racy["files_read"] >= 1


def test_an_unchanged_recommit_leaves_the_cache_file_alone(repo, guest: Path, tmp_path: Path):
    cache = tmp_path / ".vml" / "vml" / "areas" / "wa1" / "statcache"
    for i in range(20):
        (guest / "home" / "user" / f"g{i}.txt").write_text(f"file {i}\n")
    repo("commit", "-m", "first")
    time.sleep(2.2)  # out of the racy window: the next commit caches everything
    repo("commit", "-m", "second", "--allow-empty")
    written = cache.stat()
    third = repo("commit", "-m", "third", "--allow-empty", "--json").json()
    assert third["files_read"] == 0
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == (written.st_ino, written.st_mtime_ns)  # not written again
    (guest / "home" / "user" / "g3.txt").write_text("changed\n")
    time.sleep(2.2)
    repo("commit", "-m", "fourth")
    assert cache.stat().st_ino != written.st_ino  # a change: the cache is written anew
    fifth = repo("commit", "-m", "fifth", "--allow-empty", "--json").json()
    assert fifth["files_read"] == 0  # and what it holds is right


def test_cached_file_whose_data_gc_removed_is_read_again(repo, guest: Path, tmp_path: Path):
    from support.repofiles import tree_digest

    repo("commit", "-m", "base")
    data = os.urandom(3 * 1024 * 1024)
    (guest / "home" / "user" / "big.bin").write_bytes(data)
    time.sleep(2.2)  # old enough to be cached
    dropped = repo("commit", "-m", "adds big.bin", "--json").json()["entry"]
    assert repo("commit", "-m", "cached", "--allow-empty", "--json").json()["files_read"] == 0
    # Drop both entries that hold big.bin and let gc forget them: the stat cache still
    # vouches for the file, but its chunks are gone from the store.
    repo("rm", "HEAD")
    repo("rm", dropped)
    freed = repo("gc", "--expire", "now", "--json").json()
    assert freed["bytes_freed"] >= len(data) // 2, freed
    status = repo("status", "--json").json()
    # big.bin is new against the base entry (its directory's mtime changed with it).
    assert {(c["path"], c["status"]) for c in status["changes"]} == {("home/user/big.bin", "A"), ("home/user", "P")}
    again = repo("commit", "-m", "big.bin again", "--json").json()
    assert again["files_read"] >= 1 and again["added_bytes"] >= len(data) // 2, again
    repo("checkout", "HEAD", "--to", str(tmp_path / "out"))
    assert tree_digest(tmp_path / "out") == tree_digest(guest)


def _cached_twice(repo, guest: Path) -> None:
    for i in range(30):
        (guest / "home" / "user" / f"h{i}.txt").write_text(f"file {i}\n")
    repo("commit", "-m", "first")
    time.sleep(2.2)
    repo("commit", "-m", "second", "--allow-empty")  # now every file is cached


def test_a_cache_of_the_older_format_is_still_used(repo, guest: Path, tmp_path: Path):
    import msgpack

    from vml.areas.statcache import StatCache

    _cached_twice(repo, guest)
    path = tmp_path / ".vml" / "vml" / "areas" / "wa1" / "statcache"
    cache = StatCache.load(str(path))
    old = [2, {rel: (d.fingerprint, d.listing_id, d.totals, [(n, k, node) for n, (k, node) in d.children.items()])
               for rel, d in cache.dirs.items()}]
    path.write_bytes(msgpack.packb(old, use_bin_type=True))
    assert repo("commit", "-m", "third", "--allow-empty", "--json").json()["files_read"] == 0


def test_damaged_children_of_one_directory_read_its_files_again(repo, guest: Path, tmp_path: Path):
    import msgpack

    from vml.areas.statcache import StatCache

    _cached_twice(repo, guest)
    path = tmp_path / ".vml" / "vml" / "areas" / "wa1" / "statcache"
    cache = StatCache.load(str(path))
    cache.dirs[b"home/user"]._packed = msgpack.packb([(b"a name", 5)])  # the wrong shape
    cache.dirs[b"home/user"]._children = None
    cache.save(str(path))
    third = repo("commit", "-m", "third", "--allow-empty", "--json").json()
    assert 30 <= third["files_read"] <= 40  # that directory's files, no more
    assert repo("commit", "-m", "fourth", "--allow-empty", "--json").json()["files_read"] == 0

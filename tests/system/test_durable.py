"""Durable writes: the content arrives whole, a failure at any step leaves the old file and
no temp file, the file and then its directory are fsynced, the mode is the one asked for."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from vml import durable
from vml.objects.pack import PackWriter
from vml.refs.git import GitDag


def fault(*_args, **_kwargs):
    raise OSError(errno.EIO, "injected fault")


@pytest.fixture
def fsyncs(monkeypatch) -> list[tuple[bool, int]]:
    """Every fsync, as (is a directory, inode), in order; the real fsync still runs."""
    calls = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        st = os.fstat(fd)
        calls.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_bytes_and_pieces_arrive_whole(tmp_path):
    target = tmp_path / "file"
    durable.write_atomically(str(target), b"one piece")
    assert target.read_bytes() == b"one piece"
    durable.write_atomically(str(target), (b"%d," % i for i in range(1000)))
    assert target.read_bytes() == b"".join(b"%d," % i for i in range(1000))
    assert os.listdir(tmp_path) == ["file"]


def test_the_file_then_its_directory_are_fsynced(tmp_path, fsyncs):
    target = tmp_path / "file"
    durable.write_atomically(str(target), b"data")
    assert fsyncs == [(False, target.stat().st_ino), (True, tmp_path.stat().st_ino)]


def test_a_temp_dir_elsewhere_fsyncs_the_target_directory(tmp_path, fsyncs):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "index").mkdir()
    target = tmp_path / "index" / "file"
    durable.write_atomically(str(target), b"data", tmp_dir=str(tmp_path / "tmp"))
    assert target.read_bytes() == b"data"
    assert os.listdir(tmp_path / "tmp") == []
    assert fsyncs == [(False, target.stat().st_ino), (True, (tmp_path / "index").stat().st_ino)]


def test_an_exception_while_writing_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "file"
    target.write_bytes(b"old")

    def pieces():
        yield b"half of the new"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        durable.write_atomically(str(target), pieces())
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file"]


@pytest.mark.parametrize("step", ["fsync", "rename"])
def test_a_failing_fsync_or_rename_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, step):
    target = tmp_path / "file"
    target.write_bytes(b"old")
    monkeypatch.setattr(os, step, fault)
    with pytest.raises(OSError, match="injected fault"):
        durable.write_atomically(str(target), b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file"]


def test_a_new_file_is_absent_after_a_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "rename", fault)
    with pytest.raises(OSError):
        with durable.atomic_file(str(tmp_path / "file")) as sink:
            sink.write(b"never seen")
    assert os.listdir(tmp_path) == []


def test_mode_is_applied_less_the_umask(tmp_path, umask_022):
    durable.write_atomically(str(tmp_path / "private"), b"x", mode=0o640)
    durable.write_atomically(str(tmp_path / "default"), b"x")
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "default").stat().st_mode) == 0o644  # as open() makes it
    durable.write_atomically(str(tmp_path / "private"), b"y", mode=0o600)  # a replacement takes the new mode
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o600


def test_pending_file_takes_its_name_at_commit(tmp_path, fsyncs):
    pending = durable.PendingFile(str(tmp_path), "pack", buffering=1024 * 1024)
    assert durable.is_temp_name(os.path.basename(pending.temp_path))
    pending.file.write(b"content")
    (tmp_path / "ab").mkdir()
    final = tmp_path / "ab" / "named-by-hash"
    pending.commit(str(final))
    pending.discard()  # after a commit, nothing to remove
    assert final.read_bytes() == b"content"
    assert sorted(os.listdir(tmp_path)) == ["ab"]
    assert fsyncs == [(False, final.stat().st_ino), (True, (tmp_path / "ab").stat().st_ino)]


def test_a_pack_that_failed_to_finish_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    writer = PackWriter(str(tmp_path / "tmp"))
    writer.add(b"\0" * 32, 0, 0, b"payload", 7)
    monkeypatch.setattr(os, "fsync", fault)
    with pytest.raises(OSError):
        writer.finish(str(tmp_path / "packs"))
    writer.abandon()
    assert os.listdir(tmp_path / "tmp") == []
    assert [files for _dir, _subdirs, files in os.walk(tmp_path / "packs") if files] == []


def test_create_exclusive_refuses_an_existing_file(tmp_path, fsyncs):
    lock = tmp_path / "main.lock"
    assert durable.create_exclusive(str(lock), b"first\n")
    assert not durable.create_exclusive(str(lock), b"second\n")
    assert lock.read_bytes() == b"first\n"
    assert fsyncs == [(False, lock.stat().st_ino)]


def test_rename_fsyncs_the_target_directory(tmp_path, fsyncs):
    (tmp_path / "main.lock").write_bytes(b"new")
    (tmp_path / "main").write_bytes(b"old")
    durable.rename(str(tmp_path / "main.lock"), str(tmp_path / "main"))
    assert os.listdir(tmp_path) == ["main"] and (tmp_path / "main").read_bytes() == b"new"
    assert fsyncs == [(True, tmp_path.stat().st_ino)]


def test_a_failed_reflog_rewrite_keeps_the_log_and_adds_no_reflog(tmp_path, monkeypatch):
    git = GitDag.init(str(tmp_path / "repo"))
    commit = git.create_commit({"a": b"1"}, "first", [])
    git.set_direct("refs/heads/main", commit, "create")
    before = git.reflog("refs/heads/main")
    names = git.reflog_names()
    monkeypatch.setattr(os, "rename", fault)
    with pytest.raises(OSError):
        git.write_reflog("refs/heads/main", [])
    monkeypatch.undo()
    assert git.reflog("refs/heads/main") == before and before
    assert git.reflog_names() == names

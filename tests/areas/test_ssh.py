"""The `ssh` working area against a real sshd on 127.0.0.1, serving a guest tree under a
temp directory (`--root`): the same entries as a directory area, transfers only of what
changed, checkout onto the live tree, include/exclude rules, and the errors users hit."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import Vml, one_line_error
from support.treecompare import compare
from system.test_fidelity import _modify_area, build_everything


@pytest.fixture
def ssh_repo(vml: Vml, tmp_path: Path, sshd) -> tuple[Vml, Path, dict]:
    """A repository with area `g`: the whole tree under tmp_path/guest, over ssh."""
    guest = tmp_path / "guest"
    guest.mkdir()
    vml("init")
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), "--include", "/", env=sshd.env)
    yield vml, guest, sshd.env
    vml.fsck_clean()


@pytest.fixture
def parallel_streams(vml: Vml, monkeypatch) -> list[int]:
    """Captures of any size cross as one tar stream a reader process (as those of over
    PARALLEL_WORK do), given to the streams in runs of a few files: the descriptors of the
    streams handed over are listed. (vml runs in this process: the settings hold there.)"""
    from vml.areas.capture import guest as guestcapture
    from vml.areas.capture.processes import StreamReaders

    monkeypatch.setattr(guestcapture, "PARALLEL_WORK", 0)
    monkeypatch.setattr(guestcapture, "RUN_WORK", 64 * 1024)
    monkeypatch.setenv("VML_WORKER_PROCESSES", "2")
    monkeypatch.setenv("VML_SSH_CLIENT", "openssh")  # (a paramiko channel has no descriptor to hand over)
    vml.separate = False
    handed: list[int] = []
    original = StreamReaders.start

    def start(self, descriptor: int, ahead: bytes, pieces: int = 2) -> int:
        handed.append(descriptor)
        return original(self, descriptor, ahead, pieces)

    monkeypatch.setattr(StreamReaders, "start", start)
    return handed


def _manifest(vml: Vml, entry: str, env: dict) -> str:
    return vml("show", entry, "--json", env=env).json()["info"]["manifest"]


@pytest.mark.parametrize("streams", ["one", "readers"])
def test_ssh_capture_equals_directory_capture(ssh_repo, request, streams: str):
    """Read by this process or, in runs handed to two streams, by reader processes."""
    handed = request.getfixturevalue("parallel_streams") if streams == "readers" else None
    vml, guest, env = ssh_repo
    build_everything(guest)
    # Last in the walk, a run of its own that crosses before the rest, but after the top's
    # run: a reader takes a stream's first member, and none after, for the top.
    (guest / "zz-large").write_bytes(os.urandom(1 << 20))
    vml("area", "add", "d", "--dir", str(guest))
    over_ssh = vml("commit", "-a", "g", "-m", "over ssh", "--json", env=env).json()
    local = vml("commit", "-a", "d", "-m", "local", "--json").json()
    # Node for node the same tree: xattrs, ACLs, capabilities, hardlinks, sparse maps,
    # devices, fifos, undecodable names, ns mtimes.
    assert _manifest(vml, over_ssh["entry"], env) == _manifest(vml, local["entry"], env)
    assert over_ssh["skipped"] == ["special/sock (socket)"]
    assert local["added_bytes"] == 0  # everything was stored by the ssh commit already
    assert handed is None or len(handed) == 2


@pytest.mark.parametrize("streams", ["one", "readers"])
def test_every_way_a_guest_file_is_cut_gives_a_directory_capture_s_chunks(ssh_repo, request, streams: str):
    """A guest's file is read whole and cut by a worker, or cut as it streams (larger than
    WHOLE_FILE_BYTES), or stored as one chunk (small); sparse or not, the chunks are a
    directory capture's, so the dir commit after the ssh one stores nothing new. (Data of
    more than MAX_SIZE is always cut: each file but `small` has several chunks.) The same
    read by this process's threads, or by reader processes."""
    from vml.areas.capture.guest import WHOLE_FILE_BYTES
    from vml.objects.chunker import MAX_SIZE, MIN_SIZE

    handed = request.getfixturevalue("parallel_streams") if streams == "readers" else None
    vml, guest, env = ssh_repo
    for name, size in (("small", MIN_SIZE - 1), ("whole", MAX_SIZE + 5), ("streamed", WHOLE_FILE_BYTES + 5)):
        (guest / name).write_bytes(os.urandom(size))
    for name, logical in (("sparse-whole", WHOLE_FILE_BYTES), ("sparse-streamed", WHOLE_FILE_BYTES * 2)):
        with open(guest / name, "wb") as sparse:
            sparse.write(os.urandom(300_000))
            sparse.seek(logical // 2)
            sparse.write(os.urandom(MAX_SIZE + 5))
            sparse.truncate(logical)
    many = guest / "many"  # more small files than one batch holds
    many.mkdir()
    for number in range(600):
        (many / f"f{number}").write_bytes(os.urandom(number * 7))
    vml("area", "add", "d", "--dir", str(guest))
    over_ssh = vml("commit", "-a", "g", "-m", "over ssh", "--json", env=env).json()
    local = vml("commit", "-a", "d", "-m", "local", "--json").json()
    assert _manifest(vml, over_ssh["entry"], env) == _manifest(vml, local["entry"], env)
    assert local["added_bytes"] == 0
    assert handed is None or len(handed) == 2
    vml("checkout", over_ssh["entry"], "--to", str(guest.parent / "out"), env=env)
    assert compare(guest, guest.parent / "out") == []


def test_unchanged_recommit_transfers_only_the_listing(ssh_repo):
    vml, guest, env = ssh_repo
    (guest / "data").mkdir()
    for i in range(200):
        (guest / "data" / f"f{i}").write_bytes(os.urandom(100) * (i + 1))
        os.utime(guest / "data" / f"f{i}", ns=(10**18, 10**18 + i))  # not racy
    os.utime(guest / "data", ns=(10**18, 10**18))
    os.utime(guest, ns=(10**18, 10**18))
    time.sleep(2.1)  # past the racy window of the files' ctimes
    first = vml("commit", "-m", "first", "--json", env=env).json()
    assert first["files_read"] == 200
    again = vml("commit", "-m", "again", "--json", env=env).json()
    assert not again["created"] and again["files_read"] == 0 and again["bytes_read"] == 0
    for i in (3, 50, 199):
        (guest / "data" / f"f{i}").write_bytes(b"changed %d" % i)
        os.utime(guest / "data" / f"f{i}", ns=(10**18 + 1, 10**18 + 1))
    time.sleep(2.1)
    changed = vml("commit", "-m", "three changed", "--json", env=env).json()
    assert changed["created"] and changed["files_read"] == 3
    diff = vml("diff", first["entry"], changed["entry"], "--json", env=env).json()
    assert sorted(d["path"] for d in diff if d["path"] != "data") == ["data/f199", "data/f3", "data/f50"]


def test_checkout_onto_the_guest_puts_it_back_exactly(ssh_repo, tmp_path: Path):
    vml, guest, env = ssh_repo
    build_everything(guest)
    with open(guest / "tail-hole.img", "wb") as f:  # a sparse file that ends in a hole
        f.write(b"head")
        f.truncate(8 << 20)
    saved = vml("commit", "-m", "everything", "--json", env=env).json()["entry"]
    _modify_area(guest)
    os.truncate(guest / "tail-hole.img", 0)
    status = vml("status", "--json", env=env).json()
    assert not status["clean"]
    refused = vml("checkout", saved, env=env, check=False)
    assert "commit them or use --force" in one_line_error(refused)
    result = vml("checkout", saved, "--force", "--json", env=env).json()
    assert result["not_reproduced"] == [], result
    assert os.stat(guest / "tail-hole.img").st_blocks < 64 and os.stat(guest / "sparse.img").st_blocks < 1024
    vml("checkout", saved, "--to", str(tmp_path / "reference"))
    assert compare(guest, tmp_path / "reference", ignore={b"special/sock"}) == []  # a socket is never saved
    status = vml("status", "--json", env=env).json()
    assert status["clean"], status


def test_checkout_sends_only_what_differs(ssh_repo, tmp_path: Path):
    vml, guest, env = ssh_repo
    (guest / "big").write_bytes(os.urandom(4 << 20))
    (guest / "small").write_text("one\n")
    first = vml("commit", "-m", "one", "--json", env=env).json()["entry"]
    (guest / "small").write_text("two\n")
    (guest / "new").write_text("new\n")
    vml("commit", "-m", "two", env=env)
    result = vml("checkout", first, "--json", env=env).json()
    counts = result["counts"]
    assert counts["files_written"] == 1 and counts["bytes_written"] == 4  # "one\n": big was not sent
    assert counts["removed"] == 1 and not (guest / "new").exists()
    assert (guest / "small").read_text() == "one\n"


def test_guest_rules_keep_user_paths_and_leave_the_system_alone(vml: Vml, tmp_path: Path, sshd):
    guest = tmp_path / "guest"
    for d in ("home/user", "etc", "usr/local/bin", "usr/bin", "proc/1", "tmp", "var/lib/app", "var/cache/apt"):
        (guest / d).mkdir(parents=True)
    for f in ("home/user/notes", "home/user/.vimrc", "home/user/x.swp", "etc/hosts", "usr/local/bin/tool",
              "usr/bin/ls", "proc/1/status", "tmp/scratch", "var/lib/app/db", "var/cache/apt/pkg"):
        (guest / f).write_text(f + "\n")
    vml("init")
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), "--exclude", "/home/user/private/", env=sshd.env)
    shown = vml("area", "show", "g", "--json", env=sshd.env).json()
    assert "/usr/local" in shown["include"] and "/proc" in shown["exclude"] and "/home/user/private/" in shown["exclude"]
    assert "include /home" in vml("area", "show", "g", env=sshd.env).stdout
    entry = vml("commit", "-m", "guest", "--json", env=sshd.env).json()["entry"]
    vml("checkout", entry, "--to", str(tmp_path / "saved"))
    saved = sorted(str(p.relative_to(tmp_path / "saved")) for p in (tmp_path / "saved").rglob("*"))
    assert saved == sorted([
        "etc", "etc/hosts", "home", "home/user", "home/user/.vimrc", "home/user/notes",
        "usr", "usr/local", "usr/local/bin", "usr/local/bin/tool", "var", "var/lib", "var/lib/app", "var/lib/app/db",
    ])
    # A checkout deletes within the included paths only.
    (guest / "home/user/added").write_text("added\n")
    (guest / "usr/bin/new-system-file").write_text("not ours\n")
    vml("checkout", entry, "--force", env=sshd.env)
    assert not (guest / "home/user/added").exists()
    assert (guest / "usr/bin/new-system-file").exists() and (guest / "proc/1/status").exists()
    assert (guest / "home/user/x.swp").exists()  # excluded, so never touched
    vml.fsck_clean()


def test_directory_area_rules_apply_too(vml: Vml, guest: Path, tmp_path: Path):
    (guest / "build").mkdir()
    (guest / "build" / "out.o").write_bytes(b"object")
    (guest / "home" / "user" / "core").write_bytes(b"dump")
    vml("init")
    vml("area", "add", "wa", "--dir", str(guest), "--exclude", "/build/", "--exclude", "core")
    entry = vml("commit", "-m", "rules", "--json").json()["entry"]
    listed = vml("diff", entry, "--json").json()
    assert listed == []  # the excluded paths are not changes either
    vml("checkout", entry, "--to", str(tmp_path / "out"))
    assert not (tmp_path / "out" / "build").exists() and not (tmp_path / "out" / "home/user/core").exists()
    vml("checkout", entry, "--force")
    assert (guest / "build" / "out.o").exists()  # excluded: a checkout does not delete it
    vml.fsck_clean()


def test_unreachable_guest_is_one_line(vml: Vml, tmp_path: Path, sshd):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    vml("init")
    vml("area", "add", "g", "--ssh", f"root@127.0.0.1:{port}", "--root", "/tmp")
    line = one_line_error(vml("commit", "-m", "x", env=sshd.env, check=False), None)
    assert "cannot connect to 127.0.0.1" in line


def test_refused_key_is_one_line(vml: Vml, tmp_path: Path, sshd):
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    vml("init")
    vml("area", "add", "g", "--ssh", "testhost", "--identity", str(tmp_path / "stranger"), "--root", "/tmp")
    line = one_line_error(vml("commit", "-m", "x", env=sshd.env, check=False), None)
    assert "refused every key" in line


def test_missing_root_and_bad_target(vml: Vml, tmp_path: Path, sshd):
    vml("init")
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(tmp_path / "nowhere"))
    line = one_line_error(vml("commit", "-m", "x", env=sshd.env, check=False), code=3)  # the guest lacks it: exit 3
    assert "does not exist on the guest" in line
    assert "invalid ssh target" in one_line_error(vml("area", "add", "h", "--ssh", "a@b@c", check=False))
    assert "--dir PATH, --ssh" in one_line_error(vml("area", "add", "h", check=False))


def test_guest_without_tar(vml: Vml, tmp_path: Path, sshd_factory):
    """A guest whose PATH has sh and find but no tar: a clear message, nothing saved."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "find", "date", "xargs", "rm", "bash"):
        found = shutil.which(tool)
        if found:
            os.symlink(found, bin_dir / tool)
    server = sshd_factory(f"SetEnv PATH={bin_dir}\n")
    guest = tmp_path / "guest"
    guest.mkdir()
    vml("init")
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest))
    line = one_line_error(vml("commit", "-m", "x", env=server.env, check=False), None)
    assert "lacks GNU tar" in line
    assert vml("log", "--json", env=server.env).json() == []
    vml.fsck_clean()


def test_environment_is_saved_diffed_and_reapplied(vml: Vml, tmp_path: Path, sshd_factory):
    """Login-shell variables (set here by sshd's SetEnv), history and dotfiles go to env/."""
    import subprocess

    guest = tmp_path / "guest"
    (guest / "root").mkdir(parents=True)
    (guest / "etc" / "profile.d").mkdir(parents=True)
    (guest / "home" / "user").mkdir(parents=True)
    (guest / "root" / ".bash_history").write_text("make analysis\n./run --events 1000\n")
    (guest / "root" / ".bashrc").write_text("alias ll='ls -l'\n")
    (guest / "home" / "user" / ".vimrc").write_text("set number\n")
    first_server = sshd_factory("SetEnv ANALYSIS_RELEASE=v3 ROOTSYS=/opt/root\n")
    vml("init")
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), env=first_server.env)
    first = vml("commit", "-m", "v3", "--json", env=first_server.env).json()["entry"]
    variables = vml("show", f"{first}:env/variables").stdout
    assert "ANALYSIS_RELEASE=v3\n" in variables and "ROOTSYS=/opt/root\n" in variables
    assert "SSH_CONNECTION" not in variables and "PWD=" not in variables
    assert vml("show", f"{first}:env/history").stdout == "make analysis\n./run --events 1000\n"
    assert vml("show", f"{first}:env/dotfiles/root/.bashrc").stdout == "alias ll='ls -l'\n"
    assert vml("show", f"{first}:env/dotfiles/home/user/.vimrc").stdout == "set number\n"
    assert vml("show", f"{first}:home/user/.vimrc").stdout == "set number\n"  # a file of the tree, too

    second_server = sshd_factory("SetEnv ANALYSIS_RELEASE=v4\n")
    status = vml("status", "--json", env=second_server.env).json()
    assert {(c["path"], c["status"]) for c in status["changes"]} == {
        ("env/variables:ANALYSIS_RELEASE", "M"), ("env/variables:ROOTSYS", "D")}
    second = vml("commit", "-m", "v4", "--json", env=second_server.env).json()["entry"]
    diff = vml("diff", first, second, env=second_server.env).stdout
    assert "env/variables:ANALYSIS_RELEASE  ('v3' -> 'v4')" in diff

    vml("checkout", first, env=second_server.env)
    script = guest / "etc" / "profile.d" / "vml-environment.sh"
    assert "export ANALYSIS_RELEASE=v3" in script.read_text()
    shown = subprocess.run(["sh", "-c", f". {script}; echo $ANALYSIS_RELEASE $ROOTSYS"], capture_output=True, text=True, check=True)
    assert shown.stdout == "v3 /opt/root\n"
    assert vml("status", "--json", env=first_server.env).json()["clean"]  # the script itself is never saved
    vml.fsck_clean()


@pytest.mark.parametrize("client", ["openssh", "paramiko"])
def test_connection_dropped_mid_commit_leaves_the_repository_consistent(vml: Vml, tmp_path: Path, sshd, monkeypatch, client: str):
    """The link to the guest dies while files stream in (injected: the client closes, or the
    OpenSSH client dies, after the first files): a one-line error, no entry, a clean fsck,
    and the retry saves it all."""
    from vml import api
    from vml.areas.capture import guest as guestcapture
    from vml.errors import AreaError
    from vml.repo import Repository

    guest = tmp_path / "guest"
    guest.mkdir()
    # More than the channel's window and the reader's buffer hold (16 + 1 MiB): with 1 MB in
    # all, the whole stream and its exit status could arrive before the drop, and nothing failed.
    for i in range(20):
        (guest / f"file{i}").write_bytes(os.urandom(2_000_000))
    vml("init")
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), "--include", "/")
    for key, value in sshd.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VML_SSH_CLIENT", client)
    original = guestcapture.member_pieces
    calls = []

    def dropping(archive, member):
        calls.append(member.name)
        if len(calls) == 3:  # the connection dies
            if client == "openssh":
                archive._stream.raw.process.kill()
            else:
                archive._stream.raw.channel.get_transport().close()
        return original(archive, member)

    monkeypatch.setattr(guestcapture, "member_pieces", dropping)
    repo = Repository.discover(str(tmp_path / ".vml"))
    with pytest.raises(AreaError, match="connection to the guest dropped"):
        api.commit(repo, "cut off", area="g")
    repo.close()
    monkeypatch.undo()
    assert vml("log", "--json", env=sshd.env).json() == []
    vml.fsck_clean()
    saved = vml("commit", "-m", "whole", "--json", env=sshd.env).json()
    assert saved["files"] == 20
    vml("checkout", saved["entry"], "--to", str(tmp_path / "out"))
    assert compare(guest, tmp_path / "out") == []
    vml.fsck_clean()


@pytest.mark.parametrize("opened", ["after the tree", "head start"])
def test_a_stream_dropped_while_a_reader_process_reads_it_is_one_line(ssh_repo, parallel_streams, monkeypatch, opened: str):
    """One of two streams read by reader processes loses its connection (injected: its
    OpenSSH client killed as it is handed over), opened once the tree is made or while it
    is made (a first commit's head start): the commit says the connection dropped, at once
    (the other stream is not waited for), makes no entry, leaves no reader behind, and the
    retry saves it all."""
    from vml.areas import ssh
    from vml.areas.capture import guest as guestcapture

    vml, guest, env = ssh_repo
    if opened == "head start":
        monkeypatch.setattr(ssh, "PARALLEL_WORK", 0)  # (both tars log in while the listing is read)
        head_starts = []
        head_start = guestcapture.GuestCapture._head_start
        monkeypatch.setattr(guestcapture.GuestCapture, "_head_start",
                            lambda capture: head_start(capture) or head_starts.append(capture._head is not None))
    for i in range(12):  # more than the pipes and buffers between the guest's tar and a reader hold
        (guest / f"file{i}").write_bytes(os.urandom(1_500_000))
    original = guestcapture.handoff
    killed = []

    def dropping(stream):
        handed = original(stream)
        if not killed:
            stream.raw.process.kill()
            killed.append(stream.raw.process.pid)
        return handed

    monkeypatch.setattr(guestcapture, "handoff", dropping)
    started = time.monotonic()
    failed = vml("commit", "-m", "cut off", env=env, check=False)
    assert "connection to the guest dropped" in one_line_error(failed, None) and failed.returncode != 0
    assert time.monotonic() - started < 5  # (the killed stream's error, not the live one's wait)
    monkeypatch.setattr(guestcapture, "handoff", original)
    assert vml("log", "--json", env=env).json() == []
    vml.fsck_clean()
    saved = vml("commit", "-m", "whole", "--json", env=env).json()
    assert saved["files"] == 12 and len(parallel_streams) == 4
    assert opened != "head start" or head_starts == [True, True]
    vml("checkout", saved["entry"], "--to", str(guest.parent / "out"), env=env)
    assert compare(guest, guest.parent / "out") == []


def test_disk_full_on_the_guest_is_one_line_and_keeps_the_area(vml: Vml, tmp_path: Path, sshd):
    import subprocess

    guest = tmp_path / "guest"
    guest.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(guest)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs as the guest's disk here: {mounted.stderr.strip()}")
    try:
        (guest / "small").write_text("small\n")
        big_tree = tmp_path / "big"
        big_tree.mkdir()
        (big_tree / "small").write_text("small\n")
        (big_tree / "large.bin").write_bytes(os.urandom(3 << 20))  # three times the guest's disk
        vml("init")
        vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), "--include", "/")
        vml("area", "add", "d", "--dir", str(big_tree))
        before = vml("commit", "-a", "g", "-m", "small", "--json", env=sshd.env).json()["entry"]
        large = vml("commit", "-a", "d", "-m", "large", "--json").json()["entry"]
        line = one_line_error(vml("checkout", large, "-a", "g", "--force", env=sshd.env, check=False), None)
        assert "the guest's disk is full" in line
        assert vml("status", "-a", "g", "--json", env=sshd.env).json()["entry"] == before  # HEAD did not move
        vml.fsck_clean()
    finally:
        subprocess.run(["umount", "-l", str(guest)], check=False)


def test_checkout_of_an_entry_with_narrower_rules_deletes_nothing_it_did_not_cover(vml: Vml, tmp_path: Path, sshd):
    """A colleague's entry of /home alone says nothing about /etc: checking it out onto a
    guest area that saves /etc too must not delete /etc."""
    guest = tmp_path / "guest"
    for d in ("home/user", "etc"):
        (guest / d).mkdir(parents=True)
    (guest / "home/user/notes").write_text("mine\n")
    (guest / "etc/hosts").write_text("127.0.0.1 localhost\n")
    narrow = tmp_path / "narrow"
    (narrow / "home/user").mkdir(parents=True)
    (narrow / "home/user/notes").write_text("theirs\n")
    vml("init")
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), "--include", "/home", "--include", "/etc")
    vml("area", "add", "n", "--dir", str(narrow), "--include", "/home")
    vml("commit", "-a", "g", "-m", "mine", env=sshd.env)
    theirs = vml("commit", "-a", "n", "-m", "theirs", "--json").json()["entry"]
    result = vml("checkout", theirs, "-a", "g", "--force", "--json", env=sshd.env).json()
    assert (guest / "home/user/notes").read_text() == "theirs\n"
    assert (guest / "etc/hosts").exists() and result["not_reproduced"] == []
    vml("area", "add", "d", "--dir", str(tmp_path / "dirarea"), "--include", "/home", "--include", "/etc")
    (tmp_path / "dirarea" / "etc").mkdir(parents=True)
    (tmp_path / "dirarea" / "etc" / "fstab").write_text("x\n")
    vml("checkout", theirs, "-a", "d", "--force")  # the same for a directory area
    assert (tmp_path / "dirarea" / "etc" / "fstab").exists() and (tmp_path / "dirarea" / "home/user/notes").exists()
    vml.fsck_clean()


def test_unknown_host_key_then_area_remove_and_accept(vml: Vml, tmp_path: Path, sshd):
    guest = tmp_path / "guest"
    guest.mkdir()
    (guest / "f").write_text("x\n")
    vml("init")
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), "--include", "/")
    sshd.forget_host_key()
    try:
        line = one_line_error(vml("commit", "-m", "x", env=sshd.env, check=False), None)
        assert "host key of 127.0.0.1" in line and "vml area remove g" in line and "--accept-new-host-key" in line
        removed = vml("area", "remove", "g", "--json").json()
        assert removed["name"] == "g" and vml("area", "list", "--json").json() == []
        vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), "--include", "/", "--accept-new-host-key", env=sshd.env)
        assert "127.0.0.1" in sshd.known_hosts.read_text()
        entry = vml("commit", "-m", "x", "--json", env=sshd.env).json()["entry"]
        vml("checkout", entry, "--to", str(tmp_path / "out"))
        assert (tmp_path / "out" / "f").read_text() == "x\n"
    finally:
        sshd.trust_host_key()
    vml("area", "add", "d", "--dir", str(tmp_path / "d"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x\n")
    detached = vml("commit", "-a", "d", "-m", "d", "--json").json()["entry"]
    vml("checkout", detached, "-a", "d")  # detached at an entry main holds: removable
    vml("area", "remove", "d")
    vml.fsck_clean()


def test_connections_prefer_aes_gcm_and_take_what_the_server_offers(sshd, sshd_factory, monkeypatch):
    """AES-GCM where the server offers it (paramiko computes a separate MAC in Python, packet
    by packet: GCM halves vml's CPU on a guest's tar stream); another cipher where it does not.
    Small packets go at once (TCP_NODELAY), not after the guest's delayed acknowledgement."""
    import socket

    from vml.ssh import connect

    for server, expected in ((sshd, "aes128-gcm@openssh.com"), (sshd_factory("Ciphers aes128-ctr,aes256-ctr\n"), "aes128-ctr")):
        with monkeypatch.context() as patch:
            for name, value in server.env.items():
                patch.setenv(name, value)
            client = connect("testhost")
            try:
                transport = client.get_transport()
                assert (transport.local_cipher, transport.remote_cipher) == (expected, expected)
                assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # (no 40 ms wait a command)
                assert client.exec_command("echo ok")[1].read() == b"ok\n"
            finally:
                client.close()


def test_owner_names_come_from_the_guest_files_without_getent(vml: Vml, tmp_path: Path, sshd_factory):
    """A guest without getent (a minimal image): the owners' names are read from its
    /etc/passwd and /etc/group, and the entry is the one a directory capture makes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in ("/usr/bin", "/bin"):
        for name in os.listdir(directory):
            if name != "getent" and not (bin_dir / name).exists():
                os.symlink(os.path.join(directory, name), bin_dir / name)
    server = sshd_factory(f"SetEnv PATH={bin_dir}\n")
    guest = tmp_path / "guest"
    guest.mkdir()
    vml("init")
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), "--include", "/", env=server.env)
    empty = vml("commit", "-a", "g", "-m", "nothing yet", "--json", env=server.env).json()["entry"]
    for name, owner in (("root-owned", 0), ("nobody-owned", 65534), ("nameless", 4242)):
        (guest / name).write_text(name + "\n")
        os.chown(guest / name, owner, owner)
    vml("area", "add", "d", "--dir", str(guest))
    over_ssh = vml("commit", "-a", "g", "-m", "over ssh", "--json", env=server.env).json()["entry"]
    local = vml("commit", "-a", "d", "-m", "local", "--json").json()["entry"]
    assert _manifest(vml, over_ssh, server.env) == _manifest(vml, local, server.env)
    added = vml("diff", empty, over_ssh, "--json", env=server.env).json()
    owners = {change["path"]: (change["new"]["user"], change["new"]["group"]) for change in added if change["new"]}
    assert owners["root-owned"] == ("root", "root") and owners["nobody-owned"] == ("nobody", "nogroup")
    assert owners["nameless"] == (None, None)
    vml.fsck_clean()


def _ssh_wrapper(directory: Path, body: str) -> dict:
    """A PATH whose `ssh` is a script (logging its calls to directory/calls) with `body`."""
    directory.mkdir()
    script = directory / "ssh"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {directory / 'calls'}\n{body}\n")
    script.chmod(0o755)
    return {"PATH": f"{directory}:{os.environ['PATH']}"}


def _ssh_calls(directory: Path) -> list[str]:
    """The calls of an _ssh_wrapper's `ssh` that log in (not `ssh -G`, which prints its settings)."""
    return [call for call in (directory / "calls").read_text().splitlines() if not call.startswith("-G ")]


def test_the_openssh_client_carries_the_files_paramiko_the_rest(ssh_repo, tmp_path: Path):
    """The file stream goes through the OpenSSH client (logged by a wrapper that runs the
    real one), with the host, port, user and known_hosts paramiko used and no config of its
    own; VML_SSH_CLIENT=paramiko keeps it out."""
    import shutil as shutil_module

    vml, guest, env = ssh_repo
    build_everything(guest)
    logged = _ssh_wrapper(tmp_path / "wrapper", f'exec {shutil_module.which("ssh")} "$@"')
    over_openssh = vml("commit", "-m", "openssh", "--json", env={**env, **logged}).json()
    calls = _ssh_calls(tmp_path / "wrapper")
    port = (Path(env["HOME"]) / ".ssh" / "config").read_text().split("Port")[1].split()[0]
    assert calls and all("-F none" in call and "StrictHostKeyChecking=yes" in call and f"-p {port} " in call for call in calls)
    assert all("KexAlgorithms=curve25519-sha256," in call and "sntrup761x25519-sha512" in call for call in calls)  # (cheap first)
    assert any("tar -c" in call for call in calls)
    # Its cipher: AES-GCM where the guest's CPU has AES instructions (this machine's, here),
    # else ChaCha20-Poly1305, faster in software (a guest under QEMU's emulation).
    has_aes = "aes" in Path("/proc/cpuinfo").read_text().split()
    assert all(f"-c {'aes128-gcm@openssh.com' if has_aes else 'chacha20-poly1305@openssh.com'}," in call for call in calls)
    from vml.ssh import openssh_command

    without_aes = openssh_command("127.0.0.1", port=22, user="u", aes=False)
    assert without_aes[without_aes.index("-c") + 1].startswith("chacha20-poly1305@openssh.com,aes128-gcm")
    vml("area", "add", "d", "--dir", str(guest))
    local = vml("commit", "-a", "d", "-m", "local", "--json").json()
    assert _manifest(vml, over_openssh["entry"], env) == _manifest(vml, local["entry"], env)
    (guest / "new").write_text("new\n")
    time.sleep(2.1)
    vml("commit", "-a", "g", "-m", "paramiko", env={**env, **logged, "VML_SSH_CLIENT": "paramiko"})
    assert len(_ssh_calls(tmp_path / "wrapper")) == len(calls)


def test_a_first_commit_s_tar_logs_in_while_the_listing_is_read(ssh_repo, tmp_path: Path, monkeypatch):
    """A first capture's OpenSSH tar starts from within the reading of the listing, once it
    has named BULK_BYTES of files (its login then goes on beside the rest of the listing),
    and is the one that sends them (one login); a first capture of fewer bytes starts none."""
    import shutil as shutil_module

    from vml.areas import ssh

    vml, guest, env = ssh_repo
    monkeypatch.setattr(ssh, "BULK_BYTES", 200_000)
    events = []
    start_bulk, guest_capture = ssh.SshArea._start_bulk, ssh.GuestCapture

    def noting_start(area, body):
        events.append("tar" if "tar -c" in body else body)
        return start_bulk(area, body)

    def noting_capture(*args, **options):
        events.append("listing read")
        return guest_capture(*args, **options)

    monkeypatch.setattr(ssh.SshArea, "_start_bulk", noting_start)
    monkeypatch.setattr(ssh, "GuestCapture", noting_capture)
    logged = _ssh_wrapper(tmp_path / "wrapper", f'exec {shutil_module.which("ssh")} "$@"')
    (guest / "few").write_bytes(os.urandom(1000))
    vml("commit", "-m", "small", env={**env, **logged})
    assert events == ["listing read"] and not (tmp_path / "wrapper" / "calls").exists()

    vml("init", str(tmp_path / "second"))
    second = {**env, **logged, "VML_REPO": str(tmp_path / "second" / ".vml")}
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), "--include", "/", env=second)
    for number in range(400):
        (guest / f"f{number:03}").write_bytes(os.urandom(1000))  # the 200th names 200,000 bytes
    events.clear()
    saved = vml("commit", "-m", "large", "--json", env=second).json()
    assert events == ["tar", "listing read"]
    calls = _ssh_calls(tmp_path / "wrapper")
    assert len([call for call in calls if "tar -c" in call]) == 1
    vml("area", "add", "d", "--dir", str(guest), env=second)
    local = vml("commit", "-a", "d", "-m", "local", "--json", env=second).json()
    assert _manifest(vml, saved["entry"], second) == _manifest(vml, local["entry"], second)
    vml.fsck_clean("--repo", str(tmp_path / "second" / ".vml"))


def test_a_first_commit_s_streams_open_before_its_tree_is_made(ssh_repo, monkeypatch):
    """A first capture large enough for reader processes logs in one tar a stream while the
    listing is read (two here: none more once the listing names BULK_BYTES later), asks the
    guest's CPU for AES instructions within the listing (no round trip of its own), and
    gives the streams their first runs as the tree is made: files the rules admit, not
    the names of a hardlinked inode. The entry is the one a dir area of the same rules saves."""
    import paramiko

    from vml.areas import ssh
    from vml.areas.capture import guest as guestcapture

    vml, guest, env = ssh_repo
    vml.separate = False
    monkeypatch.setenv("VML_WORKER_PROCESSES", "2")
    for module in (ssh, guestcapture):
        monkeypatch.setattr(module, "PARALLEL_WORK", 0)  # (the first piece of the listing names enough)
    monkeypatch.setattr(guestcapture, "RUN_WORK", 64 * 1024)
    monkeypatch.setattr(ssh, "PIECE", 4096)  # the listing read in many pieces
    monkeypatch.setattr(ssh, "BULK_BYTES", 1_000_000)  # named once the streams' tars are started
    build_everything(guest)
    for directory in ("a", "skipped"):
        (guest / directory).mkdir()
        for number in range(120):
            (guest / directory / f"f{number:03}").write_bytes(os.urandom(8192))
    (guest / "a" / "scratch.tmp").write_bytes(b"left out")
    (guest / "a" / "linked").write_bytes(os.urandom(8192))
    os.link(guest / "a" / "linked", guest / "a" / "linked-too")
    rules = ("--exclude", "/skipp?d", "--exclude", "*.tmp", "--exclude", "/a/f0*")  # (patterns: find prunes none)
    vml("area", "remove", "g", env=env)
    vml("area", "add", "g", "--ssh", "testhost", "--root", str(guest), "--include", "/", *rules, env=env)
    vml("area", "add", "d", "--dir", str(guest), *rules)

    tars, opened, commands = [], [], []
    start_early_tar, fetching_open, exec_command = ssh.SshArea._start_early_tar, guestcapture._Fetching.open, paramiko.SSHClient.exec_command

    def noting_open(fetching, runs, ahead, read_here, *, last):
        opened.append((last, [rel for run in runs for rel in run]))
        return fetching_open(fetching, runs, ahead, read_here, last=last)

    monkeypatch.setattr(ssh.SshArea, "_start_early_tar", lambda area: tars.append(1) or start_early_tar(area))
    monkeypatch.setattr(guestcapture._Fetching, "open", noting_open)
    monkeypatch.setattr(paramiko.SSHClient, "exec_command", lambda client, command, *a, **k: commands.append(command) or exec_command(client, command, *a, **k))
    over_ssh = vml("commit", "-a", "g", "-m", "over ssh", "--json", env=env).json()
    assert len(tars) == 2
    assert not [command for command in commands if "grep -q -w aes" in command and "find" not in command]
    assert opened and opened[0][0] is False and len(opened) == 1  # the head start's, given the rest later
    first = opened[0][1]
    assert first[0] == b"" and len(first) >= 12 and any(rel.startswith(b"a/f1") for rel in first)
    assert not [rel for rel in first if rel.startswith((b"skipped", b"a/f0", b"a/linked", b"a/scratch"))]
    local = vml("commit", "-a", "d", "-m", "local", "--json", env=env).json()
    assert _manifest(vml, over_ssh["entry"], env) == _manifest(vml, local["entry"], env)
    assert local["added_bytes"] == 0


@pytest.mark.parametrize("ssh", ["fails", "missing"])
def test_without_a_working_openssh_client_paramiko_carries_the_files(ssh_repo, tmp_path: Path, ssh: str):
    """An OpenSSH client that cannot log in where paramiko did (exit 255 before any output),
    or none at all: the same entry, through paramiko."""
    vml, guest, env = ssh_repo
    build_everything(guest)
    if ssh == "fails":
        path = _ssh_wrapper(tmp_path / "wrapper", 'echo "Permission denied (publickey)." >&2; exit 255')
    else:
        bare = tmp_path / "bin"  # every program of PATH but ssh
        bare.mkdir()
        for directory in os.environ["PATH"].split(":"):
            for program in Path(directory).glob("*") if Path(directory).is_dir() else ():
                if program.name != "ssh" and not (bare / program.name).exists():
                    (bare / program.name).symlink_to(program)
        path = {"PATH": str(bare)}
    saved = vml("commit", "-m", "without openssh", "--json", env={**env, **path}).json()
    if ssh == "fails":
        assert len(_ssh_calls(tmp_path / "wrapper")) == 1  # tried once, then paramiko
    vml("area", "add", "d", "--dir", str(guest))
    local = vml("commit", "-a", "d", "-m", "local", "--json").json()
    assert _manifest(vml, saved["entry"], env) == _manifest(vml, local["entry"], env)
    assert local["added_bytes"] == 0


def test_a_head_start_that_openssh_cannot_carry_crosses_through_paramiko(ssh_repo, parallel_streams, tmp_path: Path, monkeypatch):
    """A first commit's head start whose OpenSSH clients cannot log in (exit 255 before any
    output, found on the thread that opens the streams while the tree is made): its runs
    cross as one paramiko stream that vml reads itself, then the rest; the same entry."""
    from vml.areas import ssh
    from vml.areas.capture import guest as guestcapture

    vml, guest, env = ssh_repo
    build_everything(guest)
    monkeypatch.setattr(ssh, "PARALLEL_WORK", 0)  # (both tars log in while the listing is read)
    head_starts = []
    head_start = guestcapture.GuestCapture._head_start
    monkeypatch.setattr(guestcapture.GuestCapture, "_head_start", lambda capture: head_start(capture) or head_starts.append(capture._head))
    failing = _ssh_wrapper(tmp_path / "wrapper", 'echo "Permission denied (publickey)." >&2; exit 255')
    saved = vml("commit", "-m", "head start through paramiko", "--json", env={**env, **failing}).json()
    assert len(head_starts) == 1 and head_starts[0] is not None and parallel_streams == []  # (no stream a reader could take)
    assert len(_ssh_calls(tmp_path / "wrapper")) == 2  # (the two early tars, then paramiko alone)
    vml("area", "add", "d", "--dir", str(guest))
    local = vml("commit", "-a", "d", "-m", "local", "--json").json()
    assert _manifest(vml, saved["entry"], env) == _manifest(vml, local["entry"], env)
    assert local["added_bytes"] == 0
    vml.fsck_clean()


def test_a_guest_shell_that_prints_before_the_tar_is_one_line(ssh_repo, parallel_streams, monkeypatch):
    """A guest whose shell prints something of its own before vml's command (a noisy
    ~/.bashrc: bash reads it over ssh; injected here, for the file streams only): the
    OpenSSH stream's first byte is not the one its command prints once logged in, and the
    commit says so in one line, saving nothing."""
    from vml.areas import ssh

    vml, guest, env = ssh_repo
    build_everything(guest)
    script = ssh.SshArea._script
    monkeypatch.setattr(ssh.SshArea, "_script", lambda area, body: script(area, "printf Welcome; " + body if "tar -c" in body else body))
    failed = vml("commit", "-m", "noisy", env=env, check=False)
    line = one_line_error(failed, None)  # (what it printed, as much as has come: 'W' at least)
    assert "the guest's shell printed b'W" in line and "before vml's command" in line and failed.returncode != 0
    assert vml("log", "--json", env=env).json() == []
    vml.fsck_clean()


@pytest.mark.parametrize("streams", ["one", "readers"])
def test_paths_gone_or_replaced_between_the_listing_and_the_read(ssh_repo, request, monkeypatch, streams: str):
    """Files deleted on the guest after its listing are left out of the entry without a word
    (their directory, and the top, are reported as changed while read: their mtimes moved);
    one replaced by a directory is left out and reported so too; the rest is saved whole,
    read by this process or by reader processes, and the next commit saves the guest as it
    now is."""
    from vml.areas.capture import guest as guestcapture

    handed = request.getfixturevalue("parallel_streams") if streams == "readers" else None
    vml, guest, env = ssh_repo
    vml.separate = False  # (the injection below is in this process)
    for number in range(30):
        (guest / "keep" / f"d{number % 3}").mkdir(parents=True, exist_ok=True)
        (guest / "keep" / f"d{number % 3}" / f"f{number}").write_bytes(os.urandom(number * 3000))
    for number in range(10):
        (guest / "gone" / f"g{number}").parent.mkdir(exist_ok=True)
        (guest / "gone" / f"g{number}").write_bytes(os.urandom(5000))
    (guest / "replaced").write_bytes(b"a file at first\n")
    original = guestcapture.GuestCapture._to_fetch

    def listed_then_changed(self, dirs, hardlinks):
        for gone in (guest / "gone").iterdir():
            gone.unlink()
        (guest / "replaced").unlink()
        (guest / "replaced").mkdir()
        return original(self, dirs, hardlinks)

    monkeypatch.setattr(guestcapture.GuestCapture, "_to_fetch", listed_then_changed)
    saved = vml("commit", "-m", "while it changed", "--json", env=env).json()
    monkeypatch.setattr(guestcapture.GuestCapture, "_to_fetch", original)
    assert sorted(saved["changed_while_reading"]) == ["", "gone", "replaced"] and saved["skipped"] == []
    assert handed is None or len(handed) == 2
    vml("checkout", saved["entry"], "--to", str(guest.parent / "out"), env=env)
    assert compare(guest / "keep", guest.parent / "out" / "keep") == []
    assert sorted(os.listdir(guest.parent / "out")) == ["gone", "keep"]  # (the directory, listed before its files went)
    assert os.listdir(guest.parent / "out" / "gone") == []
    vml.fsck_clean()
    again = vml("commit", "-m", "as it is now", "--json", env=env).json()
    vml("checkout", again["entry"], "--to", str(guest.parent / "now"), env=env)
    assert compare(guest, guest.parent / "now") == []

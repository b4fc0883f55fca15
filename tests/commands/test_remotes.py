"""Remotes: push, fetch, clone and pull between real repositories, over a path and over a
real sshd on 127.0.0.1; cut-off transfers (a fault-injecting wrapper around the real
transport, and kill -9) followed by retries; concurrent pushes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Vml, one_line_error
from support.repofiles import tree_digest


def write_random(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))


@pytest.fixture
def shared(tmp_path: Path, repo: Vml) -> Path:
    """A bare remote at tmp_path/shared.vml, added to `repo` as origin."""
    remote = tmp_path / "shared.vml"
    repo("init", "--bare", str(remote))
    repo("remote", "add", "origin", str(remote))
    return remote


def remote_fsck(vml: Vml, remote: Path, env: dict | None = None) -> None:
    report = vml("--repo", str(remote), "fsck", "--json", env=env).json()
    assert report["damaged"] == [] and report["problems"] == [], report


def clone_into(tmp_path: Path, url: str, name: str, env: dict | None = None) -> Vml:
    Vml(tmp_path)("clone", url, name, env=env)
    cloned = Vml(tmp_path / name)
    cloned("area", "add", "wa", "--dir", str(tmp_path / f"{name}-area"), env=env)
    cloned("checkout", "main", env=env)
    return cloned


def test_push_clone_pull_round_trip(repo: Vml, guest: Path, shared: Path, tmp_path: Path):
    write_random(guest / "data" / "run.bin", 3 << 20, 1)
    repo("commit", "-m", "first")
    first = repo("push", "--json").json()
    assert [(r["ref"], r["status"]) for r in first["refs"]] == [("main", "new")]
    assert first["commits"] == 1 and first["blob_bytes"] > 3 << 20
    again = repo("push", "--json").json()
    assert again["refs"][0]["status"] == "up to date" and again["commits"] == 0 and again["blobs"] == 0 and again["packs"] == 0
    remote_fsck(repo, shared)

    other = clone_into(tmp_path, str(shared), "colleague")
    assert tree_digest(tmp_path / "colleague-area") == tree_digest(guest)
    assert other("log", "--oneline", "--all").stdout.count("first") == 1

    (guest / "etc" / "hosts").write_text("10.0.0.1 server\n")
    repo("commit", "-m", "second")
    repo("push")
    pulled = other("pull", "--json").json()
    assert pulled["status"] == "fast-forward" and pulled["fetched"]["commits"] == 1
    assert tree_digest(tmp_path / "colleague-area") == tree_digest(guest)
    assert other("pull", "--json").json()["status"] == "up to date"
    assert other("show", "origin/main", "--json").json()["entry"]["id"] == repo("show", "--json").json()["entry"]["id"]
    other.fsck_clean()
    remote_fsck(repo, shared)


def test_a_forced_push_that_is_a_fast_forward_says_so_and_named_refs_need_no_area(repo: Vml, guest: Path, shared: Path):
    """One rule for how a ref moves (vml/refs/updates.py), git's: --force changes nothing for a
    ref that moves forward anyway. A push that names its branches does not ask which area."""
    repo("commit", "-m", "one")
    repo("push")
    (guest / "more.txt").write_text("more\n")
    repo("commit", "-m", "two")
    forced = repo("push", "--force", "--json").json()
    assert [(r["ref"], r["status"]) for r in forced["refs"]] == [("main", "fast-forward")]
    named = repo("push", "origin", "main", "-a", "no-such-area", "--json").json()
    assert [(r["ref"], r["status"]) for r in named["refs"]] == [("main", "up to date")]
    remote_fsck(repo, shared)


def test_incremental_push_sends_about_the_change(repo: Vml, guest: Path, shared: Path):
    big = guest / "data" / "events.root"
    write_random(big, 24 << 20, 2)
    repo("commit", "-m", "big file")
    repo("push")
    with open(big, "r+b") as changed:
        changed.seek(12 << 20)
        changed.write(random.Random(3).randbytes(1 << 20))
    repo("commit", "-m", "1 MiB rewritten")
    result = repo("push", "--json").json()
    # The changed MiB falls in at most a few 1 MiB-average chunks; plus two listings.
    assert (1 << 20) <= result["blob_bytes"] <= (5 << 20), result
    assert result["bytes_sent"] < result["blob_bytes"] + (64 << 10), result
    remote_fsck(repo, shared)


def test_non_fast_forward_is_rejected_and_loses_nothing(repo: Vml, guest: Path, shared: Path, tmp_path: Path):
    repo("commit", "-m", "base")
    repo("push")
    other = clone_into(tmp_path, str(shared), "other")
    (tmp_path / "other-area" / "theirs.txt").write_text("theirs\n")
    other("commit", "-m", "theirs")
    other("push")
    (guest / "mine.txt").write_text("mine\n")
    mine = repo("commit", "-m", "mine", "--json").json()["entry"]
    rejected = repo("push", "--json", check=False)
    assert rejected.returncode == 2
    assert rejected.json()["refs"][0]["status"] == "rejected"
    theirs = other("show", "--json").json()["entry"]["id"]
    assert Vml(tmp_path)("--repo", str(shared), "show", "main", "--json").json()["entry"]["id"] == theirs
    assert repo("show", "main", "--json").json()["entry"]["id"] == mine  # nothing lost locally
    forced = repo("push", "--force", "--json").json()
    assert forced["refs"][0]["status"] == "forced"
    assert Vml(tmp_path)("--repo", str(shared), "show", "main", "--json").json()["entry"]["id"] == mine
    remote_fsck(repo, shared)


def test_pull_refuses_a_diverged_branch(repo: Vml, guest: Path, shared: Path, tmp_path: Path):
    repo("commit", "-m", "base")
    repo("push")
    other = clone_into(tmp_path, str(shared), "other")
    (guest / "a.txt").write_text("a\n")
    repo("commit", "-m", "a")
    repo("push")
    (tmp_path / "other-area" / "b.txt").write_text("b\n")
    before = other("show", "--json").json()["entry"]["id"]
    other("commit", "-m", "b")
    line = one_line_error(other("pull", check=False))
    assert "diverged" in line
    assert other("show", "main~1", "--json").json()["entry"]["id"] == before


def test_two_pushes_at_once_one_wins(repo: Vml, guest: Path, shared: Path, tmp_path: Path):
    repo("commit", "-m", "base")
    repo("push")
    users = [clone_into(tmp_path, str(shared), f"user{i}") for i in range(2)]
    entries = []
    for i, user in enumerate(users):
        write_random(tmp_path / f"user{i}-area" / "work.bin", 6 << 20, 10 + i)
        entries.append(user("commit", "-m", f"work {i}", "--json").json()["entry"])
    env = {**os.environ, "VML_AUTHOR_NAME": "T", "VML_AUTHOR_EMAIL": "t@example.org"}
    processes = [
        subprocess.Popen([sys.executable, "-m", "vml", "push", "--json"], cwd=user.cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for user in users
    ]
    outcomes = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _out, _err in outcomes)
    assert codes == [0, 2], outcomes
    winner = entries[[code for code, _o, _e in outcomes].index(0)]
    assert Vml(tmp_path)("--repo", str(shared), "show", "main", "--json").json()["entry"]["id"] == winner
    for user, entry in zip(users, entries):
        assert user("show", "main", "--json").json()["entry"]["id"] == entry  # the loser keeps its entry
    remote_fsck(repo, shared)


def _faulty(budget: int, method: str):
    """open_transport, but the transport drops the connection after `budget` bytes of `method`."""
    from vml.transport import base
    from vml.transport.base import TransportError

    real_open = base.open_transport

    def open_faulty(url, **options):
        transport = real_open(url, **options)
        moved = {"bytes": 0}
        real = getattr(transport, method)

        def failing(*args, **kwargs):
            if moved["bytes"] >= budget:
                raise TransportError("connection dropped (injected)")
            result = real(*args, **kwargs)
            moved["bytes"] = transport.bytes_sent + transport.bytes_received
            return result

        setattr(transport, method, failing)
        return transport

    return open_faulty


def _api_repo(path: Path):
    from vml.repo import Repository

    return Repository.discover(str(path))


def push_cut_off(tmp_path: Path, monkeypatch, budget: int) -> None:
    """A push from the repository at tmp_path whose real transport drops the connection
    once `budget` bytes have gone; the patch is undone afterwards."""
    from vml import api
    from vml.transport.base import TransportError

    monkeypatch.setattr(api.remotes, "open_transport", _faulty(budget, "write_from"))
    local = _api_repo(tmp_path)
    try:
        with pytest.raises(TransportError):
            api.push(local, "origin")
    finally:
        local.close()
        monkeypatch.undo()


def test_push_cut_off_then_retried_sends_only_the_rest(repo: Vml, guest: Path, shared: Path, tmp_path: Path, monkeypatch):
    for i in range(3):
        write_random(guest / "data" / f"part{i}.bin", 14 << 20, 20 + i)
    repo("commit", "-m", "three parts")
    push_cut_off(tmp_path, monkeypatch, 20 << 20)
    remote_fsck(repo, shared)
    assert Vml(tmp_path)("--repo", str(shared), "log", "--all", "--json").json() == []  # no ref moved
    packs_before = list(shared.glob("vml/store/packs/*/*.pack"))
    assert packs_before, "the cut-off push should have left whole packs behind"
    retry = repo("push", "--json").json()
    assert retry["refs"][0]["status"] == "new"
    assert retry["blob_bytes"] < 42 << 20 and retry["blob_bytes"] > 0, retry
    remote_fsck(repo, shared)
    assert not list(shared.glob("vml/store/packs/*/*.tmp")) and not list(shared.glob("refs/**/*.lock"))


def test_fetch_cut_off_then_retried(repo: Vml, guest: Path, shared: Path, tmp_path: Path, monkeypatch):
    from vml import api
    from vml.transport.base import TransportError

    for i in range(3):
        write_random(guest / "data" / f"part{i}.bin", 10 << 20, 30 + i)
    repo("commit", "-m", "data")
    repo("push")
    (tmp_path / "fetcher").mkdir()
    fetcher = Vml(tmp_path / "fetcher")
    fetcher("init")
    fetcher("remote", "add", "origin", str(shared))
    monkeypatch.setattr(api.remotes, "open_transport", _faulty(20 << 20, "read_ranges"))
    local = _api_repo(tmp_path / "fetcher")
    with pytest.raises(TransportError):
        api.fetch(local, "origin")
    local.close()
    monkeypatch.undo()
    fetcher.fsck_clean()
    assert fetcher("log", "--all", "--json").json() == []
    retry = fetcher("fetch", "--json").json()
    assert retry["commits"] == 1 and retry["blob_bytes"] < 30 << 20, retry
    fetcher("area", "add", "wa", "--dir", str(tmp_path / "fetched"))
    fetcher("checkout", "origin/main")
    assert tree_digest(tmp_path / "fetched") == tree_digest(guest)
    fetcher.fsck_clean()


def test_push_killed_then_retried(repo: Vml, guest: Path, shared: Path, tmp_path: Path):
    for i in range(4):
        write_random(guest / "data" / f"part{i}.bin", 16 << 20, 40 + i)
    repo("commit", "-m", "big")
    env = {**os.environ, "VML_AUTHOR_NAME": "T", "VML_AUTHOR_EMAIL": "t@example.org"}
    push = subprocess.Popen([sys.executable, "-m", "vml", "push"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(shared.glob("vml/store/packs/*/*.pack")) and push.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    push.send_signal(signal.SIGKILL)
    push.wait()
    remote_fsck(repo, shared)
    repo.fsck_clean()
    retry = repo("push", "--json").json()
    assert retry["refs"][0]["status"] == "new"
    remote_fsck(repo, shared)
    clone_into(tmp_path, str(shared), "check")
    assert tree_digest(tmp_path / "check-area") == tree_digest(guest)


def test_remote_errors_are_one_line(repo: Vml, tmp_path: Path):
    repo("commit", "-m", "x")
    assert "no remote named 'origin'" in one_line_error(repo("push", check=False))
    repo("remote", "add", "nowhere", str(tmp_path / "missing"))
    assert "not a vml repository" in one_line_error(repo("push", "nowhere", check=False))
    assert "unsupported URL scheme" in one_line_error(repo("remote", "add", "web", "ftp://host/x", check=False))
    assert "exists already" in one_line_error(repo("remote", "add", "nowhere", "/tmp", check=False))
    assert "not a valid remote name" in one_line_error(repo("remote", "add", "a/b", "/tmp", check=False))
    assert "no branch or tag named" in one_line_error(repo("push", "nowhere", "nosuch", check=False))
    assert [r["name"] for r in repo("remote", "list", "--json").json()] == ["nowhere"]
    repo("remote", "remove", "nowhere")
    assert repo("remote", "--json").json() == []


# -- over a real sshd


def test_ssh_push_clone_pull(repo: Vml, guest: Path, tmp_path: Path, sshd):
    remote = tmp_path / "ssh-remote.vml"
    repo("init", "--bare", str(remote))
    repo("remote", "add", "origin", sshd.url(remote))
    write_random(guest / "data" / "run.bin", 5 << 20, 50)
    repo("commit", "-m", "over ssh")
    pushed = repo("push", "--json", env=sshd.env).json()
    assert pushed["refs"][0]["status"] == "new" and pushed["bytes_sent"] > 5 << 20
    assert repo("push", "--json", env=sshd.env).json()["blobs"] == 0
    remote_fsck(repo, remote)
    other = clone_into(tmp_path, sshd.url(remote), "ssh-clone", env=sshd.env)
    assert tree_digest(tmp_path / "ssh-clone-area") == tree_digest(guest)
    (guest / "etc" / "new.conf").write_text("x=1\n")
    repo("commit", "-m", "more")
    repo("push", env=sshd.env)
    assert other("pull", "--json", env=sshd.env).json()["status"] == "fast-forward"
    assert tree_digest(tmp_path / "ssh-clone-area") == tree_digest(guest)
    other.fsck_clean()


def test_ssh_unknown_host_key_is_refused_until_accepted(repo: Vml, tmp_path: Path, sshd):
    remote = tmp_path / "r.vml"
    repo("init", "--bare", str(remote))
    repo("commit", "-m", "x")
    repo("remote", "add", "origin", sshd.url(remote))
    sshd.forget_host_key()
    try:
        line = one_line_error(repo("push", env=sshd.env, check=False), code=3)
        assert "host key" in line and "--accept-new-host-key" in line
        assert not list(remote.glob("vml/store/packs/*/*"))
        repo("push", "--accept-new-host-key", env=sshd.env)
        assert f"[127.0.0.1]:{sshd.port}" in sshd.known_hosts.read_text()
        repo("push", env=sshd.env)  # remembered
        remote_fsck(repo, remote)
    finally:
        sshd.trust_host_key()


def test_ssh_refused_key_and_wrong_path_are_one_line(repo: Vml, tmp_path: Path, sshd):
    repo("commit", "-m", "x")
    repo("remote", "add", "origin", sshd.url(tmp_path / "absent.vml"))
    assert "not a vml repository" in one_line_error(repo("push", env=sshd.env, check=False))
    env = {**sshd.env, "HOME": str(tmp_path / "nobody")}
    (tmp_path / "nobody" / ".ssh").mkdir(parents=True)
    (tmp_path / "nobody" / ".ssh" / "known_hosts").write_text(sshd.host_key_line)
    repo("remote", "add", "direct", f"ssh://127.0.0.1:{sshd.port}{tmp_path / 'absent.vml'}")
    assert "no key to log in" in one_line_error(repo("push", "direct", env=env, check=False), code=3)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "nobody" / ".ssh" / "id_ed25519")], check=True)
    assert "refused every key" in one_line_error(repo("push", "direct", env=env, check=False), code=3)


def test_ssh_push_cut_off_then_retried(repo: Vml, guest: Path, tmp_path: Path, sshd, monkeypatch):
    remote = tmp_path / "ssh-cut.vml"
    repo("init", "--bare", str(remote))
    repo("remote", "add", "origin", sshd.url(remote))
    for i in range(2):
        write_random(guest / "data" / f"p{i}.bin", 14 << 20, 60 + i)
    repo("commit", "-m", "two parts")
    for key, value in sshd.env.items():
        monkeypatch.setenv(key, value)
    push_cut_off(tmp_path, monkeypatch, 10 << 20)
    remote_fsck(repo, remote)
    retry = repo("push", "--json", env=sshd.env).json()
    assert retry["refs"][0]["status"] == "new" and 0 < retry["blob_bytes"] < 28 << 20
    remote_fsck(repo, remote)


def test_gc_of_a_remote_waits_for_pushes_and_clears_what_cut_off_pushes_left(repo: Vml, shared: Path, tmp_path: Path):
    repo("commit", "-m", "x")
    repo("push")
    assert not list(shared.glob("vml/locks/push-*"))  # a finished push leaves no marker
    marker = shared / "vml" / "locks" / "push-cutoff"
    marker.write_text("host 1 0\n")
    stale_upload = next(shared.glob("vml/store/packs/*")) / ("0" * 64 + ".pack.dead.tmp")
    stale_upload.write_bytes(b"half a pack")
    remote = Vml(tmp_path)
    line = one_line_error(remote("--repo", str(shared), "gc", check=False), code=3)
    assert "push into this repository is in progress" in line
    hour_ago = time.time() - 3700
    for path in (marker, stale_upload):
        os.utime(path, (hour_ago, hour_ago))
    remote("--repo", str(shared), "gc")
    assert not marker.exists() and not stale_upload.exists()
    remote_fsck(repo, shared)


def test_push_and_fetch_through_the_memory_transport(repo: Vml, guest: Path, tmp_path: Path):
    """The same push and fetch logic against the in-memory reference transport, in process."""
    from vml import api
    from vml.repo import FORMAT_LINE
    from vml.transport.base import open_transport

    write_random(guest / "data" / "run.bin", 2 << 20, 70)
    entry = repo("commit", "-m", "to memory", "--json").json()["entry"]
    url = "memory://test-push-and-fetch"
    open_transport(url).write("vml/format", FORMAT_LINE.encode())
    local = _api_repo(tmp_path)
    api.remote_add(local, "mem", url)
    moved = []
    pushed = api.push(local, "mem", progress=moved.append)
    assert pushed.refs[0].status == "new" and pushed.blob_bytes > 2 << 20
    assert moved and moved[-1].done == moved[-1].total == pushed.blob_bytes
    assert api.push(local, "mem").blobs == 0
    local.close()
    fetcher_dir = tmp_path / "fetcher"
    api.init(str(fetcher_dir))
    fetcher = _api_repo(fetcher_dir)
    api.remote_add(fetcher, "mem", url)
    received = []
    fetched = api.fetch(fetcher, "mem", progress=received.append)
    assert received and received[-1].done == received[-1].total > 2 << 20
    assert [(c.ref, c.new) for c in fetched.refs] == [("mem/main", entry)]
    assert api.fsck(fetcher).ok
    fetcher.close()


def test_ssh_nobody_listening_is_one_line(repo: Vml, tmp_path: Path, sshd):
    import socket

    with socket.socket() as probe:  # a port with nobody behind it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    repo("commit", "-m", "x")
    repo("remote", "add", "origin", f"ssh://127.0.0.1:{port}/srv/r.vml")
    assert "cannot connect to 127.0.0.1" in one_line_error(repo("push", env=sshd.env, check=False), code=3)


def test_a_push_looks_the_remotes_blobs_up_in_its_index_files_without_decoding_them(repo: Vml, guest: Path, shared: Path,
                                                                                     tmp_path: Path):
    """The remote's sorted index files are searched where they lie (the cache's copies,
    mapped), as a local store's are: knowing what it holds decodes none of their records."""
    from vml.exchange.remote import RemoteRepository
    from vml.objects.store import ChunkStore
    from vml.transport.base import open_transport

    write_random(guest / "data.bin", 2 << 20, 5)
    repo("commit", "-m", "data")
    repo("push", "origin", "main")
    remote = RemoteRepository(open_transport(str(shared)), cache_dir=str(tmp_path / "index-cache"))
    local = ChunkStore(str(tmp_path / ".vml" / "vml" / "store")).open()
    try:
        blobs = remote.blobs()
        ids = [blob_id for blob_id, _location in local.items()]
        assert ids and all(blob_id in blobs for blob_id in ids)
        assert blobs._loose == {} and blobs._indexes  # nothing decoded
        assert blobs.get(b"\x00" * 32) is None
        assert sum(len(entries) for entries in remote.packs().values()) >= len(set(ids))  # gc's whole view still
    finally:
        local.close()
        remote.close()
    remote_fsck(repo, shared)

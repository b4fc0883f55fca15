"""Repositories in object storage: s3://BUCKET/PREFIX remotes against two real S3 servers
(SeaweedFS and Ceph RADOS Gateway, started by the tests: tests/support/s3.py), configured
the way a user configures the AWS tools (AWS_* variables)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Vml, one_line_error
from support.repofiles import tree_digest

AUTHOR = {"VML_AUTHOR_NAME": "T", "VML_AUTHOR_EMAIL": "t@example.org"}


def write_random(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))


@dataclass
class Bucket:
    server: object
    name: str
    url: str  # s3://NAME/team: the repository

    def client(self):
        return self.server.client()

    def keys(self, prefix: str = "team/") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=self.name, Key=key)["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.name, Key=key, Body=data)


@pytest.fixture
def bucket(s3_server, monkeypatch) -> Bucket:
    """A new bucket on the server, and the AWS variables that reach it set as a user sets them."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    name = s3_server.new_bucket()
    return Bucket(s3_server, name, f"s3://{name}/team")


@pytest.fixture
def pushed(repo: Vml, guest: Path, bucket: Bucket) -> Vml:
    """`repo` with origin at a new repository in the bucket, one entry pushed."""
    repo("init", "--bare", bucket.url)
    repo("remote", "add", "origin", bucket.url)
    write_random(guest / "data" / "run.bin", 3 << 20, 1)
    repo("commit", "-m", "first")
    repo("push")
    return repo


def clone_into(tmp_path: Path, url: str, name: str) -> Vml:
    Vml(tmp_path)("clone", url, name)
    cloned = Vml(tmp_path / name)
    cloned("area", "add", "wa", "--dir", str(tmp_path / f"{name}-area"))
    cloned("checkout", "main")
    return cloned


def test_push_clone_fetch_pull_round_trip(repo: Vml, guest: Path, bucket: Bucket, tmp_path: Path):
    made = repo("init", "--bare", bucket.url, "--json").json()
    assert made["path"] == bucket.url and bucket.read("team/vml/format") == b"vml repository format 1\n"
    assert "already a vml repository" in one_line_error(repo("init", "--bare", bucket.url, check=False))
    repo("remote", "add", "origin", bucket.url)
    write_random(guest / "data" / "run.bin", 3 << 20, 1)
    repo("commit", "-m", "first")
    first = repo("push", "--json").json()
    assert [(r["ref"], r["status"]) for r in first["refs"]] == [("main", "new")]
    assert first["blob_bytes"] > 3 << 20 and first["packs"] == 1
    # What the push cost in requests, by operation; a pack is one PUT, not a multipart upload.
    assert first["requests"]["PutObject"] <= 8 and sum(first["requests"].values()) <= 30, first["requests"]
    assert not any(key.endswith(".lock") for key in bucket.keys())  # nothing a crash could strand

    other = clone_into(tmp_path, bucket.url, "colleague")
    assert tree_digest(tmp_path / "colleague-area") == tree_digest(guest)
    other.fsck_clean()

    (guest / "etc" / "hosts").write_text("10.0.0.1 server\n")
    repo("commit", "-m", "second")
    second = repo("push", "--json").json()
    assert second["refs"][0]["status"] == "fast-forward" and second["blob_bytes"] < 100_000
    pulled = other("pull", "--json").json()
    assert pulled["status"] == "fast-forward" and pulled["fetched"]["commits"] == 1
    assert sum(pulled["fetched"]["requests"].values()) <= 25, pulled["fetched"]["requests"]
    assert tree_digest(tmp_path / "colleague-area") == tree_digest(guest)
    idle = other("fetch", "--json").json()
    assert idle["commits"] == 0 and sum(idle["requests"].values()) <= 10, idle["requests"]
    assert "requests" in other("fetch").stdout  # shown to people too
    other.fsck_clean()
    repo.fsck_clean()


def test_two_pushes_at_once_one_wins_by_a_conditional_write(pushed: Vml, bucket: Bucket, tmp_path: Path):
    users = [clone_into(tmp_path, bucket.url, f"user{i}") for i in range(2)]
    entries = []
    for i, user in enumerate(users):
        write_random(tmp_path / f"user{i}-area" / "work.bin", 2 << 20, 10 + i)
        entries.append(user("commit", "-m", f"work {i}", "--json").json()["entry"])
    processes = [subprocess.Popen([sys.executable, "-m", "vml", "push", "--json"], cwd=user.cwd, env={**os.environ, **AUTHOR},
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for user in users]
    outcomes = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in processes]
    assert sorted(code for code, _out, _err in outcomes) == [0, 2], outcomes
    winner = entries[[code for code, _o, _e in outcomes].index(0)]
    assert bucket.read("team/refs/heads/main").decode().strip() == winner
    loser = users[[code for code, _o, _e in outcomes].index(2)]
    loser("pull", check=False)  # diverged: refused, nothing lost
    assert loser("show", "main", "--json").json()["entry"]["id"] in entries
    for user in users:
        user.fsck_clean()


def test_bad_credentials_missing_bucket_and_bad_urls_are_one_line(pushed: Vml, bucket: Bucket, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert "access denied" in one_line_error(pushed("fetch", check=False), None)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bucket.server.secret_key)
    missing = one_line_error(Vml(tmp_path)("clone", "s3://no-such-bucket-here/x", "c", check=False), None)
    assert "does not exist" in missing and not (tmp_path / "c").exists()
    assert "not s3://BUCKET/PREFIX" in one_line_error(Vml(tmp_path)("clone", "s3://Bad_Name/x", "c", check=False))
    assert "not a vml repository" in one_line_error(Vml(tmp_path)("clone", f"s3://{bucket.name}/elsewhere", "c", check=False), None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens
    assert "cannot reach" in one_line_error(pushed("fetch", check=False), None)
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws either
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert "no S3 credentials" in one_line_error(pushed("fetch", check=False), None)


def test_tampered_objects_in_the_bucket_are_detected(pushed: Vml, bucket: Bucket, tmp_path: Path):
    pack = next(key for key in bucket.keys() if key.endswith(".pack"))
    original = bucket.read(pack)
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF  # inside a blob's payload
    bucket.write(pack, bytes(damaged))
    error = one_line_error(Vml(tmp_path)("clone", bucket.url, "c1", check=False), None)
    assert "damaged" in error
    bucket.write(pack, original)

    index = next(key for key in bucket.keys() if key.endswith(".idx"))
    bucket.write(index, bucket.read(index)[:-3] + b"xyz")  # checksum no longer matches: the packs' own tables are read
    clone_into(tmp_path, bucket.url, "c2").fsck_clean()

    commit = pushed("show", "--json").json()["entry"]["id"]
    key = f"team/objects/{commit[:2]}/{commit[2:]}"
    loose = bucket.read(key)
    bucket.write(key, loose[:-1] + bytes([loose[-1] ^ 1]))
    assert "damaged" in one_line_error(Vml(tmp_path)("clone", bucket.url, "c3", check=False), None)


def test_export_and_import_through_a_bucket(pushed: Vml, bucket: Bucket, tmp_path: Path):
    exported = pushed("export", "main", "-o", f"s3://{bucket.name}/bundles/main.vmlb", "--json").json()
    assert exported["path"] == f"s3://{bucket.name}/bundles/main.vmlb"
    (tmp_path / "other").mkdir()
    other = Vml(tmp_path / "other")
    other("init")
    imported = other("import", f"s3://{bucket.name}/bundles/main.vmlb", "--json").json()
    assert imported["entry"] == exported["entry"] and imported["status"] == "new"
    other.fsck_clean()
    assert "does not exist" in one_line_error(other("import", f"s3://{bucket.name}/bundles/none.vmlb", check=False), None)


def test_push_killed_then_retried(pushed: Vml, guest: Path, bucket: Bucket, tmp_path: Path):
    for attempt in range(5):  # a push may end between the first pack showing and the kill: again, with new data
        for i in range(3):
            write_random(guest / "data" / f"part{i}.bin", 16 << 20, 40 + 10 * attempt + i)
        pushed("commit", "-m", f"big {attempt}")
        before = set(bucket.keys("team/vml/store/packs/"))
        push = subprocess.Popen([sys.executable, "-m", "vml", "push"], cwd=tmp_path, env={**os.environ, **AUTHOR},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while set(bucket.keys("team/vml/store/packs/")) == before and push.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        push.send_signal(signal.SIGKILL)
        if push.wait() == 0:
            continue  # it finished before the kill
        retry = pushed("push", "--json").json()
        if retry["refs"][0]["status"] != "up to date":
            break
        # (killed after it had moved the branch, on its way out: it had finished too; seen in CI)
    else:
        pytest.fail("every push finished before the kill: the test tested nothing")
    assert retry["refs"][0]["status"] == "fast-forward"
    assert retry["blob_bytes"] < 48 << 20  # what reached the bucket before the kill is not sent again
    clone_into(tmp_path, bucket.url, "check").fsck_clean()  # vml fsck and git fsck
    assert tree_digest(tmp_path / "check-area") == tree_digest(guest)


def _run(cwd: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vml", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_ten_pushers_and_gc_at_once_lose_nothing(pushed: Vml, bucket: Bucket, tmp_path: Path):
    """Ten users push to their branches (and make garbage: a branch forced back) while gc
    runs in a loop with no grace and a one-second sweep delay: every branch ends where its
    user left it, with all its data, and the garbage is removed."""
    import threading

    env = {**os.environ, **AUTHOR, "VML_REMOTE_GC_DELAY": "1", "VML_REMOTE_GC_GRACE": "0"}
    base = pushed("show", "main", "--json").json()["entry"]["id"]
    users = [clone_into(tmp_path, bucket.url, f"user{i}") for i in range(10)]
    finished: dict[int, str] = {}
    failures: list[str] = []

    def work(number: int, user: Vml) -> None:
        area = tmp_path / f"user{number}-area"
        for args in (("branch", f"u{number}"), ("checkout", f"u{number}")):
            done = _run(user.cwd, *args, env=env)
            if done.returncode:
                failures.append(f"{args}: {done.stderr}")
                return
        for round_ in range(2):
            write_random(area / "work" / f"round{round_}.bin", 1 << 20, 100 * number + round_)
            for args in (("commit", "-m", f"user {number} round {round_}"), ("push", "origin", f"u{number}")):
                done = _run(user.cwd, *args, env=env)
                if done.returncode:
                    failures.append(f"user {number} {args}: {done.stderr}")
                    return
        # Garbage: a branch with 2 MiB only it holds, pushed, then forced back to the base entry.
        junk = [("branch", f"junk{number}"), ("checkout", f"junk{number}"), "write", ("commit", "-m", "junk"),
                ("push", "origin", f"junk{number}"), ("checkout", f"u{number}"), ("branch", "-D", f"junk{number}"),
                ("branch", f"junk{number}", base), ("push", "--force", "origin", f"junk{number}")]
        for args in junk:
            if args == "write":
                write_random(area / "junk.bin", 2 << 20, 9000 + number)
                continue
            done = _run(user.cwd, *args, env=env)
            if done.returncode:
                failures.append(f"user {number} {args}: {done.stderr}")
                return
        finished[number] = _run(user.cwd, "show", f"u{number}", "--json", env=env).stdout

    stop = threading.Event()
    gc_runs: list[dict] = []

    def collect() -> None:
        while not stop.is_set():
            done = _run(pushed.cwd, "gc", "--remote", "origin", "--json", env=env)
            if done.returncode:
                failures.append(f"gc: {done.stderr}")
                return
            gc_runs.append(json.loads(done.stdout))

    threads = [threading.Thread(target=work, args=(i, user)) for i, user in enumerate(users)]
    collector = threading.Thread(target=collect)
    collector.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    collector.join()
    assert not failures, failures
    # A last condemning run and, a delay later, its sweep: the storage's Date header is in
    # whole seconds and a record's time in milliseconds, so a record may be due only two
    # seconds on; gc runs until no record is left and none is written.
    for _ in range(8):
        time.sleep(1.1)
        gc_runs.append(json.loads(_run(pushed.cwd, "gc", "--remote", "origin", "--json", env=env).stdout))
        if not gc_runs[-1]["condemned_blobs"] and not gc_runs[-1]["pending_records"]:
            break
    assert len(gc_runs) >= 4 and sum(run["blobs_removed"] for run in gc_runs) >= 10, gc_runs

    check = Vml(tmp_path / "check")
    (tmp_path / "check").mkdir()
    check("init")
    check("remote", "add", "origin", bucket.url)
    check("fetch")
    check.fsck_clean()
    for number in range(len(users)):
        entry = json.loads(finished[number])["entry"]["id"]
        assert check("show", f"origin/u{number}", "--json").json()["entry"]["id"] == entry
        check("area", "add", f"w{number}", "--dir", str(tmp_path / f"check-{number}"))
        check("checkout", "-a", f"w{number}", f"origin/u{number}")
        assert not (tmp_path / f"user{number}-area" / "junk.bin").exists()
        assert tree_digest(tmp_path / f"check-{number}") == tree_digest(tmp_path / f"user{number}-area")
    # The junk is gone from the bucket: no pack holds a chunk of it.
    from vml.exchange.remote import RemoteRepository
    from vml.objects.chunker import cut_buffer
    from vml.objects.hashing import object_id
    from vml.transport.base import open_transport

    junk = {object_id(bytes(chunk)) for number in range(len(users)) for chunk in cut_buffer(random.Random(9000 + number).randbytes(2 << 20))}
    remote = RemoteRepository(open_transport(bucket.url))
    try:
        assert not junk & {e.id for entries in remote.packs().values() for e in entries}, "a junk chunk is still in the bucket"
    finally:
        remote.close()
    stored = sum(bucket.client().head_object(Bucket=bucket.name, Key=key)["ContentLength"] for key in bucket.keys("team/vml/store/packs/"))
    # The base, 20 rounds of 1 MiB, framing, and at most a few copies of a round that gc
    # condemned under its push (no grace here): a push's copy and the old one can carry the
    # same second, and a sweep then keeps both. Not 20 MiB of junk.
    assert stored < (3 << 20) + 20 * (1 << 20) + (4 << 20), stored


def test_gc_rewrites_a_partly_dead_pack_and_a_fetch_that_read_the_old_index_reads_again(pushed: Vml, guest: Path, bucket: Bucket,
                                                                                         tmp_path: Path, monkeypatch):
    from vml import api
    from vml.exchange import fetch

    base = pushed("show", "main", "--json").json()["entry"]["id"]
    pushed("switch", "-c", "x")
    write_random(guest / "keep.bin", 1 << 20, 5)
    write_random(guest / "junk.bin", 1 << 20, 6)
    pushed("commit", "-m", "keep and junk")
    pushed("push", "origin", "x")  # one pack: the chunks of keep.bin and junk.bin
    pushed("switch", "main")
    pushed("switch", "-c", "y")
    write_random(guest / "keep.bin", 1 << 20, 5)
    pushed("commit", "-m", "keep only")
    pushed("push", "origin", "y")  # sends only its listings: keep.bin's chunk is there
    pushed("switch", "main")
    pushed("branch", "-D", "x")
    pushed("branch", "x", base)
    pushed("push", "--force", "origin", "x")  # junk.bin's chunk is now dead, in a pack with a live one
    env = {"VML_REMOTE_GC_DELAY": "1", "VML_REMOTE_GC_GRACE": "0"}
    time.sleep(1.1)  # the pack older than gc's run by the storage's whole-second clock (no grace is not "this second")
    condemned = Vml(tmp_path, separate=True)("gc", "--remote", "origin", "--json", env=env).json()
    assert condemned["condemned_blobs"] >= 1 and condemned["blobs_removed"] == 0

    (tmp_path / "fetcher").mkdir()
    fetcher = Vml(tmp_path / "fetcher")
    fetcher("init")
    fetcher("remote", "add", "origin", bucket.url)
    real = fetch.receive_blobs
    sweeps = []

    def sweep_first(store, remote, roots, progress=None):
        sweeps.append(None)  # one call per attempt
        remote.blobs()  # the fetch has read the index files: now gc rewrites the pack they name
        if len(sweeps) == 1:
            time.sleep(2.1)  # the record due (the storage's Date is in whole seconds, a record's time in milliseconds)
            sweeps[0] = Vml(tmp_path, separate=True)("gc", "--remote", "origin", "--json", env=env).json()
        return real(store, remote, roots, progress)

    monkeypatch.setattr(fetch, "receive_blobs", sweep_first)
    from vml.repo import Repository

    local = Repository.discover(str(tmp_path / "fetcher"))
    try:
        fetched = api.fetch(local, "origin")
    finally:
        local.close()
    monkeypatch.undo()
    assert sweeps[0]["packs_rewritten"] >= 1 and sweeps[0]["blobs_removed"] >= 1, sweeps
    assert len(sweeps) == 2  # the first reading found a pack gone; the fetch read the index files again
    assert fetched.commits >= 2
    fetcher("area", "add", "w", "--dir", str(tmp_path / "y-area"))
    fetcher("checkout", "origin/y")
    assert (tmp_path / "y-area" / "keep.bin").read_bytes() == random.Random(5).randbytes(1 << 20)
    fetcher.fsck_clean()


def test_a_copy_newer_than_a_pending_record_is_condemned_again_and_goes_in_the_next_sweep(pushed: Vml, guest: Path,
                                                                                           bucket: Bucket, tmp_path: Path):
    """A push that saw a record sends its own copy of a blob the record names, into a newer
    pack the record's sweep leaves alone. If that copy is dead too, the next run records it
    again though the first record is still pending: what is dead when a run starts is gone
    after the run a delay later, not two delays later."""
    env = {"VML_REMOTE_GC_GRACE": "0"}
    later = {**env, "VML_REMOTE_GC_DELAY": "3600"}  # a run while the first record is pending
    due = {**env, "VML_REMOTE_GC_DELAY": "0"}  # a run once every record is due
    gc = Vml(tmp_path, separate=True)
    base = pushed("show", "main", "--json").json()["entry"]["id"]

    def push_junk_then_drop_it(branch: str) -> None:
        pushed("switch", "-c", branch)
        write_random(guest / "junk.bin", 1 << 20, 77)
        pushed("commit", "-m", "junk")
        pushed("push", "origin", branch)
        pushed("switch", "main")
        pushed("branch", "-D", branch)
        pushed("branch", branch, base)
        pushed("push", "--force", "origin", branch)

    first_packs = set(bucket.keys("team/vml/store/packs/"))  # the base entry's, live throughout

    def junk_packs() -> list[str]:
        return sorted(set(bucket.keys("team/vml/store/packs/")) - first_packs)

    push_junk_then_drop_it("x")
    time.sleep(1.1)  # the pack older than gc's run by the storage's whole-second clock (no grace is not "this second")
    first = gc("gc", "--remote", "origin", "--json", env=later).json()
    assert first["condemned_blobs"] >= 1
    push_junk_then_drop_it("y")  # the record names junk.bin's chunk: this push sent its own copy
    assert len(junk_packs()) == 2
    time.sleep(1.1)  # the new pack older than the next record by the storage's whole-second clock
    second = gc("gc", "--remote", "origin", "--json", env=later).json()
    assert second["pending_records"] == 1 and second["blobs_removed"] == 0
    assert second["condemned_blobs"] >= 1  # the newer copy, though a pending record names its blob
    time.sleep(1.1)  # (the storage's clock: a listing's Date is in whole seconds)
    third = gc("gc", "--remote", "origin", "--json", env=due).json()
    assert third["blobs_removed"] >= 2 and third["packs_deleted"] >= 2, third
    assert junk_packs() == []
    pushed.fsck_clean()


def test_a_sweep_keeps_one_copy_of_a_blob_that_pushes_sent_again(pushed: Vml, guest: Path, bucket: Bucket, tmp_path: Path):
    """A push that finds a blob condemned sends its own copy, so a blob live again can sit
    in several packs. The sweep of that record removes the condemned copy; and a partly dead
    pack is deleted rather than rewritten when a pack kept whole holds what else it has."""
    env = {"VML_REMOTE_GC_DELAY": "0", "VML_REMOTE_GC_GRACE": "0"}  # a record is due a second later (the storage's clock)
    gc = Vml(tmp_path, separate=True)
    base = pushed("show", "main", "--json").json()["entry"]["id"]
    first_packs = set(bucket.keys("team/vml/store/packs/"))

    def entry_on(branch: str, *seeds: int) -> None:  # base + one 1 MiB file per seed; the branch forced there
        pushed("switch", "main")
        pushed("branch", "-D", branch, check=False)
        pushed("switch", "-c", branch)
        for seed in seeds:
            write_random(guest / f"file{seed}.bin", 1 << 20, seed)
        pushed("commit", "-m", f"{branch}: {seeds}")
        pushed("push", "--force", "origin", branch)

    entry_on("x", 81)
    pushed("switch", "main")
    pushed("branch", "-D", "x")
    pushed("branch", "x", base)
    pushed("push", "--force", "origin", "x")  # file81's chunks: dead, in the first pack
    time.sleep(1.1)  # the pack older than gc's run by the storage's whole-second clock (no grace is not "this second")
    assert gc("gc", "--remote", "origin", "--json", env=env).json()["condemned_blobs"] >= 1
    entry_on("y", 81, 82)  # finds file81 condemned: sends its own copy, beside file82's chunks
    entry_on("y", 81)  # y now holds file81 only: file82 is dead, in a pack with a live copy of file81
    time.sleep(1.1)
    # The first record is swept: file81 is live again, and the pushes' copies hold it: the first goes.
    first_sweep = gc("gc", "--remote", "origin", "--json", env=env).json()
    assert first_sweep["packs_deleted"] == 1 and first_sweep["packs_rewritten"] == 0, first_sweep
    time.sleep(1.1)
    swept = gc("gc", "--remote", "origin", "--json", env=env).json()
    assert swept["blobs_removed"] >= 2 and swept["packs_deleted"] >= 1 and swept["packs_rewritten"] == 0, swept
    assert len(set(bucket.keys("team/vml/store/packs/")) - first_packs) == 1  # one copy of file81, no more

    check = clone_into(tmp_path, bucket.url, "check")
    check("checkout", "origin/y")
    assert (tmp_path / "check-area" / "file81.bin").read_bytes() == random.Random(81).randbytes(1 << 20)
    assert not (tmp_path / "check-area" / "file82.bin").exists()
    check.fsck_clean()
    pushed.fsck_clean()


def test_a_push_that_gc_condemned_under_it_sends_again_and_the_sweep_keeps_one_copy(pushed: Vml, guest: Path, bucket: Bucket,
                                                                                     tmp_path: Path, monkeypatch):
    """gc runs while a push is between its upload and its ref (no grace, as if the pack had
    waited an hour): it condemns what the push sent. The push finds the record and sends
    its own copy; the sweep then removes the condemned copy, though the entry is live."""
    from vml.exchange import push as push_module

    env = {"VML_REMOTE_GC_DELAY": "0", "VML_REMOTE_GC_GRACE": "0"}  # a record is due a second later (the storage's clock)
    gc = Vml(tmp_path, separate=True)
    first_packs = set(bucket.keys("team/vml/store/packs/"))
    pushed("switch", "-c", "y")
    write_random(guest / "file91.bin", 1 << 20, 91)
    pushed("commit", "-m", "file91")
    real, runs = push_module._send_objects, []

    def condemned_meanwhile(*args, **kwargs):
        sent = real(*args, **kwargs)
        if not runs:
            time.sleep(1.1)  # the record is newer than the pack by the storage's clock (whole seconds)
            runs.append(gc("gc", "--remote", "origin", "--json", env=env).json())
        return sent

    with monkeypatch.context() as patch:  # (undo only this: the bucket's variables stay)
        patch.setattr(push_module, "_send_objects", condemned_meanwhile)
        pushed("push", "origin", "y")
    assert runs[0]["condemned_blobs"] >= 1
    assert len(set(bucket.keys("team/vml/store/packs/")) - first_packs) == 2  # the push's pack, and its copy
    time.sleep(1.1)
    swept = gc("gc", "--remote", "origin", "--json", env=env).json()
    assert swept["packs_deleted"] == 1 and swept["packs_rewritten"] == 0, swept
    assert len(set(bucket.keys("team/vml/store/packs/")) - first_packs) == 1
    check = clone_into(tmp_path, bucket.url, "check")
    check("checkout", "origin/y")
    assert (tmp_path / "check-area" / "file91.bin").read_bytes() == random.Random(91).randbytes(1 << 20)
    check.fsck_clean()
    pushed.fsck_clean()


def test_gc_remote_reads_the_entries_not_their_data(pushed: Vml, guest: Path, bucket: Bucket, tmp_path: Path):
    """gc of a bucket from a repository that never fetched it: it reads the entries' git
    objects and listings into a cache, not the data, and still finds what is dead."""
    env = {"VML_REMOTE_GC_DELAY": "0", "VML_REMOTE_GC_GRACE": "0"}
    base = pushed("show", "main", "--json").json()["entry"]["id"]
    pushed("switch", "-c", "x")
    write_random(guest / "deep" / "er" / "junk.bin", 2 << 20, 31)
    pushed("commit", "-m", "junk")
    pushed("push", "origin", "x")
    pushed("switch", "main")
    pushed("branch", "-D", "x")
    pushed("branch", "x", base)
    pushed("push", "--force", "origin", "x")
    admin = Vml(tmp_path / "admin")
    (tmp_path / "admin").mkdir()
    admin("init")
    admin("remote", "add", "origin", bucket.url)
    gc = Vml(tmp_path / "admin", separate=True)  # (the delay and grace are read when vml starts)
    time.sleep(1.1)  # the pack older than gc's run by the storage's whole-second clock (no grace is not "this second")
    condemned = gc("gc", "--remote", "origin", "--json", env=env).json()
    assert condemned["condemned_blobs"] >= 2, condemned  # junk.bin's chunks (and the listings only x reached)
    time.sleep(1.1)
    swept = gc("gc", "--remote", "origin", "--json", env=env).json()
    assert swept["blobs_removed"] >= 2 and swept["bytes_freed"] >= 2 << 20, swept
    held = sum(path.stat().st_size for path in (tmp_path / "admin" / ".vml").rglob("*") if path.is_file())
    assert held < 1 << 20, held  # the bucket holds 3 MiB of main's data: none of it came here
    admin.fsck_clean()
    check = clone_into(tmp_path, bucket.url, "check")
    assert (tmp_path / "check-area" / "data" / "run.bin").read_bytes() == random.Random(1).randbytes(3 << 20)
    check.fsck_clean()
    pushed.fsck_clean()


def test_gc_remote_is_for_buckets_and_says_so(pushed: Vml, tmp_path: Path):
    pushed("init", "--bare", str(tmp_path / "plain.vml"))
    pushed("remote", "add", "plain", str(tmp_path / "plain.vml"))
    assert "object storage" in one_line_error(pushed("gc", "--remote", "plain", check=False))
    assert "--expire" in one_line_error(pushed("gc", "--remote", "origin", "--expire", "now", check=False))
    assert "not kept in a bucket" in one_line_error(pushed("--repo", str(tmp_path / "plain.vml"), "serve", "gc", check=False))
    first = pushed("gc", "--remote", "origin", "--json").json()  # young packs (an hour's grace): nothing condemned
    assert first["condemned_blobs"] == 0 and first["blobs_removed"] == 0 and first["sweep_delay"] == 3600


def test_a_record_swept_between_listing_and_reading_makes_the_push_read_again(pushed: Vml, bucket: Bucket, monkeypatch):
    """A push lists gc's records, and a sweep removes one before the push reads it (seen in
    CI as an HTTP 500 of a server): the push reads the index files and the records again."""
    from vml.exchange.remote import RemoteRepository
    from vml.exchange.remote_gc import read_condemned
    from vml.transport.base import MissingFile, open_transport

    swept = "team/vml/gc/condemned-swept.json"
    bucket.write(swept, json.dumps({"blobs": ["00" * 32]}).encode())
    remote = RemoteRepository(open_transport(bucket.url))
    try:
        known = remote.blobs()
        real = remote.transport.read

        def sweep_first(path: str) -> bytes:
            if path.endswith("condemned-swept.json") and swept in bucket.keys("team/vml/gc/"):
                bucket.client().delete_object(Bucket=bucket.name, Key=swept)  # the sweep, just then
                raise MissingFile(path)
            return real(path)

        monkeypatch.setattr(remote.transport, "read", sweep_first)
        condemned = read_condemned(remote)
        assert condemned.names == frozenset() and condemned.blobs == set()
        assert remote.blobs() is not known  # the index files read again
    finally:
        remote.close()

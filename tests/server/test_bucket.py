"""`vml serve --store s3://...`: two server processes keep one repository in a bucket on a
real S3 server (SeaweedFS, Ceph RGW), behind one URL (a TCP balancer): ten clients push and
fetch through it while `vml serve gc` runs, a server is killed in the middle of a push, and
nothing is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import Vml, git_fsck_clean
from support.server import Balancer, VmlServer, start_server

GC_ENV = {"VML_REMOTE_GC_DELAY": "1", "VML_REMOTE_GC_GRACE": "0"}  # no grace, a one-second sweep delay: the race, often


@dataclass
class Cluster:
    """Servers of one bucket behind one URL, with the accounts they share."""

    servers: list[VmlServer]
    balancer: Balancer
    store: str
    env: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.balancer.url

    def ns(self, namespace: str) -> str:
        return f"{self.url}/{namespace}"

    def add_user(self, name: str, *, admin: bool = False) -> str:
        return self.servers[0].add_user(name, admin=admin)

    def accounts(self):
        return self.servers[0].accounts()

    @property
    def repo(self) -> Path:
        """The first server's replica, brought up to the bucket (a request pulls first)."""
        httpx.get(f"{self.servers[0].url}/api/v1/ns/team/refs", timeout=60).raise_for_status()
        return self.servers[0].repo

    def refs(self, server: VmlServer, namespace: str, token: str) -> dict:
        answer = httpx.get(f"{server.url}/api/v1/ns/{namespace}/refs", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        answer.raise_for_status()
        return answer.json()["refs"]

    def gc(self) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vml", "--repo", str(self.servers[1].repo), "serve", "gc", "--json"],
                              env={**os.environ, **self.env}, capture_output=True, text=True, timeout=300)


@pytest.fixture
def cluster(s3_server, tmp_path: Path, monkeypatch):
    env = {**s3_server.env(), **GC_ENV}
    store = f"s3://{s3_server.new_bucket()}/central"
    first = start_server(tmp_path / "a", "--init", "--store", store, "--no-access-log", repo=tmp_path / "a" / "replica", env=env)
    second = start_server(tmp_path / "b", "--init", "--store", store, "--accounts", str(first.repo / "vml" / "server.db"),
                          "--no-access-log", repo=tmp_path / "b" / "replica", env=env)
    balancer = Balancer([int(first.url.rsplit(":", 1)[1]), int(second.url.rsplit(":", 1)[1])])
    yield Cluster([first, second], balancer, store, env)
    balancer.close()
    for server in (first, second):
        server.stop()


def test_ten_clients_through_two_servers_of_one_bucket_beside_gc(cluster: Cluster, tmp_path: Path):
    from support.load import run_load

    def in_process(cwd, *args, token):
        return Vml(cwd)(*args, check=False, env={"VML_TOKEN": token})

    gc_runs, failures, stop = [], [], threading.Event()

    def collect() -> None:
        while not stop.is_set():
            done = cluster.gc()
            if done.returncode:
                failures.append(done.stderr)
                return
            gc_runs.append(done.stdout)

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        result = run_load(cluster, tmp_path, clients=10, seconds=0, setup_runner=in_process)
    finally:
        stop.set()
        collector.join()
    assert failures == [] and len(gc_runs) >= 1
    assert result.errors == [] and result.lost == [], result
    assert result.pushes >= 20 and result.fetches >= 10
    # Both servers answer the same refs, from the bucket.
    admin = cluster.servers[0].tokens["loadadmin"]
    assert cluster.refs(cluster.servers[0], "team", admin) == cluster.refs(cluster.servers[1], "team", admin)
    for server in cluster.servers:
        report = Vml(tmp_path)("--repo", str(server.repo), "fsck", "--json", env=cluster.env).json()
        assert report["damaged"] == [] and report["problems"] == []
        git_fsck_clean(server.repo)
    # A new replica made from nothing but the bucket: its git objects, and every blob they need found there (nothing gc removed).
    third = start_server(tmp_path / "c", "--init", "--store", cluster.store, "--accounts", str(cluster.servers[0].repo / "vml" / "server.db"),
                         repo=tmp_path / "c" / "replica", env=cluster.env)
    try:
        assert cluster.refs(third, "team", admin) == cluster.refs(cluster.servers[0], "team", admin)
        report = Vml(tmp_path)("--repo", str(third.repo), "fsck", "--json", env=cluster.env).json()
        assert report["damaged"] == [] and report["problems"] == []
        git_fsck_clean(third.repo)
    finally:
        third.stop()


def test_a_server_killed_in_a_push_then_the_push_again_completes(cluster: Cluster, tmp_path: Path):
    token = cluster.add_user("alice")
    home = tmp_path / "alice"
    (home / "guest").mkdir(parents=True)
    for number in range(3):
        (home / "guest" / f"part{number}.bin").write_bytes(os.urandom(12 << 20))
    alice = Vml(home)
    env = {"VML_TOKEN": token}
    alice("init", env=env)
    alice("area", "add", "wa", "--dir", str(home / "guest"), env=env)
    entry = alice("commit", "-m", "big", "--json", env=env).json()["entry"]
    alice("remote", "add", "origin", cluster.ns("alice"), env=env)
    push = subprocess.Popen([sys.executable, "-m", "vml", "push"], cwd=home, env={**os.environ, **env, "VML_AUTHOR_NAME": "A",
                            "VML_AUTHOR_EMAIL": "a@example.org"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    uploading = None
    while uploading is None and time.monotonic() < deadline and push.poll() is None:
        for server in cluster.servers:
            parts = list((server.repo / "vml" / "uploads").glob("*.part"))
            if parts and parts[0].stat().st_size > 4 << 20:
                uploading = server
        time.sleep(0.02)
    assert uploading is not None, "the push never reached a server"
    os.killpg(uploading.process.pid, signal.SIGKILL)  # `timeout` leads a process group: the server dies with it
    assert push.wait(timeout=120) != 0  # the connection dropped: the push failed, and said so
    survivor = next(server for server in cluster.servers if server is not uploading)
    retry = alice("push", "--json", env=env).json()  # the balancer skips the dead server
    assert retry["refs"][0]["status"] == "new" and retry["refs"][0]["new"] == entry
    assert cluster.refs(survivor, "alice", token)["refs/heads/main"] == entry
    clone = tmp_path / "clone"
    alice("clone", cluster.ns("alice"), str(clone), env=env)
    cloned = Vml(clone)
    cloned("area", "add", "wb", "--dir", str(tmp_path / "restored"), env=env)
    cloned("checkout", "main", env=env)
    for number in range(3):
        assert (tmp_path / "restored" / f"part{number}.bin").read_bytes() == (home / "guest" / f"part{number}.bin").read_bytes()
    cloned.fsck_clean()
    report = Vml(tmp_path)("--repo", str(survivor.repo), "fsck", "--json", env=cluster.env).json()
    assert report["damaged"] == [] and report["problems"] == []
    git_fsck_clean(survivor.repo)


def _packed_bytes(replica: Path) -> int:
    return sum(path.stat().st_size for path in (replica / "vml" / "store" / "packs").rglob("*.pack"))


def test_a_server_keeps_its_listings_and_reads_the_data_from_the_bucket(cluster: Cluster, tmp_path: Path):
    """A server's replica is a cache, not a second copy: the other server serves a clone, a
    push on top and a file on the web from the bucket without keeping the data, and
    `vml serve gc` drops the data a push left in the first one."""
    first, second = cluster.servers
    token = cluster.add_user("alice")
    env = {"VML_TOKEN": token}
    home = tmp_path / "alice"
    (home / "guest").mkdir(parents=True)
    parts = {f"part{number}.bin": os.urandom(4 << 20) for number in range(3)}
    for name, data in parts.items():
        (home / "guest" / name).write_bytes(data)
    (home / "guest" / "notes.txt").write_text("first\n")
    alice = Vml(home)
    alice("init", env=env)
    alice("area", "add", "wa", "--dir", str(home / "guest"), env=env)
    entry = alice("commit", "-m", "data", "--json", env=env).json()["entry"]
    alice("remote", "add", "origin", first.ns("alice"), env=env)
    alice("push", env=env)
    assert _packed_bytes(first.repo) > 12 << 20  # the push is stored where it arrived, and in the bucket

    # The second server learns of it from the bucket: git objects, no data.
    assert cluster.refs(second, "alice", token)["refs/heads/main"] == entry
    assert _packed_bytes(second.repo) < 1 << 20
    clone = tmp_path / "clone"
    alice("clone", second.ns("alice"), str(clone), env=env)
    cloned = Vml(clone)
    cloned("area", "add", "wb", "--dir", str(tmp_path / "restored"), env=env)
    cloned("checkout", "main", env=env)
    for name, data in parts.items():
        assert (tmp_path / "restored" / name).read_bytes() == data
    assert _packed_bytes(second.repo) < 1 << 20  # the clone's blobs went from the bucket into the transfer, not here
    with second.client(token) as web:
        shown = web.get(f"/alice/e/{entry}/raw/part1.bin")
        assert shown.status_code == 200 and shown.content == parts["part1.bin"]
    assert _packed_bytes(second.repo) < 6 << 20  # a file shown is kept: one part, not three

    # A push on top, through the second server: it reads the listings it builds on from the bucket.
    (tmp_path / "restored" / "notes.txt").write_text("second\n")
    newer = cloned("commit", "-m", "notes", "--json", env=env).json()["entry"]
    cloned("push", env=env)
    assert cluster.refs(first, "alice", token)["refs/heads/main"] == newer

    result = Vml(tmp_path)("--repo", str(first.repo), "serve", "gc", "--json", env=cluster.env).json()
    assert result["replica_bytes_freed"] > 12 << 20, result
    assert _packed_bytes(first.repo) < 1 << 20
    again = tmp_path / "again"
    alice("clone", first.ns("alice"), str(again), env=env)
    Vml(again)("area", "add", "wc", "--dir", str(tmp_path / "again-area"), env=env)
    Vml(again)("checkout", "main", env=env)
    assert (tmp_path / "again-area" / "notes.txt").read_text() == "second\n"
    assert (tmp_path / "again-area" / "part2.bin").read_bytes() == parts["part2.bin"]
    Vml(again).fsck_clean()
    cloned.fsck_clean()
    alice.fsck_clean()
    for server in cluster.servers:  # fsck of a replica: its own packs read, the rest found in the bucket
        report = Vml(tmp_path)("--repo", str(server.repo), "fsck", "--json", env=cluster.env).json()
        assert report["damaged"] == [] and report["problems"] == [], report
        git_fsck_clean(server.repo)

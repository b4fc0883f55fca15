"""Many clients pushing and fetching against one `vml serve` at once: the load test's driver,
used by tests/server/test_load.py (short) and benchmarks/load.py (minutes).

Every client is a user with a repository of its own, made by cloning one seed entry (so all
share most blobs), that loops: change a file, commit, push its branch to its own namespace
and to its own branch in a group namespace, and fetch the group's branches (the others').
Beside them a prober reads a page of entries over and over and records how long each took.
At the end every entry a client's push reported as accepted must be on the server.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass
class ClientLog:
    name: str
    pushed: list[tuple[str, str, str]] = field(default_factory=list)  # (namespace, ref, entry) the server accepted
    rejected: int = 0
    fetches: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # per push or fetch


def vml(cwd: Path, *args: str, token: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "VML_TOKEN": token, "VML_AUTHOR_NAME": "Load", "VML_AUTHOR_EMAIL": "load@example.org"}
    env.pop("VML_REPO", None)
    return subprocess.run([sys.executable, "-m", "vml", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def set_up_client(server, group: str, log: ClientLog, home: Path, token: str, runner=None) -> None:
    """Clone the seed, make an area on a branch of its own, name both remotes. `runner(cwd,
    *args, token=...)` runs vml (default: a process of its own each time)."""
    runner = runner or vml
    guest = home / "guest"
    steps = [(home.parent, ("clone", server.ns(group), str(home))), (home, ("area", "add", "wa", "--dir", str(guest))),
             (home, ("checkout", "main")), (home, ("switch", "-c", log.name)),
             (home, ("remote", "add", "own", server.ns(log.name))), (home, ("remote", "add", "group", server.ns(group)))]
    for cwd, args in steps:
        done = runner(cwd, *args, token=token)
        if done.returncode:
            log.errors.append(f"set-up {args[0]}: {done.stderr.strip()}")
            return


def _client_loop(group: str, log: ClientLog, home: Path, token: str, start: threading.Barrier, seconds: float) -> None:
    """Wait for the others, then loop until `seconds` have passed (one round at least)."""
    guest = home / "guest"
    start.wait()
    deadline = time.monotonic() + seconds
    round_no = 0
    while not log.errors and (round_no == 0 or time.monotonic() < deadline):
        round_no += 1
        (guest / "work").mkdir(exist_ok=True)
        (guest / "work" / f"{log.name}-{round_no}.txt").write_bytes(os.urandom(2048) + f"{log.name} round {round_no}\n".encode())
        (guest / "shared.log").write_text(f"{log.name} {round_no}\n")
        if vml(home, "commit", "-m", f"{log.name} round {round_no}", token=token).returncode:
            log.errors.append("commit failed")
            continue
        for remote, namespace in (("own", log.name), ("group", group)):
            started = time.monotonic()
            done = vml(home, "push", remote, log.name, "--json", token=token)
            log.seconds.append(time.monotonic() - started)
            try:
                result = json.loads(done.stdout)
            except ValueError:
                log.errors.append(f"push {remote}: {done.stderr.strip()}")
                continue
            for ref in result["refs"]:
                if ref["status"] == "rejected":
                    log.rejected += 1
                elif ref["status"] in ("new", "fast-forward", "forced"):
                    log.pushed.append((namespace, ref["ref"], ref["new"]))
        started = time.monotonic()
        done = vml(home, "fetch", "group", token=token)
        log.seconds.append(time.monotonic() - started)
        if done.returncode:
            log.errors.append(f"fetch: {done.stderr.strip()}")
        else:
            log.fetches += 1


@dataclass
class LoadResult:
    clients: int
    seconds: float
    pushes: int
    fetches: int
    rejected: int
    errors: list[str]
    lost: list[tuple[str, str, str]]
    page: str
    page_requests: int
    page_p50_ms: float
    page_p95_ms: float
    operation_p95_s: float


def run_load(server, base: Path, *, clients: int, seconds: float, page: str | None = None, setup_runner=None) -> LoadResult:
    """`clients` users at once for `seconds`; `page`: the path the prober reads (default: the
    group's page of entries). `setup_runner`: how the set-up runs vml (see set_up_client)."""
    admin_token = server.add_user("loadadmin", admin=True)
    group = "team"
    server.accounts().add_group(group)
    seed = base / "seed"
    (seed / "guest" / "etc").mkdir(parents=True)
    for number in range(200):
        (seed / "guest" / "etc" / f"file{number}.conf").write_text(f"setting {number}\n" * 20)
    vml(seed, "init", token=admin_token)
    vml(seed, "area", "add", "wa", "--dir", str(seed / "guest"), token=admin_token)
    vml(seed, "commit", "-m", "seed", token=admin_token)
    vml(seed, "remote", "add", "origin", server.ns(group), token=admin_token)
    pushed = vml(seed, "push", token=admin_token)
    assert pushed.returncode == 0, pushed.stderr
    logs, threads = [], []
    start = threading.Barrier(clients + 1)
    for number in range(clients):
        name = f"user{number:02d}"
        token = server.add_user(name)
        server.accounts().set_member(group, name, "append")
        log = ClientLog(name)
        logs.append(log)
        set_up_client(server, group, log, base / name, token, setup_runner)
        thread = threading.Thread(target=_client_loop, args=(group, log, base / name, token, start, seconds))
        threads.append(thread)
        thread.start()
    start.wait()  # every client is set up: the clock starts
    page = page or f"/{group}"  # the group's page of entries
    latencies: list[float] = []
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60) as prober:
        while any(t.is_alive() for t in threads):
            started = time.monotonic()
            response = prober.get(page)
            latencies.append(time.monotonic() - started)
            assert response.status_code == 200, (response.status_code, response.text[:200])
            time.sleep(0.2)
    for thread in threads:
        thread.join()
    lost = []
    for log in logs:
        for namespace, ref, entry in log.pushed:
            stored = f"refs/namespaces/{namespace}/refs/heads/{ref}"
            present = subprocess.run(["git", f"--git-dir={server.repo}", "merge-base", "--is-ancestor", entry, stored], capture_output=True)
            if present.returncode != 0:
                lost.append((namespace, ref, entry))
    latencies.sort()
    operations = sorted(s for log in logs for s in log.seconds)
    return LoadResult(
        clients, seconds, sum(len(log.pushed) for log in logs), sum(log.fetches for log in logs), sum(log.rejected for log in logs),
        [error for log in logs for error in log.errors], lost, page, len(latencies),
        round(statistics.median(latencies) * 1000, 1), round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1),
        round(operations[int(0.95 * (len(operations) - 1))], 2) if operations else 0.0,
    )

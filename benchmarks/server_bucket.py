"""What each server process of one bucket costs (vml serve --store, issue 20): several
replicas of one bucket on a real S3 server (SeaweedFS), each as a running server keeps it,
learn the benchmark's guest tree, then a day of work pushed to the bucket. Reported per
process: the S3 requests of its first start, of learning one push, and of a request when
nothing changed; its disk (a cache: git objects and listings, no data); and the memory of
its copy of the bucket's index. Every process pays these for every push, so they are what
grows with the number of processes. Counts, not times: no ratio to a peer (restic and borg
have no server of several processes on one bucket).

Usage: .venv/bin/python benchmarks/server_bucket.py [--processes 3]   (after benchmarks/dataset)
Writes benchmarks/results/<date>-server-bucket.json and prints it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.path.insert(0, HERE)

from run import VML, du  # noqa: E402
from support.s3 import start_seaweedfs  # noqa: E402


def requests_of(replica, step) -> dict:
    """The S3 requests a replica makes during `step` (by operation), and its seconds."""
    transport = replica.bucket.transport
    before = Counter(transport.requests)
    started = time.monotonic()
    step()
    return {"seconds": round(time.monotonic() - started, 3), **(Counter(transport.requests) - before)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--data", default=os.environ.get("VML_BENCH_DATA", "/work/bench-data"))
    args = parser.parse_args()
    from vml.repo import Repository
    from vml.server.exchange import ServerRepository

    work = Path(tempfile.mkdtemp(prefix="vml-server-bucket-"))
    server = start_seaweedfs(work / "s3")
    try:
        os.environ.update(server.env())
        url = f"s3://{server.new_bucket()}/central"
        area = work / "area"
        subprocess.run(["cp", "-a", os.path.join(args.data, "base"), str(area)], check=True)
        env = {**os.environ, "VML_AUTHOR_NAME": "bench", "VML_AUTHOR_EMAIL": "bench@example.org", "VML_REPO": str(work / "local" / ".vml")}

        def run(*argv: str) -> str:
            return subprocess.run([VML, *argv], cwd=work, env=env, check=True, capture_output=True, text=True).stdout

        run("init", str(work / "local"))
        run("area", "add", "a", "--dir", str(area))
        run("init", "--bare", url)
        run("remote", "add", "origin", url)
        run("commit", "-m", "base")
        first_push = json.loads(run("push", "--json"))
        replicas = []
        for number in range(args.processes):
            path = str(work / f"replica{number}")
            Repository.init(path, bare=True).close()
            replicas.append(ServerRepository(path, store=url))
        result: dict = {"date": datetime.date.today().isoformat(), "processes": args.processes, "s3_server": "seaweedfs",
                        "guest_bytes": du(str(area)), "first_push_requests": first_push["requests"]}
        result["first_start_requests"] = [requests_of(replica, replica.sync) for replica in replicas]
        result["replica_bytes_after_start"] = [du(replica.path) for replica in replicas]
        subprocess.run([sys.executable, os.path.join(HERE, "day_of_work.py"), str(area)], check=True)
        run("commit", "-m", "a day of work")
        result["day_push_requests"] = json.loads(run("push", "--json"))["requests"]
        result["learn_one_push_requests"] = [requests_of(replica, replica.sync) for replica in replicas]
        result["idle_request_requests"] = [requests_of(replica, replica.sync) for replica in replicas]
        result["replica_bytes_after_push"] = [du(replica.path) for replica in replicas]
        remote = replicas[0].bucket.remote
        remote.forget_blobs()
        tracemalloc.start()
        blobs = len(remote.blobs())
        result["index_blobs"] = blobs
        result["index_memory_bytes_per_process"] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        result["index_memory_bytes_per_blob"] = round(result["index_memory_bytes_per_process"] / max(blobs, 1))
        for replica in replicas:
            replica.bucket.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    path = os.path.join(HERE, "results", f"{result['date']}-server-bucket.json")
    with open(path, "w") as out:
        json.dump(result, out, indent=2)
    print(json.dumps(result, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()

"""Load on one `vml serve` (issue 19): CLIENTS users at once, each pushing new entries to its
own namespace and to its branch in a group namespace and fetching the group's, for SECONDS;
beside them a prober reads the group's page of entries. Reported: pushes and fetches done,
refused and lost (must be 0), the p50 and p95 latency of the page and of push/fetch, and
that fsck is clean afterwards.

Usage: .venv/bin/python benchmarks/load.py [--clients 20] [--seconds 180]
Writes benchmarks/results/<date>-load.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "support"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # support.* for the modules that import each other

from support.load import run_load  # noqa: E402
from support.server import start_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--scratch", default=os.environ.get("VML_BENCH_SCRATCH", "/work/bench-scratch"))
    args = parser.parse_args()
    base = Path(args.scratch) / "load"
    shutil.rmtree(base, ignore_errors=True)
    server = start_server(base / "server")
    try:
        result = run_load(server, base, clients=args.clients, seconds=args.seconds)
    finally:
        server.stop()
    fsck = subprocess.run([sys.executable, "-m", "vml", "--repo", str(server.repo), "fsck", "--json"], capture_output=True, text=True)
    git_fsck = subprocess.run(["git", f"--git-dir={server.repo}", "fsck", "--full", "--strict"], capture_output=True, text=True)
    report = {"date": datetime.date.today().isoformat(), **dataclasses.asdict(result),
              "fsck_clean": fsck.returncode == 0 and json.loads(fsck.stdout)["damaged"] == [], "git_fsck_clean": git_fsck.returncode == 0}
    path = os.path.join(HERE, "results", f"{report['date']}-load.json")
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    print(f"{result.clients} clients for {result.seconds:.0f} s: {result.pushes} pushes accepted, {result.rejected} refused, "
          f"{len(result.lost)} lost, {result.fetches} fetches, {len(result.errors)} errors; push/fetch p95 {result.operation_p95_s} s; "
          f"page {result.page} p50 {result.page_p50_ms} ms, p95 {result.page_p95_ms} ms over {result.page_requests} requests; "
          f"fsck {'clean' if report['fsck_clean'] else 'NOT clean'}, git fsck {'clean' if report['git_fsck_clean'] else 'NOT clean'}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

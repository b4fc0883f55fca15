"""A live guest over ssh (issue 7): vml commits of an `ssh` area served by a real sshd on
127.0.0.1, the guest being the benchmark's tree (--root, every path included), beside the
same commits of a `dir` area on a copy of it. Steps: the initial commit, an unchanged
re-commit (the listing crosses, not the files), a re-commit after 100 files changed, and a
checkout back to the first entry (only those 100 files are sent). Medians of --repeat runs.

Usage: .venv/bin/python benchmarks/guest.py [--repeat 3]   (after benchmarks/dataset)
Writes benchmarks/results/<date>-guest.json and prints a table.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "support"))
sys.path.insert(0, HERE)

from run import VML, bench_arguments, fresh_filesystem, timed  # noqa: E402
from sshd import running_sshd  # noqa: E402

STEPS = ("initial", "unchanged", "changed_100", "checkout_back")


def change_files(root: str, count: int, seed: int) -> None:
    """Append a line to `count` regular files picked with a fixed seed."""
    files = []
    for directory, _dirs, names in os.walk(root):
        files.extend(os.path.join(directory, n) for n in names if os.path.isfile(os.path.join(directory, n))
                     and not os.path.islink(os.path.join(directory, n)))
    files.sort()
    for path in random.Random(seed).sample(files, count):
        with open(path, "ab") as changed:
            changed.write(b"# changed by benchmarks/guest.py\n")


def one_run(base: str, scratch: str, home_env: dict, kind: str) -> dict:
    with fresh_filesystem(scratch) as work:  # (see run.py: files created where many were just deleted are slow)
        return _one_run(base, work, home_env, kind)


def _one_run(base: str, work: str, home_env: dict, kind: str) -> dict:
    os.makedirs(work)
    tree = os.path.join(work, "tree")
    subprocess.run(["cp", "-a", base, tree], check=True)
    env = {**os.environ, **home_env, "LC_ALL": "C", "VML_AUTHOR_NAME": "bench", "VML_AUTHOR_EMAIL": "bench@example.org",
           "VML_REPO": os.path.join(work, "repo", ".vml")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    def run(*argv: str) -> str:
        return subprocess.run(list(argv), cwd=work, env=env, check=True, capture_output=True, text=True).stdout

    run(VML, "init", os.path.join(work, "repo"))
    if kind == "ssh":
        run(VML, "area", "add", "a", "--ssh", "testhost", "--root", tree, "--include", "/")
    else:
        run(VML, "area", "add", "a", "--dir", tree)
    time.sleep(3)  # the copy's ctimes are now: past the stat cache's racy window, as a real guest's files are
    result = {}
    for step in STEPS:
        if step == "changed_100":
            change_files(tree, 100, seed=7)
            time.sleep(3)
        subprocess.run(["sync"], check=True)
        if step == "checkout_back":
            first = run(VML, "log", "--json")
            entry = json.loads(first)[-1]["id"]
            measured = timed([[VML, "checkout", entry]], cwd=work, env=env)
        else:
            measured = timed([[VML, "commit", "-m", step, "--allow-empty"]], cwd=work, env=env)
        result[f"{step}_s"] = measured.seconds
        result[f"{step}_rss_kb"] = measured.rss_kb
        result[f"{step}_cpu_s"] = measured.cpu_seconds  # vml's and its ssh client's (the guest's tar and sshd are not counted)
    shown = json.loads(run(VML, "show", "HEAD", "--json"))
    result["files"] = shown["info"]["files"]
    result["nodes"] = shown["info"]["nodes"]
    return result


def main() -> None:
    args = bench_arguments(__doc__.splitlines()[0]).parse_args()
    with running_sshd(Path(args.scratch) / "sshd-guest") as server:
        runs = {"ssh": [], "dir": []}
        for number in range(args.repeat):
            for kind in runs:  # interleaved, so drift of the machine hits both alike
                print(f"guest: run {number + 1} of {args.repeat}, {kind} area", file=sys.stderr)
                runs[kind].append(one_run(os.path.join(args.data, "base"), args.scratch, server.env, kind))
    median = {kind: {key: statistics.median(r[key] for r in kind_runs) for key in kind_runs[0]} for kind, kind_runs in runs.items()}
    report = {"date": datetime.date.today().isoformat(), "repeat": args.repeat, "median": median, "runs": runs}
    path = os.path.join(HERE, "results", f"{report['date']}-guest.json")
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    print(f"{median['ssh']['nodes']:,.0f} paths, {median['ssh']['files']:,.0f} files; median of {args.repeat}")
    print(f"{'step':<16}{'ssh area':>12}{'dir area':>12}{'ssh/dir':>10}")
    for step in STEPS:
        ssh, local = median["ssh"][f"{step}_s"], median["dir"][f"{step}_s"]
        print(f"{step:<16}{ssh:>11.2f}s{local:>11.2f}s{ssh / local:>9.2f}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Two (or more) vml source trees side by side on one operation: the initial commit or a
checkout of a data set, run with each tree in turn, round after round, on one fresh file
system. For telling whether a change to vml made it faster: this machine's speed drifts by up
to a quarter over minutes, so runs far apart in time (or `benchmarks/run` twice) cannot tell
a 5 % change; runs taken in turns can.

Each variant is a directory holding a `vml` package (a git worktree: `git worktree add
/tmp/before HEAD~1`), optionally followed by @NAME=VALUE to set an environment variable for
its runs (`.@VML_WORKER_PROCESSES=3`). Printed per run: wall time, the CPU time of vml's own
process and of its children (reader or writer processes, ssh), then each variant's medians.
`--area ssh` commits through an ssh area served by a real sshd on 127.0.0.1 (as guest.py),
whose tar, find and sshd share the cores with vml. A variant's C parts must be built
(`python setup.py build_ext --inplace` in a worktree): without them it would run their
Python twins, and be measured slower for it.

Usage: .venv/bin/python benchmarks/ab.py [--op commit|checkout] [--area dir|ssh] [--tree runtimes] [--repeat 3] VARIANT VARIANT...
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "support"))
sys.path.insert(0, HERE)

from run import bench_arguments, fresh_filesystem  # noqa: E402
from sshd import running_sshd  # noqa: E402

# Runs vml's command line from the tree given first, then leaves the CPU times of its own
# process and of its children in the file given second.
_RUNNER = """
import json, resource, sys
tree, report = sys.argv[1], sys.argv[2]
sys.path.insert(0, tree)
sys.argv = ["vml", *sys.argv[3:]]
from vml.cli import main
try:
    main()
finally:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(report, "w") as out:
        json.dump([own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime], out)
"""


def variant(text: str) -> tuple[str, dict[str, str]]:
    tree, _, setting = text.partition("@")
    if not os.path.isdir(os.path.join(tree, "vml")):
        sys.exit(f"ab: {tree} holds no vml package (give a source tree, such as a git worktree)")
    if setting and "=" not in setting:
        sys.exit(f"ab: {text!r}: a setting is @NAME=VALUE")
    for folder, _dirs, files in os.walk(os.path.join(tree, "vml")):
        for name in files:
            stem = name[:-2]
            if name.endswith(".c") and not any(other.startswith(stem + ".") and other.endswith(".so") for other in files):
                sys.exit(f"ab: {os.path.join(folder, name)} is not built: cd {tree} && python setup.py build_ext --inplace")
    tree = os.path.abspath(tree)
    # (PYTHONPATH: the reader processes vml starts import this tree's vml too)
    return tree, {"PYTHONPATH": tree, **(dict([setting.split("=", 1)]) if setting else {})}


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0])
    parser.add_argument("--op", choices=("commit", "checkout"), default="commit")
    parser.add_argument("--area", choices=("dir", "ssh"), default="dir", help="commit through a dir area, or an ssh one served on 127.0.0.1")
    parser.add_argument("--tree", default="runtimes", help="the data set under --data (base or runtimes)")
    parser.add_argument("variants", nargs="+", metavar="VARIANT")
    args = parser.parse_args()
    variants = [variant(text) for text in args.variants]
    base = os.path.join(args.data, args.tree)
    if not os.path.isdir(base):
        sys.exit(f"ab: no data set at {base} (benchmarks/dataset makes it)")
    runs: dict[str, list[tuple[float, float, float]]] = {text: [] for text in args.variants}
    env = {**os.environ, "VML_AUTHOR_NAME": "bench", "VML_AUTHOR_EMAIL": "bench@example.org", "LC_ALL": "C"}
    with contextlib.ExitStack() as held:
        temp, work = held.enter_context(tempfile.TemporaryDirectory()), held.enter_context(fresh_filesystem(args.scratch))
        if args.area == "ssh":
            env.update(held.enter_context(running_sshd(Path(temp) / "sshd")).env)
        runner, report = os.path.join(temp, "runner.py"), os.path.join(temp, "cpu.json")
        with open(runner, "w") as out:
            out.write(_RUNNER)

        def vml(tree: str, *argv: str, setting: dict | None = None, cwd: str = work) -> float:
            started = time.perf_counter()
            subprocess.run([sys.executable, runner, tree, report, *argv], cwd=cwd, env={**env, **(setting or {})}, check=True,
                           stdout=subprocess.DEVNULL)
            return time.perf_counter() - started

        os.makedirs(work)
        area, repo = os.path.join(work, "area"), os.path.join(work, "repo")
        subprocess.run(["cp", "-a", base, area], check=True)
        time.sleep(2.5)  # out of the stat cache's racy window: the copy's ctimes are fresh
        where = ["--ssh", "testhost", "--root", area, "--include", "/"] if args.area == "ssh" else ["--dir", area]
        if args.op == "checkout":  # one entry, saved once, checked out into a new directory each run
            vml(variants[0][0], "init", repo)
            vml(variants[0][0], "area", "add", "a", *where, cwd=repo)
            vml(variants[0][0], "commit", "-m", "initial", cwd=repo)
        number = 0
        for _round in range(args.repeat):
            for text, (tree, setting) in zip(args.variants, variants):
                number += 1
                if args.op == "commit":
                    shutil.rmtree(repo, ignore_errors=True)
                    vml(tree, "init", repo, setting=setting)
                    vml(tree, "area", "add", "a", *where, cwd=repo, setting=setting)
                    argv = ["commit", "-m", "initial"]
                else:  # (into a directory of its own: files made where many were just deleted are slow, see run.py)
                    argv = ["checkout", "HEAD", "--to", os.path.join(work, f"out{number}")]
                subprocess.run(["sync"], check=True)
                time.sleep(2)
                wall = vml(tree, *argv, cwd=repo, setting=setting)
                with open(report) as cpu:
                    own, children = json.load(cpu)
                runs[text].append((wall, own, children))
                print(f"{text:<40} {wall:6.2f} s   vml {own:6.2f} CPU-s   children {children:6.2f} CPU-s", flush=True)
    print(f"\nmedians of {args.repeat} ({args.op}, {args.area} area, {args.tree}):")
    for text, measured in runs.items():
        wall, own, children = (statistics.median(run[field] for run in measured) for field in range(3))
        print(f"{text:<40} {wall:6.2f} s   vml {own:6.2f} CPU-s   children {children:6.2f} CPU-s")


if __name__ == "__main__":
    main()

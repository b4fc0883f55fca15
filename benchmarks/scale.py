"""How vml's everyday commands grow with the repository (issue 21): time and peak RSS of
`commit` (one file changed), `status`, `diff` of the last two entries, `log` and a
checkout of a small tree, against three sizes:

  blobs    a store of N blobs (10^4 .. 10^7) beside a 100-file area
  entries  a history of N entries (10 .. 1,000) of a 100-file area
  files    an area of N files (10^3 .. 10^6), one of them changed (no checkout: that costs
           the whole tree by nature)

Each command runs as its own process under /usr/bin/time. The set-up (filling the store,
making the history, the first commit of the big tree) is not timed; its time is printed.
Results go to benchmarks/results/<date>-scale.json and .png (time and RSS against size,
log-log), and a table on stdout.

Usage: benchmarks/scale.py [--blobs 1e4,1e5,1e6,1e7] [--entries 10,100,1000]
                           [--files 1e3,1e4,1e5,1e6] [--only blobs,entries,files]
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import HERE, VML, bench_arguments, timed  # noqa: E402

PYTHON = os.path.join(os.path.dirname(HERE), ".venv", "bin", "python")
COMMANDS = ["commit", "status", "diff", "log", "checkout"]
SMALL_TREE = 100  # files in the area of the blobs and entries sweeps

# Run in the venv's Python: put N blobs into the store of repository argv[1], in batches
# of a million at most, each flushed as a commit flushes (so index files merge as they would).
FILL_STORE = """
import os, sys
from vml.objects.store import ChunkStore
root, total, batch = sys.argv[1], int(sys.argv[2]), 1_000_000
done = 0
while done < total:
    store = ChunkStore(root).open()
    for n in range(done, min(total, done + batch)):
        store.put(n.to_bytes(8, "little") + os.urandom(56))
    store.flush()
    store.close()
    done = min(total, done + batch)
"""

# Run in the venv's Python: argv[2] entries in repository argv[1], area tree argv[3], each
# entry one file changed; in one process (a thousand `vml commit`s would take minutes).
MAKE_HISTORY = """
import os, sys
from vml import api
from vml.repo import Repository
repo = Repository.discover(sys.argv[1])
tree = sys.argv[3]
for n in range(int(sys.argv[2])):
    with open(os.path.join(tree, "d0", "f0.txt"), "w") as changed:
        changed.write(f"entry {n}\\n")
    api.commit(repo, f"entry {n}")
repo.close()
"""


def make_tree(root: str, files: int) -> None:
    """`files` small files, 100 to a directory, 100 directories to a parent."""
    for n in range(files):
        directory = os.path.join(root, f"p{n // 10_000}", f"d{n // 100 % 100}") if files > SMALL_TREE else os.path.join(root, f"d{n // 100}")
        if n % 100 == 0:
            os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"f{n % 100}.txt"), "w") as out:
            out.write(f"file {n}\n" * (1 + n % 20))


def one_changed_file(root: str) -> str:
    for directory, _dirs, names in os.walk(root):
        for name in sorted(names):
            return os.path.join(directory, name)
    raise RuntimeError(f"no file under {root}")


class Repo:
    """A scratch repository with one dir area, and the timed commands on it."""

    def __init__(self, scratch: str, tree_files: int):
        shutil.rmtree(scratch, ignore_errors=True)
        os.makedirs(scratch)
        self.work, self.area = scratch, os.path.join(scratch, "area")
        self.vml_dir = os.path.join(scratch, "repo", ".vml")
        self.env = {**os.environ, "LC_ALL": "C", "VML_REPO": self.vml_dir, "VML_AUTHOR_NAME": "bench",
                    "VML_AUTHOR_EMAIL": "bench@example.org"}
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        make_tree(self.area, tree_files)
        self.run([VML, "init", os.path.join(scratch, "repo")], [VML, "area", "add", "a", "--dir", self.area])

    def run(self, *commands: list[str]) -> None:
        for command in commands:
            subprocess.run(command, cwd=self.work, env=self.env, check=True, capture_output=True)

    def commit(self, message: str) -> None:
        self.run([VML, "commit", "-m", message])

    def measure(self, *, checkout: bool = True) -> dict:
        """Each command once, after one file changed: {command: (seconds, peak RSS bytes)}.
        `checkout`: also a checkout of the whole tree into an empty directory."""
        with open(one_changed_file(self.area), "a") as changed:
            changed.write("changed\n")
        time.sleep(2.1)  # out of the stat cache's racy window, as a user's next command is
        subprocess.run(["sync"], check=True)
        commands = {
            "status": [[VML, "status", "--short"]],
            "commit": [[VML, "commit", "-m", "one file changed"]],
            "diff": [[VML, "diff", "HEAD~1", "HEAD", "--name-status"]],
            "log": [[VML, "log", "--oneline"]],
            "checkout": [[VML, "checkout", "HEAD", "--to", os.path.join(self.work, "out")]],
        }
        figures = {}
        for name, command in commands.items():
            if name == "checkout" and not checkout:
                continue
            measured = timed(command, cwd=self.work, env=self.env)
            figures[name] = (measured.seconds, measured.rss_kb * 1024)
        return figures


def fill_store(size: int, scratch: str) -> Repo:
    repo = Repo(scratch, SMALL_TREE)
    repo.commit("first")
    subprocess.run([PYTHON, "-c", FILL_STORE, os.path.join(repo.vml_dir, "vml", "store"), str(size)], check=True)
    repo.commit("second")
    return repo


def make_history(size: int, scratch: str) -> Repo:
    repo = Repo(scratch, SMALL_TREE)
    subprocess.run([PYTHON, "-c", MAKE_HISTORY, repo.vml_dir, str(size), repo.area], check=True, env=repo.env)
    return repo


def save_tree(size: int, scratch: str) -> Repo:
    repo = Repo(scratch, size)
    repo.commit("first")
    repo.commit("second")
    return repo


def sweep(name: str, sizes: list[int], scratch: str) -> dict:
    """Each size set up (untimed; its time printed), then the commands measured on it."""
    prepare, checkout = SWEEPS[name]
    results = {}
    for size in sizes:
        started = time.monotonic()
        repo = prepare(size, scratch)
        print(f"{name} {size:,}: set up in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        results[size] = repo.measure(checkout=checkout)
    return results


# Each sweep: how a repository of a size is made, and whether a checkout is measured (not in
# the files sweep: a checkout's cost is the tree's, not a change's).
SWEEPS = {"blobs": (fill_store, True), "entries": (make_history, True), "files": (save_tree, False)}


def table(report: dict) -> str:
    lines = []
    for sweep, by_size in report["sweeps"].items():
        lines.append(f"{sweep:<10}" + "".join(f"{name:>20}" for name in COMMANDS))
        for size, figures in by_size.items():
            cells = [f"{figures[name][0]:6.2f} s {figures[name][1] / 1e6:5.0f} MB" if name in figures else "" for name in COMMANDS]
            lines.append(f"{int(size):<10,}" + "".join(f"{cell:>20}" for cell in cells))
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: str) -> None:
    """Per sweep, time (top) and peak RSS (bottom) of each command against size, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = report["sweeps"]
    figure, axes = plt.subplots(2, len(sweeps), figsize=(5 * len(sweeps), 8), squeeze=False)
    for column, (sweep, by_size) in enumerate(sweeps.items()):
        sizes = [int(size) for size in by_size]
        for name in COMMANDS:
            points = [(int(size), figures[name]) for size, figures in by_size.items() if name in figures]
            if not points:
                continue
            xs = [size for size, _figure in points]
            axes[0][column].plot(xs, [figure[0] for _size, figure in points], marker="o", label=name)
            axes[1][column].plot(xs, [figure[1] / 1e6 for _size, figure in points], marker="o", label=name)
        for row, label in ((0, "seconds"), (1, "peak RSS (MB)")):
            axis = axes[row][column]
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xticks(sizes, [f"{size:,}" for size in sizes])
            axis.set_xlabel(sweep)
            axis.set_ylabel(label)
            axis.grid(True, which="both", alpha=0.3)
        axes[0][column].set_title(f"vml against the number of {sweep}")
    axes[0][0].legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def sizes_of(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part]


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0])
    parser.add_argument("--blobs", default="1e4,1e5,1e6,1e7")
    parser.add_argument("--entries", default="10,100,1000")
    parser.add_argument("--files", default="1e3,1e4,1e5,1e6")
    parser.add_argument("--only", default="blobs,entries,files")
    parser.add_argument("--name", help="Name of the result files (default: <date>-scale).")
    parser.add_argument("--report", metavar="JSON", help="Only write the table and plot of an earlier run's JSON.")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as saved:
            report = json.load(saved)
    else:
        scratch = os.path.join(args.scratch, "scale")
        sizes = {"blobs": args.blobs, "entries": args.entries, "files": args.files}
        report = {"date": datetime.date.today().isoformat(), "sweeps": {}}
        for name in args.only.split(","):
            report["sweeps"][name] = sweep(name, sizes_of(sizes[name]), scratch)
        shutil.rmtree(scratch, ignore_errors=True)
    print(table(report))
    stem = args.report.removesuffix(".json") if args.report else os.path.join(HERE, "results", args.name or f"{report['date']}-scale")
    with open(f"{stem}.json", "w") as out:
        json.dump(report, out, indent=2)
    plot(report, f"{stem}.png")


if __name__ == "__main__":
    main()

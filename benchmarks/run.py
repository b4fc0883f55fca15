"""vml beside restic, borg, bup, git, `tar | zstd -3` and `cp -a` on the same guest tree, in one run.

Each operation runs as whole processes under /usr/bin/time (wall time, CPU time, peak RSS);
every tool starts from a fresh copy of the base tree and a fresh repository on a file system
of its own (`fresh_filesystem`), and each figure is the
median of --repeat runs, taken in rounds (every tool once per round). Results go to
benchmarks/results/<date>.json, .md (a Markdown table) and .png (a plot), and a table on
stdout, with every figure also given as a ratio to restic's in the same run.

Usage: benchmarks/run [--repeat N] [--tools vml,restic,...] [--tree base|runtimes] (benchmarks/run builds the data first)
       benchmarks/run.py --report results/DATE.json   (tables and plot again from a saved run)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
VML = os.path.join(os.path.dirname(HERE), ".venv", "bin", "vml")
TIMED = ["initial", "unchanged", "incremental", "checkout", "diff"]
# CPU-seconds (user + system, the tool's processes together) of each timed operation: the
# work done, which the machine's swings in speed touch far less than the wall time.
CPU = [f"{op}_cpu" for op in TIMED]
OPERATIONS = ["initial", "unchanged", "incremental", "added_bytes", "repo_bytes", "cache_bytes", "checkout", "diff", "peak_rss", *CPU]


@dataclass
class Measured:
    seconds: float
    rss_kb: int
    cpu_seconds: float = 0.0  # user + system, the command's and its children's


def timed(commands: list[list[str] | str], *, cwd: str, env: dict) -> Measured:
    """Run commands one after another (a string runs in sh), each under /usr/bin/time."""
    total, peak, cpu = 0.0, 0, 0.0
    for command in commands:
        argv = ["sh", "-c", command] if isinstance(command, str) else command
        with tempfile.NamedTemporaryFile("r") as report:
            done = subprocess.run(
                ["/usr/bin/time", "-f", "%e %M %U %S", "-o", report.name, *argv],
                cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{command} failed ({done.returncode}): {done.stderr[-2000:]}")
            seconds, rss, user, system = report.read().split()[-4:]
        total += float(seconds)
        peak = max(peak, int(rss))
        cpu += float(user) + float(system)
    return Measured(total, peak, cpu)


def bench_arguments(description: str) -> argparse.ArgumentParser:
    """The options every benchmark script takes: --repeat, --data and --scratch."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", default=os.environ.get("VML_BENCH_DATA", "/work/bench-data"))
    parser.add_argument("--scratch", default=os.environ.get("VML_BENCH_SCRATCH", "/work/bench-scratch"))
    return parser


def du(path: str) -> int:
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout.split()[0])


class Tool:
    """The commands of one tool; `work` holds its repository, `area` the tree it saves."""

    def caches(self) -> list[str]:
        """What the tool keeps beside its repository to go faster (its stat cache or index,
        copies of metadata), which nothing needs to restore: counted as `cache_bytes`, not
        as the repository, wherever the tool keeps it."""
        return []

    name = ""
    diff_supported = True

    def __init__(self, work: str, area: str):
        self.work, self.area, self.repo = work, area, os.path.join(work, "repo")
        self.env = {**os.environ, "LC_ALL": "C"}

    def init(self) -> list:
        return []

    def save(self, label: str) -> list:
        raise NotImplementedError

    def restore(self, target: str) -> list:
        raise NotImplementedError

    def diff(self) -> list:
        return []


class VmlTool(Tool):
    name = "vml"

    def __init__(self, work, area):
        super().__init__(work, area)
        self.env.update(VML_REPO=os.path.join(self.repo, ".vml"), VML_AUTHOR_NAME="bench", VML_AUTHOR_EMAIL="bench@example.org")
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)  # as users run it: with .pyc files

    def init(self):
        return [[VML, "init", self.repo], [VML, "area", "add", "a", "--dir", self.area]]

    def caches(self):
        return glob.glob(os.path.join(self.repo, ".vml", "vml", "areas", "*", "statcache"))

    def save(self, label):
        return [[VML, "commit", "-m", label, "--allow-empty"]]

    def restore(self, target):
        return [[VML, "checkout", "HEAD", "--to", target]]

    def diff(self):
        return [[VML, "diff", "HEAD~2", "HEAD", "--name-status"]]


class ResticTool(Tool):
    name = "restic"

    def __init__(self, work, area):
        super().__init__(work, area)
        self.env.update(RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=self.repo, RESTIC_CACHE_DIR=os.path.join(work, "cache"))

    def init(self):
        return [["restic", "init"]]

    def caches(self):
        return [self.env["RESTIC_CACHE_DIR"]]

    def save(self, label):
        return [["restic", "backup", "--host", "bench", "--tag", label, self.area]]

    def restore(self, target):
        return [["restic", "restore", "latest", "--target", target]]

    def diff(self):
        return ["restic diff $(restic snapshots --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s[0][\"short_id\"], s[-1][\"short_id\"])')"]


class BorgTool(Tool):
    name = "borg"

    def __init__(self, work, area):
        super().__init__(work, area)
        self.env.update(BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes", BORG_BASE_DIR=os.path.join(work, "borgbase"))
        self.count = 0

    def init(self):
        return [["borg", "init", "-e", "none", self.repo]]

    def caches(self):
        return [self.env["BORG_BASE_DIR"]]

    def save(self, label):
        self.count += 1
        return [["borg", "create", "--compression", "zstd,3", f"{self.repo}::{self.count}-{label}", self.area]]

    def restore(self, target):
        os.makedirs(target, exist_ok=True)
        return [f"cd {target} && borg extract {self.repo}::{self.count}-incremental"]

    def diff(self):
        return [["borg", "diff", f"{self.repo}::1-initial", f"{self.count}-incremental"]]


class BupTool(Tool):
    name = "bup"
    diff_supported = False  # bup has no diff verb

    def __init__(self, work, area):
        super().__init__(work, area)
        self.env.update(BUP_DIR=self.repo)

    def init(self):
        return [["bup", "init"]]

    def caches(self):
        return glob.glob(os.path.join(self.repo, "bupindex*"))

    def save(self, label):
        return [["bup", "index", self.area], ["bup", "save", "-n", "main", self.area]]

    def restore(self, target):
        return [["bup", "restore", "-C", target, f"/main/latest{self.area}/."]]


class GitTool(Tool):
    name = "git"

    def __init__(self, work, area):
        super().__init__(work, area)
        self.git = ["git", f"--git-dir={self.repo}", f"--work-tree={area}", "-c", "user.name=bench", "-c", "user.email=b@x"]

    def init(self):
        return [["git", "init", "-q", "--bare", self.repo], ["git", f"--git-dir={self.repo}", "config", "core.bare", "false"]]

    def caches(self):
        return [os.path.join(self.repo, "index")]

    def save(self, label):
        return [[*self.git, "add", "-A"], [*self.git, "commit", "-q", "--allow-empty", "-m", label]]

    def restore(self, target):
        os.makedirs(target, exist_ok=True)
        return [["git", f"--git-dir={self.repo}", f"--work-tree={target}", "checkout", "-f", "HEAD", "--", "."]]

    def diff(self):
        return [["git", f"--git-dir={self.repo}", "diff", "--name-status", "HEAD~2", "HEAD"]]


class FullCopyTool(Tool):
    """A hardware reference: every save a whole new copy, numbered; no diff."""

    diff_supported = False

    def init(self):
        os.makedirs(self.repo)
        self.count = 0
        return []


class TarZstdTool(FullCopyTool):
    name = "tar|zstd-3"

    def save(self, label):
        self.count += 1
        return [f"tar -C {self.area} -cf - . | zstd -3 -T0 -q -o {self.repo}/{self.count}.tar.zst"]

    def restore(self, target):
        os.makedirs(target, exist_ok=True)
        return [f"zstd -d -q -c {self.repo}/{self.count}.tar.zst | tar -C {target} -xf -"]


class CopyTool(FullCopyTool):
    name = "cp -a"

    def save(self, label):
        self.count += 1
        return [["cp", "-a", self.area, f"{self.repo}/{self.count}"]]

    def restore(self, target):
        return [["cp", "-a", f"{self.repo}/{self.count}", target]]


TOOLS = {t.name: t for t in (VmlTool, ResticTool, BorgTool, BupTool, GitTool, TarZstdTool, CopyTool)}


FRESH_FS_BYTES = 64 << 30  # a sparse image: only what a run writes takes space


@contextlib.contextmanager
def fresh_filesystem(scratch: str) -> Iterator[str]:
    """A directory on a new ext4 file system (a loop device over a sparse image under
    `scratch`, direct I/O), for one tool's run; gone after it. ext4 does not hand out again
    an inode freed in the last minutes (`recently_deleted`), and creating files where many
    were just deleted costs kernel time checking candidates: the same vml checkout took 11
    and then 50 CPU-seconds (2.8 and 22 s of it system time) after the previous run's trees
    were deleted, and whichever tool came after a deletion paid. Without loop devices (a
    container), a directory of the scratch disk as before, with a warning."""
    image, mount = os.path.join(scratch, "fresh.img"), os.path.join(scratch, "fresh")
    os.makedirs(mount, exist_ok=True)
    with open(image, "wb") as sparse:
        sparse.truncate(FRESH_FS_BYTES)
    device = None
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", image],
                       check=True, capture_output=True)
        device = subprocess.run(["losetup", "-f", "--show", "--direct-io=on", image], check=True, capture_output=True,
                                text=True).stdout.strip()
        subprocess.run(["mount", device, mount], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as error:
        if device:
            subprocess.run(["losetup", "-d", device], check=False)
        print(f"warning: no file system of its own for this run ({getattr(error, 'stderr', '') or error}); "
              "creating files after deletions will be slow for some tools", file=sys.stderr)
        os.remove(image)
        work = os.path.join(scratch, "work")
        shutil.rmtree(work, ignore_errors=True)
        yield work
        shutil.rmtree(work, ignore_errors=True)
        return
    try:
        yield os.path.join(mount, "work")
    finally:
        subprocess.run(["umount", mount], check=True)
        subprocess.run(["losetup", "-d", device], check=True)
        os.remove(image)


def run_tool(tool_class, base: str, scratch: str) -> dict:
    with fresh_filesystem(scratch) as work:
        return _run_tool(tool_class, base, work)


def _run_tool(tool_class, base: str, work: str) -> dict:
    os.makedirs(work)
    area = os.path.join(work, "area")
    subprocess.run(["cp", "-a", base, area], check=True)
    # Every timed operation starts on a quiet disk: the writeback of what came before would
    # otherwise land on whichever tool runs next.
    subprocess.run(["sync"], check=True)
    time.sleep(2.5)  # out of every tool's racy window: the copy's ctimes are fresh
    tool = tool_class(work, area)
    for command in tool.init():
        subprocess.run(command, cwd=work, env=tool.env, check=True, capture_output=True)
    result = {}
    initial = timed(tool.save("initial"), cwd=work, env=tool.env)
    subprocess.run(["sync"], check=True)
    unchanged = timed(tool.save("unchanged"), cwd=work, env=tool.env)
    subprocess.run([sys.executable, os.path.join(HERE, "day_of_work.py"), area], check=True)
    subprocess.run(["sync"], check=True)
    time.sleep(2.5)
    before = du(tool.repo)
    incremental = timed(tool.save("incremental"), cwd=work, env=tool.env)
    result["added_bytes"] = du(tool.repo) - before
    caches = [path for path in tool.caches() if os.path.exists(path)]
    result["cache_bytes"] = sum(du(path) for path in caches)
    result["repo_bytes"] = du(tool.repo) - sum(du(path) for path in caches if path.startswith(tool.repo + os.sep))
    subprocess.run(["sync"], check=True)
    checkout = timed(tool.restore(os.path.join(work, "out")), cwd=work, env=tool.env)
    subprocess.run(["sync"], check=True)  # the checkout's writeback would otherwise slow the diff
    diff = timed(tool.diff(), cwd=work, env=tool.env) if tool.diff_supported else None
    for name, measured in (("initial", initial), ("unchanged", unchanged), ("incremental", incremental), ("checkout", checkout), ("diff", diff)):
        result[name] = measured.seconds if measured else None
        result[f"{name}_cpu"] = measured.cpu_seconds if measured else None
    measured = {"initial": initial, "unchanged": unchanged, "incremental": incremental, "checkout": checkout, "diff": diff}
    result["peak_rss"] = max(m.rss_kb * 1024 for m in measured.values() if m)
    result["rss_by_operation"] = {op: m.rss_kb * 1024 for op, m in measured.items() if m}
    return result


def median_of(runs: list[dict]) -> dict:
    return {op: (statistics.median(r[op] for r in runs) if runs[0].get(op) is not None else None) for op in OPERATIONS}


def table(results: dict) -> str:
    restic = results.get("restic")
    header = f"{'operation':<14}" + "".join(f"{name:>22}" for name in results)
    lines = [header]
    for op in OPERATIONS:
        cells = []
        for _name, figures in results.items():
            value = figures.get(op)  # (a report from before CPU was measured has none)
            if value is None:
                cells.append(f"{'n/a':>22}")
                continue
            raw = f"{value:.2f} s" if op in TIMED + CPU else f"{value / 1e6:.1f} MB"
            ratio = f" ({value / restic[op]:.2f}x)" if restic and restic.get(op) else ""
            cells.append(f"{raw + ratio:>22}")
        lines.append(f"{op:<14}" + "".join(cells))
    return "\n".join(lines)


def markdown_table(report: dict) -> str:
    """The results as a Markdown table (for the README and issue notes): one row per
    operation, one column per tool, each cell the median with its ratio to restic's."""
    results = report["median"]
    restic = results.get("restic")
    lines = [
        f"{report['tree']['paths']:,} paths, {report['tree']['bytes'] / 1e9:.2f} GB; median of {report['repeat']} runs, {report['date']}",
        "",
        "| operation | " + " | ".join(name.replace("|", "\\|") for name in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for op in OPERATIONS:
        cells = []
        for figures in results.values():
            value = figures.get(op)
            if value is None:
                cells.append("n/a")
                continue
            raw = f"{value:.2f} s" if op in TIMED + CPU else f"{value / 1e6:,.0f} MB"
            cells.append(f"{raw} ({value / restic[op]:.2f}×)" if restic and restic.get(op) else raw)
        lines.append(f"| {op.replace('_', ' ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_reports(report: dict, stem: str) -> None:
    with open(f"{stem}.json", "w") as out:
        json.dump(report, out, indent=2)
    with open(f"{stem}.md", "w") as out:
        out.write(markdown_table(report))
    if "restic" in report["median"]:
        plot(report["median"], f"{stem}.png")


def plot(results: dict, path: str) -> None:
    """Grouped bars: each tool's figure as a ratio to restic's, per operation (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    restic = results["restic"]
    operations = [op for op in OPERATIONS if restic.get(op)]
    names = list(results)
    width = 0.8 / len(names)
    figure, axes = plt.subplots(figsize=(12, 5))
    for index, name in enumerate(names):
        ratios = [(results[name][op] or 0) / restic[op] for op in operations]
        axes.bar([x + index * width for x in range(len(operations))], ratios, width, label=name)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(operations))], operations)
    axes.set_ylabel("ratio to restic (lower is better)")
    axes.set_title("vml and its peers on the same guest tree, same run (median)")
    axes.legend(ncol=len(names), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def tree_counts(path: str) -> dict:
    paths = sum(len(dirs) + len(names) for _dir, dirs, names in os.walk(path))
    return {"paths": paths, "bytes": du(path)}


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0])
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--tree", default="base", help="The data set under --data: base (the guest of issue 5) or "
                        "runtimes (204,000 paths of runtimes' sources and docs: benchmarks/dataset --runtimes).")
    parser.add_argument("--name", help="Name of the result files (default: today's date).")
    parser.add_argument("--report", metavar="JSON", help="Only write the table, Markdown and plot of an earlier run's JSON.")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as saved:
            report = json.load(saved)
        print(table(report["median"]))
        write_reports(report, args.report.removesuffix(".json"))
        return
    base = os.path.join(args.data, args.tree)
    names = args.tools.split(",")
    raw = {name: [] for name in names}
    # Rounds, not one tool's runs back to back: a slow spell of the shared disk then touches
    # every tool once instead of all the runs of one.
    for attempt in range(args.repeat):
        for name in names:
            print(f"{name}: run {attempt + 1} of {args.repeat}", file=sys.stderr, flush=True)
            raw[name].append(run_tool(TOOLS[name], base, args.scratch))
    results = {name: median_of(runs) for name, runs in raw.items()}
    print(table(results))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    today = datetime.datetime.now().strftime("%Y-%m-%d")
    stamp = args.name or (today if args.tree == "base" else f"{today}-{args.tree}")
    report = {"date": today, "repeat": args.repeat, "base": base, "tree": tree_counts(base), "median": results, "runs": raw}
    write_reports(report, os.path.join(HERE, "results", stamp))


if __name__ == "__main__":
    main()

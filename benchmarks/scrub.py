"""Publishing beside committing (issue 18): on the benchmark's guest tree, `vml commit` of
the base tree, then `vml publish` of that entry; then the tree after a day of work, committed
and published again. The issue's bound: a publish takes at most 1.5x its commit. Also the
content scan's engine: Hyperscan against one Python `re` alternation of the same patterns,
on the same bytes (the first 256 MB of the tree's files).

Usage: .venv/bin/python benchmarks/scrub.py [--repeat 3]   (after benchmarks/dataset)
Writes benchmarks/results/<date>-scrub.json and prints a table.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from run import VML, bench_arguments, timed  # noqa: E402

from vml.scrub.patterns import CONTENT, content_matcher  # noqa: E402


def one_run(data: str, scratch: str) -> dict:
    work = os.path.join(scratch, "scrub")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    area = os.path.join(work, "area")
    subprocess.run(["cp", "-a", os.path.join(data, "base"), area], check=True)
    env = {**os.environ, "LC_ALL": "C", "VML_AUTHOR_NAME": "bench", "VML_AUTHOR_EMAIL": "bench@example.org",
           "VML_REPO": os.path.join(work, ".vml")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([VML, "init", work], env=env, check=True, capture_output=True)
    subprocess.run([VML, "area", "add", "a", "--dir", area], env=env, check=True, capture_output=True)
    result = {}
    for step in ("initial", "incremental"):
        if step == "incremental":
            subprocess.run([sys.executable, os.path.join(HERE, "day_of_work.py"), area], check=True)
        subprocess.run(["sync"], check=True)
        commit = timed([[VML, "commit", "-m", step]], cwd=work, env=env)
        subprocess.run(["sync"], check=True)
        publish = timed([[VML, "publish", "main"]], cwd=work, env=env)
        result[f"{step}_commit_s"], result[f"{step}_publish_s"] = commit.seconds, publish.seconds
        result[f"{step}_commit_rss_kb"], result[f"{step}_publish_rss_kb"] = commit.rss_kb, publish.rss_kb
    report = json.loads(subprocess.run([VML, "publish", "main", "--dry-run", "--json"], cwd=work, env=env, check=True,
                                       capture_output=True, text=True).stdout)
    result["findings"] = len(report["findings"])
    result["packaged"] = len(report["packaged"])
    shutil.rmtree(work, ignore_errors=True)
    return result


def engines(data: str, limit: int = 256 << 20) -> dict:
    """MB/s of Hyperscan and of Python's re over the same bytes, with the same patterns."""
    pieces, size = [], 0
    for top, _dirs, files in os.walk(os.path.join(data, "base", "usr")):
        for name in files:
            path = os.path.join(top, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as handle:
                    pieces.append(handle.read())
                size += len(pieces[-1])
            if size >= limit:
                break
        if size >= limit:
            break
    sample = b"".join(pieces)[:limit]
    matcher = content_matcher()
    started = time.perf_counter()
    matcher.ends(sample)
    hyperscan_s = time.perf_counter() - started
    alternation = re.compile(b"|".join(b"(?:" + pattern.prefilter + b")" for pattern in CONTENT), re.DOTALL)
    part = sample[: 16 << 20]  # re is slow: time a part and scale
    started = time.perf_counter()
    for _match in alternation.finditer(part):
        pass
    re_s = (time.perf_counter() - started) * len(sample) / len(part)
    return {"sample_mb": len(sample) / 1e6, "hyperscan_mb_s": len(sample) / 1e6 / hyperscan_s, "re_mb_s": len(sample) / 1e6 / re_s}


def main() -> None:
    args = bench_arguments(__doc__.splitlines()[0]).parse_args()
    runs = []
    for number in range(args.repeat):
        print(f"scrub: run {number + 1} of {args.repeat}", file=sys.stderr)
        runs.append(one_run(args.data, args.scratch))
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    report = {"date": datetime.date.today().isoformat(), "repeat": args.repeat, "median": median, "runs": runs,
              "engines": engines(args.data)}
    path = os.path.join(HERE, "results", f"{report['date']}-scrub.json")
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    for step in ("initial", "incremental"):
        commit, publish = median[f"{step}_commit_s"], median[f"{step}_publish_s"]
        print(f"{step}: commit {commit:.2f} s, publish {publish:.2f} s ({publish / commit:.2f}x commit); peak rss "
              f"{median[f'{step}_commit_rss_kb'] / 1024:.0f} / {median[f'{step}_publish_rss_kb'] / 1024:.0f} MB")
    found = report["engines"]
    print(f"content scan of {found['sample_mb']:.0f} MB: Hyperscan {found['hyperscan_mb_s']:.0f} MB/s, "
          f"one re alternation {found['re_mb_s']:.1f} MB/s ({found['hyperscan_mb_s'] / found['re_mb_s']:.0f}x)")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

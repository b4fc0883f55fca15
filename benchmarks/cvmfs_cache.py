"""A CVMFS cache carried by vml against `scp -r` (issue 22, seed 004: "a large number of
files (~2GB) will be cached in the VM ... downloaded one by one"): a cache of 200,000 files
laid out as CVMFS lays it out (256 directories of content-addressed files, sizes spread as
a software release's are), pushed to and cloned from an ssh:// remote served by a real sshd
on 127.0.0.1, against scp -r of the same directory up to and back from that sshd.

Steps, each timed: vml commit (a dir area on a copy of the cache), vml push (to a new bare
repository over ssh), vml clone + checkout --to (a new repository, the files written out);
scp -r up, scp -r down. Medians of --repeat rounds, each on a fresh file system.

Usage: .venv/bin/python benchmarks/cvmfs_cache.py [--repeat 3] [--files 200000]
Writes benchmarks/results/<date>-cvmfs-cache.json and prints a table.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "support"))
sys.path.insert(0, HERE)

from run import VML, bench_arguments, du, fresh_filesystem, timed  # noqa: E402
from sshd import running_sshd  # noqa: E402

STEPS = ("vml_commit", "vml_push", "vml_clone_checkout", "scp_up", "scp_down")
WORDS = [b"TFile", b"TTree", b"Athena", b"xAOD", b"calibration", b"GeV", b"track", b"vertex", b"jet", b"muon", b"0x7f", b"\x00\x01"]


def make_cache(root: str, files: int, seed: int = 2026) -> None:
    """`files` files under root/shared/00..ff, named by a 38-digit hex id as CVMFS names its
    objects; sizes log-normal around 4 KiB (a long tail to a few MiB: a release's headers,
    scripts, libraries), contents half words, half random (compressible about 2:1)."""
    rng = random.Random(seed)
    shared = os.path.join(root, "shared")
    for bucket in range(256):
        os.makedirs(os.path.join(shared, f"{bucket:02x}"), exist_ok=True)
    for _n in range(files):
        size = min(int(rng.lognormvariate(8.3, 1.3)), 4 << 20)
        name = f"{rng.getrandbits(152):038x}"
        text = b" ".join(rng.choice(WORDS) for _ in range(size // 12 + 1))[: size // 2]
        with open(os.path.join(shared, name[:2], name[2:] + "C"), "wb") as out:
            out.write(text + rng.randbytes(size - len(text)))


def cache_data(data: str, files: int) -> str:
    """The generated cache under the benchmark data (made once per size)."""
    root = os.path.join(data, f"cvmfs-cache-{files}")
    stamp = os.path.join(root, ".complete")
    if not os.path.exists(stamp):
        subprocess.run(["rm", "-rf", root], check=True)
        print(f"cvmfs_cache: generating {files:,} files in {root}", file=sys.stderr)
        make_cache(root, files)
        open(stamp, "w").close()
    return root


def one_round(cache: str, scratch: str, ssh_env: dict) -> dict:
    with fresh_filesystem(scratch) as work:
        os.makedirs(work)
        area = os.path.join(work, "cvmfs")
        subprocess.run(["cp", "-a", cache, area], check=True)
        os.unlink(os.path.join(area, ".complete"))
        env = {**os.environ, **ssh_env, "LC_ALL": "C", "VML_AUTHOR_NAME": "bench", "VML_AUTHOR_EMAIL": "bench@example.org"}

        def run(*argv: str, cwd: str = work) -> None:
            subprocess.run(list(argv), cwd=cwd, env=env, check=True, capture_output=True)

        repo = os.path.join(work, "lab")
        os.makedirs(repo)
        run(VML, "init", cwd=repo)
        run(VML, "area", "add", "cache", "--dir", area, cwd=repo)
        run(VML, "init", "--bare", os.path.join(work, "shared.vml"))
        run(VML, "remote", "add", "origin", f"ssh://testhost{work}/shared.vml", cwd=repo)
        subprocess.run(["sync"], check=True)
        steps = {
            "vml_commit": [[VML, "commit", "-m", "the CVMFS cache"]],
            "vml_push": [[VML, "push"]],
            "vml_clone_checkout": [[VML, "clone", f"ssh://testhost{work}/shared.vml", os.path.join(work, "colleague")],
                                   f"cd {work}/colleague && {VML} checkout main --to {work}/colleague-cache"],
        }
        result = {}
        for step, commands in steps.items():
            measured = timed(commands, cwd=repo, env=env)
            result[f"{step}_s"], result[f"{step}_cpu_s"] = measured.seconds, measured.cpu_seconds
        result["repository_bytes"] = du(os.path.join(work, "shared.vml"))
        same = subprocess.run(["diff", "-r", "-q", area, os.path.join(work, "colleague-cache")], capture_output=True, text=True)
        if same.returncode != 0:
            raise RuntimeError(f"the clone's checkout differs from the cache: {same.stdout[:500]}")
        scp = ["scp", "-q", "-r", "-F", os.path.join(ssh_env["HOME"], ".ssh", "config")]  # (ssh reads the passwd home, not $HOME)
        up = timed([[*scp, area, f"testhost:{work}/scp-up"]], cwd=work, env=env)
        down = timed([[*scp, f"testhost:{work}/scp-up", os.path.join(work, "scp-down")]], cwd=work, env=env)
        result["scp_up_s"], result["scp_up_cpu_s"] = up.seconds, up.cpu_seconds
        result["scp_down_s"], result["scp_down_cpu_s"] = down.seconds, down.cpu_seconds
        result["cache_bytes"] = du(area)
        return result


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    args = parser.parse_args()
    cache = cache_data(args.data, args.files)
    with running_sshd(Path(args.scratch) / "sshd-cvmfs") as server:
        rounds = []
        for number in range(args.repeat):
            print(f"cvmfs_cache: round {number + 1} of {args.repeat}", file=sys.stderr)
            rounds.append(one_round(cache, args.scratch, server.env))
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    report = {"date": datetime.date.today().isoformat(), "files": args.files, "repeat": args.repeat, "median": median, "rounds": rounds}
    path = os.path.join(HERE, "results", f"{report['date']}-cvmfs-cache.json")
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    push, fetch = median["vml_push_s"], median["vml_clone_checkout_s"]
    print(f"{args.files:,} files, {median['cache_bytes'] / 1e9:.2f} GB; the shared repository {median['repository_bytes'] / 1e9:.2f} GB; "
          f"median of {args.repeat}")
    print(f"{'step':<22}{'seconds':>10}")
    for step in STEPS:
        print(f"{step:<22}{median[step + '_s']:>9.1f}s")
    print(f"push / scp up: {push / median['scp_up_s']:.2f}x; clone + checkout / scp down: {fetch / median['scp_down_s']:.2f}x; "
          f"commit + push / scp up: {(median['vml_commit_s'] + push) / median['scp_up_s']:.2f}x")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Pushing and cloning over ssh and over HTTP: vml push to a bare repository over a real
sshd on 127.0.0.1 (SFTP) and to a real `vml serve` on 127.0.0.1 (issue 19), beside `restic
backup` to an sftp repository through the same sshd (Debian 12 has no restic rest-server),
on the benchmark's guest tree (issue 6). Each tool saves the base tree, then the tree after a
day of work; then each remote is cloned whole (restic: restore). Reported: the time and the
bytes that reached the server for each step, as medians of --repeat runs.

Usage: .venv/bin/python benchmarks/transfer.py [--repeat 3]   (after benchmarks/dataset)
Writes benchmarks/results/<date>-transfer.json and prints a table.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "support"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))  # support.* for the modules that import each other
sys.path.insert(0, HERE)

from run import VML, bench_arguments, du, timed  # noqa: E402
from support.server import start_server  # noqa: E402
from support.sshd import running_sshd  # noqa: E402


def one_run(base: str, scratch: str, home_env: dict) -> dict:
    work = os.path.join(scratch, "transfer")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    area = os.path.join(work, "area")
    subprocess.run(["cp", "-a", base, area], check=True)
    env = {**os.environ, **home_env, "LC_ALL": "C", "VML_AUTHOR_NAME": "bench", "VML_AUTHOR_EMAIL": "bench@example.org",
           "VML_REPO": os.path.join(work, "local", ".vml"), "RESTIC_PASSWORD": "bench",
           "RESTIC_CACHE_DIR": os.path.join(work, "restic-cache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    vml_remote, restic_remote = os.path.join(work, "server-vml"), os.path.join(work, "server-restic")
    # OpenSSH reads the config of the passwd home, not $HOME: name the test one explicitly.
    ssh_config = os.path.join(home_env["HOME"], ".ssh", "config")
    restic = ["restic", "-o", f"sftp.command=ssh -F {ssh_config} testhost -s sftp", "-r", f"sftp:testhost:{restic_remote}"]

    def run(*argv: str) -> None:
        subprocess.run(list(argv), cwd=work, env=env, check=True, capture_output=True)

    run(VML, "init", os.path.join(work, "local"))
    run(VML, "area", "add", "a", "--dir", area)
    run(VML, "init", "--bare", vml_remote)
    run(VML, "remote", "add", "origin", f"ssh://testhost{vml_remote}")
    web = start_server(Path(work) / "web")
    env["VML_TOKEN"] = web.add_user("bench")
    run(VML, "remote", "add", "web", web.ns("bench"))
    run(*restic, "init")
    result = {}
    for step in ("initial", "incremental"):
        if step == "incremental":
            subprocess.run([sys.executable, os.path.join(HERE, "day_of_work.py"), area], check=True)
        subprocess.run(["sync"], check=True)
        commit = timed([[VML, "commit", "-m", step]], cwd=work, env=env)
        before = du(vml_remote)
        subprocess.run(["sync"], check=True)
        push = timed([[VML, "push"]], cwd=work, env=env)
        result[f"vml_{step}_push_s"] = push.seconds
        result[f"vml_{step}_commit_s"] = commit.seconds
        result[f"vml_{step}_bytes"] = du(vml_remote) - before
        before = du(str(web.repo))
        subprocess.run(["sync"], check=True)
        result[f"http_{step}_push_s"] = timed([[VML, "push", "web"]], cwd=work, env=env).seconds
        result[f"http_{step}_bytes"] = du(str(web.repo)) - before
        before = du(restic_remote)
        subprocess.run(["sync"], check=True)
        backup = timed([[*restic, "backup", "--host", "bench", area]], cwd=work, env=env)
        result[f"restic_{step}_backup_s"] = backup.seconds
        result[f"restic_{step}_bytes"] = du(restic_remote) - before
    clone_env = {k: v for k, v in env.items() if k != "VML_REPO"}
    for name, url in (("vml", f"ssh://testhost{vml_remote}"), ("http", web.ns("bench"))):
        target = os.path.join(work, f"clone-{name}")
        subprocess.run(["sync"], check=True)
        result[f"{name}_clone_s"] = timed([[VML, "clone", url, target]], cwd=work, env=clone_env).seconds
        result[f"{name}_clone_bytes"] = du(target)
        shutil.rmtree(target)
    subprocess.run(["sync"], check=True)
    result["restic_restore_s"] = timed([[*restic, "restore", "latest", "--target", os.path.join(work, "restored")]], cwd=work, env=env).seconds
    web.stop()
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    args = bench_arguments(__doc__.splitlines()[0]).parse_args()
    with running_sshd(Path(args.scratch) / "sshd") as server:
        runs = []
        for number in range(args.repeat):
            print(f"transfer: run {number + 1} of {args.repeat}", file=sys.stderr)
            runs.append(one_run(os.path.join(args.data, "base"), args.scratch, server.env))
    median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    report = {"date": datetime.date.today().isoformat(), "repeat": args.repeat, "median": median, "runs": runs}
    path = os.path.join(HERE, "results", f"{report['date']}-transfer.json")
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    for step in ("initial", "incremental"):
        vml_total = median[f"vml_{step}_commit_s"] + median[f"vml_{step}_push_s"]
        restic_s = median[f"restic_{step}_backup_s"]
        print(f"{step}: vml push {median[f'vml_{step}_push_s']:.2f} s, {median[f'vml_{step}_bytes'] / 1e6:.1f} MB to the server "
              f"(commit + push {vml_total:.2f} s, {vml_total / restic_s:.2f}x restic); "
              f"restic backup {restic_s:.2f} s, {median[f'restic_{step}_bytes'] / 1e6:.1f} MB")
        http_s, sftp_s = median[f"http_{step}_push_s"], median[f"vml_{step}_push_s"]
        print(f"{step}: vml push over HTTP {http_s:.2f} s, {median[f'http_{step}_bytes'] / 1e6:.1f} MB "
              f"({sftp_s / http_s:.2f}x the throughput of SFTP)")
    print(f"clone: SFTP {median['vml_clone_s']:.2f} s, HTTP {median['http_clone_s']:.2f} s "
          f"({median['vml_clone_s'] / median['http_clone_s']:.2f}x the throughput of SFTP); restic restore {median['restic_restore_s']:.2f} s")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

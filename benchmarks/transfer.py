"""Pushing and cloning over ssh, over HTTP and to object storage: vml push to a bare
repository over a real sshd on 127.0.0.1 (SFTP) and to a real `vml serve` on 127.0.0.1
(issue 19), beside `restic backup` to an sftp repository through the same sshd (Debian 12
has no restic rest-server); and vml push to s3:// buckets on two real S3 servers
(SeaweedFS, Ceph RGW: tests/support/s3.py) beside restic's S3 backend on the same server
(issue 20). On the benchmark's guest tree (issue 6): each tool saves the base tree, then the
tree after a day of work; then each remote is cloned whole (restic: restore). Reported: the
time and the bytes that reached the server for each step, as medians of --repeat runs, and
the requests vml made.

Usage: .venv/bin/python benchmarks/transfer.py [--repeat 3] [--only s3]   (after benchmarks/dataset)
Writes benchmarks/results/<date>-transfer.json (or -transfer-s3.json) and prints a table.
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


def s3_run(server, base: str, scratch: str) -> dict:
    """vml and restic to buckets of one S3 server: push (after a commit, timed apart), the
    day of work, clone (vml: the entries, then a checkout; restic: restore)."""
    work = os.path.join(scratch, f"transfer-{server.name}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    area = os.path.join(work, "area")
    subprocess.run(["cp", "-a", base, area], check=True)
    vml_bucket, restic_bucket = server.new_bucket(), server.new_bucket()
    env = {**os.environ, **server.env(), "LC_ALL": "C", "VML_AUTHOR_NAME": "bench", "VML_AUTHOR_EMAIL": "bench@example.org",
           "VML_REPO": os.path.join(work, "local", ".vml"), "RESTIC_PASSWORD": "bench", "RESTIC_CACHE_DIR": os.path.join(work, "restic-cache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    url = f"s3://{vml_bucket}/repo"
    restic = ["restic", "-r", f"s3:{server.endpoint}/{restic_bucket}"]

    def run(*argv: str, **options) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), cwd=work, env=options.get("env", env), check=True, capture_output=True, text=True)

    def stored(bucket: str) -> int:
        pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sum(item["Size"] for page in pages for item in page.get("Contents", []))

    run(VML, "init", os.path.join(work, "local"))
    run(VML, "area", "add", "a", "--dir", area)
    run(VML, "init", "--bare", url)
    run(VML, "remote", "add", "origin", url)
    run(*restic, "init")
    result = {}
    for step in ("initial", "incremental"):
        if step == "incremental":
            subprocess.run([sys.executable, os.path.join(HERE, "day_of_work.py"), area], check=True)
        subprocess.run(["sync"], check=True)
        result[f"vml_{step}_commit_s"] = timed([[VML, "commit", "-m", step]], cwd=work, env=env).seconds
        before = stored(vml_bucket)
        subprocess.run(["sync"], check=True)
        result[f"vml_{step}_push_s"] = timed([[VML, "push"]], cwd=work, env=env).seconds
        result[f"vml_{step}_bytes"] = stored(vml_bucket) - before
        before = stored(restic_bucket)
        subprocess.run(["sync"], check=True)
        result[f"restic_{step}_backup_s"] = timed([[*restic, "backup", "--host", "bench", area]], cwd=work, env=env).seconds
        result[f"restic_{step}_bytes"] = stored(restic_bucket) - before
    # The requests of one more push after a small change, and of a fetch with nothing new.
    with open(os.path.join(area, "etc", "motd"), "a") as changed:
        changed.write("one more line\n")
    run(VML, "commit", "-m", "small")
    result["vml_small_push_requests"] = sum(json.loads(run(VML, "push", "--json").stdout)["requests"].values())
    clone_env = {k: v for k, v in env.items() if k != "VML_REPO"}
    target = os.path.join(work, "clone")
    subprocess.run(["sync"], check=True)
    cloned = timed([[VML, "clone", url, target]], cwd=work, env=clone_env)
    result["vml_clone_s"] = cloned.seconds
    result["vml_clone_bytes"] = du(target)
    result["vml_idle_fetch_requests"] = sum(json.loads(run(VML, "fetch", "--json", env={**clone_env, "VML_REPO": os.path.join(target, ".vml")})
                                            .stdout)["requests"].values())
    run(VML, "area", "add", "w", "--dir", os.path.join(work, "checked-out"), env={**clone_env, "VML_REPO": os.path.join(target, ".vml")})
    subprocess.run(["sync"], check=True)
    result["vml_checkout_s"] = timed([[VML, "checkout", "main"]], cwd=work, env={**clone_env, "VML_REPO": os.path.join(target, ".vml")}).seconds
    subprocess.run(["sync"], check=True)
    result["restic_restore_s"] = timed([[*restic, "restore", "latest", "--target", os.path.join(work, "restored")]], cwd=work, env=env).seconds
    shutil.rmtree(work, ignore_errors=True)
    return result


def s3_main(args) -> None:
    from support.s3 import start_ceph_rgw, start_seaweedfs

    report: dict = {"date": datetime.date.today().isoformat(), "repeat": args.repeat}
    for start in (start_seaweedfs, start_ceph_rgw):
        home = Path(args.scratch) / f"s3-{start.__name__}"
        shutil.rmtree(home, ignore_errors=True)  # what a run that was stopped left
        server = start(home)
        try:
            runs = []
            for number in range(args.repeat):
                print(f"transfer to {server.name}: run {number + 1} of {args.repeat}", file=sys.stderr)
                runs.append(s3_run(server, os.path.join(args.data, "base"), args.scratch))
        finally:
            server.stop()
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        report[server.name] = {"median": median, "runs": runs}
        for step in ("initial", "incremental"):
            push, commit, backup = median[f"vml_{step}_push_s"], median[f"vml_{step}_commit_s"], median[f"restic_{step}_backup_s"]
            print(f"{server.name} {step}: vml push {push:.2f} s ({push / backup:.2f}x restic's backup; commit + push "
                  f"{(commit + push) / backup:.2f}x), {median[f'vml_{step}_bytes'] / 1e6:.1f} MB "
                  f"({median[f'vml_{step}_bytes'] / median[f'restic_{step}_bytes']:.2f}x restic's); restic backup {backup:.2f} s, "
                  f"{median[f'restic_{step}_bytes'] / 1e6:.1f} MB")
        clone, checkout, restore = median["vml_clone_s"], median["vml_checkout_s"], median["restic_restore_s"]
        print(f"{server.name} clone: {clone:.2f} s ({clone / restore:.2f}x restic's restore; with the checkout {(clone + checkout) / restore:.2f}x); "
              f"restic restore {restore:.2f} s; requests: a small push {median['vml_small_push_requests']:.0f}, "
              f"a fetch with nothing new {median['vml_idle_fetch_requests']:.0f}")
    path = os.path.join(HERE, "results", f"{report['date']}-transfer-s3.json")
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    print(f"wrote {path}")


def main() -> None:
    parser = bench_arguments(__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["s3"], help="Run only the object-storage part.")
    args = parser.parse_args()
    if args.only == "s3":
        s3_main(args)
        return
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
    s3_main(args)


if __name__ == "__main__":
    main()

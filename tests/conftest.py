"""Shared fixtures: a vml command runner, a repository with one directory area, fsck checks."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# vml runs here as users run it: its modules compiled once, not again at each of the
# thousands of `vml` processes the suite starts (a shell may set this variable).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def pytest_collection_modifyitems(config, items):
    """The real-VM test first: it takes minutes on one worker while the rest run beside it."""
    items.sort(key=lambda item: item.get_closest_marker("vm") is None)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


class Vml:
    """Runs the real `vml` command line in a directory, as a user would: in this process by
    default (vml's own entry point, its output captured; a new process costs 0.3 s of
    imports), or as a process of its own with `separate=True` where that is the point
    (signals, resource limits, concurrency, what the process leaves behind)."""

    def __init__(self, cwd: Path, *, separate: bool = False):
        self.cwd = cwd
        self.separate = separate or bool(os.environ.get("VML_TEST_SUBPROCESS"))

    def __call__(self, *args: str, check: bool = True, env: dict | None = None, timeout: float = 300) -> Run:
        full_env = {**os.environ, "VML_AUTHOR_NAME": "Test User", "VML_AUTHOR_EMAIL": "test@example.org"}
        full_env.pop("VML_REPO", None)
        full_env.update(env or {})
        if self.separate:
            done = subprocess.run(
                [sys.executable, "-m", "vml", *args], cwd=self.cwd, env=full_env, capture_output=True, text=True, timeout=timeout
            )
            result = Run(done.returncode, done.stdout, done.stderr)
        else:
            result = run_in_process(self.cwd, list(args), full_env)
        if check and result.returncode != 0:
            raise AssertionError(f"vml {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def fsck_clean(self, *repo_args: str) -> None:
        """vml fsck finds no damage, and git's own fsck finds none either (a repository
        must stay a valid git repository after every vml command). `repo_args`: --repo PATH."""
        result = self(*repo_args, "fsck", "--json")
        report = result.json()
        assert report["damaged"] == [] and report["problems"] == [], report
        git_fsck_clean(Path(repo_args[1]) if repo_args else find_repository(self.cwd))


def find_repository(start: Path) -> Path:
    """The repository vml finds from `start`: .vml upward, as vml looks for it."""
    for directory in (start, *start.parents):
        if (directory / ".vml").is_dir():
            return directory / ".vml"
    raise AssertionError(f"no .vml at or above {start}")


# What git fsck prints without finding damage: objects no ref reaches (a killed commit's),
# notices about a new repository, and the temporary file of an object write that was
# killed: libgit2's, or a transport's into a bare remote (NAME.<uuid hex>.tmp; git ignores
# its own, tmp_obj_*, but not these).
_GIT_FSCK_HARMLESS = re.compile(r"^(dangling |notice: |bad sha1 file: .*/(tmp_object_git2_|[0-9a-f]{38}\.[0-9a-f]{32}\.tmp$))")


def git_fsck_clean(git_dir: Path) -> None:
    """Plain `git fsck --full --strict`, an oracle vml did not write, finds nothing wrong."""
    done = subprocess.run(["git", f"--git-dir={git_dir}", "fsck", "--full", "--strict", "--no-progress"],
                          capture_output=True, text=True)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if not _GIT_FSCK_HARMLESS.match(line)]
    assert done.returncode == 0 and not problems, (done.returncode, done.stdout, done.stderr)


def run_in_process(cwd: Path, args: list[str], env: dict) -> Run:
    """`vml ARGS` through vml.cli.main in this process, with its own working directory,
    environment, argv, stdout and stderr (bytes, as a pipe would carry them)."""
    from vml import cli

    saved = (os.getcwd(), dict(os.environ), sys.argv, sys.stdout, sys.stderr)
    out, err = io.BytesIO(), io.BytesIO()
    stdout = sys.stdout = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    stderr = sys.stderr = io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    sys.argv = ["vml", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        for stream in (stdout, stderr):
            stream.flush()
            stream.detach()  # (closing the wrapper would close the buffer it wraps)
        os.chdir(saved[0])
        os.environ.clear()
        os.environ.update(saved[1])
        sys.argv, sys.stdout, sys.stderr = saved[2], saved[3], saved[4]
    return Run(code, out.getvalue().decode("utf-8"), err.getvalue().decode("utf-8"))


USAGE = 2  # exit status of bad input


def one_line_error(result: Run, code: int | None = USAGE) -> str:
    """The one stderr line of a failed command, which must show no traceback."""
    if code is not None:
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture
def vml(tmp_path: Path) -> Vml:
    return Vml(tmp_path)


@pytest.fixture(params=["default", "processes"])
def worker_processes(request, monkeypatch) -> str:
    """Who reads a commit's files and writes a checkout's: as vml chooses (threads of its own
    process for the first PROCESSES_AFTER files, which is all of most test trees, then worker
    processes: vml/workers.py), or worker processes from the first file on. For in-process
    runs of vml, which read the thresholds when they commit or restore."""
    if request.param == "processes":
        from vml.areas.capture import local as capture
        from vml.areas.restore import local as restore

        monkeypatch.setattr(capture, "PROCESSES_AFTER", 0)
        monkeypatch.setattr(restore, "PROCESSES_AFTER", 0)
        monkeypatch.setenv("VML_WORKER_PROCESSES", "2")
    return request.param


@pytest.fixture
def guest(tmp_path: Path) -> Path:
    root = tmp_path / "guest"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "home" / "user").mkdir(parents=True)
    (root / "home" / "user" / "notes.txt").write_text("analysis notes\n")
    return root


@pytest.fixture
def repo(vml: Vml, guest: Path) -> Vml:
    """A repository at tmp_path/.vml with area wa1 on tmp_path/guest; fsck must pass at the end."""
    vml("init")
    vml("area", "add", "wa1", "--dir", str(guest))
    yield vml
    vml.fsck_clean()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 (see tests/support/sshd.py); its client settings in `sshd.env`."""
    from support.sshd import start_sshd

    process, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def sshd_factory(tmp_path_factory):
    """Starts sshds with extra sshd_config lines (a guest that lacks a tool, say); stops them after the test."""
    from support.sshd import start_sshd

    processes = []

    def start(extra_config: str):
        process, server = start_sshd(tmp_path_factory.mktemp("sshd"), extra_config)
        processes.append(process)
        return server

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def server(tmp_path_factory):
    """A real `vml serve` on 127.0.0.1 with a new repository (tests/support/server.py); users
    are added with `server.add_user(NAME)`, which returns a write token. Stopped after the test."""
    from support.server import start_server

    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    running.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1 (tests/support/s3.py): started when a test first
    asks for it, once per pytest process, stopped at the end."""
    from support.s3 import start_seaweedfs

    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ceph_rgw(tmp_path_factory):
    """A real Ceph RADOS Gateway on 127.0.0.1 (a monitor, an OSD, radosgw; tests/support/s3.py),
    like `seaweedfs`: started when first asked for, once per pytest process."""
    from support.s3 import start_ceph_rgw

    server = start_ceph_rgw(tmp_path_factory.mktemp("ceph"))
    yield server
    server.stop()


@pytest.fixture(scope="session", params=["seaweedfs", "ceph"])
def s3_server(request):
    """Each real S3 server in turn: a test that takes `s3_server` runs against both."""
    return request.getfixturevalue({"seaweedfs": "seaweedfs", "ceph": "ceph_rgw"}[request.param])

"""vml as a separate process, for tests that kill it: start one, and SIGKILL it at a moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def vml_env() -> dict:
    env = {**os.environ, "VML_AUTHOR_NAME": "Test User", "VML_AUTHOR_EMAIL": "test@example.org"}
    env.pop("VML_REPO", None)
    return env


def start(cwd: Path, *args: str) -> subprocess.Popen:
    """`vml ARGS` in its own session (so a kill reaches every process it started)."""
    return subprocess.Popen([sys.executable, "-m", "vml", *args], cwd=cwd, env=vml_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def kill_at(proc: subprocess.Popen, delay: float = 0) -> bool:
    """SIGKILL the process (and its group) after `delay` seconds; True if it was still running.
    It must have ended by itself with success, or by the kill."""
    time.sleep(delay)
    running = proc.poll() is None
    if running:
        os.killpg(proc.pid, signal.SIGKILL)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, -signal.SIGKILL), (proc.returncode, err)
    return running


def sleeping_worker(marker: str):
    """A worker handler (vml/workers.py) that marks the file `marker` and sleeps on each request."""

    def handle(_request, _descriptors):
        Path(marker).touch()
        time.sleep(120)

    return handle

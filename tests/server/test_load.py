"""Twenty clients at once against one server (tests/support/load.py; benchmarks/load.py runs
it for minutes): no accepted entry lost, fsck clean, every request answered."""

from __future__ import annotations

import pytest
from conftest import Vml, git_fsck_clean

pytestmark = pytest.mark.slow


def test_twenty_clients_push_and_fetch_at_once(tmp_path, server):
    from support.load import run_load

    def in_process(cwd, *args, token):  # the set-up, one client after another: no process start each
        return Vml(cwd)(*args, check=False, env={"VML_TOKEN": token})

    result = run_load(server, tmp_path, clients=20, seconds=0, setup_runner=in_process)
    print(result)
    assert result.errors == []
    assert result.lost == []
    assert result.pushes >= 20  # every client got at least one round through
    assert result.fetches >= 20
    report = Vml(tmp_path)("--repo", str(server.repo), "fsck", "--json").json()
    assert report["damaged"] == [] and report["problems"] == []
    git_fsck_clean(server.repo)

"""`vml log -- PATH`: exactly the entries in which PATH (a file, or anything under a directory)
changed against their parent, newest first, in every output form."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import USAGE, Vml


@pytest.fixture(scope="module")
def logrepo(tmp_path_factory):
    """e1 initial; e2 hosts edited; e3 file added under home; e4 hosts deleted;
    e5 notes edited; e6 hosts added again; e7 a new top-level dir; e8 hosts becomes a directory; e9 changes nothing. Read-only for the tests."""
    base = tmp_path_factory.mktemp("logpath")
    guest = base / "guest"
    (guest / "etc").mkdir(parents=True)
    (guest / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (guest / "home" / "user").mkdir(parents=True)
    (guest / "home" / "user" / "notes.txt").write_text("analysis notes\n")
    vml = Vml(base)
    vml("init")
    vml("area", "add", "wa1", "--dir", str(guest))
    ids = {}

    def commit(name: str) -> None:
        ids[name] = vml("commit", "-m", name, "--json").json()["entry"]

    commit("e1")
    (guest / "etc" / "hosts").write_text("10.0.0.1 edited\n")
    commit("e2")
    (guest / "home" / "user" / "extra.txt").write_text("extra\n")
    commit("e3")
    (guest / "etc" / "hosts").unlink()
    commit("e4")
    (guest / "home" / "user" / "notes.txt").write_text("analysis notes, second day\n")
    commit("e5")
    (guest / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    commit("e6")
    (guest / "opt").mkdir()
    (guest / "opt" / "tool").write_text("tool\n")
    (guest / "etc" / "hosts.bak").write_text("not hosts\n")  # a name that starts like etc/hosts
    commit("e7")
    (guest / "etc" / "hosts").unlink()
    (guest / "etc" / "hosts").mkdir()
    (guest / "etc" / "hosts" / "x").write_text("now a directory\n")
    commit("e8")
    ids["e9"] = vml("commit", "-m", "e9", "--allow-empty", "--json").json()["entry"]  # changes nothing
    yield vml, ids
    vml.fsck_clean()


@pytest.fixture
def repo(logrepo):
    return logrepo[0]


@pytest.fixture
def history(logrepo):
    return logrepo[1]


def log_ids(repo, *args: str) -> list[str]:
    return [e["id"] for e in repo("log", "--json", *args).json()]


def named(history: dict[str, str], *names: str) -> list[str]:
    return [history[n] for n in names]


def test_file_path(repo, history):
    assert log_ids(repo) == named(history, "e9", "e8", "e7", "e6", "e5", "e4", "e3", "e2", "e1")
    assert log_ids(repo, "--", "etc/hosts") == named(history, "e8", "e6", "e4", "e2", "e1")
    assert log_ids(repo, "--", "etc/hosts/x") == named(history, "e8")
    assert log_ids(repo, "--", "home/user/notes.txt") == named(history, "e5", "e1")
    assert log_ids(repo, "--", "home/user/extra.txt") == named(history, "e3")
    assert log_ids(repo, "--", "opt/tool") == named(history, "e7")


def test_directory_path(repo, history):
    assert log_ids(repo, "--", "etc") == named(history, "e8", "e7", "e6", "e4", "e2", "e1")
    assert log_ids(repo, "--", "etc/hosts.bak") == named(history, "e7")
    assert log_ids(repo, "--", "home") == named(history, "e5", "e3", "e1")
    assert log_ids(repo, "--", "home/user") == named(history, "e5", "e3", "e1")
    assert log_ids(repo, "--", "opt") == named(history, "e7")


def test_several_paths_and_limits(repo, history):
    assert log_ids(repo, "--", "home/user/extra.txt", "opt") == named(history, "e7", "e3")
    assert log_ids(repo, "--", "etc/hosts", "home/user/notes.txt") == named(history, "e8", "e6", "e5", "e4", "e2", "e1")
    assert log_ids(repo, "-n", "2", "--", "etc/hosts") == named(history, "e8", "e6")
    # Starting from an older entry.
    assert log_ids(repo, history["e3"], "--", "etc/hosts") == named(history, "e2", "e1")
    # Whole components only, and a path that never existed: nothing, not an error.
    assert log_ids(repo, "--", "etc/host") == []
    assert log_ids(repo, "--", "home/us") == []
    result = repo("log", "--", "no/such/path")
    assert result.returncode == 0 and result.stdout.strip() == ""


def test_oneline(repo, history):
    lines = [line for line in repo("log", "--oneline", "--", "etc/hosts").stdout.splitlines() if line.strip()]
    want = named(history, "e8", "e6", "e4", "e2", "e1")
    assert len(lines) == len(want), lines
    for line, (entry, message) in zip(lines, zip(want, ["e8", "e6", "e4", "e2", "e1"])):
        first = line.split()[0]
        assert len(first) >= 7 and entry.startswith(first), (line, entry)
        assert message in line.split(), line


def test_default_text_output(repo, history):
    out = repo("log", "--", "home/user/notes.txt").stdout
    assert history["e5"] in out or history["e5"][:12] in out
    assert history["e1"] in out or history["e1"][:12] in out
    for other in ("e2", "e3", "e4", "e6", "e7", "e8", "e9"):
        assert history[other][:12] not in out
    assert out.index(history["e5"][:12]) < out.index(history["e1"][:12])


def test_metadata_only_change_counts(vml, guest: Path):
    vml("init")
    vml("area", "add", "wa1", "--dir", str(guest))
    e1 = vml("commit", "-m", "e1", "--json").json()["entry"]
    os.chmod(guest / "home" / "user" / "notes.txt", 0o600)
    e2 = vml("commit", "-m", "e2", "--json").json()["entry"]
    os.setxattr(guest / "etc" / "hosts", "user.tag", b"1")
    e3 = vml("commit", "-m", "e3", "--json").json()["entry"]
    assert log_ids(vml, "--", "home/user/notes.txt") == [e2, e1]
    assert log_ids(vml, "--", "etc/hosts") == [e3, e1]
    assert log_ids(vml, "--", "etc") == [e3, e1]
    vml.fsck_clean()


def test_log_path_before_any_entry_and_bad_flag(vml, guest: Path):
    vml("init")
    vml("area", "add", "wa1", "--dir", str(guest))
    assert vml("log", "--json", "--", "etc").json() == []
    result = vml("log", "--bogus", "--", "etc", check=False)
    assert result.returncode == USAGE and "Traceback" not in result.stderr and "--bogus" in result.stderr
    first = vml("commit", "-m", "one", "--json").json()["entry"]
    assert log_ids(vml, "--", "etc") == [first]
    assert log_ids(vml, "--", "nothing/here") == []
    vml.fsck_clean()


def test_path_on_other_branches_and_revisions(vml, guest: Path):
    vml("init")
    vml("area", "add", "wa1", "--dir", str(guest))
    base = vml("commit", "-m", "base", "--json").json()["entry"]
    vml("switch", "-c", "topic")
    (guest / "etc" / "hosts").write_text("10.0.0.7 topic\n")
    on_topic = vml("commit", "-m", "topic edit", "--json").json()["entry"]
    vml("switch", "main")
    (guest / "home" / "user" / "notes.txt").write_text("main edit\n")
    on_main = vml("commit", "-m", "main edit", "--json").json()["entry"]
    assert log_ids(vml, "--", "etc/hosts") == [base]
    assert log_ids(vml, "topic", "--", "etc/hosts") == [on_topic, base]
    assert log_ids(vml, "topic", "--", "home/user/notes.txt") == [base]
    all_hosts = log_ids(vml, "--all", "--", "etc/hosts")
    assert sorted(all_hosts) == sorted([on_topic, base]) and all_hosts[-1] == base
    assert set(log_ids(vml, "--all", "--", "home")) == {on_main, base}
    vml.fsck_clean()

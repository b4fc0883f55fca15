"""Bad input on the command line: one clear line on stderr, no traceback, the right exit code."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import USAGE, Vml, one_line_error


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_not_in_a_repository(vml, tmp_path: Path):
    for args in (["log"], ["commit", "-m", "x"], ["show", "HEAD"], ["fsck"], ["gc"], ["area", "list"]):
        line = one_line_error(vml(*args, check=False), USAGE)
        assert "not in a vml repository" in line


def test_repo_option_pointing_to_a_non_repository(vml, tmp_path: Path):
    (tmp_path / "plain").mkdir()
    line = one_line_error(vml("--repo", str(tmp_path / "plain"), "log", check=False), USAGE)
    assert str(tmp_path / "plain") in line
    line = one_line_error(vml("--repo", str(tmp_path / "absent"), "log", check=False), USAGE)
    assert "absent" in line


def test_vml_repo_environment_variable(repo, guest: Path, tmp_path: Path, tmp_path_factory):
    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # not below tmp_path, so nothing to discover
    other = Vml(elsewhere)
    assert one_line_error(other("log", "--json", check=False), USAGE)
    for value in (str(tmp_path), str(tmp_path / ".vml")):
        log = other("log", "--json", env={"VML_REPO": value}).json()
        assert [e["id"] for e in log] == [entry]
    # --repo wins over the environment.
    line = one_line_error(other("--repo", str(elsewhere), "log", check=False, env={"VML_REPO": str(tmp_path)}), USAGE)
    assert "elsewhere" in line
    # A bad VML_REPO is an error, not a silent fallback to the current directory.
    one_line_error(repo("log", check=False, env={"VML_REPO": str(elsewhere)}), USAGE)


def test_repository_found_from_a_subdirectory(repo, guest: Path):
    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    deep = Vml(guest / "home" / "user")
    assert [e["id"] for e in deep("log", "--json").json()] == [entry]
    (guest / "home" / "user" / "notes.txt").write_text("more notes\n")
    second = deep("commit", "-m", "two", "--json").json()
    assert second["created"] and second["parent"] == entry


def test_unknown_entry(repo, tmp_path: Path):
    repo("commit", "-m", "one")
    for args in (["show", "nosuch"], ["checkout", "nosuch", "--to", str(tmp_path / "out")], ["log", "nosuch"],
                 ["checkout", "nosuch", "-a", "wa1"], ["show", "HEAD~5"]):
        line = one_line_error(repo(*args, check=False), USAGE)
        assert "nosuch" in line or "HEAD~5" in line, line
    assert not (tmp_path / "out").exists()


def test_head_of_an_area_without_entries(repo):
    one_line_error(repo("show", "HEAD", check=False), USAGE)
    one_line_error(repo("log", "HEAD", check=False), USAGE)


def test_prefix_shared_with_a_non_entry_object(repo, tmp_path: Path):
    import hashlib
    import subprocess

    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    prefix = entry[:5]
    # A git blob whose id starts like the entry's: the prefix then names two objects.
    n = 0
    while True:
        content = f"filler {n}\n".encode()
        if hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest().startswith(prefix):
            break
        n += 1
    blob = subprocess.run(["git", "--git-dir", str(tmp_path / ".vml"), "hash-object", "-w", "--stdin"],
                          input=content, capture_output=True, check=True).stdout.decode().strip()
    assert blob.startswith(prefix) and blob != entry
    # Only entries count when a prefix is resolved (git does the same for commit-ish names).
    assert repo("show", prefix, "--json").json()["entry"]["id"] == entry
    assert repo("show", entry, "--json").json()["entry"]["id"] == entry
    # The blob is not an entry, whole or abbreviated.
    line = one_line_error(repo("show", blob, check=False), USAGE)
    assert blob in line, line


def test_commit_without_message(repo):
    result = repo("commit", check=False)
    assert result.returncode == USAGE
    assert "Traceback" not in result.stderr and "-m" in result.stderr
    line = one_line_error(repo("commit", "-m", "   ", check=False), USAGE)
    assert "message" in line
    assert repo("log", "--json").json() == []


def test_checkout_to_a_non_empty_directory(repo, tmp_path: Path):
    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    target = tmp_path / "busy"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "keep.txt").write_text("mine\n")
    (target / "hosts").write_text("not from vml\n")
    before = snapshot(target)
    line = one_line_error(repo("checkout", entry, "--to", str(target), check=False), USAGE)
    assert str(target) in line
    assert snapshot(target) == before
    assert sorted(p.name for p in target.iterdir()) == ["hosts", "sub"]
    # A file in the way is refused too.
    one_line_error(repo("checkout", entry, "--to", str(target / "hosts"), check=False), USAGE)
    assert (target / "hosts").read_text() == "not from vml\n"


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", "..", ".", "x.lock", "", "a b", "-a"])
def test_area_add_bad_name(repo, tmp_path: Path, name: str):
    result = repo("area", "add", "--dir", str(tmp_path / "d"), "--", name, check=False)
    one_line_error(result, USAGE)
    names = [a["name"] for a in repo("area", "list", "--json").json()]
    assert names == ["wa1"]
    assert not (tmp_path / ".vml" / "evil").exists() and not (tmp_path / "evil").exists()


def test_area_add_duplicate(repo, tmp_path: Path, guest: Path):
    line = one_line_error(repo("area", "add", "wa1", "--dir", str(tmp_path / "other"), check=False), USAGE)
    assert "wa1" in line
    areas = repo("area", "list", "--json").json()
    assert [(a["name"], a["location"]) for a in areas] == [("wa1", str(guest))]


def test_two_areas_need_a_choice(repo, tmp_path: Path):
    repo("area", "add", "wa2", "--dir", str(tmp_path / "second"))
    for args in (["commit", "-m", "x"], ["checkout", "main"]):
        line = one_line_error(repo(*args, check=False), USAGE)
        assert "wa1" in line and "wa2" in line and "-a" in line
    assert repo("commit", "-a", "wa1", "-m", "x", "--json").json()["created"]


def test_area_whose_directory_was_deleted(repo, guest: Path, tmp_path: Path):
    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    shutil.rmtree(guest)
    result = repo("commit", "-m", "two", check=False)
    assert result.returncode in (2, 3)
    line = one_line_error(result, result.returncode)
    assert str(guest) in line
    assert [e["id"] for e in repo("log", "--json").json()] == [entry]
    # The documented way back: checkout recreates the directory.
    repo("checkout", entry, "-a", "wa1")
    assert (guest / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"


def test_init_twice(repo, tmp_path: Path):
    before = (tmp_path / ".vml" / "config").read_text()
    line = one_line_error(repo("init", check=False), USAGE)
    assert "already" in line
    assert (tmp_path / ".vml" / "config").read_text() == before


def test_checkout_over_local_changes(repo, guest: Path):
    first = repo("commit", "-m", "one", "--json").json()["entry"]
    (guest / "etc" / "hosts").write_text("10.1.1.1 other\n")
    repo("commit", "-m", "two")
    (guest / "home" / "user" / "notes.txt").write_text("unsaved work\n")
    line = one_line_error(repo("checkout", first, "-a", "wa1", check=False), USAGE)
    assert "home/user/notes.txt" in line
    assert (guest / "home" / "user" / "notes.txt").read_text() == "unsaved work\n"
    assert (guest / "etc" / "hosts").read_text() == "10.1.1.1 other\n"
    # --force does it.
    repo("checkout", first, "-a", "wa1", "--force")
    assert (guest / "home" / "user" / "notes.txt").read_text() == "analysis notes\n"


def test_commit_without_changes(repo):
    first = repo("commit", "-m", "one", "--json").json()
    result = repo("commit", "-m", "again", "--json")
    assert result.returncode == 0
    again = result.json()
    assert again["created"] is False and again["entry"] == first["entry"]
    assert len(repo("log", "--json").json()) == 1


COMMANDS = [[], ["init"], ["area"], ["area", "add"], ["area", "list"], ["commit"], ["save"], ["log"], ["show"],
            ["checkout"], ["open"], ["fsck"], ["gc"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c) or "vml")
def test_help(vml, command: list[str]):
    for flag in ("--help", "-h"):
        result = vml(*command, flag, check=False)
        assert result.returncode == 0, result.stderr
        assert "Usage:" in result.stdout and result.stderr == ""


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_guest_and_an_unreachable_remote_both_exit_3(repo, vml, guest: Path, tmp_path: Path):
    """Both are the environment failing, not bad input (vml/errors.py: exit 3), whatever
    reaches them: an ssh area's guest, an ssh:// remote."""
    port = _closed_port()
    repo("commit", "-m", "one")
    repo("area", "add", "far", "--ssh", f"root@127.0.0.1:{port}", "--root", "/srv")
    guest_line = one_line_error(repo("status", "-a", "far", check=False), code=3)
    assert "area far" in guest_line and "127.0.0.1" in guest_line
    repo("remote", "add", "far", f"ssh://root@127.0.0.1:{port}/srv/repo")
    for args in (("push", "far"), ("fetch", "far")):
        remote_line = one_line_error(repo(*args, check=False), code=3)
        assert "127.0.0.1" in remote_line
    repo("area", "add", "gone", "--dir", str(tmp_path / "gone"))
    (tmp_path / "gone").mkdir()
    repo("commit", "-m", "in gone", "-a", "gone")
    (tmp_path / "gone").rmdir()
    assert "does not exist" in one_line_error(repo("status", "-a", "gone", check=False), code=3)
    # Naming something that does not exist stays bad input.
    assert "no area named" in one_line_error(repo("status", "-a", "nowhere", check=False), code=USAGE)
    assert "no remote named" in one_line_error(repo("push", "nowhere", check=False), code=USAGE)

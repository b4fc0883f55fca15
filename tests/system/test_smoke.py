"""The basic loop from the command line: init, area add, commit, log, show, checkout."""

from pathlib import Path


def test_commit_log_show_checkout(repo, guest: Path, tmp_path: Path):
    first = repo("commit", "-m", "ROOT installed", "--json").json()
    assert first["created"] and len(first["entry"]) == 40
    (guest / "etc" / "hosts").write_text("10.0.0.1 server\n")
    second = repo("save", "-m", "hosts edited", "--json").json()
    assert second["parent"] == first["entry"]
    log = repo("log", "--json").json()
    assert [e["id"] for e in log] == [second["entry"], first["entry"]]
    shown = repo("show", first["entry"][:10], "--json").json()
    assert shown["info"]["files"] == 2 and shown["entry"]["message"].strip() == "ROOT installed"
    repo("checkout", "HEAD~1", "--to", str(tmp_path / "old"))
    assert (tmp_path / "old" / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"
    repo("open", first["entry"], "-a", "wa1")
    assert (guest / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"


def test_git_sees_entries_as_commits(repo, tmp_path: Path):
    import subprocess

    entry = repo("commit", "-m", "one", "--json").json()["entry"]
    out = subprocess.run(
        ["git", "--git-dir", str(tmp_path / ".vml"), "log", "--graph", "--all", "--format=%H %s"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert f"{entry} one" in out

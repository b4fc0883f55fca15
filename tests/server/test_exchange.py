"""Push, fetch, pull and clone through a real `vml serve`: round trips, what crosses the wire,
compare-and-swap of refs, and transfers that resume after a dropped connection."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import Vml, git_fsck_clean


def _client(tmp_path: Path, name: str, token: str) -> tuple[Vml, Path]:
    """A user's own repository with area wa on a small guest tree; VML_TOKEN stands for their login."""
    home = tmp_path / name
    guest = home / "guest"
    (guest / "etc").mkdir(parents=True)
    (guest / "etc" / "hosts").write_text(f"127.0.0.1 {name}\n")
    vml = Vml(home)
    vml.env = {"VML_TOKEN": token}
    vml("init")
    vml("area", "add", "wa", "--dir", str(guest))
    return vml, guest


def run(vml: Vml, *args: str, check: bool = True):
    return vml(*args, check=check, env=getattr(vml, "env", None))


def server_fsck_clean(vml: Vml, server) -> None:
    report = vml("--repo", str(server.repo), "fsck", "--json").json()
    assert report["damaged"] == [] and report["problems"] == [], report
    git_fsck_clean(server.repo)


def test_push_clone_fetch_pull_round_trip(tmp_path, server):
    token = server.add_user("alice")
    alice, guest = _client(tmp_path, "alice", token)
    (guest / "data.bin").write_bytes(os.urandom(300_000))
    run(alice, "commit", "-m", "first")
    run(alice, "remote", "add", "origin", server.ns("alice"))
    pushed = run(alice, "push", "--json").json()
    assert [(r["ref"], r["status"]) for r in pushed["refs"]] == [("main", "new")]
    assert pushed["blob_bytes"] > 290_000  # the random file is in it

    clone_dir = tmp_path / "clone"
    cloned = run(alice, "clone", server.ns("alice"), str(clone_dir), "--json").json()
    first = run(alice, "log", "--json").json()[0]["id"]
    assert cloned["branch"] == "main" and cloned["entry"] == first
    other = Vml(clone_dir)
    other.env = alice.env
    run(other, "area", "add", "wb", "--dir", str(tmp_path / "restored"))
    run(other, "checkout", "main")
    assert (tmp_path / "restored" / "data.bin").read_bytes() == (guest / "data.bin").read_bytes()

    # An incremental push sends only what is new: not the 300 kB file again.
    (guest / "etc" / "hosts").write_text("changed\n")
    run(alice, "commit", "-m", "second")
    again = run(alice, "push", "--json").json()
    assert [(r["ref"], r["status"]) for r in again["refs"]] == [("main", "fast-forward")]
    assert again["commits"] == 1 and again["blob_bytes"] < 20_000, again

    fetched = run(other, "fetch", "--json").json()
    assert fetched["commits"] == 1 and fetched["bytes_received"] < 20_000, fetched
    pulled = run(other, "pull", "--json").json()
    assert pulled["status"] == "fast-forward"
    assert (tmp_path / "restored" / "etc" / "hosts").read_text() == "changed\n"
    server_fsck_clean(alice, server)
    other.fsck_clean()


def test_concurrent_update_is_compare_and_swap(tmp_path, server):
    token = server.add_user("alice")
    one, guest_one = _client(tmp_path, "one", token)
    run(one, "commit", "-m", "base")
    run(one, "remote", "add", "origin", server.ns("alice"))
    run(one, "push")
    two_dir = tmp_path / "two"
    run(one, "clone", server.ns("alice"), str(two_dir))
    two = Vml(two_dir)
    two.env = one.env
    run(two, "area", "add", "wa", "--dir", str(tmp_path / "two-guest"))
    run(two, "checkout", "main")
    (tmp_path / "two-guest" / "b").write_text("two\n")
    run(two, "commit", "-m", "two's")
    (guest_one / "a").write_text("one\n")
    run(one, "commit", "-m", "one's")
    run(one, "push")
    refused = run(two, "push", "--json", check=False)
    assert refused.returncode == 2
    assert refused.json()["refs"][0]["status"] == "rejected"
    forced = run(two, "push", "--force", "--json").json()
    assert forced["refs"][0]["status"] == "forced"
    server_fsck_clean(one, server)


def test_upload_and_download_resume_after_a_dropped_connection(tmp_path, server):
    from support.server import CuttingProxy

    token = server.add_user("alice")
    alice, guest = _client(tmp_path, "alice", token)
    (guest / "big.bin").write_bytes(os.urandom(3_000_000))
    run(alice, "commit", "-m", "big")
    port = int(server.url.rsplit(":", 1)[1])
    cut_up = CuttingProxy(port, cut_after=1_500_000, upstream=True)
    try:
        run(alice, "remote", "add", "origin", f"{cut_up.url}/alice")
        pushed = run(alice, "push", "--json").json()
    finally:
        cut_up.close()
    assert cut_up.cuts == 1  # the connection did drop halfway through the upload
    assert pushed["refs"][0]["status"] == "new"
    assert pushed["bytes_sent"] < 4_500_000, pushed  # resumed from where it stopped, not sent again whole
    server_fsck_clean(alice, server)

    cut_down = CuttingProxy(port, cut_after=1_500_000, upstream=False)
    try:
        cloned = run(alice, "clone", f"{cut_down.url}/alice", str(tmp_path / "clone"), "--json").json()
    finally:
        cut_down.close()
    assert cut_down.cuts == 1
    assert cloned["fetched"]["bytes_received"] < 4_500_000, cloned
    other = Vml(tmp_path / "clone")
    other("area", "add", "wb", "--dir", str(tmp_path / "restored"))
    other("checkout", "main")
    assert (tmp_path / "restored" / "big.bin").read_bytes() == (guest / "big.bin").read_bytes()
    other.fsck_clean()


def test_gc_on_the_server_while_pushes_run(tmp_path, server):
    """vml gc on the server's repository runs beside pushes: a push stores and moves its refs
    under the shared lock gc's exclusive one waits for; nothing a push brings is lost."""
    import threading

    token = server.add_user("alice")
    alice, guest = _client(tmp_path, "alice", token)
    alice.separate = True  # the pushes run while gc runs in this process
    run(alice, "remote", "add", "origin", server.ns("alice"))
    pushed = []
    failures = []

    def push_rounds() -> None:
        for number in range(4):
            (guest / f"file{number}.bin").write_bytes(os.urandom(400_000))
            run(alice, "commit", "-m", f"round {number}")
            result = run(alice, "push", "--json", check=False)
            if result.returncode:
                failures.append(result.stderr)
            else:
                pushed.append(result.json()["refs"][0]["new"])

    pusher = threading.Thread(target=push_rounds)
    pusher.start()
    collector = Vml(tmp_path)
    while pusher.is_alive():
        collector("--repo", str(server.repo), "gc", "--expire", "now")
    pusher.join()
    assert failures == [] and len(pushed) == 4
    clone = tmp_path / "clone"
    run(alice, "clone", server.ns("alice"), str(clone))
    restored = Vml(clone)
    restored("area", "add", "wb", "--dir", str(tmp_path / "restored"))
    restored("checkout", "main")
    for number in range(4):
        assert (tmp_path / "restored" / f"file{number}.bin").read_bytes() == (guest / f"file{number}.bin").read_bytes()
    server_fsck_clean(collector, server)


def test_import_a_bundle_the_server_offers_by_its_url(tmp_path, server):
    """vml import URL: the entry's bundle from its page, fetched with the token kept for the
    server; another user without access gets a one-line refusal and nothing changes."""
    from conftest import one_line_error

    token = server.add_user("alice")
    alice, guest = _client(tmp_path, "alice", token)
    (guest / "notes.txt").write_text("to share by URL\n")
    run(alice, "commit", "-m", "by url")
    run(alice, "remote", "add", "origin", server.ns("alice"))
    entry = run(alice, "push", "--json").json()["refs"][0]["new"]
    (tmp_path / "fresh").mkdir()
    fresh = Vml(tmp_path / "fresh")
    fresh.env = {"VML_TOKEN": token}
    run(fresh, "init")
    url = f"{server.ns('alice')}/e/{entry}/bundle"
    imported = run(fresh, "import", url, "--as", "shared", "--json").json()
    assert imported["entry"] == entry and imported["path"] == url
    run(fresh, "area", "add", "wb", "--dir", str(tmp_path / "restored"))
    run(fresh, "checkout", "shared")
    assert (tmp_path / "restored" / "notes.txt").read_text() == "to share by URL\n"
    fresh.fsck_clean()

    (tmp_path / "stranger").mkdir()
    stranger = Vml(tmp_path / "stranger")
    stranger.env = {"VML_TOKEN": server.add_user("bob")}
    run(stranger, "init")
    refused = run(stranger, "import", url, "--as", "x", check=False)
    assert "404" in one_line_error(refused) or "not found" in one_line_error(refused).lower()
    assert run(stranger, "log", "--all", "--json", check=False).stdout.strip() in ("", "[]")

"""Attacks on a real `vml serve` (issue 19): deduplication that must not become an existence
oracle, and the hygiene of its HTTP (paths, bodies, offsets, slow clients, tokens, TLS).

The oracle tests run bob's requests against two servers that differ in one thing only:
on `holder` alice's private entry holds a file, on `lacker` it does not. Whatever bob sends
or asks, the two must answer alike; the holder must still store the file once.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Vml, git_fsck_clean, one_line_error
from support.callers import Cli, has_object, push_bundle, raw_request, server_refs
from support.server import VmlServer, start_server

from vml.exchange.push import manifests_of
from vml.objects.store import ChunkStore
from vml.refs.git import GitDag

SECRET_SIZE = 1_000_000  # alice's private file: random, so it compresses to nothing less


def _tip(repo: Path, ref: str) -> str:
    target = GitDag.open(str(repo)).ref_target(ref)
    assert target is not None, ref
    return target


def _random_id() -> str:
    return os.urandom(20).hex()


def _store_usage(repo: Path) -> tuple[int, int]:
    """(objects in the server's store, bytes of its pack files)."""
    store = ChunkStore(str(repo / "vml" / "store")).open()
    try:
        return len(dict(store.items())), sum(os.path.getsize(path) for path in store.list_pack_files().values())
    finally:
        store.close()


def _server_fsck_clean(server: VmlServer, cwd: Path) -> None:
    report = Vml(cwd)("--repo", str(server.repo), "fsck", "--json").json()
    assert report["damaged"] == [] and report["problems"] == [], report
    git_fsck_clean(server.repo)


# -- no existence oracle


@dataclass
class Oracle:
    servers: dict[str, VmlServer]  # holder: alice's private entry holds secret.bin; lacker: it does not
    bob: dict[str, Cli]  # bob's CLI on each server (a token of each)
    alice: dict[str, Cli]
    bob_repo: Path
    base: Path
    private: str = ""  # X, on holder only: alice's main, with secret.bin
    private_parent: str = ""  # X0, alice's main on lacker: shared.bin only
    public: str = ""  # P, on both: public/demo, published from X0
    bob_main: str = ""  # B: secret.bin (a copy) and bob's notes
    bob_decoy: str = ""  # D: secret.bin alone, on a branch bob never pushes


def _make_alice(oracle: Oracle, secret: bytes) -> None:
    alice_repo, guest = oracle.base / "alice", oracle.base / "alice" / "guest"
    guest.mkdir(parents=True)
    (guest / "shared.bin").write_bytes(os.urandom(200_000))
    alice, to_lacker = oracle.alice["holder"], oracle.alice["lacker"]  # (local commands need no token)
    alice(alice_repo, "init")
    alice(alice_repo, "area", "add", "wa", "--dir", str(guest))
    alice(alice_repo, "commit", "-m", "shared only")
    oracle.private_parent = _tip(alice_repo / ".vml", "refs/heads/main")
    alice(alice_repo, "publish", "main", "--as", "demo")
    for name, server in oracle.servers.items():
        alice(alice_repo, "remote", "add", name, server.ns("alice"))
    to_lacker(alice_repo, "push", "lacker", "main", "public/demo")
    (guest / "secret.bin").write_bytes(secret)
    alice(alice_repo, "commit", "-m", "with the secret")
    alice(alice_repo, "push", "holder", "main", "public/demo")
    oracle.private = _tip(alice_repo / ".vml", "refs/heads/main")
    oracle.public = _tip(alice_repo / ".vml", "refs/public/demo")


def _make_bob(oracle: Oracle, secret: bytes) -> None:
    bob, repo = oracle.bob["holder"], oracle.bob_repo
    (repo / "guest").mkdir(parents=True)
    (repo / "guest" / "copy.bin").write_bytes(secret)
    (repo / "guest" / "notes.txt").write_text("bob's notes\n")
    (repo / "decoy").mkdir()
    (repo / "decoy" / "only.bin").write_bytes(secret)
    bob(repo, "init")
    bob(repo, "area", "add", "wa", "--dir", str(repo / "guest"))
    bob(repo, "area", "add", "wb", "--dir", str(repo / "decoy"), "--branch", "decoy")
    bob(repo, "commit", "-a", "wa", "-m", "bob's, with a copy of the file")
    bob(repo, "commit", "-a", "wb", "-m", "the file alone")
    for name, server in oracle.servers.items():
        bob(repo, "remote", "add", name, server.ns("bob"))
    oracle.bob_main = _tip(repo / ".vml", "refs/heads/main")
    oracle.bob_decoy = _tip(repo / ".vml", "refs/heads/decoy")


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> Iterator[Oracle]:
    base = tmp_path_factory.mktemp("oracle")
    servers: dict[str, VmlServer] = {}
    try:
        for name in ("holder", "lacker"):
            servers[name] = start_server(base / name)
        (base / "config").mkdir()
        tokens = {name: (server.add_user("alice"), server.add_user("bob")) for name, server in servers.items()}
        made = Oracle(servers, {name: Cli(pair[1], base / "config") for name, pair in tokens.items()},
                      {name: Cli(pair[0], base / "config") for name, pair in tokens.items()}, base / "bob", base)
        secret = os.urandom(SECRET_SIZE)
        _make_alice(made, secret)
        _make_bob(made, secret)
        yield made
        for server in servers.values():
            _server_fsck_clean(server, base)
    finally:
        for server in servers.values():
            server.stop()


def _without_timing(result: dict) -> dict:
    return {key: value for key, value in result.items() if key not in ("seconds", "url", "remote")}


def test_pushing_a_colleagues_file_tells_nothing_and_stores_it_once(oracle: Oracle):
    """Bob's copy of alice's private file: he sends it whole and hears the same from both
    servers; the holder keeps the bytes it has, the lacker stores them."""
    before = {name: _store_usage(server.repo) for name, server in oracle.servers.items()}
    pushed = {name: oracle.bob[name](oracle.bob_repo, "push", name, "main", "--json").json() for name in oracle.servers}
    assert _without_timing(pushed["holder"]) == _without_timing(pushed["lacker"])
    assert pushed["holder"]["refs"] == [{"ref": "main", "old": None, "new": oracle.bob_main, "status": "new", "reason": ""}]
    assert pushed["holder"]["bytes_sent"] > SECRET_SIZE  # sent, though the holder has it
    grown = {name: (objects - before[name][0], size - before[name][1]) for name, (objects, size) in
             ((name, _store_usage(server.repo)) for name, server in oracle.servers.items())}
    assert grown["lacker"][1] > SECRET_SIZE
    assert grown["holder"][1] < 50_000, grown  # only bob's listings and entry: the file's chunks were there
    assert grown["holder"][0] < grown["lacker"][0]


def _apply_raw(server: VmlServer, token: str, bundle: bytes, updates: list[dict]) -> tuple[int, dict]:
    with server.client(token) as http:
        upload = http.post("/api/v1/ns/bob/uploads").json()["upload"]
        assert http.patch(f"/api/v1/uploads/{upload}", content=bundle, headers={"Upload-Offset": "0"}).status_code == 204
        applied = http.post(f"/api/v1/uploads/{upload}/apply", json={"updates": updates})
        return applied.status_code, applied.json()


def test_a_bundle_borrowing_a_colleagues_chunks_is_refused_alike(oracle: Oracle):
    """A hand-made push of bob's decoy (the file alone) that leaves its chunks out, as if the
    server had them: refused by both servers in the same words, nothing stored or moved."""
    bob_git = GitDag.open(str(oracle.bob_repo / ".vml"))
    hostile = push_bundle(oracle.bob_repo / ".vml", oracle.bob_decoy, oracle.base / "hostile.bundle",
                          base_roots=manifests_of(bob_git, [oracle.bob_main])).read_bytes()
    assert len(hostile) < SECRET_SIZE // 10  # the file's chunks are not in it
    answers = {}
    for name, server in oracle.servers.items():
        before, usage = server_refs(server.repo), _store_usage(server.repo)
        answers[name] = _apply_raw(server, oracle.bob[name].token, hostile,
                                   [{"ref": "refs/heads/hostile", "old": None, "new": oracle.bob_decoy}])
        assert server_refs(server.repo) == before and _store_usage(server.repo) == usage
    assert answers["holder"] == answers["lacker"]
    status, body = answers["holder"]
    assert status == 400 and body["error"].startswith("the push was refused: the bundle is incomplete"), body


def test_naming_a_colleagues_entry_in_a_push_is_answered_as_a_random_id(oracle: Oracle):
    """Moving a ref of bob's to alice's private entry, which his (whole, valid) push does not
    hold: the same refusal as for an id nobody has."""
    whole = push_bundle(oracle.bob_repo / ".vml", oracle.bob_decoy, oracle.base / "decoy.bundle").read_bytes()
    random_id = _random_id()
    answers = {}
    for name, server in oracle.servers.items():
        before = server_refs(server.repo)
        status, body = _apply_raw(server, oracle.bob[name].token, whole, [
            {"ref": "refs/heads/stolen", "old": None, "new": oracle.private},
            {"ref": "refs/heads/nothing", "old": None, "new": random_id}])
        assert status == 200 and server_refs(server.repo) == before
        answers[name] = [(r["status"], r["reason"]) for r in body["refs"]]
    assert answers["holder"] == answers["lacker"] == [("rejected", "the push does not hold this entry")] * 2


def test_fetch_ignores_what_the_caller_may_not_read(oracle: Oracle):
    """`have` naming alice's private entry changes nothing (a random id neither); `want`
    naming it is the same 409 as a random id's, in her namespace and in bob's."""
    holder, token = oracle.servers["holder"], oracle.bob["holder"].token
    with holder.client(token) as http:
        def fetch(namespace: str, want: list[str], have: list[str]):
            return http.post(f"/api/v1/ns/{namespace}/fetch", json={"want": want, "have": have})

        sizes = set()
        for have in ([oracle.private], [_random_id()], [oracle.private, oracle.private_parent], []):
            answer = fetch("alice", [oracle.public], have)
            assert answer.status_code == 200
            sizes.add((answer.json()["size"], answer.json()["commits"]))
        assert len(sizes) == 1, sizes
        refused = {(namespace, who): fetch(namespace, [wanted], []) for namespace in ("alice", "bob")
                   for who, wanted in (("private", oracle.private), ("random", _random_id()))}
        assert {(r.status_code, r.text) for r in refused.values()} == {(409, json.dumps({"error": "the refs moved since they were "
                                                                                        "listed: list them again"}, separators=(",", ":")))}
    with holder.client(oracle.alice["holder"].token) as http:  # for alice, `have` works: the test above could fail
        answers = [http.post("/api/v1/ns/alice/fetch", json={"want": [oracle.private], "have": have}).json()["size"]
                   for have in ([oracle.private_parent], [_random_id()])]
        assert answers[0] < answers[1] - 100_000


def test_a_colleagues_transfer_and_upload_are_not_found(oracle: Oracle):
    """Bob holding alice's transfer and upload ids (leaked, say) hears what a random id gets,
    and her transfer and upload are as she left them."""
    holder = oracle.servers["holder"]
    with holder.client(oracle.alice["holder"].token) as alice:
        made = alice.post("/api/v1/ns/alice/fetch", json={"want": [oracle.private], "have": []}).json()
        upload = alice.post("/api/v1/ns/alice/uploads").json()["upload"]
    transfer, random_transfer, random_upload = made["transfer"], os.urandom(16).hex(), os.urandom(16).hex()
    with holder.client(oracle.bob["holder"].token) as bob:
        for method in ("GET", "DELETE"):
            theirs, nobodys = (bob.request(method, f"/api/v1/transfers/{i}") for i in (transfer, random_transfer))
            assert theirs.status_code == 404 and (theirs.status_code, theirs.text) == (nobodys.status_code, nobodys.text)
        for method, suffix, options in (("HEAD", "", {}), ("PATCH", "", {"content": b"x", "headers": {"Upload-Offset": "0"}}),
                                        ("POST", "/apply", {"json": {"updates": [{"ref": "refs/heads/x", "old": None, "new": _random_id()}]}})):
            theirs, nobodys = (bob.request(method, f"/api/v1/uploads/{i}{suffix}", **options) for i in (upload, random_upload))
            assert theirs.status_code == 404 and (theirs.status_code, theirs.text) == (nobodys.status_code, nobodys.text)
    with holder.client(oracle.alice["holder"].token) as alice:
        assert len(alice.get(f"/api/v1/transfers/{transfer}").content) == made["size"]
        assert alice.head(f"/api/v1/uploads/{upload}").headers["upload-offset"] == "0"


# -- HTTP hygiene


@dataclass
class Hub:
    server: VmlServer
    root: str  # an admin's token: the caller with the most to lose
    alice: str
    bundle: bytes  # a push of alice's main, whole
    main: str
    config_home: Path


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[Hub]:
    base = tmp_path_factory.mktemp("hub")
    server = start_server(base / "server")
    try:
        root, alice = server.add_user("root", admin=True), server.add_user("alice")
        (base / "config").mkdir()
        cli, repo = Cli(alice, base / "config"), base / "alice"
        (repo / "guest").mkdir(parents=True)
        (repo / "guest" / "notes.txt").write_text("alice's notes\n")
        cli(repo, "init")
        cli(repo, "area", "add", "wa", "--dir", str(repo / "guest"))
        cli(repo, "commit", "-m", "first")
        cli(repo, "remote", "add", "origin", server.ns("alice"))
        cli(repo, "push")
        main = _tip(repo / ".vml", "refs/heads/main")
        bundle = push_bundle(repo / ".vml", main, base / "main.bundle").read_bytes()
        yield Hub(server, root, alice, bundle, main, base / "config")
        assert server.process.poll() is None, "the server died"
        log = server.log.read_text()
        assert "Traceback" not in log, "an attack made the server fail (see its log)"
        assert "vml_" not in log and "Bearer" not in log and root not in log and alice not in log  # no token, nor a piece of one
        _server_fsck_clean(server, base)
    finally:
        server.stop()


TRAVERSALS = ("/api/v1/ns/..%2F..%2Fetc/refs", "/api/v1/ns/..%2F..%2Fvml%2Fserver.db/refs", "/api/v1/ns/%2e%2e/refs",
              "/api/v1/ns/..%252F..%252Fetc/refs", "/api/v1/transfers/..%2F..%2Fserver.db", "/api/v1/transfers/..%2F..%2Fvml%2Fserver.db",
              "/api/v1/transfers/%2e%2e%2f%2e%2e%2fconfig", "/api/v1/uploads/..%2F..%2Fvml%2Fserver.db",
              "/api/v1/ns/../../etc/refs", "/api/v1/ns/../refs", "/api/v1/ns/./refs", "/api/v1/transfers/../../server.db",
              "/api/v1/transfers/../../vml/server.db", "/api/v1/uploads/../../vml/server.db", "/api/v1/../../vml/server.db",
              "/api/v1/ns/alice/../../../vml/server.db")


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD", "PATCH"])
def test_paths_that_climb_find_nothing(hub: Hub, method: str):
    """Sent byte for byte (no client tidies the dots away), as an admin: every one is a 404,
    none reads a file (the accounts database, git's config) or makes an upload."""
    body = json.dumps({"want": [hub.main], "have": [], "updates": [{"ref": "refs/heads/x", "old": None, "new": hub.main}]})
    uploads = set(os.listdir(hub.server.repo / "vml" / "uploads"))
    for path in TRAVERSALS + ("/api/v1/ns/../uploads", "/api/v1/ns/%2e%2e/uploads", "/api/v1/ns/../fetch", "/api/v1/uploads/../apply"):
        request = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {hub.root}\r\nContent-Length: {len(body)}\r\n"
                   f"Upload-Offset: 0\r\nConnection: close\r\n\r\n{body}").encode()
        status, answer = raw_request(hub.server.url, request)
        assert status in (404, 405), (method, path, status, answer)
        assert method == "HEAD" or json.loads(answer)["error"], answer
        assert b"SQLite" not in answer and b"[core]" not in answer
    assert set(os.listdir(hub.server.repo / "vml" / "uploads")) == uploads and not (hub.server.repo / "logs" / "refs" / "refs").exists()


def test_oversized_and_malformed_bodies(hub: Hub):
    too_big = b'{"want": ["' + b"a" * (1024 * 1024) + b'"]}'
    with hub.server.client(hub.alice) as http:
        assert http.post("/api/v1/ns/alice/fetch", content=too_big).status_code == 413
        streamed = http.post("/api/v1/ns/alice/fetch", content=iter([too_big[i:i + 65536] for i in range(0, len(too_big), 65536)]))
        assert streamed.status_code == 413 and "larger than" in streamed.json()["error"]  # chunked: no Content-Length to trust
        for body in (b"{", b"", b"\xff\xfe\x00", b"[]", b'"want"', b"[" * 200_000, b'{"want": "main"}', b'{"want": [1], "have": []}',
                     b'{"want": ["' + hub.main.encode() + b'"], "have": {"a": 1}}'):
            answer = http.post("/api/v1/ns/alice/fetch", content=body)
            assert answer.status_code == 400 and answer.json()["error"], (body[:40], answer.status_code, answer.text)
        for updates in ("main", [], [{"ref": "refs/heads/../x", "old": None, "new": hub.main}], [{"ref": "HEAD", "new": hub.main}],
                        [{"ref": "refs/heads/x", "old": None, "new": "main"}], [{"ref": "refs/heads/x", "new": hub.main}] * 1025):
            upload = http.post("/api/v1/ns/alice/uploads").json()["upload"]
            answer = http.post(f"/api/v1/uploads/{upload}/apply", json={"updates": updates})
            assert answer.status_code == 400 and answer.json()["error"], (updates, answer.text)
        upload = http.post("/api/v1/ns/alice/uploads").json()["upload"]
        assert http.post(f"/api/v1/uploads/{upload}/apply", content=too_big).status_code == 413


def test_a_patch_at_the_wrong_offset_is_told_the_right_one(hub: Hub):
    with hub.server.client(hub.alice) as http:
        upload = f"/api/v1/uploads/{http.post('/api/v1/ns/alice/uploads').json()['upload']}"
        assert http.patch(upload, content=hub.bundle[:100], headers={"Upload-Offset": "0"}).headers["upload-offset"] == "100"
        for wrong in ("0", "99", "101", "-1", "100000"):
            answer = http.patch(upload, content=b"x" * 10, headers={"Upload-Offset": wrong})
            assert answer.status_code == 409 and answer.headers["upload-offset"] == "100", answer.text
            assert answer.json()["error"] == f"the upload holds 100 bytes, not {wrong}: resume from there"
        for bad in ({"Upload-Offset": "ten"}, {}):
            assert http.patch(upload, content=b"x", headers=bad).status_code == 400
        assert http.head(upload).headers["upload-offset"] == "100"  # nothing of the refused pieces
        assert http.patch(upload, content=hub.bundle[100:], headers={"Upload-Offset": "100"}).status_code == 204
        done = http.post(f"{upload}/apply", json={"updates": [{"ref": "refs/heads/offsets", "old": None, "new": hub.main}]})
        assert done.json()["refs"][0]["status"] == "new"


def _trickle(url: str, token: str, upload: str, data: bytes, seconds: float) -> int:
    """A PATCH whose body comes a few bytes at a time, then a dropped connection; bytes sent."""
    host, port = url.split("://")[1].split(":")
    sent = 0
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(f"PATCH /api/v1/uploads/{upload} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                           f"Upload-Offset: 0\r\nContent-Length: {len(data)}\r\n\r\n".encode())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and sent < len(data) - 16:
            connection.sendall(data[sent:sent + 16])
            sent += 16
            time.sleep(0.05)
    return sent


def test_slow_clients_do_not_hold_up_others(hub: Hub):
    """Connections that stall in their headers or body, and an upload that trickles then drops:
    meanwhile every other request is answered at once, and the upload resumes where it broke."""
    host, port = hub.server.url.split("://")[1].split(":")
    stalled = []
    with hub.server.client(hub.alice) as http:
        upload = http.post("/api/v1/ns/alice/uploads").json()["upload"]
        try:
            for _ in range(20):
                connection = socket.create_connection((host, int(port)))
                connection.sendall(b"GET /api/v1/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # headers never end
                stalled.append(connection)
            for _ in range(20):
                connection = socket.create_connection((host, int(port)))
                connection.sendall(b'POST /api/v1/ns/alice/fetch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n{"want": [')
                stalled.append(connection)
            sent: list[int] = []
            trickler = threading.Thread(target=lambda: sent.append(_trickle(hub.server.url, hub.alice, upload, hub.bundle, 2.0)))
            trickler.start()
            waits = []
            while trickler.is_alive():
                started = time.monotonic()
                assert http.get("/api/v1/ns/alice/refs").json()["refs"]["refs/heads/main"] == hub.main
                waits.append(time.monotonic() - started)
                time.sleep(0.1)
            trickler.join()
            assert len(waits) >= 5 and max(waits) < 1.5, waits  # blocked, one would wait for the stalled ones
        finally:
            for connection in stalled:
                connection.close()
        offset = int(http.head(f"/api/v1/uploads/{upload}").headers["upload-offset"])
        assert 0 < offset <= sent[0] < len(hub.bundle)
        assert http.patch(f"/api/v1/uploads/{upload}", content=hub.bundle[offset:], headers={"Upload-Offset": str(offset)}).status_code == 204
        done = http.post(f"/api/v1/uploads/{upload}/apply", json={"updates": [{"ref": "refs/heads/slow", "old": None, "new": hub.main}]})
        assert done.json()["refs"][0]["status"] == "new"
    assert hub.server.process.poll() is None


def test_tokens_stay_out_of_the_log_and_the_database(hub: Hub, tmp_path: Path):
    """Requests with good, bad and forged tokens, by the API and the CLI: no token, nor its
    secret, in the server's log (its request lines are every URL a client asked for), in the
    accounts database, or in what the server keeps of a transfer or an upload."""
    alice = Cli(hub.alice, hub.config_home)
    alice(tmp_path, "clone", hub.server.ns("alice"), "clone")
    forged = f"vml_{hub.alice.split('_')[1]}_{'A' * 43}"
    for token in (forged, "vml_" + "a" * 12 + "_" + "b" * 43, "not a token"):
        assert one_line_error(Cli(token, hub.config_home)(tmp_path, "clone", hub.server.ns("alice"), "again", check=False)).endswith(
            f"the token is not valid (unknown, expired or revoked): log in again with 'vml login {hub.server.url}'")
    with hub.server.client(hub.alice) as http:
        made = http.post("/api/v1/ns/alice/fetch", json={"want": [hub.main], "have": []}).json()["transfer"]
        http.get(f"/api/v1/transfers/{made}")
        http.post("/api/v1/ns/alice/uploads")
    log = hub.server.log.read_text()
    assert f"/api/v1/transfers/{made}" in log  # the log does hold every request line
    kept = b"".join(path.read_bytes() for path in (hub.server.repo / "vml").rglob("*") if path.is_file() and "store" not in path.parts)
    for token in (hub.alice, hub.root, forged):
        secret = token.split("_", 2)[2]
        assert token not in log and secret not in log and secret.encode() not in kept
    assert "vml_" not in log and "Bearer" not in log
    assert stat.S_IMODE((hub.server.repo / "vml" / "server.db").stat().st_mode) == 0o600


def test_login_keeps_the_token_where_only_its_user_reads_it(hub: Hub, tmp_path: Path, monkeypatch):
    config = tmp_path / "config"
    user = Cli(None, config)  # no VML_TOKEN: what `vml login` kept, or nothing
    monkeypatch.setattr("sys.stdin", io.StringIO(hub.alice + "\n"))
    assert "as alice (write)" in user(tmp_path, "login", hub.server.ns("alice"), "--token-stdin").stdout
    credentials = config / "vml" / "credentials.toml"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600 and stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700
    assert f'[servers."{hub.server.url}"]' in credentials.read_text() and hub.alice in credentials.read_text()  # the server's, not the namespace's
    user(tmp_path, "clone", hub.server.ns("alice"), "clone")
    assert has_object(tmp_path / "clone" / ".vml", hub.main)  # sent the kept token: alice's private main came
    credentials.chmod(0o644)
    refused = user(tmp_path, "clone", hub.server.ns("alice"), "again", check=False)
    assert "is readable by others: chmod 600" in one_line_error(refused)
    credentials.chmod(0o600)
    user(tmp_path, "logout", hub.server.url)
    assert hub.alice not in credentials.read_text()
    assert one_line_error(user(tmp_path / "clone", "push", check=False)).endswith(
        f"you may not add entries to alice (log in: vml login {hub.server.url})")  # logged out: nothing is sent


def test_no_token_crosses_plain_http_to_another_machine(tmp_path: Path, monkeypatch):
    """With a token, an http:// URL of another host is refused before any connection
    (10.255.255.1 answers nobody: a connection would hang, not fail)."""
    connections = []
    real_connect = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda *args, **kwargs: connections.append(args) or real_connect(*args, **kwargs))
    user = Cli("vml_" + "a" * 12 + "_" + "b" * 43, tmp_path / "config")
    (tmp_path / "repo" / "guest").mkdir(parents=True)
    user(tmp_path / "repo", "init")
    user(tmp_path / "repo", "area", "add", "wa", "--dir", str(tmp_path / "repo" / "guest"))
    user(tmp_path / "repo", "commit", "--allow-empty", "-m", "something to push")
    user(tmp_path / "repo", "remote", "add", "far", "http://10.255.255.1:8080/alice")
    monkeypatch.setattr("sys.stdin", io.StringIO(str(user.token) + "\n"))
    started = time.monotonic()
    for cwd, args in ((tmp_path, ("clone", "http://10.255.255.1/alice", "clone")), (tmp_path / "repo", ("fetch", "far")),
                      (tmp_path / "repo", ("push", "far")), (tmp_path / "repo", ("pull", "far")),
                      (tmp_path, ("login", "http://10.255.255.1:8080", "--token-stdin")), (tmp_path, ("clone", "http://localhost.example/alice"))):
        message = one_line_error(user(cwd, *args, check=False))
        assert "over plain HTTP: use https://" in message and "refusing to send a token to" in message, (args, message)
    assert time.monotonic() - started < 5 and connections == []
    assert not (tmp_path / "config" / "vml" / "credentials.toml").exists()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, each a PEM file."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vml test server")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert, key_file = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert, key_file


def test_push_and_clone_over_tls(tmp_path: Path):
    cert, key = _self_signed(tmp_path)
    server = start_server(tmp_path / "tls", "--cert", str(cert), "--key", str(key), scheme="https")
    try:
        assert server.url.startswith("https://")
        alice = Cli(server.add_user("alice"), tmp_path / "config", {"SSL_CERT_FILE": str(cert)})
        repo = tmp_path / "alice"
        (repo / "guest").mkdir(parents=True)
        (repo / "guest" / "notes.txt").write_text("over tls\n")
        alice(repo, "init")
        alice(repo, "area", "add", "wa", "--dir", str(repo / "guest"))
        alice(repo, "commit", "-m", "first")
        alice(repo, "remote", "add", "origin", server.ns("alice"))
        assert alice(repo, "push", "--json").json()["refs"][0]["status"] == "new"
        main = _tip(repo / ".vml", "refs/heads/main")
        assert alice(tmp_path, "clone", server.ns("alice"), "clone", "--json").json()["entry"] == main
        untrusting = Cli(alice.token, tmp_path / "config")  # the system's CAs only: the certificate is nobody's
        message = one_line_error(untrusting(tmp_path, "clone", server.ns("alice"), "again", check=False), code=None)
        assert "CERTIFICATE_VERIFY_FAILED" in message, message
        _server_fsck_clean(server, tmp_path)
    finally:
        server.stop()


def test_serving_beyond_this_machine_needs_tls(tmp_path: Path):
    """Plain HTTP on any address but loopback is refused before it listens (a separate
    process: were it not refused, it would serve until the timeout)."""
    cert, _key = _self_signed(tmp_path)
    repo = tmp_path / "served"
    Vml(tmp_path)("init", "--bare", str(repo))
    for args, expected in ((("--listen", "0.0.0.0:8443"), "refusing to serve 0.0.0.0 over plain HTTP"),
                           (("--listen", "[::]:8443"), "refusing to serve :: over plain HTTP"),
                           (("--listen", "0.0.0.0:8443", "--cert", str(cert)), "--cert and --key go together")):
        refused = Vml(tmp_path, separate=True)("serve", str(repo), *args, check=False, timeout=30)
        assert expected in one_line_error(refused), refused


def test_a_reader_cannot_publish_a_groups_private_entry(hub: Hub, tmp_path: Path):
    accounts = hub.server.accounts()
    accounts.add_group("crew")
    accounts.set_member("crew", "alice", "read")
    stranger = hub.server.add_user("stranger")
    admin = Cli(hub.root, hub.config_home)
    repo = tmp_path / "crew"
    (repo / "guest").mkdir(parents=True)
    (repo / "guest" / "plans.txt").write_text("the crew's private plans\n")
    admin(repo, "init")
    admin(repo, "area", "add", "wa", "--dir", str(repo / "guest"))
    admin(repo, "commit", "-m", "private to the crew")
    admin(repo, "remote", "add", "origin", hub.server.ns("crew"))
    admin(repo, "push")
    crews = _tip(repo / ".vml", "refs/heads/main")
    nothing_new = push_bundle(repo / ".vml", crews, tmp_path / "empty.bundle", requires=[crews]).read_bytes()
    with hub.server.client(hub.alice) as alice:  # a reader of crew, writing her own namespace
        upload = alice.post("/api/v1/ns/alice/uploads").json()["upload"]
        alice.patch(f"/api/v1/uploads/{upload}", content=nothing_new, headers={"Upload-Offset": "0"})
        answer = alice.post(f"/api/v1/uploads/{upload}/apply", json={"updates": [{"ref": "refs/public/crew", "old": None, "new": crews}]})
    assert answer.json()["refs"][0]["status"] == "rejected" and "not a public entry" in answer.json()["refs"][0]["reason"]
    with hub.server.client(stranger) as http:
        assert crews not in http.get("/api/v1/ns/alice/refs").json()["refs"].values()

"""Who may do what on a real `vml serve` (issue 19): every API route and the clone, fetch and
push commands, for every kind of caller, against one table of expected outcomes.

One world serves every row: users alice (namespace alice), root (an admin), bob (a stranger
to both namespaces), group team with carol (read), dave (append) and erin (write); both
namespaces hold a private main and a public entry. A row is one caller acting on one
namespace, through a server with or without --anonymous-public (two processes over one
repository). The routes that take an id use the caller's own transfer or upload when it
could make one, else the namespace owner's. Each row pushes to refs of its own (ff-ROW,
force-ROW, probe-ROW), so rows do not depend on each other. After every refused push the
server's refs are as they were; at the end `vml fsck` and `git fsck` find the server whole.
The observed table goes to tests/artifacts/access-matrix.md (and stdout, with -s).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import Vml, git_fsck_clean, one_line_error
from support.callers import Cli, has_object, push_bundle, server_refs
from support.server import VmlServer, start_server

from vml.refs.git import GitDag
from vml.server.access import stored_ref

ACTIONS = ("whoami", "refs", "fetch", "fetch public", "GET transfer", "DELETE transfer", "POST uploads", "HEAD upload", "PATCH upload",
           "apply", "clone", "vml fetch", "push", "push --force")
ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "access-matrix.md"


@dataclass(frozen=True)
class Row:
    caller: str  # a key of World.tokens
    namespace: str
    anonymous_public: bool  # through the server started with --anonymous-public
    expected: tuple[str, ...]  # one outcome per ACTIONS

    @property
    def label(self) -> str:
        return f"{self.caller} on {self.namespace}" + (" (--anonymous-public)" if self.anonymous_public else "")

    @property
    def slug(self) -> str:
        return f"{self.caller}-{self.namespace}" + ("-ap" if self.anonymous_public else "")


# One line per row, in the order of ACTIONS. refs: all (private main too), public (only refs/public/*), none.
# clone and vml fetch: what arrived (all, public, empty) or refused (a one-line error).
ROWS = (
    Row("anonymous", "alice", False,
        ("200 anonymous", "200 none", "409", "409", "404", "404", "403", "404", "404", "404", "empty", "empty", "refused", "refused")),
    Row("anonymous", "alice", True,
        ("200 anonymous", "200 public", "409", "200", "200", "204", "403", "404", "404", "404", "public", "public", "refused", "refused")),
    Row("alice", "alice", False,
        ("200 alice", "200 all", "200", "200", "200", "204", "201", "204", "204", "200 new", "all", "all", "fast-forward", "forced")),
    Row("root", "alice", False,
        ("200 root", "200 all", "200", "200", "200", "204", "201", "204", "204", "200 new", "all", "all", "fast-forward", "forced")),
    Row("bob", "alice", False,
        ("200 bob", "200 public", "409", "200", "200", "204", "403", "404", "404", "404", "public", "public", "refused", "refused")),
    Row("bob", "team", False,
        ("200 bob", "200 public", "409", "200", "200", "204", "403", "404", "404", "404", "public", "public", "refused", "refused")),
    Row("carol", "team", False,
        ("200 carol", "200 all", "200", "200", "200", "204", "403", "404", "404", "404", "all", "all", "refused", "refused")),
    Row("dave", "team", False,
        ("200 dave", "200 all", "200", "200", "200", "204", "201", "204", "204", "200 new", "all", "all", "fast-forward", "refused")),
    Row("erin", "team", False,
        ("200 erin", "200 all", "200", "200", "200", "204", "201", "204", "204", "200 new", "all", "all", "fast-forward", "forced")),
    Row("alice-read-only", "alice", False,
        ("200 alice", "200 all", "200", "200", "200", "204", "403", "403", "403", "403", "all", "all", "refused", "refused")),
    Row("alice-append-only", "alice", False,
        ("200 alice", "200 all", "200", "200", "200", "204", "201", "204", "204", "200 new", "all", "all", "fast-forward", "refused")),
    *(Row(caller, "alice", False, ("401",) * 10 + ("refused",) * 4)
      for caller in ("alice-expired", "alice-revoked", "malformed", "forged")),
)
# Why a refused push was refused, as the CLI says it (stderr's line, then the ref's reason).
REASONS = {
    ("anonymous on alice", "push"): "you may not add entries to alice (log in: vml login",
    ("bob on alice", "push"): "you may not add entries to alice",
    ("carol on team", "push"): "you may not add entries to team",
    ("dave on team", "push --force"): "your role in team is append: you may only add entries: a forced update needs write access",
    ("alice-read-only on alice", "push"): "you may not add entries to alice",
    ("alice-append-only on alice", "push --force"): "this token may only add entries (append-only): a forced update needs write access",
    ("alice-expired on alice", "push"): "the token is not valid (unknown, expired or revoked)",
    ("alice-revoked on alice", "clone"): "the token is not valid (unknown, expired or revoked)",
    ("malformed on alice", "vml fetch"): "the token is not valid (unknown, expired or revoked)",
}
WHO = {"anonymous": "nobody (no token)", "alice": "the namespace's owner (alice)", "root": "an admin (root)", "bob": "another user (bob)",
       "carol": "group member, role read (carol)", "dave": "group member, role append (dave)", "erin": "group member, role write (erin)",
       "alice-read-only": "owner's read-only token", "alice-append-only": "owner's append-only token",
       "alice-expired": "owner's expired token", "alice-revoked": "owner's revoked token", "malformed": "a malformed token",
       "forged": "owner's token id, wrong secret"}


@dataclass
class World:
    plain: VmlServer
    anonymous_public: VmlServer
    base: Path
    config_home: Path  # no credentials file: a caller sends its VML_TOKEN or nothing
    template: Path  # a client repository with every branch the rows push
    tokens: dict[str, str | None]
    first: str = ""  # T: main's first entry; ff-ROW starts here
    side: str = ""  # Y: a sibling of private, where force-ROW starts
    private: str = ""  # X: the tip of main, a child of T; every row pushes it
    public: str = ""  # P: public/demo
    bundle: bytes = b""  # a push of `private`, whole
    owner_transfers: dict[str, str] = field(default_factory=dict)  # namespace -> a transfer its owner made
    owner_uploads: dict[str, str] = field(default_factory=dict)
    settled: dict[str, str] = field(default_factory=dict)  # the server's refs once the world is built
    observed: dict[str, dict[str, str]] = field(default_factory=dict)  # row label -> action -> outcome
    messages: dict[str, str] = field(default_factory=dict)  # each one-line error, and who got it first
    reasons: dict[tuple[str, str], str] = field(default_factory=dict)  # (row label, action) -> what the CLI said

    def server(self, row: Row) -> VmlServer:
        return self.anonymous_public if row.anonymous_public else self.plain

    def cli(self, caller: str) -> Cli:
        return Cli(self.tokens[caller], self.config_home)

    def owner(self, namespace: str) -> str:
        return "alice" if namespace == "alice" else "erin"


def _tip(repo: Path, ref: str) -> str:
    target = GitDag.open(str(repo)).ref_target(ref)
    assert target is not None, ref
    return target


def _add_accounts(server: VmlServer) -> dict[str, str | None]:
    accounts = server.accounts()
    tokens: dict[str, str | None] = {"anonymous": None}
    for name in ("alice", "root", "bob", "carol", "dave", "erin"):
        accounts.add_user(name, admin=name == "root")
        tokens[name] = accounts.add_token(name).secret
    accounts.add_group("team")
    for user, role in (("carol", "read"), ("dave", "append"), ("erin", "write")):
        accounts.set_member("team", user, role)
    tokens["alice-read-only"] = accounts.add_token("alice", mode="read-only").secret
    tokens["alice-append-only"] = accounts.add_token("alice", mode="append-only").secret
    tokens["alice-expired"] = accounts.add_token("alice", expires=time.time() - 1).secret
    revoked = accounts.add_token("alice")
    accounts.revoke_token(revoked.info.id)
    tokens["alice-revoked"] = revoked.secret
    tokens["malformed"] = "vml_this-is-not-a-token"
    alice_id = str(tokens["alice"]).split("_")[1]
    tokens["forged"] = f"vml_{alice_id}_{secrets.token_urlsafe(32)}"
    return tokens


def _build_template(world: World) -> None:
    """T on main, public/demo from it, Y on a side branch, X on main; every row's ff-ROW
    (at T) and force-ROW (at Y) pushed to both namespaces, then moved to X here."""
    alice, template, guest = world.cli("alice"), world.template, world.template / "guest"
    repo = template / ".vml"
    (guest / "etc").mkdir(parents=True)
    (guest / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    alice(template, "init")
    alice(template, "area", "add", "wa", "--dir", str(guest))
    alice(template, "commit", "-m", "first")
    world.first = _tip(repo, "refs/heads/main")
    alice(template, "publish", "main", "--as", "demo")
    world.public = _tip(repo, "refs/public/demo")
    alice(template, "switch", "-c", "side")
    (guest / "side.txt").write_text("a sibling\n")
    alice(template, "commit", "-m", "side")
    world.side = _tip(repo, "refs/heads/side")
    alice(template, "switch", "main")
    (guest / "private.txt").write_text("alice's private notes\n")
    alice(template, "commit", "-m", "private")
    world.private = _tip(repo, "refs/heads/main")
    for namespace, server in (("alice", world.plain), ("team", world.plain), ("anon-alice", world.anonymous_public)):
        alice(template, "remote", "add", namespace, server.ns(namespace.removeprefix("anon-")))
    git = GitDag.open(str(repo))
    names = [name for row in ROWS for name in (f"ff-{row.slug}", f"force-{row.slug}")]
    for row in ROWS:
        git.set_direct(f"refs/heads/ff-{row.slug}", world.first, "test: where a fast-forward starts")
        git.set_direct(f"refs/heads/force-{row.slug}", world.side, "test: where a forced push starts")
    for namespace in ("alice", "team"):
        world.cli(world.owner(namespace))(template, "push", namespace, "main", "public/demo", *names)
    for row in ROWS:
        for name in (f"ff-{row.slug}", f"force-{row.slug}"):
            git.set_direct(f"refs/heads/{name}", world.private, "test: what the row pushes")
    push_bundle(repo, world.private, world.base / "private.bundle")
    world.bundle = (world.base / "private.bundle").read_bytes()


def _owner_ids(world: World) -> None:
    for namespace in ("alice", "team"):
        with world.plain.client(world.tokens[world.owner(namespace)]) as http:
            made = http.post(f"/api/v1/ns/{namespace}/fetch", json={"want": [world.private], "have": []})
            world.owner_transfers[namespace] = made.json()["transfer"]
            world.owner_uploads[namespace] = http.post(f"/api/v1/ns/{namespace}/uploads").json()["upload"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("access")
    plain = start_server(base / "plain")
    anonymous_public = None
    try:
        anonymous_public = start_server(base / "anonymous-public", "--anonymous-public", repo=plain.repo)
        (base / "config").mkdir()
        made = World(plain, anonymous_public, base, base / "config", base / "template", _add_accounts(plain))
        _build_template(made)
        _owner_ids(made)
        made.settled = server_refs(plain.repo)
        yield made
        _write_matrix(made)
    finally:
        for server in (plain, anonymous_public):
            if server is not None:
                server.stop()


# -- one row


def _refs_seen(refs: dict[str, str], world: World) -> str:
    if not refs:
        return "none"
    if "refs/heads/main" in refs:
        return "all"
    if all(name.startswith(("refs/public/", "refs/vml/bases/")) for name in refs) and world.private not in refs.values():
        return "public"
    return f"unexpected {sorted(refs)}"


def _api_actions(world: World, row: Row, http: httpx.Client) -> dict[str, str]:
    ns = f"/api/v1/ns/{row.namespace}"
    seen: dict[str, str] = {}
    whoami = http.get("/api/v1/whoami")
    seen["whoami"] = f"200 {whoami.json()['user'] or 'anonymous'}" if whoami.status_code == 200 else str(whoami.status_code)
    refs = http.get(f"{ns}/refs")
    seen["refs"] = f"200 {_refs_seen(refs.json()['refs'], world)}" if refs.status_code == 200 else str(refs.status_code)
    private = http.post(f"{ns}/fetch", json={"want": [world.private], "have": []})
    public = http.post(f"{ns}/fetch", json={"want": [world.public], "have": []})
    seen["fetch"], seen["fetch public"] = str(private.status_code), str(public.status_code)

    made = next((answer.json() for answer in (private, public) if answer.status_code == 200), None)
    transfer = made["transfer"] if made else world.owner_transfers[row.namespace]
    got = http.get(f"/api/v1/transfers/{transfer}")
    if got.status_code == 200:
        assert made is not None and len(got.content) == made["size"]
    seen["GET transfer"] = str(got.status_code)
    seen["DELETE transfer"] = str(http.delete(f"/api/v1/transfers/{transfer}").status_code)

    started = http.post(f"{ns}/uploads")
    seen["POST uploads"] = str(started.status_code)
    upload = started.json()["upload"] if started.status_code == 201 else world.owner_uploads[row.namespace]
    seen["HEAD upload"] = str(http.head(f"/api/v1/uploads/{upload}").status_code)
    seen["PATCH upload"] = str(http.patch(f"/api/v1/uploads/{upload}", content=world.bundle, headers={"Upload-Offset": "0"}).status_code)
    before = server_refs(world.plain.repo)
    probe = f"refs/heads/probe-{row.slug}"
    applied = http.post(f"/api/v1/uploads/{upload}/apply", json={"updates": [{"ref": probe, "old": None, "new": world.private}]})
    seen["apply"] = str(applied.status_code)
    if applied.status_code == 200:
        [result] = applied.json()["refs"]
        seen["apply"] += f" {result['status']}"
    moved = {stored_ref(row.namespace, probe): world.private} if seen["apply"] == "200 new" else {}
    assert server_refs(world.plain.repo) == {**before, **moved}
    return seen


def _outcome(world: World, row: Row, action: str, result) -> str | None:
    """None when the command worked; "refused" (and its one-line message kept) when not."""
    if result.returncode == 0:
        return None
    message = one_line_error(result)
    rejected = [line.strip() for line in result.stdout.splitlines() if "rejected" in line]  # a push's table says why
    said = world.reasons[row.label, action] = " / ".join([message, *rejected])
    world.messages.setdefault(said, f"{row.label}: {action}")
    return "refused"


def _received(world: World, row: Row, action: str, result, repo: Path) -> str:
    refused = _outcome(world, row, action, result)
    if refused:
        return refused
    if has_object(repo, world.private):
        return "all"
    return "public" if has_object(repo, world.public) else "empty"


def _cli_actions(world: World, row: Row) -> dict[str, str]:
    cli, server, here = world.cli(row.caller), world.server(row), world.base / row.slug
    url = server.ns(row.namespace)
    seen = {"clone": _received(world, row, "clone", cli(here, "clone", url, "clone", check=False), here / "clone" / ".vml")}
    cli(here / "fetched", "init")
    cli(here / "fetched", "remote", "add", "origin", url)
    seen["vml fetch"] = _received(world, row, "vml fetch", cli(here / "fetched", "fetch", check=False), here / "fetched" / ".vml")

    remote = f"anon-{row.namespace}" if row.anonymous_public else row.namespace
    for action, branch, start, status in (("push", f"ff-{row.slug}", world.first, "fast-forward"),
                                          ("push --force", f"force-{row.slug}", world.side, "forced")):
        stored = stored_ref(row.namespace, f"refs/heads/{branch}")
        before = server_refs(world.plain.repo)
        assert before[stored] == start
        pushed = cli(world.template, *action.split(), remote, branch, check=False)
        seen[action] = _outcome(world, row, action, pushed) or status
        assert server_refs(world.plain.repo) == ({**before, stored: world.private} if seen[action] == status else before)
    return seen


@pytest.mark.parametrize("row", ROWS, ids=[row.slug for row in ROWS])
def test_access_matrix(world: World, row: Row):
    with world.server(row).client(world.tokens[row.caller]) as http:
        seen = _api_actions(world, row, http)
    seen.update(_cli_actions(world, row))
    world.observed[row.label] = seen
    assert seen == dict(zip(ACTIONS, row.expected, strict=True))
    for (label, action), reason in REASONS.items():
        if label == row.label:
            assert reason in world.reasons[label, action]
    _owners_things_intact(world, row.namespace)


def _owners_things_intact(world: World, namespace: str) -> None:
    """Nobody else's request took the owner's transfer or wrote to the owner's upload."""
    with world.plain.client(world.tokens[world.owner(namespace)]) as http:
        assert http.get(f"/api/v1/transfers/{world.owner_transfers[namespace]}").status_code == 200
        head = http.head(f"/api/v1/uploads/{world.owner_uploads[namespace]}")
        assert head.status_code == 204 and head.headers["upload-offset"] == "0"


def test_server_whole_after_the_matrix(world: World):
    """Every row's pushes only moved that row's refs; the entries shared before are where they were."""
    now = server_refs(world.plain.repo)
    assert {name: now.get(name) for name in world.settled if "/heads/ff-" not in name and "/heads/force-" not in name} == \
        {name: target for name, target in world.settled.items() if "/heads/ff-" not in name and "/heads/force-" not in name}
    report = Vml(world.base)("--repo", str(world.plain.repo), "fsck", "--json").json()
    assert report["damaged"] == [] and report["problems"] == [], report
    git_fsck_clean(world.plain.repo)


# -- the table for a closing note


def _write_matrix(world: World) -> None:
    lines = ["| caller | namespace | " + " | ".join(ACTIONS) + " |", "|---" * (len(ACTIONS) + 2) + "|"]
    for row in ROWS:
        seen = world.observed.get(row.label)
        if seen is not None:
            caller = f"{WHO[row.caller]}, server with --anonymous-public" if row.anonymous_public else WHO[row.caller]
            lines.append(f"| {caller} | {row.namespace} | " + " | ".join(seen.get(action, "?") for action in ACTIONS) + " |")
    lines += ["", "refs: all = the private branches too, public = refs/public/* only, none = an empty list. clone and vml fetch: what "
              "arrived. GET/DELETE transfer, HEAD/PATCH upload and apply act on the caller's own transfer or upload when it could make "
              "one, else on the namespace owner's.", "", "One-line errors the CLI gave:", ""]
    lines += [f"- {where}: `{message}`" for message, where in world.messages.items()]
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))

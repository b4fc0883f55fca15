"""A bundle or a remote is data from a stranger. Each test crafts a hostile entry in a
stranger's repository, blob by blob (bypassing every check vml makes when it writes), hands
it over as a bundle file or as a remote to fetch from, and runs the commands a user would:
import or fetch, checkout, show, diff, fsck. None may write outside its target, hang, run out
of memory or print a traceback: each succeeds, or fails with one line and loses nothing.

Every vml process here runs with a memory limit and a timeout, so "never runs out of memory"
and "never hangs" are checked, not hoped for.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import blake3
import pytest
import zstandard
from conftest import Run, Vml, git_fsck_clean
from support.treecompare import snapshot

from vml import api
from vml.objects.manifest import KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FILE, KIND_SYMLINK, Node, Totals, encode_listing, encode_root
from vml.objects.pack import TYPE_DATA, TYPE_TREE, PackWriter
from vml.repo import Repository

PAYLOAD = b"PWNED by a stranger's entry\n"
MEMORY_LIMIT = 3 << 30  # bytes of address space for each vml process
TIMEOUT = 90  # seconds for any one command
DELIVERIES = ["bundle", "fetch"]


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def vml_run(cwd: Path, *args: str) -> Run:
    env = {**os.environ, "VML_AUTHOR_NAME": "Victim", "VML_AUTHOR_EMAIL": "victim@example.org"}
    env.pop("VML_REPO", None)
    done = subprocess.run([sys.executable, "-m", "vml", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, preexec_fn=_limited)
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, (args, done.stderr)
    if "fsck" in args and done.returncode == 1:
        assert "the repository is damaged" in done.stdout or '"damaged"' in done.stdout, done.stdout  # its report
    elif done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("vml: error:"), (args, done.stderr)
    return Run(done.returncode, done.stdout, done.stderr)


def _honest_repository(home: Path, message: str) -> str:
    """A repository at HOME/.vml with area wa on HOME/guest and one entry of it: made by vml
    in this process (only what meets the stranger's data runs apart, under limits)."""
    vml = Vml(home)
    vml("init")
    vml("area", "add", "wa", "--dir", str(home / "guest"))
    return vml("commit", "-m", message, "--json").json()["entry"]


def node(name: bytes, kind: int, **fields) -> Node:
    base = dict(mode=0o644, uid=0, gid=0, user=None, group=None, mtime_ns=1_000_000_000)
    base.update(fields)
    return Node(name=name, kind=kind, **base)


class Stranger:
    """Someone else's repository (tmp/stranger/.vml) with one honest entry, in which `craft`
    makes a branch `evil` of any tree at all."""

    def __init__(self, tmp_path: Path):
        self.home = tmp_path / "stranger"
        (self.home / "guest" / "etc").mkdir(parents=True)
        (self.home / "guest" / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
        self.honest = _honest_repository(self.home, "honest")
        self.path = self.home / ".vml"
        self.totals: dict[bytes, Totals] = {}
        self._lies: list[tuple[bytes, int, int, bytes, int]] = []
        self._open: Repository | None = None

    def data(self, payload: bytes) -> bytes:
        return self._repo().store.put(payload, TYPE_DATA)

    def listing(self, nodes: list[Node], totals: Totals | None = None) -> bytes:
        """A listing as written, with honest totals unless `totals` are given."""
        if totals is None:
            totals = Totals(len(nodes), sum(n.kind == KIND_FILE for n in nodes), sum(n.size for n in nodes))
            for n in nodes:
                if n.kind == KIND_DIR and n.tree in self.totals:
                    totals.add(self.totals[n.tree])
        listing_id = self._repo().store.put(encode_listing(nodes, totals), TYPE_TREE)
        self.totals[listing_id] = totals
        return listing_id

    def lying_blob(self, claimed_id: bytes, blob_type: int, flag: int, payload: bytes, raw_length: int) -> bytes:
        """A blob whose record lies: an id it does not hash to, or a size it does not have."""
        self._lies.append((claimed_id, blob_type, flag, payload, raw_length))
        return claimed_id

    def craft(self, top: bytes, root_totals: Totals | None = None, links: list[list[bytes]] = ()) -> str:
        """Branch `evil`: an entry whose root describes `top`."""
        top_node = node(b"", KIND_DIR, mode=0o755, tree=top)
        repo = self._repo()
        try:
            if self._lies:
                writer = PackWriter(repo.store.tmp_dir)
                for claimed_id, blob_type, flag, payload, raw_length in self._lies:
                    writer.add(claimed_id, blob_type, flag, payload, raw_length)
                writer.finish(repo.store.packs_dir)
            totals = root_totals or self.totals.get(top, Totals())
            root = repo.store.put(encode_root(top_node, totals, list(links)), TYPE_TREE)
            repo.store.flush()
            info = api.entry_info(repo, self.honest)
            info.manifest = root.hex()
            commit = repo.git.create_commit({"entry.toml": info.to_toml()}, "a stranger's entry", [self.honest])
            repo.git.set_direct("refs/heads/evil", commit, "craft")
        finally:
            repo.close()
            self._open = None
        return commit

    def _repo(self) -> Repository:
        """The stranger's repository, open while an entry is crafted (its blobs are written
        when `craft` flushes the store)."""
        if self._open is None:
            self._open = Repository(str(self.path))
        return self._open

    def bundle(self, out: Path, entry: str) -> Path:
        """A full bundle of `evil`, written by hand in the documented format (docs/FORMAT.md,
        vml/exchange/bundle.py): every commit, its git objects, and every pack of the store."""
        repo = Repository(str(self.path))
        try:
            commits = [entry, self.honest]
            header = json.dumps({"format": 1, "kind": "full", "entry": entry, "ref": "refs/heads/evil", "requires": [],
                                 "commits": [self.honest, entry]}, sort_keys=True).encode()
            body = b"VMLBNDL\x01" + struct.pack("<I", len(header)) + header
            objects = [o for c in reversed(commits) for o in repo.git.tree_objects(c) + [c]]
            body += struct.pack("<I", len(objects))
            codes = {"commit": 1, "tree": 2, "blob": 3}
            for object_hex in objects:
                type_name, content = repo.git.read_raw(object_hex)
                body += struct.pack("<B20sI", codes[type_name], bytes.fromhex(object_hex), len(content)) + content
            packs = sorted((self.path / "vml" / "store" / "packs").rglob("*.pack"))
            body += struct.pack("<I", len(packs))
            for pack in packs:
                data = pack.read_bytes()
                body += struct.pack("<Q", len(data)) + data
        finally:
            repo.close()
        out.write_bytes(body + blake3.blake3(body).digest())
        return out


class Victim:
    """The user: a repository with an honest area, a sandbox to check out into, and a file
    outside everything that a hostile entry would like to reach."""

    def __init__(self, tmp_path: Path):
        self.home = tmp_path / "victim"
        (self.home / "guest").mkdir(parents=True)
        (self.home / "guest" / "notes").write_text("mine\n")
        self.own = _honest_repository(self.home, "mine")
        self.sandbox = tmp_path / "sandbox"
        self.sandbox.mkdir()
        self.outside = tmp_path / "outside-dir"
        self.outside.mkdir()
        (self.outside / "victim").write_bytes(b"the victim's own file\n")
        self.outside_before = snapshot(self.outside)
        self.refs_before = self.refs()
        self.refused_checkout = False

    def __call__(self, *args: str) -> Run:
        return vml_run(self.home, *args)

    def refs(self) -> dict[str, str]:
        done = subprocess.run(["git", f"--git-dir={self.home / '.vml'}", "for-each-ref", "--format=%(refname) %(objectname)"],
                              capture_output=True, text=True, check=True)
        return dict(line.split() for line in done.stdout.splitlines())

    def receive(self, stranger: Stranger, delivery: str, entry: str, tmp_path: Path) -> str | None:
        """Take the stranger's `evil` by bundle or by fetch: the name to check it out by, or
        None if vml refused it (then nothing may have changed)."""
        if delivery == "bundle":
            result = self("import", str(stranger.bundle(tmp_path / "evil.vmlb", entry)))
            name = "evil"
        else:
            self("remote", "add", "stranger", str(stranger.path))
            self.refs_before = self.refs()
            result = self("fetch", "stranger")
            name = "stranger/evil"
        if result.returncode != 0:
            assert self.refs() == self.refs_before, "a refused transfer moved a ref"
            return None
        return name

    def assert_contained(self) -> None:
        assert sorted(os.listdir(self.sandbox)) in ([], ["out"]), os.listdir(self.sandbox)
        if self.refused_checkout:
            assert not (self.sandbox / "out").exists(), "a refused checkout --to leaves nothing behind"
        assert snapshot(self.outside) == self.outside_before
        assert os.lstat(self.outside / "victim").st_nlink == 1
        out = self.sandbox / "out"
        for dirpath, _dirs, files in os.walk(out):
            for name in files:
                found = os.path.join(dirpath, name)
                assert os.path.islink(found) or os.lstat(found).st_ino != os.lstat(self.outside / "victim").st_ino

    def assert_own_intact(self) -> None:
        """What the victim had before is all there, and git's own fsck agrees."""
        target = self.sandbox / "own-check"
        assert self("checkout", self.own, "--to", str(target)).returncode == 0
        assert (target / "notes").read_text() == "mine\n"
        git_fsck_clean(self.home / ".vml")

    def try_everything(self, name: str) -> Run:
        """What a user does with an entry they received: checkout, show, diff, fsck, log."""
        checkout = self("checkout", name, "--to", str(self.sandbox / "out"))
        self.refused_checkout = checkout.returncode != 0
        self("show", name)
        self("diff", self.own, name, "--stat")
        self("fsck")
        self("log", "--all", "--oneline", "--", "etc/passwd")
        self("gc")
        return checkout


@pytest.fixture
def parties(tmp_path: Path):
    return Stranger(tmp_path), Victim(tmp_path)


def _outcome(victim: Victim, stranger: Stranger, delivery: str, entry: str, tmp_path: Path, *, refused_at_checkout: bool = True):
    name = victim.receive(stranger, delivery, entry, tmp_path)
    if name is not None:
        checkout = victim.try_everything(name)
        if refused_at_checkout:
            assert checkout.returncode != 0, checkout.stdout
    victim.assert_contained()
    victim.assert_own_intact()
    return name


# -- names


@pytest.mark.parametrize("delivery", DELIVERIES)
@pytest.mark.parametrize("name", [b"..", b"/etc/passwd", b"a/b", b"nul\0byte", b""], ids=["dotdot", "absolute", "slash", "nul", "empty"])
def test_names_that_leave_the_tree(parties, tmp_path: Path, delivery: str, name: bytes):
    stranger, victim = parties
    data = stranger.data(PAYLOAD)
    entry = stranger.craft(stranger.listing([node(name, KIND_FILE, size=len(PAYLOAD), chunks=data)]))
    assert _outcome(victim, stranger, delivery, entry, tmp_path) is None, "refused as it arrives"


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_a_symlink_then_a_file_below_it(parties, tmp_path: Path, delivery: str):
    """`s -> outside`, then `s/victim`: one listing cannot hold the name twice (refused on
    arrival); and a hardlink named through `s` is refused at checkout."""
    stranger, victim = parties
    data = stranger.data(PAYLOAD)
    inner = stranger.listing([node(b"victim", KIND_FILE, size=len(PAYLOAD), chunks=data)])
    twice = stranger.listing([node(b"s", KIND_SYMLINK, mode=0o777, target=os.fsencode(victim.outside)),
                              node(b"s", KIND_DIR, mode=0o755, tree=inner)])
    assert _outcome(victim, stranger, delivery, stranger.craft(twice), tmp_path) is None


@pytest.mark.parametrize("delivery", DELIVERIES)
@pytest.mark.parametrize("hardlink", [b"s/victim", b"../outside-dir/victim", b"/etc/passwd"], ids=["through-symlink", "dotdot", "absolute"])
def test_a_hardlink_to_a_path_outside_the_tree(parties, tmp_path: Path, delivery: str, hardlink: bytes):
    stranger, victim = parties
    data = stranger.data(PAYLOAD)
    top = stranger.listing([node(b"s", KIND_SYMLINK, mode=0o777, target=os.fsencode(victim.outside)),
                            node(b"t", KIND_FILE, mode=0o4777, size=len(PAYLOAD), chunks=data, hardlink=hardlink)])
    _outcome(victim, stranger, delivery, stranger.craft(top), tmp_path)


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_duplicate_names_in_one_listing(parties, tmp_path: Path, delivery: str):
    stranger, victim = parties
    data = stranger.data(PAYLOAD)
    top = stranger.listing([node(b"x", KIND_FILE, size=len(PAYLOAD), chunks=data)] * 2)
    assert _outcome(victim, stranger, delivery, stranger.craft(top), tmp_path) is None


# -- shapes: cycles, repetition, depth


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_a_listing_cycle(parties, tmp_path: Path, delivery: str):
    """Content addressing makes a cycle impossible unless ids lie: two listings that name each
    other, stored under ids they do not hash to. Every read checks the hash: refused on arrival."""
    stranger, victim = parties
    a_id, b_id = blake3.blake3(b"a").digest(), blake3.blake3(b"b").digest()
    a = encode_listing([node(b"down", KIND_DIR, mode=0o755, tree=b_id)], Totals(2, 0, 0))
    b = encode_listing([node(b"up", KIND_DIR, mode=0o755, tree=a_id)], Totals(2, 0, 0))
    stranger.lying_blob(a_id, TYPE_TREE, 0, a, len(a))
    stranger.lying_blob(b_id, TYPE_TREE, 0, b, len(b))
    assert _outcome(victim, stranger, delivery, stranger.craft(a_id, root_totals=Totals(4, 0, 0)), tmp_path) is None


def _exponential(stranger: Stranger, levels: int, *, honest: bool) -> tuple[bytes, Totals]:
    """A few KB naming 2^levels files: each level is a directory holding the level below twice."""
    data = stranger.data(PAYLOAD)
    listing = stranger.listing([node(b"f", KIND_FILE, size=len(PAYLOAD), chunks=data)])
    for _ in range(levels):
        nodes = [node(b"a", KIND_DIR, mode=0o755, tree=listing), node(b"b", KIND_DIR, mode=0o755, tree=listing)]
        listing = stranger.listing(nodes, None if honest else Totals(2, 0, 0))
    return listing, stranger.totals[listing]


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_listings_repeating_exponentially_with_honest_totals(parties, tmp_path: Path, delivery: str):
    """2^40 paths declared: more than any filesystem holds, refused on arrival."""
    stranger, victim = parties
    top, totals = _exponential(stranger, 40, honest=True)
    assert totals.nodes > 1 << 40
    assert _outcome(victim, stranger, delivery, stranger.craft(top), tmp_path) is None


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_listings_repeating_exponentially_with_lying_totals(parties, tmp_path: Path, delivery: str):
    """Totals that claim a handful of paths: every walk stops as soon as the listings name
    more than the root declares; show counts once per distinct listing; fsck says it is damaged."""
    stranger, victim = parties
    top, _totals = _exponential(stranger, 40, honest=False)
    name = _outcome(victim, stranger, delivery, stranger.craft(top, root_totals=Totals(4, 1, len(PAYLOAD))), tmp_path)
    assert name is not None
    shown = json.loads(victim("show", name, "--json").stdout)
    assert shown["directories"] == 2 ** 41 - 2 and shown["info"]["files"] == 1  # counted exactly, declared as it says
    assert "damage" in victim("fsck").stdout


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_directories_nested_deeper_than_any_path(parties, tmp_path: Path, delivery: str):
    stranger, victim = parties
    data = stranger.data(PAYLOAD)
    listing = stranger.listing([node(b"f", KIND_FILE, size=len(PAYLOAD), chunks=data)])
    for _ in range(3000):
        listing = stranger.listing([node(b"d", KIND_DIR, mode=0o755, tree=listing)])
    name = _outcome(victim, stranger, delivery, stranger.craft(listing), tmp_path)
    if name is not None:
        assert "2048" in victim("checkout", name, "--to", str(victim.sandbox / "deep")).stderr
        assert not (victim.sandbox / "deep").exists()


# -- sizes that lie


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_a_zstd_frame_that_expands_past_its_recorded_size(parties, tmp_path: Path, delivery: str):
    """16 KB that decompress to 512 MiB, recorded as 28 bytes: refused before any is decompressed."""
    stranger, victim = parties
    bomb = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(b"\0" * (512 << 20))
    claimed = blake3.blake3(PAYLOAD).digest()
    stranger.lying_blob(claimed, TYPE_DATA, 1, bomb, len(PAYLOAD))
    top = stranger.listing([node(b"bomb", KIND_FILE, size=len(PAYLOAD), chunks=claimed)])
    assert _outcome(victim, stranger, delivery, stranger.craft(top), tmp_path) is None


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_a_chunk_whose_recorded_size_lies(parties, tmp_path: Path, delivery: str):
    stranger, victim = parties
    claimed = blake3.blake3(PAYLOAD).digest()
    stranger.lying_blob(claimed, TYPE_DATA, 0, PAYLOAD, 1 << 30)  # raw, but "a GiB"
    top = stranger.listing([node(b"liar", KIND_FILE, size=len(PAYLOAD), chunks=claimed)])
    assert _outcome(victim, stranger, delivery, stranger.craft(top), tmp_path) is None


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_a_file_whose_size_lies_about_its_chunks(parties, tmp_path: Path, delivery: str):
    """A true 4 MiB chunk under a node that says 5 bytes: it arrives (every blob is sound),
    but no command reads more than the node admits to, and the checkout is refused."""
    stranger, victim = parties
    big = stranger.data(os.urandom(4 << 20))
    top = stranger.listing([node(b"small", KIND_FILE, size=5, chunks=big)])
    name = _outcome(victim, stranger, delivery, stranger.craft(top), tmp_path)
    assert name is not None
    assert victim("show", f"{name}:small").returncode == 1
    assert victim("diff", victim.own, name, "-p").returncode == 1
    assert not (victim.sandbox / "out" / "small").exists()


# -- what a checkout by root restores


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring root's files needs root")
def test_setuid_root_files_in_a_bundle_are_named_on_import_and_restored_as_recorded(parties, tmp_path: Path):
    """vml restores a setuid-root file as recorded, as `tar -p` run by root does (a guest's
    sudo must stay sudo), and says so on import: every such file, and every device node."""
    stranger, victim = parties
    data = stranger.data(b"#!/bin/sh\nid\n")
    top = stranger.listing(sorted([
        node(b"rootshell", KIND_FILE, mode=0o4755, size=13, chunks=data),
        node(b"groupy", KIND_FILE, mode=0o2755, size=13, chunks=data),
        node(b"mem", KIND_CHAR, mode=0o600, rdev=(1, 1)),
        node(b"disk", KIND_BLOCK, mode=0o600, rdev=(8, 0)),
        node(b"harmless", KIND_FILE, mode=0o4755, uid=1000, size=13, chunks=data),
    ], key=lambda n: n.name))
    bundle = stranger.bundle(tmp_path / "evil.vmlb", str(stranger.craft(top)))
    report = json.loads(victim("import", str(bundle), "--json").stdout)
    assert report["privileged"] == 4 and len(report["privileged_paths"]) == 4, report
    second = Victim(tmp_path / "second")
    imported = second("import", str(bundle))
    assert imported.returncode == 0, imported.stderr
    warning = imported.stderr
    for expected in ("4 files", "rootshell (setuid root)", "groupy (setgid root)", "mem (device)", "disk (device)"):
        assert expected in warning, warning
    assert "harmless" not in warning
    assert victim("checkout", "evil", "--to", str(victim.sandbox / "out")).returncode == 0
    shell = os.lstat(victim.sandbox / "out" / "rootshell")
    assert shell.st_mode & 0o7777 == 0o4755 and shell.st_uid == 0
    victim.assert_own_intact()

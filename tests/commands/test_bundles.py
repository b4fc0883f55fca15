"""Bundles: export every kind, import into other repositories, and reject missing
prerequisites, damaged and hostile files before anything is written."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import blake3
import pytest
from conftest import Vml, one_line_error
from support.repofiles import tree_digest


@pytest.fixture
def history(repo: Vml, guest: Path) -> list[str]:
    """Three entries on main: a 3 MiB file, then two small changes."""
    (guest / "data").mkdir()
    (guest / "data" / "big.bin").write_bytes(random.Random(1).randbytes(3 << 20))
    entries = [repo("commit", "-m", "one", "--json").json()["entry"]]
    (guest / "etc" / "two.conf").write_text("two\n")
    entries.append(repo("commit", "-m", "two", "--json").json()["entry"])
    (guest / "home" / "user" / "three.txt").write_text("three\n")
    entries.append(repo("commit", "-m", "three", "--json").json()["entry"])
    return entries


def fresh(tmp_path: Path, name: str) -> Vml:
    (tmp_path / name).mkdir()
    other = Vml(tmp_path / name)
    other("init")
    return other


def unchanged_state(vml: Vml) -> tuple:
    store = vml.cwd / ".vml" / "vml" / "store"
    return (sorted(p.name for p in store.glob("packs/*/*")), sorted(p.name for p in store.glob("index/*")),
            vml("log", "--all", "--json").stdout)


def test_full_bundle_needs_nothing(repo: Vml, guest: Path, history: list[str], tmp_path: Path):
    exported = repo("export", "main", "-o", str(tmp_path / "full.vmlb"), "--json").json()
    assert exported["kind"] == "full" and exported["requires"] == [] and exported["commits"] == 3
    other = fresh(tmp_path, "other")
    imported = other("import", str(tmp_path / "full.vmlb"), "--json").json()
    assert imported["ref"] == "main" and imported["status"] == "new" and imported["entry"] == history[-1]
    other.fsck_clean()
    other("area", "add", "wa", "--dir", str(tmp_path / "restored"))
    other("checkout", "main")
    assert tree_digest(tmp_path / "restored") == tree_digest(guest)
    assert other("import", str(tmp_path / "full.vmlb"), "--json").json()["status"] == "up to date"


def test_incremental_bundle_holds_only_the_change_and_names_its_parent(repo: Vml, history: list[str], tmp_path: Path):
    repo("export", "main~1", "-o", str(tmp_path / "base.vmlb"), "--full")
    incremental = repo("export", "main", "-o", str(tmp_path / "inc.vmlb"), "--incremental", "--json").json()
    assert incremental["requires"] == [history[1]] and incremental["commits"] == 1
    assert incremental["bytes"] < 64 << 10  # the 3 MiB file is not in it

    other = fresh(tmp_path, "other")
    before = unchanged_state(other)
    line = one_line_error(other("import", str(tmp_path / "inc.vmlb"), check=False))
    assert history[1][:12] in line and "lacks" in line
    assert unchanged_state(other) == before

    other("import", str(tmp_path / "base.vmlb"), "--as", "main")
    result = other("import", str(tmp_path / "inc.vmlb"), "--json").json()
    assert result["status"] == "fast-forward" and result["entry"] == history[2]
    other.fsck_clean()


def test_since_bundle(repo: Vml, history: list[str], tmp_path: Path):
    repo("tag", "v1", history[0])
    repo("export", "v1", "-o", str(tmp_path / "v1.vmlb"))
    since = repo("export", "main", "--since", "v1", "-o", str(tmp_path / "since.vmlb"), "--json").json()
    assert since["kind"] == "since" and since["requires"] == [history[0]] and since["commits"] == 2
    other = fresh(tmp_path, "other")
    assert other("import", str(tmp_path / "v1.vmlb"), "--json").json()["ref"] == "v1"
    assert other("import", str(tmp_path / "since.vmlb"), "--json").json()["entry"] == history[2]
    other.fsck_clean()


def test_differential_without_a_base_says_so(repo: Vml, history: list[str], tmp_path: Path):
    line = one_line_error(repo("export", "main", "--differential", "-o", str(tmp_path / "d.vmlb"), check=False))
    assert "base image" in line
    assert not (tmp_path / "d.vmlb").exists()


def test_import_does_not_move_a_diverged_branch_without_force(repo: Vml, guest: Path, history: list[str], tmp_path: Path):
    repo("export", "main", "-o", str(tmp_path / "b.vmlb"))
    other = fresh(tmp_path, "other")
    other("area", "add", "wa", "--dir", str(tmp_path / "own"))
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "f").write_text("own\n")
    own = other("commit", "-m", "own", "--json").json()["entry"]
    before = unchanged_state(other)
    assert "--as BRANCH" in one_line_error(other("import", str(tmp_path / "b.vmlb"), check=False))
    assert unchanged_state(other) == before
    assert "checked out in area wa" in one_line_error(other("import", str(tmp_path / "b.vmlb"), "--force", check=False))
    assert unchanged_state(other) == before
    assert other("import", str(tmp_path / "b.vmlb"), "--as", "theirs", "--json").json()["ref"] == "theirs"
    assert other("show", "main", "--json").json()["entry"]["id"] == own
    other.fsck_clean()


def _rewrite(path: Path, change) -> None:
    """Apply `change` to the bundle's body and give it a matching trailer: a hostile bundle."""
    body = bytearray(path.read_bytes()[:-32])
    body = change(body)
    path.write_bytes(bytes(body) + blake3.blake3(bytes(body)).digest())


def _packs_start(body: bytes) -> int:
    """Where the pack count sits in a bundle body (after header and git objects)."""
    header_length = struct.unpack_from("<I", body, 8)[0]
    position = 12 + header_length
    count = struct.unpack_from("<I", body, position)[0]
    position += 4
    for _ in range(count):
        _type, _id, length = struct.unpack_from("<B20sI", body, position)
        position += 25 + length
    return position


def _with_header(body: bytearray, change) -> bytearray:
    import json

    length = struct.unpack_from("<I", body, 8)[0]
    header = change(json.loads(body[12 : 12 + length]))
    encoded = json.dumps(header).encode()
    return body[:8] + struct.pack("<I", len(encoded)) + encoded + body[12 + length :]


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "hostile blob", "hostile: no packs", "not a bundle", "hostile ref"])
def test_damaged_or_hostile_bundle_is_rejected_whole(repo: Vml, history: list[str], tmp_path: Path, damage: str):
    bundle = tmp_path / "b.vmlb"
    repo("export", "main", "-o", str(bundle))
    data = bundle.read_bytes()
    if damage == "flipped byte":
        bundle.write_bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :])
    elif damage == "truncated":
        bundle.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "hostile blob":
        def flip_in_pack(body: bytearray) -> bytearray:
            spot = _packs_start(body) + 4 + 8 + 8 + 1000  # inside the first pack's first blob
            body[spot] ^= 0xFF
            return body
        _rewrite(bundle, flip_in_pack)
    elif damage == "hostile: no packs":
        _rewrite(bundle, lambda body: body[: _packs_start(body)] + struct.pack("<I", 0))
    elif damage == "hostile ref":
        _rewrite(bundle, lambda body: _with_header(body, lambda header: {**header, "ref": "refs/heads/../../config"}))
    else:
        bundle.write_bytes(b"just some file\n" * 10)
    other = fresh(tmp_path, "other")
    before = unchanged_state(other)
    line = one_line_error(other("import", str(bundle), check=False), code=1)
    assert any(word in line for word in ("damaged", "truncated", "incomplete", "not a vml bundle")), line
    assert unchanged_state(other) == before
    other.fsck_clean()


def test_a_pack_larger_than_any_pack_can_be_is_refused_unread(repo: Vml, history: list[str], tmp_path: Path, monkeypatch):
    """A bundle whose pack is larger than a pack can be (a hostile upload, say, of one
    gigabyte-long "pack" to make the reader hold it in memory) is refused by its length."""
    from vml.exchange import bundle

    repo("export", "main", "-o", str(tmp_path / "main.bundle"))
    other = fresh(tmp_path, "other")
    before = unchanged_state(other)
    monkeypatch.setattr(bundle, "MAX_PACK", 1 << 20)  # the 3 MiB file's pack is then too large
    refused = other("import", str(tmp_path / "main.bundle"), check=False)
    assert "more than a pack can be" in one_line_error(refused, 1)  # damage, as any damaged bundle
    assert unchanged_state(other) == before

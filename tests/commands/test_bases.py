"""Base images: stored once on their own refs, recorded by every entry made on them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import Vml, one_line_error


def _tree(root: Path, seed: int) -> None:
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "etc").mkdir()
    for i in range(20):
        (root / "usr" / "lib" / f"lib{i}.so").write_bytes(os.urandom(256 * 1024))
    (root / "etc" / "os-release").write_text(f"VERSION={seed}\n")


def test_base_from_image_dir_and_area(vml: Vml, tmp_path: Path):
    vml("init")
    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(3 << 20))
    tree = tmp_path / "tree"
    _tree(tree, 1)
    vml("area", "add", "wa", "--dir", str(tree))
    from_image = vml("base", "add", "disk", "1", "--image", str(image), "--json").json()
    from_dir = vml("base", "add", "tree", "1", "--dir", str(tree), "--json").json()
    from_area = vml("base", "add", "tree", "2", "--area", "wa", "--json").json()
    import blake3

    assert from_image["digest"] == "blake3:" + blake3.blake3(image.read_bytes()).hexdigest()
    assert from_dir["digest"] == from_area["digest"] and from_dir["digest"].startswith("tree:")
    assert from_area["added_bytes"] == 0  # the same files: stored once
    listed = vml("base", "list", "--json").json()
    assert [(b["name"], b["version"]) for b in listed] == [("disk", "1"), ("tree", "1"), ("tree", "2")]
    # The image comes back byte for byte.
    vml("checkout", from_image["entry"], "--to", str(tmp_path / "out"))
    assert (tmp_path / "out" / "disk.raw").read_bytes() == image.read_bytes()
    refused = vml("base", "add", "disk", "1", "--image", str(image), check=False)
    assert "bases are immutable" in one_line_error(refused)
    assert "not a valid base" in one_line_error(vml("base", "add", "../x", "1", "--dir", str(tree), check=False))
    assert "is not a file" in one_line_error(vml("base", "add", "x", "1", "--image", str(tmp_path / "none"), check=False))
    assert "exactly one of" in one_line_error(vml("base", "add", "x", "1", check=False))
    vml.fsck_clean()


def test_entry_on_a_base_costs_its_differences_and_records_the_base(vml: Vml, tmp_path: Path):
    vml("init")
    base_tree = tmp_path / "base"
    _tree(base_tree, 1)
    vml("base", "add", "cernvm", "5.1", "--dir", str(base_tree))
    guest = tmp_path / "guest"
    shutil.copytree(base_tree, guest, symlinks=True)
    (guest / "home" / "user").mkdir(parents=True)
    (guest / "home" / "user" / "analysis.C").write_text("void analysis() {}\n")
    vml("area", "add", "wa", "--dir", str(guest), "--base", "cernvm:5.1")
    saved = vml("commit", "-m", "analysis", "--json").json()
    assert saved["added_bytes"] < 20_000, saved  # 5 MiB of base files were stored already
    info = vml("show", saved["entry"], "--json").json()["info"]
    assert info["base"]["name"] == "cernvm" and info["base"]["version"] == "5.1"
    assert info["base"]["digest"].startswith("tree:")
    assert "Base:" in vml("show", saved["entry"]).stdout
    assert "no base nope:1" in one_line_error(vml("area", "add", "w2", "--dir", str(tmp_path / "w2"), "--base", "nope:1", check=False))
    vml.fsck_clean()


def test_checkout_on_another_base_version_warns_and_a_missing_base_is_an_error(vml: Vml, tmp_path: Path):
    vml("init")
    for version in ("1", "2"):
        tree = tmp_path / f"base{version}"
        _tree(tree, int(version))
        vml("base", "add", "os", version, "--dir", str(tree))
    guest = tmp_path / "guest"
    shutil.copytree(tmp_path / "base1", guest)
    vml("area", "add", "wa", "--dir", str(guest), "--base", "os:1")
    entry = vml("commit", "-m", "on 1", "--json").json()["entry"]
    vml("area", "add", "newer", "--dir", str(tmp_path / "newer"), "--base", "os:2")
    result = vml("checkout", entry, "-a", "newer")
    assert "saved on base os:1, the area is on base os:2" in result.stderr
    assert (tmp_path / "newer" / "etc" / "os-release").read_text() == "VERSION=1\n"
    subprocess.run(["git", "--git-dir", str(tmp_path / ".vml"), "update-ref", "-d", "refs/vml/bases/os/1"], check=True)
    missing = vml("checkout", entry, "--to", str(tmp_path / "elsewhere"), check=False)
    line = one_line_error(missing)
    assert "base os:1" in line and "vml base add os 1" in line
    vml.fsck_clean()


def _on_base(vml: Vml, tmp_path: Path) -> str:
    """A repository with base os:1 (a 5 MiB tree) and one entry on it; returns the entry."""
    vml("init")
    _tree(tmp_path / "base", 1)
    vml("base", "add", "os", "1", "--dir", str(tmp_path / "base"))
    shutil.copytree(tmp_path / "base", tmp_path / "guest")
    (tmp_path / "guest" / "home").mkdir()
    (tmp_path / "guest" / "home" / "results.txt").write_text("42\n")
    vml("area", "add", "wa", "--dir", str(tmp_path / "guest"), "--base", "os:1")
    return vml("commit", "-m", "results", "--json").json()["entry"]


def test_differential_bundle_carries_only_what_the_base_lacks(vml: Vml, tmp_path: Path):
    entry = _on_base(vml, tmp_path)
    vml("export", "main", "-o", str(tmp_path / "full.vmlb"))
    differential = vml("export", "main", "--differential", "-o", str(tmp_path / "diff.vmlb"), "--json").json()
    assert (tmp_path / "full.vmlb").stat().st_size > 5_000_000
    assert (tmp_path / "diff.vmlb").stat().st_size < 50_000, differential
    receiver = Vml(tmp_path / "receiver")
    receiver.cwd.mkdir()
    receiver("init", "--bare", str(receiver.cwd / "repo"))
    receiver_repo = ["--repo", str(receiver.cwd / "repo")]
    line = one_line_error(receiver(*receiver_repo, "import", str(tmp_path / "diff.vmlb"), check=False))
    assert "differential to base os:1" in line and "vml base add os 1" in line
    receiver(*receiver_repo, "base", "add", "os", "1", "--dir", str(tmp_path / "base"))  # the same image, added there
    receiver(*receiver_repo, "import", str(tmp_path / "diff.vmlb"))
    receiver(*receiver_repo, "checkout", entry, "--to", str(tmp_path / "rebuilt"))
    assert (tmp_path / "rebuilt" / "home" / "results.txt").read_text() == "42\n"
    assert (tmp_path / "rebuilt" / "usr" / "lib" / "lib7.so").read_bytes() == (tmp_path / "base" / "usr" / "lib" / "lib7.so").read_bytes()
    report = receiver(*receiver_repo, "fsck", "--json").json()
    assert report["damaged"] == [] and report["problems"] == []
    vml.fsck_clean()


def test_push_sends_the_base_unless_differential(vml: Vml, tmp_path: Path):
    _on_base(vml, tmp_path)
    vml("init", "--bare", str(tmp_path / "empty.vml"))
    vml("remote", "add", "empty", str(tmp_path / "empty.vml"))
    line = one_line_error(vml("push", "empty", "--differential", check=False))
    assert "lacks base os:1" in line and "without --differential" in line
    vml("init", "--bare", str(tmp_path / "shared.vml"))
    vml("remote", "add", "origin", str(tmp_path / "shared.vml"))
    vml("push")
    clone = Vml(tmp_path)
    clone("clone", str(tmp_path / "shared.vml"), str(tmp_path / "clone"))
    bases = Vml(tmp_path / "clone")("base", "list", "--json").json()
    assert [(b["name"], b["version"]) for b in bases] == [("os", "1")]
    (tmp_path / "guest" / "home" / "more.txt").write_text("more\n")
    vml("commit", "-m", "more")
    pushed = vml("push", "--differential", "--json").json()  # the remote has the base now: only the change goes
    assert pushed["bytes_sent"] < 50_000, pushed
    vml.fsck_clean()


def test_a_full_bundle_of_an_entry_on_a_base_needs_nothing(vml: Vml, tmp_path: Path):
    entry = _on_base(vml, tmp_path)
    vml("export", "main", "-o", str(tmp_path / "full.vmlb"))
    receiver = Vml(tmp_path / "receiver")
    receiver.cwd.mkdir()
    receiver("init")
    imported = receiver("import", str(tmp_path / "full.vmlb"), "--json").json()
    assert imported["entry"] == entry
    assert [(b["name"], b["version"]) for b in receiver("base", "list", "--json").json()] == [("os", "1")]
    receiver("checkout", entry, "--to", str(tmp_path / "rebuilt"))  # the base is there: no error
    assert (tmp_path / "rebuilt" / "home" / "results.txt").read_text() == "42\n"
    receiver.fsck_clean()
    vml.fsck_clean()


def test_a_base_of_the_same_name_but_another_digest_is_never_taken_for_it(vml: Vml, tmp_path: Path):
    """A colleague's os:1 and mine are different images: fetch keeps mine and says so,
    import refuses, and a checkout of their entry names both digests."""
    entry = _on_base(vml, tmp_path)
    vml("export", "main", "-o", str(tmp_path / "full.vmlb"))
    vml("init", "--bare", str(tmp_path / "shared.vml"))
    vml("remote", "add", "origin", str(tmp_path / "shared.vml"))
    vml("push")
    mine = Vml(tmp_path / "mine")
    (tmp_path / "mine").mkdir()
    mine("init")
    _tree(tmp_path / "other-base", 2)
    mine("base", "add", "os", "1", "--dir", str(tmp_path / "other-base"))
    line = one_line_error(mine("import", str(tmp_path / "full.vmlb"), check=False))
    assert "another image than the base os:1 here" in line and "nothing was recorded" in line
    mine("remote", "add", "origin", str(tmp_path / "shared.vml"))
    fetched = mine("fetch", "--json").json()
    assert any("os:1" in change["ref"] and change["status"] == "rejected" for change in fetched["refs"]), fetched
    mine("area", "add", "wa", "--dir", str(tmp_path / "mine-area"))
    line = one_line_error(mine("checkout", entry, check=False))
    assert "base os:1 here has digest" in line and "not the same base" in line
    assert not (tmp_path / "mine-area" / "home").exists()
    mine.fsck_clean()
    vml.fsck_clean()

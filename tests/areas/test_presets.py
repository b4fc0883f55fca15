"""Rule presets (issue 22, seeds 001 and 004): a guest's CVMFS cache is left out by default,
saved on purpose with --preset cvmfs-cache (files CVMFS is still writing stay out), said so
by `vml show`, and brought back by a checkout on a colleague's side; a guest reached over the
real sshd on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Vml, one_line_error


def cvmfs_guest(root: Path, files: int = 30) -> None:
    cache = root / "var" / "lib" / "cvmfs" / "shared"
    for n in range(files):
        bucket = cache / f"{n % 256:02x}"
        bucket.mkdir(parents=True, exist_ok=True)
        (bucket / f"{n:038x}").write_bytes(f"cached object {n}\n".encode() * 10)
    (cache / "txn").mkdir()
    (cache / "txn" / "fetchXYZ").write_text("half downloaded")
    (cache / "quarantaine").mkdir()
    (cache / "quarantaine" / "bad").write_text("damaged")
    (root / "home" / "user").mkdir(parents=True)
    (root / "home" / "user" / "analysis.C").write_text("void analysis() {}\n")
    (root / "var" / "lib" / "app").mkdir(parents=True)
    (root / "var" / "lib" / "app" / "state").write_text("kept\n")


def saved_paths(vml: Vml, entry: str, target: Path) -> set[str]:
    vml("checkout", entry, "--to", str(target))
    return {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}


def test_the_cvmfs_cache_is_saved_only_with_its_preset(vml: Vml, tmp_path: Path, sshd):
    guest = tmp_path / "guest"
    cvmfs_guest(guest)
    vml("init")
    vml("area", "add", "plain", "--ssh", "testhost", "--root", str(guest), env=sshd.env)
    plain = vml("commit", "-a", "plain", "-m", "default rules", "--json", env=sshd.env).json()["entry"]
    assert saved_paths(vml, plain, tmp_path / "plain") == {"home/user/analysis.C", "var/lib/app/state"}
    assert "Preset" not in vml("show", plain).stdout

    vml("area", "add", "cached", "--ssh", "testhost", "--root", str(guest), "--preset", "cvmfs-cache", "--branch", "cached",
        env=sshd.env)
    cached = vml("commit", "-a", "cached", "-m", "with the cache", "--json", env=sshd.env).json()["entry"]
    paths = saved_paths(vml, cached, tmp_path / "cached")
    assert len([p for p in paths if p.startswith("var/lib/cvmfs/shared/")]) == 30
    assert not [p for p in paths if "/txn/" in p or "/quarantaine/" in p]
    assert "Preset: cvmfs-cache: includes the CVMFS cache, /var/lib/cvmfs (30 files)" in vml("show", cached).stdout
    assert vml("show", cached, "--json").json()["presets"] == [
        {"preset": "cvmfs-cache", "what": "the CVMFS cache", "path": "/var/lib/cvmfs", "files": 30}]

    # A colleague's guest without the cache gets it from the checkout.
    other = tmp_path / "colleague"
    (other / "var" / "lib").mkdir(parents=True)
    vml("area", "add", "colleague", "--ssh", "testhost", "--root", str(other), "--preset", "cvmfs-cache", "--branch", "colleague",
        env=sshd.env)
    vml("checkout", cached, "-a", "colleague", "--force", env=sshd.env)
    assert (other / "var/lib/cvmfs/shared/00/" / f"{0:038x}").read_bytes() == b"cached object 0\n" * 10
    assert vml("status", "-a", "colleague", "--json", env=sshd.env).json()["clean"]

    # Taken away, the next commit leaves the cache out again.
    shown = vml("area", "preset", "cvmfs-cache", "--remove", "-a", "cached", "--json", env=sshd.env).json()
    assert "/var/lib/cvmfs/" in shown["exclude"] and shown["settings"]["presets"] == "[]"
    again = vml("commit", "-a", "cached", "-m", "without", "--json", env=sshd.env).json()["entry"]
    assert not [p for p in saved_paths(vml, again, tmp_path / "again") if p.startswith("var/lib/cvmfs")]
    vml.fsck_clean()


@pytest.mark.parametrize("args, expected", [
    (["area", "preset", "ccache"], "no rule preset 'ccache' (presets: cvmfs-cache)"),
    (["area", "preset", "cvmfs-cache=relative/dir"], "an absolute directory below the root"),
    (["area", "preset", "cvmfs-cache=/"], "an absolute directory below the root"),
    (["area", "preset", "cvmfs-cache", "--remove"], "does not save with preset cvmfs-cache"),
    (["area", "add", "x", "--dir", "x", "--preset", "nope"], "no rule preset 'nope'"),
])
def test_bad_presets_are_one_line(vml: Vml, tmp_path: Path, args: list[str], expected: str):
    vml("init")
    vml("area", "add", "g", "--dir", str(tmp_path / "g"))
    assert expected in one_line_error(vml(*args, check=False))
    assert [a["name"] for a in vml("area", "list", "--json").json()] == ["g"]
    vml.fsck_clean()


def test_a_preset_at_another_path(vml: Vml, tmp_path: Path):
    area = tmp_path / "root"
    (area / "scratch" / "cvmfs" / "shared" / "txn").mkdir(parents=True)
    (area / "scratch" / "cvmfs" / "shared" / "ab").mkdir()
    (area / "scratch" / "cvmfs" / "shared" / "ab" / "obj").write_text("x")
    (area / "scratch" / "cvmfs" / "shared" / "txn" / "part").write_text("y")
    vml("init")
    vml("area", "add", "g", "--dir", str(area))
    vml("area", "preset", "cvmfs-cache=/scratch/cvmfs")
    assert vml("area", "preset", "cvmfs-cache=/scratch/cvmfs", check=False).returncode == 2  # once is enough
    entry = vml("commit", "-m", "x", "--json").json()["entry"]
    assert "includes the CVMFS cache, /scratch/cvmfs (1 file)" in vml("show", entry).stdout
    vml.fsck_clean()

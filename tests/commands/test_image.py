"""vml image build (issue 22, P2V): an entry's whole root tree made a bootable disk image,
read back here with e2fsprogs' debugfs (the real boot is in tests/system/test_real_vm.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import Vml, one_line_error


def machine(root: Path) -> None:
    """A machine's root as an ssh capture with --include / brings it: no /proc, /dev, /tmp."""
    for directory in ("etc", "usr/bin", "boot", "home/alice", "var/lib"):
        (root / directory).mkdir(parents=True)
    (root / "etc" / "fstab").write_text("UUID=1234-abcd / ext4 errors=remount-ro 0 1\nUUID=99 /data xfs defaults 0 2\n")
    (root / "etc" / "hostname").write_text("physics-desktop\n")
    (root / "usr" / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (root / "usr" / "bin" / "tool").chmod(0o4755)
    for version in ("6.1.0-9-amd64", "6.1.0-10-amd64"):
        (root / "boot" / f"vmlinuz-{version}").write_bytes(b"kernel " + version.encode())
        (root / "boot" / f"initrd.img-{version}").write_bytes(b"initrd " + version.encode())
    (root / "home" / "alice" / "results.txt").write_text("mass 125.1 GeV\n")
    os.chown(root / "home" / "alice" / "results.txt", 1000, 1000)
    os.chmod(root / "home" / "alice" / "results.txt", 0o640)


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def captured(vml: Vml, tmp_path: Path) -> str:
    machine(tmp_path / "machine")
    vml("init")
    vml("area", "add", "pc", "--dir", str(tmp_path / "machine"))
    return vml("commit", "-m", "the whole machine", "--json").json()["entry"]


def test_an_image_holds_the_tree_as_a_system_needs_it(vml: Vml, tmp_path: Path, captured: str):
    image = tmp_path / "out" / "pc.raw"
    image.parent.mkdir()
    built = vml("image", "build", captured, "-o", str(image), "--raw", "--json").json()
    assert built["format"] == "raw" and built["path"] == str(image) and built["cmdline"] == "root=/dev/vda rw console=ttyS0"
    # The newest kernel of /boot (by version, not by name: 10 after 9) and its initrd, beside the image.
    assert Path(built["kernel"]).read_bytes() == b"kernel 6.1.0-10-amd64" and built["kernel"] == str(tmp_path / "out" / "pc.vmlinuz")
    assert Path(built["initrd"]).read_bytes() == b"initrd 6.1.0-10-amd64"
    assert debugfs(image, "cat /home/alice/results.txt") == "mass 125.1 GeV\n"
    alice = debugfs(image, "stat /home/alice/results.txt")
    assert "User:  1000" in alice and "Group:  1000" in alice and "Mode:  0640" in alice
    assert "Mode:  04755" in debugfs(image, "stat /usr/bin/tool")
    assert "/dev/vda / ext4" in debugfs(image, "cat /etc/fstab")
    assert "UUID=1234-abcd" in debugfs(image, "cat /etc/fstab.vml-original")
    for mount_point, mode in (("/proc", "0555"), ("/dev", "0755"), ("/tmp", "01777"), ("/var/tmp", "01777")):
        assert f"Mode:  {mode}" in debugfs(image, f"stat {mount_point}"), mount_point
    vml.fsck_clean()


def test_a_qcow2_image_stored_as_a_base(vml: Vml, tmp_path: Path, captured: str):
    built = vml("image", "build", captured, "-o", str(tmp_path / "pc.qcow2"), "--base", "pc:1",
                "--cmdline", "root=/dev/vda rw console=ttyS0 net.ifnames=0", "--json").json()
    info = subprocess.run(["qemu-img", "info", "--output=json", built["path"]], capture_output=True, text=True, check=True).stdout
    assert '"format": "qcow2"' in info
    [base] = vml("base", "list", "--json").json()
    assert (base["name"], base["version"]) == ("pc", "1") and built["base"]["entry"] == base["entry"]
    toml = vml("show", f"{base['entry']}:entry.toml").stdout
    assert 'kernel = "pc.vmlinuz"' in toml and 'initrd = "pc.initrd.img"' in toml and "net.ifnames=0" in toml
    vml.fsck_clean()


def test_what_cannot_be_an_image_is_one_line(vml: Vml, tmp_path: Path, captured: str):
    (tmp_path / "taken.qcow2").write_text("mine")
    cases = [
        (["image", "build", captured, "-o", str(tmp_path / "taken.qcow2")], "exists: name a new file"),
        (["image", "build", captured, "-o", str(tmp_path / "x.qcow2"), "--kernel", "/boot/vmlinuz-7"], "no file /boot/vmlinuz-7"),
        (["image", "build", captured, "-o", str(tmp_path / "x.qcow2"), "--base", "nocolon"], "NAME:VERSION"),
        (["image", "build", captured, "-o", str(tmp_path / "nowhere" / "x.qcow2")], "is not a directory"),
    ]
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "etc").mkdir()
    vml("area", "add", "half", "--dir", str(tmp_path / "half"))
    partial = vml("commit", "-a", "half", "-m", "only etc", "--json").json()["entry"]
    cases.append((["image", "build", partial, "-o", str(tmp_path / "y.qcow2")], "holds no full root tree"))
    for args, expected in cases:
        assert expected in one_line_error(vml(*args, check=False)), args
    assert (tmp_path / "taken.qcow2").read_text() == "mine"
    assert not list(tmp_path.glob("x.*")) and not list(tmp_path.glob("y.*"))
    vml.fsck_clean()


def test_an_entrys_symlinks_never_lead_the_build_onto_the_host(vml: Vml, tmp_path: Path):
    """A hostile entry's /var -> a host directory: nothing is made there; /etc -> the host's
    /etc: refused, the host's fstab untouched."""
    root = tmp_path / "machine"
    machine(root)
    host_side = tmp_path / "host-var"
    host_side.mkdir()
    os.symlink(str(host_side), root / "var2")
    (root / "var" / "lib").rmdir()
    (root / "var").rmdir()
    os.symlink(str(host_side), root / "var")
    vml("init")
    vml("area", "add", "pc", "--dir", str(root))
    entry = vml("commit", "-m", "var is a symlink", "--json").json()["entry"]
    vml("image", "build", entry, "-o", str(tmp_path / "pc.raw"), "--raw")
    assert list(host_side.iterdir()) == []  # no var/tmp, no var/cache made through the link
    host_etc = tmp_path / "host-etc"
    host_etc.mkdir()
    (host_etc / "fstab").write_text("the host's\n")
    for child in (root / "etc").iterdir():
        child.unlink()
    (root / "etc").rmdir()
    os.symlink(str(host_etc), root / "etc")
    entry = vml("commit", "-m", "etc is a symlink", "--json").json()["entry"]
    failed = vml("image", "build", entry, "-o", str(tmp_path / "pc2.raw"), "--raw", check=False)
    assert "holds no full root tree" in one_line_error(failed) or "/etc is not a directory" in one_line_error(failed)
    assert (host_etc / "fstab").read_text() == "the host's\n" and not (host_etc / "fstab.vml-original").exists()
    assert not (tmp_path / "pc2.raw").exists()
    vml.fsck_clean()

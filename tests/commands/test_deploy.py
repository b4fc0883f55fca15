"""vml deploy, deploy list and release (issue 22): domains of an entry on another libvirt host,
a second libvirtd on this machine reached over the real sshd (tests/support/libvirt_host.py).

The entry is a small root tree whose kernel is a multiboot stub that QEMU boots and halts in
(a real guest deployed and booted is in tests/system/test_real_vm.py)."""

from __future__ import annotations

import socket
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from conftest import Vml, one_line_error
from support.libvirt_host import LibvirtHost, multiboot_kernel, second_libvirt_host

from vml import api
from vml.errors import AreaError, UsageError
from vml.repo import Repository


@pytest.fixture(scope="module")
def host():
    with second_libvirt_host() as made:
        yield made


def small_system(root: Path) -> None:
    for directory in ("etc", "usr/bin", "boot", "root"):
        (root / directory).mkdir(parents=True)
    (root / "etc" / "hostname").write_text("analysis-node\n")
    (root / "usr" / "bin" / "fit").write_text("#!/bin/sh\necho fitted\n")
    (root / "usr" / "bin" / "fit").chmod(0o755)
    (root / "root" / "notes.txt").write_text("run 2024B calibrated\n")
    (root / "boot" / "vmlinuz-1.0-stub").write_bytes(multiboot_kernel())
    (root / "boot" / "initrd.img-1.0-stub").write_bytes(b"an initrd " * 500)


@pytest.fixture
def entry(vml: Vml, tmp_path: Path) -> str:
    small_system(tmp_path / "node")
    vml("init")
    vml("area", "add", "node", "--dir", str(tmp_path / "node"))
    return vml("commit", "-m", "the analysis node", "--json").json()["entry"]


def volumes(host: LibvirtHost, pool: str = "vml") -> dict[str, str]:
    """name -> the volume's XML, as the host's libvirtd has them."""
    connection = host.connection()
    try:
        found = connection.storagePoolLookupByName(pool)
        found.refresh(0)
        return {volume.name(): volume.XMLDesc(0) for volume in found.listAllVolumes()}
    finally:
        connection.close()


def pool_path(host: LibvirtHost, pool: str = "vml") -> Path:
    connection = host.connection()
    try:
        return Path(ElementTree.fromstring(connection.storagePoolLookupByName(pool).XMLDesc(0)).findtext("./target/path"))
    finally:
        connection.close()


def domains(host: LibvirtHost) -> dict[str, str]:
    """name -> state (running, shut off) of every domain the host has."""
    connection = host.connection()
    try:
        return {domain.name(): "running" if domain.isActive() else "shut off" for domain in connection.listAllDomains()}
    finally:
        connection.close()


def debugfs_cat(image: Path, path: str, scratch: Path) -> str:
    raw = scratch / "image.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    try:
        return subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True, check=True).stdout
    finally:
        raw.unlink()


def test_deploy_carries_the_entry_once_and_release_removes_the_domains(vml: Vml, tmp_path: Path, host: LibvirtHost, entry: str):
    made = vml("deploy", entry, "--host", host.uri, "--count", "2", "--pool-dir", str(host.root / "pools" / "first"), "--json").json()
    pool_dir = pool_path(host)  # (first, unless another test of this module made the pool on this host before)
    stem = f"vml-{entry[:16]}"
    assert made["deployment"] == "1" and made["entry"] == entry
    assert sorted(line.split(": ")[1].split(" ")[0] for line in made["carried"]) == sorted(
        [f"{stem}.qcow2", f"{stem}.vmlinuz", f"{stem}.initrd.img"])
    names = [vm["domain"] for vm in made["vms"]]
    assert names == [f"vml-{entry[:8]}-1", f"vml-{entry[:8]}-2"] and all(vm["state"] == "running" for vm in made["vms"])
    # User-mode networking, each guest's sshd on a port of its own on the host's loopback.
    ports = [vm["ssh_port"] for vm in made["vms"]]
    assert len(set(ports)) == 2 and all(20000 <= port < 61000 for port in ports)
    assert {name: domains(host)[name] for name in names} == dict.fromkeys(names, "running")

    # On the host: the entry's image, kernel and initrd once, and one overlay on the image per domain.
    held = volumes(host)
    assert set(held) == {f"{stem}.qcow2", f"{stem}.vmlinuz", f"{stem}.initrd.img", *(f"{name}.qcow2" for name in names)}
    for name in names:
        backing = ElementTree.fromstring(held[f"{name}.qcow2"]).findtext("./backingStore/path")
        assert backing == str(pool_dir / f"{stem}.qcow2")
    assert (pool_dir / f"{stem}.vmlinuz").read_bytes() == multiboot_kernel()
    # The image holds the entry's files, and boots as / from /dev/vda.
    assert debugfs_cat(pool_dir / f"{stem}.qcow2", "/root/notes.txt", tmp_path) == "run 2024B calibrated\n"
    assert "/dev/vda / ext4" in debugfs_cat(pool_dir / f"{stem}.qcow2", "/etc/fstab", tmp_path)

    listed = vml("deploy", "list", "--json").json()
    assert [(vm["deployment"], vm["domain"], vm["host"], vm["state"], vm["entry"], vm["ssh_port"]) for vm in listed] == [
        ("1", name, host.uri, "running", entry, port) for name, port in zip(names, ports)]
    assert names[0] in vml("deploy", "list").stdout

    # A second deploy of the entry carries nothing: the host has it.
    again = vml("deploy", entry, "--host", host.uri, "--name", "calib", "--json").json()
    assert again["deployment"] == "2" and again["carried"] == [] and [vm["domain"] for vm in again["vms"]] == ["calib"]

    released = vml("release", "1", "--json").json()
    assert sorted(vm["domain"] for vm in released["released"]) == names
    assert sorted(released["deleted"]) == sorted(f"{host.uri}: {name}.qcow2" for name in names)
    assert set(domains(host)) == {"calib"}
    assert set(volumes(host)) == {f"{stem}.qcow2", f"{stem}.vmlinuz", f"{stem}.initrd.img", "calib.qcow2"}
    assert [vm["domain"] for vm in vml("deploy", "list", "--json").json()] == ["calib"]

    # Release with no target: all this repository deployed; --purge: the carried volumes too.
    purged = vml("release", "--purge", "--json").json()
    assert [vm["domain"] for vm in purged["released"]] == ["calib"]
    assert domains(host) == {} and volumes(host) == {}
    assert vml("deploy", "list", "--json").json() == []
    assert "nothing to release" in vml("release").stdout
    vml.fsck_clean()


def test_an_upload_cut_short_is_carried_again(vml: Vml, host: LibvirtHost, entry: str, monkeypatch):
    """A connection dropped in the middle of the image leaves a volume the next deploy knows
    for incomplete (its head is written last) and replaces."""
    from vml.areas.libvirt import pools

    real_send = pools.Pool._send

    def dropping(self, volume, source, offset, end, what, sent):
        if volume.name().endswith(".qcow2") and offset > 0:
            real_send(self, volume, source, offset, offset + (end - offset) // 2, what, sent)
            raise ConnectionResetError("connection dropped (injected)")
        return real_send(self, volume, source, offset, end, what, sent)

    monkeypatch.setattr(pools.Pool, "_send", dropping)
    repo = Repository.discover(str(vml.cwd))
    with pytest.raises(ConnectionResetError):  # (the command line says it in one line: vml.cli maps OSError)
        api.deploy(repo, entry, [host.uri], pool_dir=str(host.root / "pools" / "cut"))
    repo.close()
    stem = f"vml-{entry[:16]}"
    assert f"{stem}.qcow2" in volumes(host)  # there, but without its head
    assert not [name for name in domains(host) if name.startswith("vml-")]
    monkeypatch.setattr(pools.Pool, "_send", real_send)

    made = vml("deploy", entry, "--host", host.uri, "--json").json()
    assert any(f"{stem}.qcow2" in line for line in made["carried"])
    assert made["vms"][0]["state"] == "running"
    vml("release", "--purge")
    assert volumes(host) == {}
    vml.fsck_clean()


def test_a_domain_removed_on_the_host_shows_gone_and_release_forgets_it(vml: Vml, host: LibvirtHost, entry: str):
    made = vml("deploy", entry, "--host", host.uri, "--pool-dir", str(host.root / "pools" / "gone"), "--json").json()
    name = made["vms"][0]["domain"]
    connection = host.connection()
    domain = connection.lookupByName(name)
    domain.destroy()
    domain.undefine()
    connection.close()
    assert [vm["state"] for vm in vml("deploy", "list", "--json").json()] == ["gone"]
    assert f"{name}.qcow2" in volumes(host)
    released = vml("release", name, "--purge", "--json").json()
    assert [vm["domain"] for vm in released["released"]] == [name]
    assert f"{host.uri}: {name}.qcow2" in released["deleted"] and f"{name}.qcow2" not in volumes(host)  # its disk, which vml made
    assert vml("deploy", "list", "--json").json() == []
    vml.fsck_clean()


def test_bad_deploys_and_releases_are_one_line_and_record_nothing(vml: Vml, tmp_path: Path, host: LibvirtHost, entry: str):
    assert "--count must be 1 or more" in one_line_error(vml("deploy", entry, "--host", host.uri, "--count", "0", check=False))
    assert "--name" in one_line_error(vml("deploy", entry, "--host", host.uri, "--name", "../evil", check=False))
    unreachable = vml("deploy", entry, "--host", "qemu+ssh://vml-host@127.0.0.1:1/session", check=False)
    assert "cannot connect to libvirt" in one_line_error(unreachable, None) and unreachable.returncode != 0
    no_pool = vml("deploy", entry, "--host", host.uri, "--pool", "elsewhere", check=False)
    assert "--pool-dir" in one_line_error(no_pool, None)
    # A domain that cannot start (no such network on the host): nothing of it stays, there or in the record.
    no_network = vml("deploy", entry, "--host", host.uri, "--network", "nope", "--pool-dir", str(host.root / "pools" / "nonet"), check=False)
    assert "nope" in one_line_error(no_network, None) and no_network.returncode != 0
    assert not [name for name in domains(host) if name.startswith("vml-")]
    assert not [name for name in volumes(host) if not name.startswith(f"vml-{entry[:16]}")]  # what was carried stays
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "data.txt").write_text("not a system\n")
    vml("area", "add", "plain", "--dir", str(tmp_path / "plain"))
    partial = vml("commit", "-a", "plain", "-m", "data only", "--json").json()["entry"]
    assert "no full root tree" in one_line_error(vml("deploy", partial, "--host", host.uri, "--pool-dir", str(host.root / "pools" / "bad"), check=False))
    # An entry on a base that is a file tree: there is no disk to boot.
    (tmp_path / "tree" / "etc").mkdir(parents=True)
    (tmp_path / "tree" / "etc" / "issue").write_text("a tree\n")
    vml("base", "add", "treebase", "1", "--dir", str(tmp_path / "tree"))
    vml("area", "add", "ontree", "--dir", str(tmp_path / "plain"), "--base", "treebase:1")
    on_tree = vml("commit", "-a", "ontree", "-m", "on a tree", "--json").json()["entry"]
    assert "a file tree, not a disk image" in one_line_error(vml("deploy", on_tree, "--host", host.uri, check=False))
    assert "no deployment or deployed domain 'nine'" in one_line_error(vml("release", "nine", check=False))
    assert vml("deploy", "list", "--json").json() == []
    vml.fsck_clean()


def test_a_port_on_the_hosts_loopback_is_reached_through_the_ssh_libvirt_uses(host: LibvirtHost):
    """How vml reaches a guest's forwarded sshd on another host: an OpenSSH forward with the
    URI's own ssh (here its command= wrapper), to a port listening on the host's loopback."""
    from vml.areas.libvirt import loopback_of

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with loopback_of(host.uri, port) as (address, local):
            assert address == "127.0.0.1" and local != port
            with socket.create_connection((address, local), timeout=10) as client:
                listener.settimeout(10)
                accepted, _peer = listener.accept()
                with accepted:
                    client.sendall(b"over the forward")
                    assert accepted.recv(100) == b"over the forward"
        with loopback_of("qemu:///system", port) as direct:
            assert direct == ("127.0.0.1", port)  # this machine's own libvirt: no forward
    with pytest.raises(UsageError, match="qemu\\+ssh"):
        with loopback_of("qemu+tls://far.example.org/system", port):
            pass
    with pytest.raises(AreaError, match="cannot forward a port of nowhere.invalid"):
        with loopback_of(f"qemu+ssh://nobody@nowhere.invalid/system?command={host.root / 'ssh'}", port):
            pass

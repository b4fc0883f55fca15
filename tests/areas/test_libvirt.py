"""libvirt working areas on libvirt's `test:///default` driver, whose state lives in this
process: so the command line runs in-process here (`run`), the guest's files come from the
loopback sshd. Lifecycle, the domain definition in entries, memory save and resume,
domains defined from a base image, and the errors users hit."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from unittest import mock

import libvirt  # noqa: E402  (installed by ./scripts/setup: a missing one fails, never skips)
import pytest
from conftest import git_fsck_clean  # noqa: E402

from vml import cli  # noqa: E402

TEST_URI = "test:///default"


def _remove_domain(connection, name: str) -> None:
    """Power off and undefine a test domain, if it is still there."""
    with contextlib.suppress(libvirt.libvirtError):
        found = connection.lookupByName(name)
        if found.isActive():
            found.destroy()
        found.undefine()


class InProcess:
    """The vml command line, run in this process (the test driver's domains live here)."""

    def __init__(self, capsys, repo: Path):
        self.capsys = capsys
        self.repo = repo

    def __call__(self, *args: str, check: bool = True):
        self.capsys.readouterr()
        with mock.patch.object(sys, "argv", ["vml", "--repo", str(self.repo), *args]):
            try:
                cli.main()
                code = 0
            except SystemExit as done:
                code = done.code or 0
        out, err = self.capsys.readouterr()
        if check and code != 0:
            raise AssertionError(f"vml {' '.join(args)} exited {code}: {out}{err}")
        return code, out, err

    def json(self, *args: str):
        return json.loads(self(*args, "--json")[1])


@pytest.fixture
def domain(tmp_path: Path):
    """A running domain of its own on the test driver, with a real disk file."""
    connection = libvirt.open(TEST_URI)
    name = f"vml-test-{uuid.uuid4().hex[:8]}"
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"disk state one\n" * 1000)
    connection.defineXML(
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
        f"<os><type>hvm</type></os><devices><disk type='file' device='disk'><source file='{disk}'/>"
        f"<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )
    connection.lookupByName(name).create()
    yield name, disk
    _remove_domain(connection, name)


@pytest.fixture
def area(capsys, tmp_path: Path, sshd, domain, monkeypatch):
    """Area `vm1`: the domain, its guest's files under tmp_path/guest over the loopback sshd."""
    for key, value in sshd.env.items():
        monkeypatch.setenv(key, value)
    guest = tmp_path / "guest"
    (guest / "home" / "user").mkdir(parents=True)
    (guest / "home" / "user" / "notes").write_text("first\n")
    run = InProcess(capsys, tmp_path / "repo")
    run("init", str(tmp_path / "repo"), "--bare")
    run("area", "add", "vm1", "--libvirt", TEST_URI, "--domain", domain[0], "--ssh", "testhost", "--root", str(guest), "--include", "/")
    yield run, guest, domain
    _assert_fsck_clean(run)


def _assert_fsck_clean(run: InProcess) -> None:
    report = run.json("fsck")
    assert report["damaged"] == [] and report["problems"] == [], report
    git_fsck_clean(run.repo)


def test_lifecycle_commands(area):
    run, _guest, (name, _disk) = area
    assert run.json("vm", "info")[0]["vm"]["state"] == "running"
    assert run.json("vm", "suspend")["vm"]["state"] == "paused"
    assert "domain is paused" in run("status")[1]
    assert run.json("vm", "resume")["vm"]["state"] == "running"
    assert run.json("vm", "stop", "--force")["vm"]["state"] == "shut off"
    started = run.json("vm", "start", "-a", "vm1")
    assert started["vm"]["state"] == "running" and started["vm"]["domain"] == name
    _code, out, _err = run("vm", "info")
    assert name in out and "running" in out and "TEST" in out


def test_entry_keeps_the_domain_definition_and_checkout_restores_it(area):
    run, guest, (name, _disk) = area
    first = run.json("commit", "-m", "first")["entry"]
    repo = run.repo
    xml = subprocess.run(["git", "--git-dir", str(repo), "show", f"{first}:vm/domain.xml"], capture_output=True, text=True, check=True).stdout
    assert f"<name>{name}</name>" in xml and "262144" in xml  # 256 MiB, in KiB
    connection = libvirt.open(TEST_URI)
    changed = xml.replace("262144", "524288")
    assert changed != xml
    connection.defineXML(changed)
    status = run.json("status")
    assert not status["clean"] and [c["path"] for c in status["changes"]] == ["vm/domain.xml"]
    second = run.json("commit", "-m", "more memory")
    assert second["created"]
    _code, _out, err = run("checkout", first)
    assert "redefined" in err  # the domain runs: the old definition applies at its next start
    assert "262144" in connection.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_memory_commit_and_resume(area):
    run, guest, (name, disk) = area
    saved = run.json("commit", "-m", "with memory", "--memory")
    connection = libvirt.open(TEST_URI)
    assert connection.lookupByName(name).isActive()  # saved, then resumed
    _code, out, _err = run("show", saved["entry"])
    assert "Memory:" in out and "never public" in out
    disk.write_bytes(b"disk state two\n")
    connection.lookupByName(name).destroy()
    _code, _out, err = run("checkout", "--resume", saved["entry"])
    assert "resumed" in err
    assert connection.lookupByName(name).isActive()
    assert disk.read_bytes() == b"disk state one\n" * 1000  # the disk the memory belongs with
    refused = run("checkout", "--resume", saved["entry"], check=False)
    assert refused[0] == 2 and "its current state would be lost" in refused[2]
    run("gc")  # memory trees are live data: gc keeps them, fsck (at the end) checks them
    plain = run.json("commit", "-m", "no memory", "--allow-empty")["entry"]
    missing = run("checkout", "--resume", plain, "--force", check=False)
    assert missing[0] == 2 and "carries no memory" in missing[2]


def test_domain_defined_from_a_base_image(capsys, tmp_path: Path):
    run = InProcess(capsys, tmp_path / "repo")
    run("init", str(tmp_path / "repo"), "--bare")
    image = tmp_path / "guest.raw"
    image.write_bytes(os.urandom(1 << 20))
    run("base", "add", "guest", "1", "--image", str(image))
    name = f"vml-test-{uuid.uuid4().hex[:8]}"
    run("area", "add", "fresh", "--libvirt", TEST_URI, "--base", "guest:1", "--domain", name)
    connection = libvirt.open(TEST_URI)
    try:
        definition = connection.lookupByName(name).XMLDesc(0)
        overlay = tmp_path / "repo" / "vml" / "areas" / "fresh" / "disk.qcow2"
        assert str(overlay) in definition
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)], capture_output=True, text=True, check=True).stdout)
        backing = info["backing-filename"]
        assert Path(backing).read_bytes() == image.read_bytes()
        assert oct(os.stat(backing).st_mode & 0o777) == "0o444"
        assert run.json("vm", "start", "-a", "fresh")["vm"]["state"] == "running"
        again = run("area", "add", "other", "--libvirt", TEST_URI, "--base", "guest:1", "--domain", name, check=False)
        assert again[0] == 2 and "exists already" in again[2]
        _assert_fsck_clean(run)
    finally:
        _remove_domain(connection, name)


def test_libvirt_errors_are_one_line(capsys, tmp_path: Path):
    run = InProcess(capsys, tmp_path / "repo")
    run("init", str(tmp_path / "repo"), "--bare")
    code, _out, err = run("area", "add", "x", "--libvirt", TEST_URI, "--domain", "no-such-domain", check=False)
    assert code == 2 and "no domain 'no-such-domain'" in err and "test" in err
    code, _out, err = run("area", "add", "x", "--libvirt", "qemu:///system", "--domain", "d", check=False)
    assert code != 0 and "cannot connect to libvirt at qemu:///system" in err and "libvirtd" in err
    run("area", "add", "plain", "--dir", str(tmp_path / "plain"))
    code, _out, err = run("vm", "start", "-a", "plain", check=False)
    assert code == 2 and "works on libvirt areas" in err
    code, _out, err = run("commit", "-a", "plain", "-m", "x", "--memory", check=False)
    assert code == 2 and "not libvirt" in err
    code, _out, err = run("area", "add", "later", "--libvirt", TEST_URI, check=False)
    assert code == 2 and "--ssh" in err and "not QEMU" in err
    run("area", "add", "nofiles", "--libvirt", TEST_URI, "--domain", "test")
    code, _out, err = run("commit", "-a", "nofiles", "-m", "x", check=False)
    assert code == 2 and "--ssh" in err
    for stream in (err,):
        assert "Traceback" not in stream and len(stream.strip().splitlines()) == 1
    _assert_fsck_clean(run)


def test_an_entry_never_writes_another_domains_disks_or_definition(area, tmp_path: Path):
    """Resuming one domain's memory entry into another area's domain is refused (it would
    overwrite disks that are not that domain's); a definition of another domain is not applied."""
    run, _guest, (name, _disk) = area
    saved = run.json("commit", "-m", "with memory", "--memory")["entry"]
    connection = libvirt.open(TEST_URI)
    other = f"vml-test-{uuid.uuid4().hex[:8]}"
    other_disk = tmp_path / "other.img"
    other_disk.write_bytes(b"other domain's disk\n")
    connection.defineXML(
        f"<domain type='test'><name>{other}</name><memory unit='MiB'>128</memory><os><type>hvm</type></os>"
        f"<devices><disk type='file' device='disk'><source file='{other_disk}'/><target dev='vda'/></disk></devices></domain>"
    )
    try:
        run("area", "add", "vm2", "--libvirt", TEST_URI, "--domain", other, "--ssh", "testhost", "--root", str(tmp_path / "guest"), "--include", "/")
        code, _out, err = run("checkout", "--resume", saved, "-a", "vm2", "--force", check=False)
        assert code == 2 and "writes only the domain's own disks" in err
        assert other_disk.read_bytes() == b"other domain's disk\n"
        _code, _out, err = run("checkout", saved, "-a", "vm2", "--force")
        assert f"was not redefined: the saved definition is of domain {name!r}" in err
        assert connection.lookupByName(other).XMLDesc(0).count("<memory unit='KiB'>131072</memory>") == 1
    finally:
        connection.lookupByName(other).undefine()


def test_a_domain_from_a_bootable_base_boots_its_kernel_directly(capsys, tmp_path: Path):
    run = InProcess(capsys, tmp_path / "repo")
    run("init", str(tmp_path / "repo"), "--bare")
    for name, size in (("disk.raw", 1 << 20), ("vmlinuz", 4096), ("initrd.img", 8192)):
        (tmp_path / name).write_bytes(os.urandom(size))
    code, _out, err = run("base", "add", "x", "1", "--dir", str(tmp_path), "--kernel", str(tmp_path / "vmlinuz"), check=False)
    assert code == 2 and "boot an --image" in err
    run("base", "add", "guest", "1", "--image", str(tmp_path / "disk.raw"), "--kernel", str(tmp_path / "vmlinuz"),
        "--initrd", str(tmp_path / "initrd.img"), "--cmdline", "root=/dev/vda rw console=ttyS0")
    name = f"vml-test-{uuid.uuid4().hex[:8]}"
    run("area", "add", "fresh", "--libvirt", TEST_URI, "--base", "guest:1", "--domain", name)
    connection = libvirt.open(TEST_URI)
    try:
        definition = connection.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        images = tmp_path / "repo" / "vml" / "images" / "guest" / "1"
        assert f"<kernel>{images / 'vmlinuz'}</kernel>" in definition
        assert f"<initrd>{images / 'initrd.img'}</initrd>" in definition
        assert "<cmdline>root=/dev/vda rw console=ttyS0</cmdline>" in definition
        assert (images / "vmlinuz").read_bytes() == (tmp_path / "vmlinuz").read_bytes()
        _assert_fsck_clean(run)
    finally:
        connection.lookupByName(name).undefine()


def test_checkout_new_vm_makes_the_domain_again_from_the_entry(capsys, tmp_path: Path, sshd, monkeypatch):
    """vm delete removes the domain and the overlay vml made; checkout --new-vm defines it
    again on a fresh overlay of the entry's base, sized as the entry's definition, with the
    entry's uuid, starts it and puts the entry's files back."""
    for key, value in sshd.env.items():
        monkeypatch.setenv(key, value)
    guest = tmp_path / "guest"
    (guest / "home" / "user").mkdir(parents=True)
    (guest / "home" / "user" / "notes").write_text("first\n")
    (tmp_path / "disk.raw").write_bytes(os.urandom(1 << 20))
    run = InProcess(capsys, tmp_path / "repo")
    run("init", str(tmp_path / "repo"), "--bare")
    run("base", "add", "guest", "1", "--image", str(tmp_path / "disk.raw"))
    name = f"vml-test-{uuid.uuid4().hex[:8]}"
    run("area", "add", "lab", "--libvirt", TEST_URI, "--base", "guest:1", "--domain", name, "--ssh", "testhost",
        "--root", str(guest), "--include", "/")
    connection = libvirt.open(TEST_URI)
    overlay = tmp_path / "repo" / "vml" / "areas" / "lab" / "disk.qcow2"
    try:
        definition = connection.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        connection.defineXML(definition.replace("<memory unit='KiB'>1048576</memory>", "<memory unit='KiB'>524288</memory>"))
        saved_uuid = connection.lookupByName(name).UUIDString()
        run("vm", "start")
        entry = run.json("commit", "-m", "sized")["entry"]
        plain = run.json("vm", "info")[0]
        assert plain["vm"]["memory_kib"] == 524288 and plain["ssh"] is not None

        deleted = run.json("vm", "delete")["deleted"]
        assert str(overlay) in deleted and not overlay.exists()
        assert run.json("vm", "info")[0]["vm"]["state"] == "not defined"
        code, _out, err = run("status", check=False)
        assert code == 3 and "does not exist" in err and "--new-vm" in err  # the domain is gone: an environment problem

        # This guest is reached with --ssh: whatever answers there may hold unsaved work,
        # so --new-vm checks it as any checkout does (a forwarded VM's is new and empty).
        (guest / "home" / "user" / "notes").write_text("changed while the VM was gone\n")
        code, _out, err = run("checkout", entry, "--new-vm", check=False)
        assert code == 2 and "home/user/notes" in err and f"'vml checkout {entry} -a lab --force'" in err
        assert (guest / "home" / "user" / "notes").read_text() == "changed while the VM was gone\n"
        run("checkout", entry, "--force")
        made = connection.lookupByName(name)
        assert made.isActive() and made.UUIDString() == saved_uuid and made.info()[1] == 524288
        assert overlay.exists() and str(overlay) in made.XMLDesc(0)
        assert (guest / "home" / "user" / "notes").read_text() == "first\n"
        assert run.json("status")["clean"]

        code, _out, err = run("checkout", entry, "--new-vm", check=False)
        assert code == 2 and "exists" in err and "vml vm delete" in err
        run("area", "add", "plain", "--dir", str(tmp_path / "plain"))
        code, _out, err = run("checkout", entry, "--new-vm", "-a", "plain", check=False)
        assert code == 2 and "libvirt" in err
        _assert_fsck_clean(run)
    finally:
        _remove_domain(connection, name)


def test_definitions_travel_by_size_not_by_host_paths():
    from vml.areas import libvirt as area_libvirt

    connection = libvirt.open(TEST_URI)
    xml = area_libvirt.new_domain_xml(connection, "d", "/a/disk.qcow2", memory_mib=2048, vcpus=2, ssh_port=40022)
    assert area_libvirt.forwarded_port(xml) == 40022
    assert b"hostfwd=tcp:127.0.0.1:40022-:22" in xml and b"virtio-net-pci,netdev=net0,addr=0x10" in xml
    moved = xml.replace(b"/a/disk.qcow2", b"/b/disk.qcow2").replace(b"40022", b"41000")
    assert not area_libvirt.definitions_differ(xml, moved)
    sizing = area_libvirt.Sizing.of(xml)
    assert sizing == area_libvirt.Sizing(2048 * 1024, 2)
    smaller = area_libvirt.Sizing(512 * 1024, 1).apply(moved)
    assert area_libvirt.definitions_differ(xml, smaller) and b"/b/disk.qcow2" in smaller
    assert area_libvirt.Sizing.of(b"<domain><memory unit='GiB'>4</memory><vcpu>8</vcpu></domain>") == area_libvirt.Sizing(4 << 20, 8)
    assert area_libvirt.definitions_differ(b"not xml", xml)
    booted = (b"<domain><os><kernel>/boot/k</kernel></os><devices><emulator>/usr/bin/qemu</emulator>"
              b"<disk><source file='/d'/></disk></devices></domain>")
    assert area_libvirt.host_facing(booted) == area_libvirt.host_facing(booted)
    assert area_libvirt.host_facing(booted) != area_libvirt.host_facing(booted.replace(b"/usr/bin/qemu", b"/tmp/evil"))
    assert area_libvirt.host_facing(booted) != area_libvirt.host_facing(booted.replace(b"file='/d'", b"file='/etc/shadow'"))


def test_kvm_only_where_usable_and_embed_roots(monkeypatch):
    from vml.areas import libvirt as area_libvirt
    from vml.errors import UsageError

    monkeypatch.setenv("VML_KVM", "0")
    assert not area_libvirt.kvm_usable()
    monkeypatch.setenv("VML_KVM", "1")
    assert area_libvirt.kvm_usable()
    monkeypatch.delenv("VML_KVM")
    with open("/proc/cpuinfo") as cpuinfo:
        extensions = any(flag in line.split() for line in cpuinfo if line.startswith("flags") for flag in ("vmx", "svm"))
    assert area_libvirt.kvm_usable() == (extensions and os.access("/dev/kvm", os.R_OK | os.W_OK))
    assert area_libvirt.embedded_root("qemu:///embed?root=/srv/vms") == "/srv/vms"
    assert area_libvirt.embedded_root("qemu:///system") is None
    with pytest.raises(UsageError, match="root=DIR"):  # a URI the user typed: bad input
        area_libvirt.embedded_root("qemu:///embed?root=relative")


def test_a_taken_forwarded_port_is_replaced(tmp_path: Path):
    import socket

    from vml.areas import libvirt as area_libvirt

    connection = libvirt.open(TEST_URI)
    xml = area_libvirt.new_domain_xml(connection, "d", "/a/disk.qcow2", ssh_port=40022)
    moved = area_libvirt.with_forwarded_port(xml, 41234)
    assert area_libvirt.forwarded_port(moved) == 41234 and b"xmlns:qemu=" in moved and b"ns0" not in moved
    assert area_libvirt.Sizing.of(moved) == area_libvirt.Sizing.of(xml)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert area_libvirt.port_taken(listener.getsockname()[1])
    assert not area_libvirt.port_taken(area_libvirt.free_port())


def test_a_kvm_domain_where_kvm_is_not_usable_is_one_clear_line(capsys, tmp_path: Path, monkeypatch):
    """The fault (QEMU refusing KVM) is injected; what is tested is what the user reads."""
    connection = libvirt.open(TEST_URI)
    name = f"vml-test-{uuid.uuid4().hex[:8]}"
    connection.defineXML(f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>")
    run = InProcess(capsys, tmp_path / "repo")
    run("init", str(tmp_path / "repo"), "--bare")
    try:
        run("area", "add", "k", "--libvirt", TEST_URI, "--domain", name)
        monkeypatch.setenv("VML_KVM", "0")

        def refuse(_domain):
            raise libvirt.libvirtError("unsupported configuration: Domain requires KVM, but it is not available")

        monkeypatch.setattr(libvirt.virDomain, "create", refuse)
        code, _out, err = run("vm", "start", check=False)
        assert code == 3 and "asks for KVM, which this host cannot give" in err and len(err.strip().splitlines()) == 1
        _assert_fsck_clean(run)
    finally:
        connection.lookupByName(name).undefine()


def test_one_process_at_a_time_on_an_embedded_driver(tmp_path: Path):
    """qemu:///embed serves one process until it ends: a second vml waits for it, up to
    VML_LIBVIRT_WAIT seconds, then says so in one line (QEMU's driver, no guest booted)."""
    root = Path(tempfile.mkdtemp(prefix="vml-embed-", dir="/tmp"))
    uri = f"qemu:///embed?root={root}"
    hold = ("import sys, time; from vml.areas import libvirt as l; l.connect(sys.argv[1]); "
            "print('open', flush=True); time.sleep(float(sys.argv[2]))")
    try:
        subprocess.run([sys.executable, "-c", hold, uri, "0"], check=True, capture_output=True)  # makes the driver's files
        holder = subprocess.Popen([sys.executable, "-c", hold, uri, "3"], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "open\n"
        waited = subprocess.run([sys.executable, "-c", hold, uri, "0"], capture_output=True, text=True,
                                env={**os.environ, "VML_LIBVIRT_WAIT": "0.5"})
        assert waited.returncode != 0 and "serves one process at a time" in waited.stderr
        started = time.monotonic()
        patient = subprocess.run([sys.executable, "-c", hold, uri, "0"], capture_output=True, text=True)
        assert patient.returncode == 0 and patient.stdout == "open\n", patient.stderr
        assert holder.wait(timeout=30) == 0 and time.monotonic() - started > 0.5
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_vm_delete_leaves_a_domain_vml_did_not_make_unless_forced(area):
    run, _guest, (name, disk) = area
    code, _out, err = run("vm", "delete", check=False)
    assert code == 2 and "was not made by vml" in err and "--force" in err
    assert libvirt.open(TEST_URI).lookupByName(name).isActive()
    deleted = run.json("vm", "delete", "--force")["deleted"]
    assert deleted == [f"domain {name} at {TEST_URI}"] and disk.exists()  # its own disk stays
    assert run.json("vm", "info")[0]["vm"]["state"] == "not defined"


def test_a_memory_image_never_brings_its_own_host_set_up(tmp_path: Path):
    """Resuming runs the domain with its current definition; where the driver cannot take
    one (the test driver), an image whose definition reaches other host files is refused."""
    from vml.areas import libvirt as area_libvirt
    from vml.errors import AreaError

    connection = libvirt.open(TEST_URI)
    name = f"vml-test-{uuid.uuid4().hex[:8]}"
    first, second = tmp_path / "first.img", tmp_path / "second.img"
    first.write_bytes(b"1")
    second.write_bytes(b"2")

    def define(disk: Path) -> None:
        connection.defineXML(
            f"<domain type='test'><name>{name}</name><uuid>{uuid_text}</uuid><memory unit='MiB'>64</memory><os><type>hvm</type></os>"
            f"<devices><disk type='file' device='disk'><source file='{disk}'/><target dev='vda'/></disk></devices></domain>")

    uuid_text = str(uuid.uuid4())
    define(first)
    domain = area_libvirt.Domain(TEST_URI, name)
    try:
        domain.start()
        image = str(tmp_path / "memory.save")
        domain.save_memory(image)
        define(second)  # the domain now uses another disk than the one inside the image
        with pytest.raises(AreaError, match="reaches other host files"):
            domain.restore_memory(image)
        define(first)
        domain.restore_memory(image)
        assert domain.state() == "running"
        assert domain.foreign(domain.definition()) is None
        assert "no uuid" in domain.foreign(f"<domain><name>{name}</name><emulator>/tmp/x</emulator></domain>".encode())
        assert "another uuid" in domain.foreign(f"<domain><name>{name}</name><uuid>{uuid.uuid4()}</uuid></domain>".encode())
    finally:
        _remove_domain(connection, name)


def test_vm_delete_finishes_a_cut_short_delete_and_an_old_overlay_is_never_lost(capsys, tmp_path: Path):
    run = InProcess(capsys, tmp_path / "repo")
    run("init", str(tmp_path / "repo"), "--bare")
    (tmp_path / "disk.raw").write_bytes(os.urandom(1 << 20))
    run("base", "add", "guest", "1", "--image", str(tmp_path / "disk.raw"))
    name, other = (f"vml-test-{uuid.uuid4().hex[:8]}" for _ in range(2))
    run("area", "add", "lab", "--libvirt", TEST_URI, "--base", "guest:1", "--domain", name)
    connection = libvirt.open(TEST_URI)
    state = tmp_path / "repo" / "vml" / "areas" / "lab"
    try:
        connection.lookupByName(name).undefine()  # a delete cut short after the undefine
        assert run.json("vm", "delete")["deleted"] == [str(state / "disk.qcow2")]
        code, _out, err = run("vm", "delete", check=False)
        assert code == 2 and "nothing to delete" in err and len(err.strip().splitlines()) == 1

        run("area", "remove", "lab")  # no domain: an area of that name can come back
        run("area", "add", "lab", "--libvirt", TEST_URI, "--base", "guest:1", "--domain", name)
        (state / "disk.qcow2").write_bytes(b"the old guest's disk\n")  # as if the user had kept it
        run("area", "remove", "lab", "--force")  # the domain and its overlay stay
        code, _out, err = run("area", "add", "lab", "--libvirt", TEST_URI, "--base", "guest:1", "--domain", other, check=False)
        assert code == 2 and f"is the disk of domain {name}" in err
        assert (state / "disk.qcow2").read_bytes() == b"the old guest's disk\n"
        assert [a["name"] for a in run.json("area", "list")] == []  # nothing half-added
        connection.lookupByName(name).undefine()
        run("area", "add", "lab", "--libvirt", TEST_URI, "--base", "guest:1", "--domain", other)
        kept = [p for p in state.iterdir() if p.name.startswith("disk-before-")]
        assert len(kept) == 1 and kept[0].read_bytes() == b"the old guest's disk\n"
        connection.lookupByName(other).undefine()
        _assert_fsck_clean(run)
    finally:
        for leftover in (name, other):
            with contextlib.suppress(libvirt.libvirtError):
                connection.lookupByName(leftover).undefine()


def test_waiting_for_a_guest_ends_in_one_line(tmp_path: Path):
    from vml.areas.libvirt import Sizing, free_port
    from vml.areas.protocol import AreaConfig
    from vml.areas.rules import Rules
    from vml.areas.ssh import SshArea, SshTarget
    from vml.errors import AreaError, CorruptObject

    target = SshTarget("127.0.0.1", free_port(), "root", None, "/", str(tmp_path / "known_hosts"))
    guest = SshArea(AreaConfig("lab", "libvirt", "x"), target, Rules(("/",)))
    started = time.monotonic()
    heard: list[str] = []
    with pytest.raises(AreaError, match="never answered on SSH within 2 s"):
        guest.wait_until_reachable(2.0, lambda: None, heard.append)
    assert time.monotonic() - started < 10
    assert heard == [f"waiting for the guest's sshd at 127.0.0.1:{target.port} (up to 2 s)"]
    with pytest.raises(AreaError, match="domain vml-lab is shut off"):
        guest.wait_until_reachable(60.0, lambda: "domain vml-lab is shut off")
    with pytest.raises(CorruptObject, match="not XML"):
        Sizing.of(b"<domain")


def _inactive_xml(name: str) -> str:
    return libvirt.open(TEST_URI).lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_a_shared_folder_is_in_the_definition_and_never_in_the_guests_files(area, tmp_path: Path):
    """vml share add/list/remove on a running domain: a 9p filesystem in its definition (so
    in the entry's vm/domain.xml), its guest path left out of status and commits (host
    data), removed again; bad input is one line. (Here the 'guest' is a directory over the
    loopback sshd: its paths are under the area's root.)"""
    run, guest, (name, _disk) = area
    data, results = tmp_path / "data", tmp_path / "results"
    data.mkdir()
    results.mkdir()
    mount_point = str(guest / "home" / "user" / "data")
    run("commit", "-m", "before")
    added = run.json("share", "add", str(data), mount_point)
    assert added["action"] == "added" and added["share"]["tag"] == "vml0" and "next start" in added["notes"][0]
    run("share", "add", str(results), str(guest / "srv" / "results"), "--read-only")
    listed = run.json("share", "list")
    assert [(s["host"], s["guest"], s["tag"], s["read_only"]) for s in listed] == [
        (str(data), mount_point, "vml0", False), (str(results), str(guest / "srv" / "results"), "vml1", True)]
    xml = _inactive_xml(name)
    assert f"<source dir='{data}'/>" in xml and "<target dir='vml1'/>" in xml and "<readonly/>" in xml

    # What the guest sees under a share is the host's: not the guest's files.
    (guest / "home" / "user" / "data").mkdir()  # (as vml's mount does: its parent's mtime changes)
    (guest / "home" / "user" / "data" / "run2.root").write_text("host data\n")
    changes = [c["path"] for c in run.json("status")["changes"]]
    assert changes == ["home/user", "vm/domain.xml"]
    entry = run.json("commit", "-m", "with shares")["entry"]
    saved = subprocess.run(["git", "--git-dir", str(run.repo), "show", f"{entry}:vm/domain.xml"], capture_output=True, text=True,
                           check=True).stdout
    assert f"dir='{data}'" in saved and f"guest=\"{mount_point}\"" in saved.replace("'", '"')
    code, _out, err = run("show", f"{entry}:{mount_point.removeprefix(str(guest) + '/')}/run2.root", check=False)
    assert code != 0  # the entry has no file of the share

    for args, expected in ((["share", "add", str(data), mount_point], "shares"),
                           (["share", "add", str(data), "/"], "not a place for a shared folder"),
                           (["share", "add", str(data), "/proc/x"], "not a place for a shared folder"),
                           (["share", "add", str(data), "relative/path"], "absolute path"),
                           (["share", "add", str(tmp_path / "absent"), "/mnt/x"], "is not a directory"),
                           (["share", "remove", "/mnt/nothing"], "shares nothing at")):
        code, _out, err = run(*args, check=False)
        assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, (args, err)

    removed = run.json("share", "remove", mount_point)  # (nothing is mounted there: the unmount is a no-op)
    assert removed["action"] == "removed" and "unmounted" in removed["notes"][0]
    assert [s["tag"] for s in run.json("share", "list")] == ["vml1"]
    assert f"dir='{data}'" not in _inactive_xml(name)
    run("share", "remove", str(results))  # by its host folder
    assert run.json("share", "list") == []
    # Its guest path is the guest's again.
    assert "home/user/data/run2.root" in [c["path"] for c in run.json("status")["changes"]]


def test_checkout_new_vm_makes_the_entrys_shares_again_and_names_a_missing_host_folder(capsys, tmp_path: Path, sshd, monkeypatch):
    for key, value in sshd.env.items():
        monkeypatch.setenv(key, value)
    guest = tmp_path / "guest"
    (guest / "home").mkdir(parents=True)
    (tmp_path / "disk.raw").write_bytes(os.urandom(1 << 20))
    kept, gone = tmp_path / "calibration", tmp_path / "scratch"
    kept.mkdir()
    gone.mkdir()
    run = InProcess(capsys, tmp_path / "repo")
    run("init", str(tmp_path / "repo"), "--bare")
    run("base", "add", "guest", "1", "--image", str(tmp_path / "disk.raw"))
    name = f"vml-test-{uuid.uuid4().hex[:8]}"
    run("area", "add", "lab", "--libvirt", TEST_URI, "--base", "guest:1", "--domain", name, "--ssh", "testhost",
        "--root", str(guest), "--include", "/")
    connection = libvirt.open(TEST_URI)
    try:
        run("share", "add", str(kept), str(guest / "mnt" / "calibration"), "--read-only")
        run("share", "add", str(gone), str(guest / "mnt" / "scratch"))
        run("vm", "start")
        entry = run.json("commit", "-m", "with two shares")["entry"]
        run("vm", "delete")
        gone.rmdir()  # a colleague's host: one of the folders is not there
        made = run.json("checkout", entry, "--new-vm")
        assert any(f"shares host folder {gone} at {guest / 'mnt' / 'scratch'}, which this host lacks" in w for w in made["warnings"])
        assert [(s["host"], s["guest"], s["read_only"]) for s in run.json("share", "list")] == [
            (str(kept), str(guest / "mnt" / "calibration"), True)]
        xml = connection.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert f"dir='{kept}'" in xml and f"dir='{gone}'" not in xml
        _assert_fsck_clean(run)
    finally:
        _remove_domain(connection, name)


def test_an_entrys_share_over_the_guests_system_is_not_carried(tmp_path: Path):
    """A definition edited to mount a host folder over /etc, /proc or / of the guest: a new VM
    made from it leaves that share out."""
    from vml.areas.libvirt.definition import carried_shares, shares_in, with_share

    folder = tmp_path / "folder"
    folder.mkdir()
    plain = b"<domain type='qemu'><name>x</name><devices/></domain>"
    saved = plain
    for guest in ("/etc", "/proc/sys", "/", "/mnt/../etc", "/mnt/data"):
        saved, _share = with_share(saved, str(folder), guest, False)
    xml, carried, left_out = carried_shares(plain, saved)
    assert [share.guest for share in carried] == ["/mnt/data"] and [s.guest for s in shares_in(xml)] == ["/mnt/data"]
    assert [share.guest for share in left_out] == ["/etc", "/proc/sys", "/", "/mnt/../etc"]

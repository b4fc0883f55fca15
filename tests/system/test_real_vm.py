"""A real virtual machine, end to end: a Debian 12 guest built from Debian's packages
(scripts/build-guest, cached), booted by libvirt's embedded QEMU driver under software
emulation, worked in over SSH as a user would, saved, destroyed, made again from the
entry, resumed from saved memory, pushed over SSH, cloned and made again from the clone.

It fails, never skips, when QEMU or libvirt cannot run here: `.ci/run` runs it. A quick
local run may leave it out with `./scripts/test -m 'not vm'`. VML_VM_TIMINGS=FILE writes
the time of each step there (JSON), for the numbers in notes and docs.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import blake3
import pytest
from conftest import Vml, one_line_error
from support.files_server import FilesServer
from support.libvirt_host import second_libvirt_host

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
GUEST_DIR = Path(os.environ.get("VML_GUEST_DIR", "/var/cache/vml-guest"))


def _missing_parts() -> list[str]:
    missing = [what for what, present in (
        ("qemu-system-x86_64 (apt-get install qemu-system-x86)", shutil.which("qemu-system-x86_64")),
        ("libvirt's QEMU driver (apt-get install libvirt-daemon-driver-qemu)",
         os.path.exists("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so")),
        ("qemu-img (apt-get install qemu-utils)", shutil.which("qemu-img")),
        ("dpkg-deb", shutil.which("dpkg-deb")),
    ) if not present]
    if os.geteuid() != 0:
        missing.append("root (the embedded QEMU driver and scripts/build-guest run as root here)")
    return missing


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The built guest: disk.qcow2, vmlinuz, initrd.img, cmdline, id_ed25519 (built once, then cached)."""
    missing = _missing_parts()
    if missing:
        pytest.fail("a real VM cannot run here; missing: " + "; ".join(missing) + " (./scripts/setup installs them)")
    GUEST_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{GUEST_DIR}.lock", "w") as lock:  # one build at a time, whoever asks
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = subprocess.run([str(ROOT / "scripts" / "build-guest"), str(GUEST_DIR)], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"scripts/build-guest failed:\n{built.stdout}\n{built.stderr}")
    return GUEST_DIR


class Guest:
    """Commands run in the guest over SSH with the `ssh` client, as a user at a terminal."""

    def __init__(self, key: Path, port: int):
        self.key, self.port = key, port

    def __call__(self, command: str, check: bool = True) -> str:
        # ssh's own failure (exit 255: the connection, not the command) is tried again: a
        # guest under software emulation on a loaded 2-core machine can take longer than
        # the timeout to answer a new login right after its boot (seen once in CI, stderr
        # empty, the first command after `vm start --wait`).
        for _attempt in range(3):
            done = subprocess.run(
                ["ssh", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                 "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=60", "-i", str(self.key), "-p", str(self.port),
                 "root@127.0.0.1", command],
                capture_output=True, text=True, timeout=300,
            )
            if done.returncode != 255:
                break
            time.sleep(5)
        if check and done.returncode != 0:
            raise AssertionError(f"in the guest, {command!r} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def send(self, local: Path, remote: str) -> None:
        subprocess.run(["scp", "-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                        "-i", str(self.key), "-P", str(self.port), str(local), f"root@127.0.0.1:{remote}"], check=True, timeout=120)


def debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True).stdout


def guest_of(vml: Vml, area: str, key: Path) -> Guest:
    settings = vml("area", "show", area, "--json").json()["settings"]
    assert settings["host"] == "127.0.0.1" and settings["user"] == "root"
    return Guest(key, int(settings["port"]))


def build_deb(directory: Path) -> Path:
    """A tiny package a user might install: a script and a config file."""
    package = directory / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "usr" / "local" / "bin").mkdir(parents=True)
    (package / "DEBIAN" / "control").write_text(
        "Package: vml-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: vml <vml@example.org>\nDescription: a test package\n")
    tool = package / "usr" / "local" / "bin" / "vml-hello"
    tool.write_text('#!/bin/sh\necho "hello from vml-hello: $(cat /etc/vml-hello.conf)"\n')
    tool.chmod(0o755)
    deb = directory / "vml-hello_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(package), str(deb)], check=True, capture_output=True)
    return deb


class Steps:
    """Times each step of the walk-through."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        steps = self

        class Timed:
            def __enter__(self):
                self.start = time.monotonic()

            def __exit__(self, *exc):
                steps.times[name] = round(time.monotonic() - self.start, 2)

        return Timed()


@pytest.fixture
def embed_roots():
    """Directories of qemu:///embed drivers (short: QEMU's socket paths under them must fit
    in 108 bytes); every QEMU started under them is stopped afterwards."""
    roots: list[Path] = []

    def make(_name: str) -> Path:
        roots.append(Path(tempfile.mkdtemp(prefix="vml-vm-", dir="/tmp")))
        return roots[-1]

    yield make
    for root in roots:
        for pidfile in glob.glob(str(root / "run" / "qemu" / "*.pid")):
            try:
                os.kill(int(Path(pidfile).read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                pass
        shutil.rmtree(root, ignore_errors=True)


EXPECTED_FILES = {
    "/home/alice/results.txt": "alice alice 640",
    "/home/alice/analysis": "alice alice 750",
    "/usr/local/bin/vml-hello": "root root 755",
    "/etc/vml-hello.conf": "root root 644",
}


def check_the_guest(guest: Guest) -> None:
    """Everything the user did before the first commit is there."""
    for path, owner_mode in EXPECTED_FILES.items():
        assert guest(f"stat -c '%U %G %a' {path}").strip() == owner_mode, path
    assert guest("cat /home/alice/results.txt") == "mass 125.1 GeV\n"
    assert guest("getfattr --only-values -n user.origin /home/alice/results.txt") == "cern"
    assert guest("dpkg-query -W -f '${Status} ${Version}' vml-hello") == "install ok installed 1.0"
    assert guest("vml-hello").strip() == "hello from vml-hello: greeting=bonjour"
    assert guest("grep -c ^alice: /etc/passwd").strip() == "1"
    assert guest("bash -lc 'echo $ANALYSIS $CALIBRATION'").strip() == "v3 2026-run2"
    assert guest("su - alice -c 'echo $ANALYSIS'").strip() == "v3"


def test_a_real_guest_end_to_end(guest_image: Path, tmp_path: Path, embed_roots, sshd):
    steps = Steps()
    key = guest_image / "id_ed25519"
    vml = Vml(tmp_path / "lab", separate=True)  # qemu://embed serves one process until it ends: a process per command
    (tmp_path / "lab").mkdir()
    vml("init")
    uri = f"qemu:///embed?root={embed_roots('vms')}"

    # 2. The base image, with its kernel for a direct boot, from the catalog that publishes
    #    it: a real HTTP server on 127.0.0.1 serving the guest's files, each checked by digest.
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "guest").symlink_to(guest_image)
    version = {role: {"url": f"guest/{name}", "digest": "blake3:" + blake3.blake3().update_mmap(guest_image / name).hexdigest()}
               for role, name in (("image", "disk.qcow2"), ("kernel", "vmlinuz"), ("initrd", "initrd.img"))}
    catalog = {"vml-catalog": 1, "name": "debian-guest", "versions": {"12": {**version, "cmdline": (guest_image / "cmdline").read_text().strip()}}}
    (tmp_path / "site" / "catalog.json").write_text(json.dumps(catalog))
    published = FilesServer(tmp_path / "site").start()
    try:
        vml("base", "catalog", "add", "debian-guest", f"{published.url}/catalog.json")
        with steps("base fetch (catalog over HTTP)"):
            fetched = vml("base", "fetch", "debian-guest:12", "--json").json()
    finally:
        published.stop()
    assert fetched["base"]["digest"] == version["image"]["digest"] and fetched["downloaded_bytes"] > 100 << 20

    # 3. An area from that base on libvirt's QEMU driver; boot; the guest's sshd on a loopback port.
    with steps("area add"):
        vml("area", "add", "lab", "--libvirt", uri, "--base", "debian-guest:12", "--identity", str(key))
    # A host folder shared with the guest (issue 22), mounted when vml has waited for the boot.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "calibration.txt").write_text("run2 constants\n")
    vml("share", "add", str(shared), "/mnt/data")
    with steps("vm start"):
        vml("vm", "start")
    # A guest that is still booting does not answer yet: a short wait ends in one clear line.
    early = vml("status", check=False, env={"VML_SSH_WAIT": "2"})
    assert "never answered on SSH within 2 s" in one_line_error(early, code=3)  # the environment, not bad input
    with steps("boot to ssh"):
        started = vml("vm", "start", "--wait", "--json").json()  # already running: it waits for the sshd
        info = vml("vm", "info", "--json").json()[0]
    assert info["vm"]["state"] == "running" and info["vm"]["acceleration"].startswith("tcg")
    assert started["notes"] == [f"{shared} mounted at /mnt/data"]
    guest = guest_of(vml, "lab", key)
    assert guest("cat /mnt/data/calibration.txt") == "run2 constants\n"
    (shared / "written-on-the-host.txt").write_text("seen at once\n")
    assert guest("cat /mnt/data/written-on-the-host.txt") == "seen at once\n"
    with steps("first commit (fresh guest)"):
        vml("commit", "-m", "fresh guest")

    # 4. As a user would: a package from a .deb, files in a home, /etc settings, variables.
    deb = build_deb(tmp_path)
    guest.send(deb, "/root/")
    with steps("user work in the guest"):
        guest("echo greeting=bonjour > /etc/vml-hello.conf && dpkg -i /root/vml-hello_1.0_all.deb >/dev/null")
        guest("useradd -m -s /bin/bash alice && install -d -o alice -g alice -m 750 /home/alice/analysis"
              " && printf 'mass 125.1 GeV\\n' > /home/alice/results.txt && chown alice:alice /home/alice/results.txt"
              " && chmod 640 /home/alice/results.txt && setfattr -n user.origin -v cern /home/alice/results.txt")
        guest("echo 'export ANALYSIS=v3' >> /etc/profile && echo 'export CALIBRATION=2026-run2' >> /root/.profile")
    check_the_guest(guest)
    status = vml("status", "--json").json()
    changed = {c["path"] for c in status["changes"]}
    assert {"home/alice/results.txt", "usr/local/bin/vml-hello", "etc/vml-hello.conf", "env/variables:ANALYSIS"} <= changed
    assert status["vm"] == "running"
    with steps("commit"):
        entry = vml("commit", "-m", "analysis environment", "--json").json()["entry"]
    shown = vml("show", entry, "--json").json()
    assert vml("status", "--json").json()["clean"]

    # 5. Destroy the VM and its disk; make it again from the entry.
    with steps("vm delete"):
        deleted = vml("vm", "delete", "--json").json()["deleted"]
    assert any(path.endswith("disk.qcow2") for path in deleted)
    assert not (tmp_path / "lab" / ".vml" / "vml" / "areas" / "lab" / "disk.qcow2").exists()
    assert vml("vm", "info", "--json").json()[0]["vm"]["state"] == "not defined"
    gone = vml("status", check=False)
    assert "--new-vm" in one_line_error(gone, code=3)
    with steps("checkout --new-vm"):
        remade = vml("checkout", entry, "--new-vm", "--json").json()
    assert remade["not_reproduced"] == []
    guest = guest_of(vml, "lab", key)
    check_the_guest(guest)
    assert vml("status", "--json").json()["clean"]
    # The entry's definition had the shared folder: the new VM has it, mounted; the host's
    # files under it were never the entry's.
    assert f"host folder {shared} is shared at /mnt/data in the guest" in remade["warnings"]
    assert guest("cat /mnt/data/written-on-the-host.txt") == "seen at once\n"
    assert vml("show", "HEAD:mnt/data/calibration.txt", check=False).returncode != 0
    # Disabled, it is unmounted at once (its device goes at the next start).
    with steps("share remove"):
        vml("share", "remove", "/mnt/data")
    assert guest("grep -c ' /mnt/data ' /proc/mounts", check=False).strip() == "0"
    assert guest("test -e /mnt/data || echo gone") == "gone\n"  # the mount point vml made goes too
    assert [c["path"] for c in vml("status", "--json").json()["changes"]] == ["vm/domain.xml"]
    vml("commit", "-m", "no shared folder")
    # Its device stays until the next start: a memory image now could not be restored.
    refused = vml("commit", "--memory", "-m", "too early", check=False)
    assert "restart it first" in one_line_error(refused)

    # P2V (issue 22): the guest's whole root captured over SSH as a physical machine's would
    # be, made a disk image, booted as a VM of its own, and the same files found in it.
    home = {"HOME": str(tmp_path / "home")}  # (the host key learnt goes there, not in root's ~/.ssh)
    port = vml("area", "show", "lab", "--json").json()["settings"]["port"]
    vml("area", "add", "machine", "--ssh", f"root@127.0.0.1:{port}", "--identity", str(key), "--include", "/",
        "--accept-new-host-key", "--branch", "machine", env=home)
    with steps("p2v: commit the whole root over ssh"):
        whole = vml("commit", "-a", "machine", "-m", "the whole machine", "--json", env=home).json()
    vml("area", "remove", "machine")  # (its entry stays on its branch)
    vml("vm", "stop", "--force")  # one guest at a time on this machine
    with steps("p2v: image build"):
        built = vml("image", "build", whole["entry"], "-o", str(tmp_path / "machine.qcow2"), "--base", "machine:1",
                    "--cmdline", (guest_image / "cmdline").read_text().strip(), "--json").json()
    assert built["files"] == whole["files"] and built["kernel"].endswith("machine.vmlinuz")
    vml("area", "add", "p2v", "--libvirt", f"qemu:///embed?root={embed_roots('vms-p2v')}", "--base", "machine:1", "--identity", str(key))
    with steps("p2v: boot to ssh"):
        vml("vm", "start", "--wait", "-a", "p2v")
    made_from_machine = guest_of(vml, "p2v", key)
    check_the_guest(made_from_machine)
    assert made_from_machine("findmnt -n -o SOURCE /").strip() == "/dev/vda"
    vml("vm", "delete", "-a", "p2v")
    vml("area", "remove", "p2v")

    # Deploy (issue 22): the entry on another libvirt host (a second libvirtd, reached over the
    # real sshd): the base carried there, the entry's files written into a guest of the base
    # booted once there, then a domain of the entry started; its guest has the user's work.
    with second_libvirt_host() as remote:
        with steps("deploy: carry the base, write the entry in a guest there, start a domain"):
            deployed = vml("deploy", entry, "--host", remote.uri, "--pool-dir", str(remote.root / "pools" / "lab"), "--accel", "tcg",
                           "--json").json()
        carried = " ".join(deployed["carried"])
        assert "vml-base-" in carried and "written in a guest there" in carried
        assert deployed["vms"][0]["state"] == "running" and vml("deploy", "list", "--json").json()[0]["state"] == "running"
        # The entry's disk there (an overlay on the base, under the domain's own) holds the user's
        # work: read here, flattened. (The guest that wrote it booted from the same volumes on
        # that host; the domain booting again would prove nothing more for a minute of emulation.)
        flat = tmp_path / "deployed.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(remote.root / "pools" / "lab" / f"vml-{entry[:16]}.qcow2"),
                        str(flat)], check=True)
        assert debugfs(flat, "cat /home/alice/results.txt") == "mass 125.1 GeV\n"
        uid = next(line.split(":")[2] for line in debugfs(flat, "cat /etc/passwd").splitlines() if line.startswith("alice:"))
        assert f"User:  {uid}" in debugfs(flat, "stat /home/alice/results.txt") and "Mode:  0640" in debugfs(flat, "stat /home/alice/results.txt")
        assert "cern" in debugfs(flat, "ea_get /home/alice/results.txt user.origin")
        assert debugfs(flat, "cat /etc/vml-hello.conf") == "greeting=bonjour\n"
        assert "vml-hello" in debugfs(flat, "ls -l /usr/local/bin")
        assert "export ANALYSIS=v3" in debugfs(flat, "cat /etc/profile")
        flat.unlink()
        with steps("release --purge"):
            released = vml("release", "--purge", "--json").json()
        assert len(released["released"]) == 1 and any("vml-base-" in volume for volume in released["deleted"])
    with steps("boot to ssh again"):
        vml("vm", "start", "--wait")
    guest = guest_of(vml, "lab", key)  # (a start moves the forwarded port if another program took it meanwhile)

    # 6. Memory: a process keeps counting across commit --memory, a power-off and --resume.
    guest("nohup sh -c 'n=0; while :; do n=$((n+1)); echo $n > /run/counter; sleep 1; done' >/dev/null 2>&1 & echo $! > /run/counter.pid")
    time.sleep(3)
    pid = guest("cat /run/counter.pid").strip()
    with steps("commit --memory"):
        saved = vml("commit", "--memory", "-m", "with a running job", "--json").json()["entry"]
    counted = int(guest("cat /run/counter"))
    assert counted >= 2
    vml("vm", "stop", "--force")
    assert vml("vm", "info", "--json").json()[0]["vm"]["state"] == "shut off"
    with steps("checkout --resume"):
        vml("checkout", "--resume", saved)
    assert guest(f"cat /proc/{pid}/cmdline | tr '\\0' ' '").startswith("sh -c n=0;")
    resumed = int(guest("cat /run/counter"))
    assert counted <= resumed < counted + 30  # it counts on from where it was, not from 0
    check_the_guest(guest)

    # 7. Push over SSH, clone elsewhere, make the VM again from the clone.
    remote = tmp_path / "shared.vml"
    vml("init", "--bare", str(remote))
    vml("remote", "add", "origin", sshd.url(remote))
    with steps("push (with the base)"):
        vml("push", env=sshd.env)
    # 8. The same entry made public (issue 18): pushed beside it, made into a VM, rebooted.
    guest("printf 'mysql -u root -pVmSecret-7 physics\\nls\\n' > /root/.bash_history && chmod 600 /root/.bash_history")
    with steps("commit and publish"):
        vml("commit", "-m", "with history")
        published = vml("publish", "main", "--json").json()
        vml("push", "origin", "public/main", env=sshd.env)
    assert {"ssh-user-key", "ssh-host-key", "machine-id", "shell-history"} <= {f["rule"] for f in published["findings"]}
    vml("vm", "delete")  # one guest at a time on this machine
    with steps("clone"):
        Vml(tmp_path, separate=True)("clone", sshd.url(remote), "elsewhere", env=sshd.env)
    other = Vml(tmp_path / "elsewhere", separate=True)
    other("area", "add", "lab", "--libvirt", f"qemu:///embed?root={embed_roots('vms-elsewhere')}", "--identity", str(key), env=sshd.env)
    with steps("clone: checkout public/main --new-vm"):
        made = other("checkout", "public/main", "--new-vm", "--json", env=sshd.env).json()
    assert any("ssh-keygen" in line for line in made["restore_notice"]) and made["not_reproduced"] == []
    public_guest = guest_of(other, "lab", key)
    assert public_guest("wc -c < /etc/machine-id; sync").split() == ["0"]  # emptied, and on the disk before the power-off
    assert other("status", "--json", env=sshd.env).json()["clean"]  # the host keys it left out are the guest's own
    with steps("public guest: power off, boot to ssh"):
        other("vm", "stop", "--force")
        other("vm", "start", "--wait")
    public_guest = guest_of(other, "lab", key)  # (its port moved if another program took it while it was off)
    check_the_guest(public_guest)  # it boots: systemd made a machine-id, sshd kept the base's host keys
    history, machine_id, shadow = public_guest("cat /root/.bash_history; echo @; cat /etc/machine-id; echo @; cat /etc/shadow").split("@\n")
    assert "VmSecret-7" not in history and "ls" in history.split() and len(machine_id.strip()) == 32
    assert all(len(line.split(":")) == 9 for line in shadow.splitlines())
    other("vm", "delete", env=sshd.env)
    other.fsck_clean()
    vml.fsck_clean()

    image_bytes = os.path.getsize(guest_image / "disk.qcow2")
    memory = vml("show", saved, "--json").json()["info"]
    report = {"steps_seconds": steps.times, "guest_image_bytes": image_bytes,
              "entry": {key: shown["info"][key] for key in ("files", "logical_bytes", "added_bytes")} | {"stored_bytes": shown["stored_bytes"]},
              "memory_entry_added_bytes": memory["added_bytes"]}
    print(json.dumps(report, indent=2))
    if os.environ.get("VML_VM_TIMINGS"):
        Path(os.environ["VML_VM_TIMINGS"]).write_text(json.dumps(report, indent=2) + "\n")
    assert shown["info"]["added_bytes"] < image_bytes / 20  # the entry costs what changed, not the disk

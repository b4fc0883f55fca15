"""This host as its VMs meet it, without libvirt-python: KVM, loopback ports, qcow2 overlays, what a qemu: URI lacks, waits."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator

from vml.errors import AreaError, UsageError


def kvm_usable() -> bool:
    """Hardware acceleration a guest can use: /dev/kvm opens and the CPU has its extensions.
    A nested /dev/kvm without them (a PVM host) opens but runs a guest far slower than
    software emulation, or not at all. VML_KVM=0 forces software emulation, VML_KVM=1 kvm."""
    forced = os.environ.get("VML_KVM")
    if forced is not None:
        return forced == "1"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return "vmx" in flags or "svm" in flags


def free_port() -> int:
    """A loopback TCP port nobody listens on now (QEMU binds it when the domain starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def image_format(path: str) -> str:
    """qcow2, raw...: the format of disk image `path`, as qemu-img reads it."""
    if shutil.which("qemu-img") is None:
        raise AreaError("qemu-img is missing: install qemu-utils (./scripts/setup does)")
    info = subprocess.run(["qemu-img", "info", "--output=json", path], capture_output=True, text=True)
    if info.returncode != 0:
        raise AreaError(f"{path} is not a disk image qemu-img can read: {info.stderr.strip()}")
    return str(json.loads(info.stdout).get("format", "raw"))


def make_overlay(backing: str, overlay: str) -> None:
    """A qcow2 overlay on a base image: the base stays untouched, the guest writes here."""
    backing_format = image_format(backing)
    made = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", backing, overlay], capture_output=True, text=True
    )
    if made.returncode != 0:
        raise AreaError(f"cannot make an overlay on {backing}: {made.stderr.strip()}")


def connect_hint(uri: str) -> str:
    """What a failed connection's message adds: what this host lacks for `uri`."""
    if uri.startswith("qemu:///system"):
        return " (is libvirtd running? start it with 'libvirtd -d', or use qemu:///embed?root=DIR, which needs no daemon)"
    if not uri.startswith("qemu:"):
        return ""
    missing = []
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so"):
        missing.append("libvirt's QEMU driver (apt-get install libvirt-daemon-driver-qemu)")
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("QEMU (apt-get install qemu-system-x86)")
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        missing.append("a libvirt-qemu user and group (./scripts/setup creates them)")
    return f" (missing: {'; '.join(missing)})" if missing else ""


def seconds_from_environment(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{name} must be a number of seconds, not {text!r}") from None


@contextlib.contextmanager
def loopback_of(uri: str, port: int) -> Iterator[tuple[str, int]]:
    """Where this process reaches TCP `port` on the loopback of libvirt host `uri` (a guest's
    forwarded sshd): there for a URI of this machine, else through an OpenSSH forward over
    the ssh that libvirt itself uses for the URI (its user, port, keyfile and command=)."""
    parsed = urllib.parse.urlsplit(uri)
    if not parsed.hostname:
        yield "127.0.0.1", port
        return
    if not parsed.scheme.endswith("+ssh"):
        raise UsageError(f"vml reaches guests on {uri} through ssh to the host: use a qemu+ssh:// URI")
    query = urllib.parse.parse_qs(parsed.query)
    local = free_port()
    argv = [query.get("command", ["ssh"])[0], "-N", "-T", "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes",
            "-L", f"127.0.0.1:{local}:127.0.0.1:{port}"]
    argv += ["-p", str(parsed.port)] if parsed.port else []
    argv += ["-l", urllib.parse.unquote(parsed.username)] if parsed.username else []
    argv += ["-i", query["keyfile"][0]] if query.get("keyfile") else []
    argv += ["-o", "StrictHostKeyChecking=no"] if query.get("no_verify") == ["1"] else []
    # Its messages go to a file: a pipe nobody reads while the guest boots could fill and stop it.
    with tempfile.TemporaryFile() as messages:
        try:
            forward = subprocess.Popen([*argv, "--", parsed.hostname], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                       stderr=messages)
        except OSError as error:
            raise AreaError(f"cannot run {argv[0]} to reach the guests of {uri}: {error.strerror}") from None
        try:
            deadline = time.monotonic() + seconds_from_environment("VML_SSH_WAIT", 300)
            while not _listening(local):
                if forward.poll() is not None or time.monotonic() > deadline:
                    messages.seek(0)
                    why = (messages.read().decode(errors="replace").strip().splitlines() or ["it never listened"])[-1]
                    raise AreaError(f"cannot forward a port of {parsed.hostname} over ssh: {why}")
                time.sleep(0.1)
            yield "127.0.0.1", local
        finally:
            forward.terminate()
            forward.wait()


def _listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:`port` (read from /proc/net/tcp: a connection
    to find out would itself be forwarded)."""
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as table:
            return any(fields[1] == wanted and fields[3] == "0A" for fields in (line.split() for line in table) if len(fields) > 3)
    except OSError:
        return port_taken(port)

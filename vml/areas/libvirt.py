"""The `libvirt` working area: a domain's lifecycle through libvirt (libvirt-python's one home).

The guest's files are reached over SSH (an `SshArea` does that part); this module starts,
stops, suspends and resumes the domain, defines new domains on a copy-on-write overlay of
a base image, hands out the domain's definition (saved with each entry as vm/domain.xml)
and saves and restores its memory together with its disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Callable

import libvirt

from vml.areas.capture import CaptureProgress, CaptureResult
from vml.areas.restore import RestoreProgress
from vml.areas.statcache import StatCache
from vml.entry import DOMAIN_FILE
from vml.errors import AreaError
from vml.objects.manifest import Listing
from vml.objects.store import ChunkStore

# libvirt prints every error to stderr by default; vml reports them itself, once.
libvirt.registerErrorHandler(lambda _context, _error: None, None)

STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "no state",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",  # blocked on a resource, still up
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended by the guest",
}
_UNSUPPORTED = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED)
_CONNECTIONS: dict[str, libvirt.virConnect] = {}


@dataclass(frozen=True, slots=True)
class VmInfo:
    domain: str
    uri: str
    driver: str  # libvirt's name for the hypervisor: QEMU, Test, Xen...
    state: str
    acceleration: str  # kvm, software emulation (tcg), or what the driver is
    memory_kib: int
    vcpus: int
    disks: list[str] = field(default_factory=list)


def _fail(what: str, error: libvirt.libvirtError, uri: str) -> AreaError:
    message = error.get_error_message() or str(error)
    if error.get_error_code() in _UNSUPPORTED:
        return AreaError(f"{what}: the libvirt driver of {uri} does not support this ({message})")
    return AreaError(f"{what}: {message}")


def connect(uri: str) -> libvirt.virConnect:
    """One connection per URI and process (test:///default keeps its state per process)."""
    connection = _CONNECTIONS.get(uri)
    if connection is not None and connection.isAlive():
        return connection
    try:
        connection = libvirt.open(uri)
    except libvirt.libvirtError as error:
        hint = ""
        if uri.startswith("qemu:///system"):
            hint = " (is libvirtd running? start it with 'libvirtd -d', or use qemu:///embed?root=DIR, which needs no daemon)"
        raise AreaError(f"cannot connect to libvirt at {uri}: {error.get_error_message()}{hint}") from None
    _CONNECTIONS[uri] = connection
    return connection


class Domain:
    """One libvirt domain, by name, with errors a user can act on."""

    def __init__(self, uri: str, name: str):
        self.uri = uri
        self.name = name
        self.connection = connect(uri)

    def _lookup(self) -> libvirt.virDomain:
        try:
            return self.connection.lookupByName(self.name)
        except libvirt.libvirtError:
            try:
                known = ", ".join(sorted(d.name() for d in self.connection.listAllDomains())) or "none"
            except libvirt.libvirtError:
                known = "unknown"
            raise AreaError(f"no domain {self.name!r} at {self.uri} (domains: {known})") from None

    def exists(self) -> bool:
        try:
            self.connection.lookupByName(self.name)
            return True
        except libvirt.libvirtError:
            return False

    def state(self) -> str:
        return STATES.get(self._lookup().state()[0], "unknown")

    def info(self) -> VmInfo:
        domain = self._lookup()
        state, _max_memory, memory, vcpus, _cpu_time = domain.info()
        definition = ElementTree.fromstring(domain.XMLDesc(0))
        kind = definition.get("type", "")
        acceleration = {"kvm": "kvm (hardware)", "qemu": "tcg (software emulation)"}.get(kind, kind)
        disks = [s.get("file") or s.get("dev") or "" for s in definition.findall("./devices/disk/source")]
        return VmInfo(self.name, self.uri, self.connection.getType(), STATES.get(state, "unknown"), acceleration, memory, vcpus, disks)

    def _act(self, what: str, action) -> None:
        domain = self._lookup()
        try:
            action(domain)
        except libvirt.libvirtError as error:
            raise _fail(f"cannot {what} domain {self.name}", error, self.uri) from None

    def start(self) -> None:
        self._act("start", lambda d: d.create())

    def stop(self, force: bool = False) -> None:
        self._act("stop", lambda d: d.destroy() if force else d.shutdown())

    def suspend(self) -> None:
        self._act("suspend", lambda d: d.suspend())

    def resume(self) -> None:
        self._act("resume", lambda d: d.resume())

    def definition(self) -> bytes:
        """The persistent definition (not the live one: no ids, no runtime paths)."""
        return self._lookup().XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode()

    def define(self, xml: bytes) -> None:
        try:
            self.connection.defineXML(xml.decode())
        except libvirt.libvirtError as error:
            raise _fail(f"cannot define domain {self.name}", error, self.uri) from None

    def save_memory(self, path: str) -> None:
        """Save the running domain's memory to `path`; the domain stops (see `restore_memory`)."""
        domain = self._lookup()
        if not domain.isActive():
            raise AreaError(f"domain {self.name} is not running: there is no memory to save (vml vm start)")
        try:
            domain.save(path)
        except libvirt.libvirtError as error:
            raise _fail(f"cannot save the memory of domain {self.name}", error, self.uri) from None

    def restore_memory(self, path: str) -> None:
        if self.exists() and self._lookup().isActive():
            self._act("stop", lambda d: d.destroy())
        try:
            self.connection.restore(path)
        except libvirt.libvirtError as error:
            raise _fail(f"cannot restore the memory of domain {self.name}", error, self.uri) from None

    def disk_files(self) -> list[str]:
        definition = ElementTree.fromstring(self.definition())
        return [s.get("file") for s in definition.findall("./devices/disk[@device='disk']/source") if s.get("file")]


def domain_type(connection: libvirt.virConnect) -> str:
    """The domain type to ask for: kvm where /dev/kvm works, else software emulation."""
    driver = connection.getType().lower()
    if driver != "qemu":
        return driver
    return "kvm" if kvm_usable() else "qemu"


def kvm_usable() -> bool:
    # Nested /dev/kvm on some hosts opens but cannot run a guest at useful speed (see
    # docs); VML_KVM=0 forces software emulation, VML_KVM=1 insists on kvm.
    forced = os.environ.get("VML_KVM")
    if forced is not None:
        return forced == "1"
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def make_overlay(backing: str, overlay: str) -> None:
    """A qcow2 overlay on a base image: the base stays untouched, the guest writes here."""
    if shutil.which("qemu-img") is None:
        raise AreaError("qemu-img is missing: install qemu-utils (./scripts/setup does)")
    info = subprocess.run(["qemu-img", "info", "--output=json", backing], capture_output=True, text=True)
    if info.returncode != 0:
        raise AreaError(f"{backing} is not a disk image qemu-img can read: {info.stderr.strip()}")
    backing_format = json.loads(info.stdout).get("format", "raw")
    made = subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", backing_format, "-b", backing, overlay], capture_output=True, text=True
    )
    if made.returncode != 0:
        raise AreaError(f"cannot make an overlay on {backing}: {made.stderr.strip()}")


def new_domain_xml(connection: libvirt.virConnect, name: str, disk: str, *, memory_mib: int = 1024, vcpus: int = 1,
                   console: str | None = None) -> bytes:
    """A minimal definition booting `disk` (a qcow2 overlay)."""
    domain = ElementTree.Element("domain", type=domain_type(connection))
    ElementTree.SubElement(domain, "name").text = name
    ElementTree.SubElement(domain, "memory", unit="MiB").text = str(memory_mib)
    ElementTree.SubElement(domain, "vcpu").text = str(vcpus)
    os_element = ElementTree.SubElement(domain, "os")
    ElementTree.SubElement(os_element, "type").text = "hvm"
    ElementTree.SubElement(os_element, "boot", dev="hd")
    devices = ElementTree.SubElement(domain, "devices")
    disk_element = ElementTree.SubElement(devices, "disk", type="file", device="disk")
    ElementTree.SubElement(disk_element, "driver", name="qemu", type="qcow2")
    ElementTree.SubElement(disk_element, "source", file=disk)
    ElementTree.SubElement(disk_element, "target", dev="vda", bus="virtio")
    if console is not None:
        serial = ElementTree.SubElement(devices, "serial", type="file")
        ElementTree.SubElement(serial, "source", path=console)
    return ElementTree.tostring(domain)



class LibvirtArea:
    """A domain whose guest's files are reached over SSH (`files`), if the area has SSH settings."""

    capture_method = "libvirt+ssh-find-tar"

    def __init__(self, config, files):
        self.config = config
        self.domain = Domain(config.settings["uri"], config.settings["domain"])
        self.files = files

    def has_files(self) -> bool:
        return True

    def _files(self):
        if self.files is None:
            raise AreaError(
                f"area {self.config.name}: vml reaches a guest's files over SSH and this area has no SSH settings; "
                f"remove it and add it again with --ssh user@host[:port]"
            )
        return self.files

    def close(self) -> None:
        if self.files is not None:
            self.files.close()

    def capture(self, store: ChunkStore, cache: StatCache, *, dry_run: bool = False,
                progress: Callable[[CaptureProgress], None] | None = None, expected=None) -> CaptureResult:
        return self._files().capture(store, cache, dry_run=dry_run, progress=progress, expected=expected)

    def restore(self, store: ChunkStore, load_listing: Callable[..., Listing], root_id: bytes, current_root_id: bytes | None,
                progress: Callable[[RestoreProgress], None] | None = None) -> RestoreProgress:
        return self._files().restore(store, load_listing, root_id, current_root_id, progress)

    def read_file(self, path: bytes, limit: int) -> bytes:
        return self._files().read_file(path, limit)

    def entry_files(self) -> dict[str, bytes]:
        files = {DOMAIN_FILE: self.domain.definition()}
        if self.files is not None and self.domain.state() == "running":
            files.update(self.files.entry_files())
        return files

    def apply_entry_files(self, files: dict[str, bytes]) -> list[str]:
        """Define the domain as the entry had it (a running domain takes it at its next
        start), and its guest's environment."""
        notes = self.files.apply_entry_files(files) if self.files is not None else []
        wanted = files.get(DOMAIN_FILE)
        if wanted is None or wanted == self.domain.definition():
            return notes
        self.domain.define(wanted)
        if self.domain.state() != "shut off":
            notes.append(f"domain {self.domain.name} was redefined as the entry had it; the change applies at its next start")
        return notes

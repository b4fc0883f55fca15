"""The `libvirt` working area: a domain's lifecycle through libvirt (libvirt-python's one home).

The guest's files are reached over SSH (an `SshArea` does that part); this module starts,
stops, suspends and resumes the domain, defines new domains on a copy-on-write overlay of
a base image, hands out the domain's definition (saved with each entry as vm/domain.xml)
and saves and restores its memory together with its disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from typing import Callable


def _log_to_a_file() -> None:
    """libvirt's own log (warnings such as the taint notes on every domain with custom QEMU
    arguments) goes to ~/.cache/vml/libvirt.log, not the user's terminal: vml reports the
    errors itself. libvirt reads this once, when first used, hence before the import."""
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vml")
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError:
        return
    os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", f"3:file:{os.path.join(cache, 'libvirt.log')}")


_log_to_a_file()
import libvirt  # noqa: E402  (after its log is set up)

from vml.areas.capture import CaptureProgress, CaptureResult, capture_files
from vml.areas.restore import Restore, RestoreProgress
from vml.areas.statcache import StatCache
from vml.entry import DOMAIN_FILE
from vml.errors import AreaError, CorruptObject, UsageError
from vml.objects.ids import ObjectId
from vml.objects.walk import listing_loader
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
MEMORY_FILE = b"memory.save"  # in an entry's memory tree, beside disk0-NAME, disk1-NAME...
_UNSUPPORTED = (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_ARGUMENT_UNSUPPORTED)
_CONNECTIONS: dict[str, libvirt.virConnect] = {}
_EVENT_LOOP: list[threading.Thread] = []
_EMBEDDED_LOCKS: dict[str, int] = {}  # root -> descriptor of its vml.lock, held for the process's life
QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
ElementTree.register_namespace("qemu", QEMU_NAMESPACE)  # definitions written back keep libvirt's prefix
GUEST_SSH_PORT = 22
# qemu:///embed runs QEMU as this process's user when its qemu.conf says so (as root, the
# driver would otherwise switch to a libvirt-qemu user, who cannot read a repository's files).
# remember_owner and dynamic_ownership off: libvirt neither chowns vml's images and kernels
# nor writes its trusted.libvirt.security xattrs onto them.
EMBED_QEMU_CONF = 'user = "root"\ngroup = "root"\nstdio_handler = "file"\nremember_owner = 0\ndynamic_ownership = 0\n'


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

    @classmethod
    def undefined(cls, domain: "Domain") -> "VmInfo":
        return cls(domain.name, domain.uri, domain.connection.getType(), "not defined", "", 0, 0)


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
    embed_root = embedded_root(uri)
    if embed_root is not None:
        _prepare_embedded(embed_root)
        _wait_for_embedded_driver(uri, embed_root)
    try:
        connection = libvirt.open(uri)
    except libvirt.libvirtError as error:
        message = error.get_error_message() or str(error)
        if embed_root is not None and "pid file" in message:
            raise AreaError(f"cannot connect to libvirt at {uri}: another program (not vml) uses its embedded driver ({message})") from None
        raise AreaError(f"cannot connect to libvirt at {uri}: {message}{_connect_hint(uri)}") from None
    _CONNECTIONS[uri] = connection
    return connection


def _wait_for_embedded_driver(uri: str, root: str) -> None:
    """The embedded driver serves one process at a time, from its first use to the end of
    that process, and a process that once failed to get it cannot try again. So vml
    processes queue on a lock of their own in DIR, held until they end, for up to
    VML_LIBVIRT_WAIT seconds (60)."""
    if root in _EMBEDDED_LOCKS:
        return
    descriptor = os.open(os.path.join(root, "vml.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + seconds_from_environment("VML_LIBVIRT_WAIT", 60)
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise AreaError(f"another vml process has used {uri} for longer than VML_LIBVIRT_WAIT seconds (libvirt's "
                                f"embedded driver serves one process at a time): wait for it, or use qemu:///system") from None
            time.sleep(0.25)
    _EMBEDDED_LOCKS[root] = descriptor  # never closed: the lock goes with the process, as the driver does


def seconds_from_environment(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{name} must be a number of seconds, not {text!r}") from None


def embedded_root(uri: str) -> str | None:
    """The directory of a qemu:///embed?root=DIR URI (libvirt's QEMU driver inside this
    process: no daemon; its domains and their QEMU processes outlive the process)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "qemu" or parsed.path != "/embed":
        return None
    roots = urllib.parse.parse_qs(parsed.query).get("root")
    if not roots or not os.path.isabs(roots[0]):
        raise AreaError(f"{uri}: qemu:///embed needs root=DIR, an absolute path (qemu:///embed?root=/var/lib/vml-vms)")
    return roots[0]


def _prepare_embedded(root: str) -> None:
    """What the embedded driver needs and a daemon would give: an event loop running in
    this process and a qemu.conf."""
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    conf = os.path.join(root, "etc", "qemu.conf")
    if not os.path.exists(conf) and os.geteuid() == 0:
        with open(conf, "w") as out:
            out.write(EMBED_QEMU_CONF)
    if not _EVENT_LOOP:
        libvirt.virEventRegisterDefaultImpl()

        def run_events() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _EVENT_LOOP.append(threading.Thread(target=run_events, name="libvirt-events", daemon=True))
        _EVENT_LOOP[0].start()


def _connect_hint(uri: str) -> str:
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


def _one_line(what: str | None = None):
    """A libvirt failure inside the method (the daemon gone, the domain undefined meanwhile,
    an operation the driver lacks) becomes an AreaError: one line, no traceback, saying
    what could not be done (`what`: "start", "save the memory of"...)."""

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except libvirt.libvirtError as error:
                doing = f"cannot {what} domain {self.name}" if what else f"domain {self.name} at {self.uri}"
                raise _fail(doing, error, self.uri) from None

        return wrapper

    return decorate


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

    @_one_line()
    def state(self) -> str:
        return STATES.get(self._lookup().state()[0], "unknown")

    @_one_line()
    def info(self) -> VmInfo:
        domain = self._lookup()
        state, _max_memory, memory, vcpus, _cpu_time = domain.info()
        definition = ElementTree.fromstring(domain.XMLDesc(0))
        kind = definition.get("type", "")
        acceleration = {"kvm": "kvm (hardware)", "qemu": "tcg (software emulation)"}.get(kind, kind)
        disks = [s.get("file") or s.get("dev") or "" for s in definition.findall("./devices/disk/source")]
        return VmInfo(self.name, self.uri, self.connection.getType(), STATES.get(state, "unknown"), acceleration, memory, vcpus, disks)

    def start(self) -> None:
        domain = self._lookup()
        try:
            domain.create()
        except libvirt.libvirtError as error:
            kind = ElementTree.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)).get("type")
            if kind == "kvm" and not kvm_usable():
                raise AreaError(f"cannot start domain {self.name}: it asks for KVM, which this host cannot give "
                                f"({error.get_error_message()}); 'virsh edit' it to <domain type='qemu'> for software emulation") from None
            failure = _fail(f"cannot start domain {self.name}", error, self.uri)
            if "too long" in str(failure) and embedded_root(self.uri) is not None:
                failure = AreaError(f"{failure} (QEMU's sockets live under qemu:///embed's root=DIR: give a shorter DIR)")
            raise failure from None

    def delete(self) -> list[str]:
        """Power the domain off and undefine it; returns the files of its disks (not deleted here)."""
        disks = _disk_files(self.definition())
        self._undefine()
        return disks

    @_one_line("delete")
    def _undefine(self) -> None:
        domain = self._lookup()
        if domain.isActive():
            _power_off(domain)
        try:
            domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        except libvirt.libvirtError as error:
            if error.get_error_code() not in _UNSUPPORTED:
                raise
            domain.undefine()

    @_one_line("stop")
    def stop(self, force: bool = False) -> None:
        domain = self._lookup()
        _power_off(domain) if force else domain.shutdown()

    @_one_line("suspend")
    def suspend(self) -> None:
        self._lookup().suspend()

    @_one_line("resume")
    def resume(self) -> None:
        self._lookup().resume()

    @_one_line()
    def definition(self) -> bytes:
        """The persistent definition (not the live one: no ids, no runtime paths)."""
        return self._lookup().XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode()

    @_one_line()
    def foreign(self, xml: bytes) -> str | None:
        """Why `xml` (from an entry, perhaps a colleague's) must not redefine this domain:
        it names another domain, or another one of the same name (uuid). None if it is ours."""
        try:
            wanted = ElementTree.fromstring(xml)
        except ElementTree.ParseError as error:
            return f"the saved definition is not XML ({error})"
        if (wanted.findtext("name") or "").strip() != self.name:
            return f"the saved definition is of domain {wanted.findtext('name')!r}, not {self.name!r}"
        if not (wanted.findtext("uuid") or "").strip():
            return "the saved definition names no uuid (libvirt always writes one)"
        if self.exists():
            current = ElementTree.fromstring(self.definition()).findtext("uuid")
            if wanted.findtext("uuid").strip() != (current or "").strip():
                return f"the saved definition is of another domain named {self.name} (another uuid)"
        return None

    @_one_line("define")
    def define(self, xml: bytes) -> None:
        self.connection.defineXML(xml.decode())

    @_one_line("save the memory of")
    def save_memory(self, path: str) -> None:
        """Save the running domain's memory to `path`; the domain stops (see `restore_memory`)."""
        domain = self._lookup()
        if not domain.isActive():
            raise AreaError(f"domain {self.name} is not running: there is no memory to save (vml vm start)")
        domain.save(path)

    def restore_memory(self, path: str) -> None:
        """Run the domain again from a memory image, with its current definition, never the
        one inside the image: an image from an entry may come from anyone, and its
        definition could name any emulator, QEMU argument or host file."""
        definition = self.definition()
        if self._lookup().isActive():
            self.stop(force=True)
        self._restore(path, definition)

    @_one_line("restore the memory of")
    def _restore(self, path: str, definition: bytes) -> None:
        try:
            self.connection.restoreFlags(path, definition.decode(), 0)
        except libvirt.libvirtError as error:
            if error.get_error_code() not in _UNSUPPORTED:
                raise
            # A driver that cannot take another definition (the test driver) restores the
            # image's own, but only if it reaches nothing on the host the current one does not.
            image = self.connection.saveImageGetXMLDesc(path, 0).encode()
            if host_facing(image) != host_facing(definition):
                raise AreaError(f"cannot restore the memory of domain {self.name}: its image's definition reaches other "
                                f"host files or programs than the domain's ({self.uri} cannot restore with the domain's own)") from None
            self.connection.restore(path)

    @_one_line()
    def disk_files(self) -> list[str]:
        """The files of the domain's disks; an error if a disk is not a file (a block device,
        a network volume): a memory image is only valid with every disk it was taken with."""
        definition = ElementTree.fromstring(self.definition())
        files = []
        for disk in definition.findall("./devices/disk[@device='disk']"):
            source = disk.find("source")
            if disk.get("type") != "file" or source is None or not source.get("file"):
                raise AreaError(f"domain {self.name} has a disk that is not a file ({disk.get('type')}): vml cannot save it with the memory")
            files.append(source.get("file"))
        return files


def _power_off(domain: libvirt.virDomain) -> None:
    try:
        domain.destroy()
    except libvirt.libvirtError as error:
        # qemu:///embed, just opened, may still be reconnecting to the domain's QEMU: then it
        # sees the process end first and destroy() reports "not running" once it is off.
        if error.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID or domain.isActive():
            raise


def domain_type(connection: libvirt.virConnect) -> str:
    """The domain type to ask for: kvm where /dev/kvm works, else software emulation."""
    driver = connection.getType().lower()
    if driver != "qemu":
        return driver
    return "kvm" if kvm_usable() else "qemu"


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
                   console: str | None = None, kernel: str | None = None, initrd: str | None = None,
                   cmdline: str | None = None, ssh_port: int | None = None, uuid_text: str | None = None) -> bytes:
    """A minimal definition booting `disk` (a qcow2 overlay), through its own bootloader or,
    given a kernel, directly (the base image's kernel, initrd and command line). With
    `ssh_port` (QEMU only), the guest has a user-mode network whose port 22 is forwarded
    to 127.0.0.1:ssh_port: no bridge, no root network set-up, reachable from this host only."""
    domain = ElementTree.Element("domain", type=domain_type(connection))
    ElementTree.SubElement(domain, "name").text = name
    if uuid_text is not None:
        ElementTree.SubElement(domain, "uuid").text = uuid_text
    ElementTree.SubElement(domain, "memory", unit="KiB").text = str(memory_mib * 1024)
    ElementTree.SubElement(domain, "vcpu").text = str(vcpus)
    os_element = ElementTree.SubElement(domain, "os")
    ElementTree.SubElement(os_element, "type").text = "hvm"
    if kernel is not None:
        ElementTree.SubElement(os_element, "kernel").text = kernel
        if initrd is not None:
            ElementTree.SubElement(os_element, "initrd").text = initrd
        if cmdline is not None:
            ElementTree.SubElement(os_element, "cmdline").text = cmdline
    else:
        ElementTree.SubElement(os_element, "boot", dev="hd")
    devices = ElementTree.SubElement(domain, "devices")
    disk_element = ElementTree.SubElement(devices, "disk", type="file", device="disk")
    ElementTree.SubElement(disk_element, "driver", name="qemu", type="qcow2")
    ElementTree.SubElement(disk_element, "source", file=disk)
    ElementTree.SubElement(disk_element, "target", dev="vda", bus="virtio")
    if console is not None:
        serial = ElementTree.SubElement(devices, "serial", type="file")
        ElementTree.SubElement(serial, "source", path=console)
    if ssh_port is not None:
        # libvirt 9.0 has no user-mode network with port forwards (passt is refused), so
        # QEMU gets it directly; the explicit PCI slot keeps it clear of libvirt's devices.
        arguments = ElementTree.SubElement(domain, f"{{{QEMU_NAMESPACE}}}commandline")
        for value in ("-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:{GUEST_SSH_PORT}",
                      "-device", "virtio-net-pci,netdev=net0,addr=0x10"):
            ElementTree.SubElement(arguments, f"{{{QEMU_NAMESPACE}}}arg", value=value)
    return ElementTree.tostring(domain)


def domains_using(connection: libvirt.virConnect, path: str) -> list[str]:
    """The domains at `connection` with `path` among their disks."""
    real = os.path.realpath(path)
    return [domain.name() for domain in connection.listAllDomains()
            if real in map(os.path.realpath, _disk_files(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode()))]


def _disk_files(xml: bytes) -> list[str]:
    """The files a definition's disks are (disks that are block devices or volumes left out)."""
    sources = ElementTree.fromstring(xml).findall("./devices/disk/source")
    return [source.get("file") for source in sources if source.get("file")]


def unused_uuid(connection: libvirt.virConnect, saved: bytes | None) -> str | None:
    """The uuid of a saved definition, for a domain recreated from it (so that entries of
    that domain still apply to it), unless it is no uuid or a domain at `connection` has it."""
    try:
        wanted = str(uuid.UUID((ElementTree.fromstring(saved).findtext("uuid") or "").strip())) if saved else None
    except (ElementTree.ParseError, ValueError):
        return None
    if wanted is None:
        return None
    try:
        connection.lookupByUUIDString(wanted)
        return None
    except libvirt.libvirtError:
        return wanted


_FORWARD = re.compile(r"(hostfwd=tcp:127\.0\.0\.1:)(\d+)(-:)")  # the loopback port in new_domain_xml's -netdev


def forwarded_port(xml: bytes) -> int | None:
    """The loopback port a definition from `new_domain_xml` forwards to the guest's sshd."""
    for argument in ElementTree.fromstring(xml).iter(f"{{{QEMU_NAMESPACE}}}arg"):
        match = _FORWARD.search(argument.get("value", ""))
        if match:
            return int(match.group(2))
    return None


def with_forwarded_port(xml: bytes, port: int) -> bytes:
    """`xml` forwarding `port` to the guest's sshd instead (see `new_domain_xml`)."""
    definition = ElementTree.fromstring(xml)
    for argument in definition.iter(f"{{{QEMU_NAMESPACE}}}arg"):
        value = argument.get("value", "")
        argument.set("value", _FORWARD.sub(rf"\g<1>{port}\g<3>", value))
    return ElementTree.tostring(definition)


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass(frozen=True, slots=True)
class Sizing:
    """The parts of a definition that travel with an entry: a checkout, or a new VM on
    another host, takes these; paths, ports, uuid and devices stay the host's own."""

    memory_kib: int | None
    vcpus: int | None

    @classmethod
    def of(cls, xml: bytes) -> "Sizing":
        try:
            definition = ElementTree.fromstring(xml)
        except ElementTree.ParseError as error:
            raise CorruptObject(f"a saved domain definition ({DOMAIN_FILE}) is not XML: {error}") from None
        return cls(_kib(definition.find("memory")), _int(definition.findtext("vcpu")))

    def apply(self, xml: bytes) -> bytes:
        """`xml` with this memory size and vCPU count."""
        definition = ElementTree.fromstring(xml)
        if self.memory_kib is not None:
            for tag in ("memory", "currentMemory"):
                element = definition.find(tag)
                if element is not None:
                    element.text, element.attrib = str(self.memory_kib), {"unit": "KiB"}
        vcpu = definition.find("vcpu")
        if self.vcpus is not None and vcpu is not None:
            vcpu.text = str(self.vcpus)
            vcpu.attrib.pop("current", None)  # how many of them run at boot: all of the new count
        return ElementTree.tostring(definition)


def host_facing(xml: bytes) -> tuple:
    """What of a definition reaches the host: emulator, boot files, QEMU arguments, and the
    files, devices and sockets its devices use."""
    definition = ElementTree.fromstring(xml)
    reached = [(element.tag, repr(sorted((k, v) for k, v in element.attrib.items() if k in ("file", "dev", "dir", "path", "socket"))))
               for element in definition.iter("source")]
    reached += [(element.tag, (element.text or "").strip()) for element in definition.iter()
                if element.tag in ("emulator", "kernel", "initrd", "loader", "nvram")]
    arguments = [argument.get("value") for argument in definition.iter(f"{{{QEMU_NAMESPACE}}}arg")]
    return sorted(reached), arguments, definition.find("./devices/hostdev") is not None


def definitions_differ(saved: bytes, current: bytes) -> bool:
    """Whether a saved definition asks for another memory size or vCPU count than `current`."""
    try:
        return Sizing.of(saved) != Sizing.of(current)
    except CorruptObject:
        return True


_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "kb": 1000, "m": 1024**2, "mib": 1024**2, "mb": 1000**2,
          "g": 1024**3, "gib": 1024**3, "gb": 1000**3, "t": 1024**4, "tib": 1024**4, "tb": 1000**4}


def _kib(element) -> int | None:
    if element is None or _int(element.text) is None:
        return None
    return _int(element.text) * _UNITS.get(element.get("unit", "KiB").lower(), 1024) // 1024


def _int(text: str | None) -> int | None:
    try:
        return int((text or "").strip())
    except ValueError:
        return None


class LibvirtArea:
    """A domain whose guest's files are reached over SSH (`files`), if the area has SSH settings."""

    capture_method = "libvirt+ssh-find-tar"

    def __init__(self, config, rules, files):
        self.config = config
        self.rules = rules
        self.domain = Domain(config.settings["uri"], config.settings["domain"])
        self.files = files
        self._reached = False
        self.notice: Callable[[str], None] | None = None  # hears what a long wait waits for

    def has_files(self) -> bool:
        return True

    def _files(self):
        """The guest's files over SSH, once its sshd answers (a guest that just started
        is waited for, up to VML_SSH_WAIT seconds, 300 by default)."""
        if self.files is None:
            raise AreaError(
                f"area {self.config.name}: vml reaches a guest's files over SSH and this area has no SSH settings; "
                f"'vml area remove {self.config.name}' and add it again with --ssh user@host[:port]"
            )
        if not self._reached:
            if self.config.settings.get("knownhosts"):
                # The guest's sshd is behind the domain's own forwarded port (the definition
                # says which, whatever a command cut short left in the settings): it answers
                # only while the domain runs, and some time after it starts.
                port = self.forwarded_port()
                if port is not None and port != self.files.target.port:
                    self.files.target = dataclasses.replace(self.files.target, port=port)
                self.wait_for_guest()
            else:
                self._check_defined()
            self._reached = True
        return self.files

    def forwarded_port(self) -> int | None:
        """The loopback port of the guest's sshd, for a VM vml made, as its definition says."""
        if not self.config.settings.get("knownhosts") or not self.domain.exists():
            return None
        return forwarded_port(self.domain.definition())

    def free_forwarded_port(self) -> int | None:
        """Before a start: if another program took the domain's forwarded SSH port since it
        was chosen, forward a free one instead (QEMU would fail to start). Returns the new
        port, None if it did not change. The guest's known host key moves with it."""
        if not self.config.settings.get("knownhosts") or not self.domain.exists() or self.domain.state() != "shut off":
            return None
        definition = self.domain.definition()
        port = forwarded_port(definition)
        if port is None or not port_taken(port):
            return None
        new_port = free_port()
        self.domain.define(with_forwarded_port(definition, new_port))
        self.files.target = dataclasses.replace(self.files.target, port=new_port)
        known_hosts = self.config.settings["knownhosts"]
        if os.path.exists(known_hosts):
            with open(known_hosts) as old:
                lines = old.read().replace(f"[127.0.0.1]:{port} ", f"[127.0.0.1]:{new_port} ")
            with open(known_hosts + ".tmp", "w") as new:
                new.write(lines)
            os.replace(known_hosts + ".tmp", known_hosts)
        return new_port

    def _check_defined(self) -> None:
        if not self.domain.exists():
            raise AreaError(f"area {self.config.name}: domain {self.domain.name} does not exist at {self.domain.uri}; "
                            f"make it from an entry with 'vml checkout ENTRY --new-vm -a {self.config.name}'")

    def wait_for_guest(self, seconds: float | None = None) -> None:
        self._check_defined()
        state = self.domain.state()
        if state != "running":
            action = "resume" if state == "paused" else "start"
            raise AreaError(f"area {self.config.name}: domain {self.domain.name} is {state}; vml reaches the guest's "
                            f"files over SSH: {action} it with 'vml vm {action} -a {self.config.name}'")
        if seconds is None:
            seconds = seconds_from_environment("VML_SSH_WAIT", 300)
        self.files.wait_until_reachable(seconds, self._not_booting, self.notice)
        self._reached = True

    def _not_booting(self) -> str | None:
        state = self.domain.state()
        if state == "running":
            return None
        console = self.config.settings.get("console")
        tail = ""
        with contextlib.suppress(OSError, TypeError):
            with open(console, "rb") as log:
                log.seek(max(0, os.path.getsize(console) - 400))
                lines = log.read().decode(errors="replace").strip().splitlines()
            tail = f"; its console ({console}) ends: {lines[-1].strip()!r}" if lines else ""
        return f"domain {self.domain.name} is {state}, its guest will not answer on SSH{tail}"

    def close(self) -> None:
        if self.files is not None:
            self.files.close()

    def capture(self, store: ChunkStore, cache: StatCache, *, dry_run: bool = False,
                progress: Callable[[CaptureProgress], None] | None = None, expected=None) -> CaptureResult:
        return self._files().capture(store, cache, dry_run=dry_run, progress=progress, expected=expected)

    def restore(self, store: ChunkStore, load_listing: Callable[..., Listing], root_id: bytes, current_root_id: bytes | None,
                progress: Callable[[RestoreProgress], None] | None = None, entry_rules=None) -> RestoreProgress:
        return self._files().restore(store, load_listing, root_id, current_root_id, progress, entry_rules=entry_rules)

    def read_file(self, path: bytes, limit: int) -> bytes:
        return self._files().read_file(path, limit)

    def entry_files(self) -> dict[str, bytes]:
        files = {DOMAIN_FILE: self.domain.definition()}
        if self.files is not None and self.domain.state() == "running":
            files.update(self._files().entry_files())
        return files

    def apply_entry_files(self, files: dict[str, bytes]) -> list[str]:
        """Give the domain the memory size and vCPU count the entry had (a running domain
        takes them at its next start), and its guest its environment. The rest of a saved
        definition (disk paths, forwarded port, uuid) belongs to the host it was saved on."""
        notes = self._files().apply_entry_files(files) if self.files is not None else []
        wanted = files.get(DOMAIN_FILE)
        current = self.domain.definition()
        if wanted is None or not definitions_differ(wanted, current):
            return notes
        refused = self.domain.foreign(wanted)
        if refused is not None:
            return notes + [f"domain {self.domain.name} was not redefined: {refused}"]
        try:
            self.domain.define(Sizing.of(wanted).apply(current))
        except AreaError as error:  # the files are back already: say so, leave the domain as it is
            return notes + [f"domain {self.domain.name} keeps its memory size and vCPUs: {error}"]
        if self.domain.state() != "shut off":
            notes.append(f"domain {self.domain.name} was redefined as the entry had it; the change applies at its next start")
        return notes

    # -- memory

    def save_memory(self, store: ChunkStore, temp_dir: str) -> tuple[ObjectId, list[str]]:
        """The domain's memory and the disks it is only valid with, as one tree in the store;
        the domain runs again afterwards. Returns the tree's id and the disks' paths in order."""
        disks = self.domain.disk_files()
        missing = [path for path in disks if not os.path.isfile(path)]
        if missing:
            raise AreaError(f"domain {self.domain.name} uses disks vml cannot read here ({', '.join(missing)}): its memory would be useless without them")
        with tempfile.TemporaryDirectory(dir=temp_dir) as work:
            image = os.path.join(work, os.fsdecode(MEMORY_FILE))
            self.domain.save_memory(image)  # the domain stops here, its disks quiet
            try:
                files = [(MEMORY_FILE, os.fsencode(image))]
                files += [(b"disk%d-%s" % (n, os.fsencode(os.path.basename(path))), os.fsencode(path)) for n, path in enumerate(disks)]
                root_id, _totals = capture_files(files, store)
            finally:
                self._run_again(image, temp_dir)
        return root_id, disks

    def _run_again(self, image: str, temp_dir: str) -> None:
        try:
            self.domain.restore_memory(image)
        except AreaError as error:
            kept = os.path.join(temp_dir, f"memory-{self.domain.name}-{uuid.uuid4().hex[:8]}.save")
            os.rename(image, kept)  # the only copy of the guest's running state: never deleted
            raise AreaError(f"{error}; its saved memory is kept in {kept} (virsh restore it)") from None

    def resume(self, store: ChunkStore, memory_root: bytes, disks: list[str], definition: bytes | None, temp_dir: str,
               progress=None) -> RestoreProgress:
        """Put back the disks, the definition and the memory an entry saved: the domain runs on
        from where it was. Only this domain's own disks are ever written."""
        if not self.domain.exists():
            raise AreaError(f"domain {self.domain.name} does not exist: --resume restores into the area's own domain")
        own = self.domain.disk_files()
        if sorted(disks) != sorted(own):
            raise AreaError(f"the entry's memory belongs with disks {', '.join(disks)}, domain {self.domain.name} has "
                            f"{', '.join(own) or 'none'}: vml writes only the domain's own disks")
        if definition is not None:
            refused = self.domain.foreign(definition)
            if refused is not None:
                raise AreaError(f"cannot resume into domain {self.domain.name}: {refused}")
        with tempfile.TemporaryDirectory(dir=temp_dir) as work:
            saved = os.path.join(work, "saved")
            counts = Restore(store, listing_loader(store), progress=progress).run(memory_root, os.fsencode(saved))
            names = os.listdir(saved)
            staged = []
            for number, path in enumerate(disks):  # beside each disk first, so the swap is renames only
                found = [name for name in names if name.startswith(f"disk{number}-")]
                if len(found) != 1:
                    raise CorruptObject(f"the entry's memory tree lacks disk {number} ({path})")
                staging = f"{path}.vml-resume-{uuid.uuid4().hex[:8]}"
                shutil.move(os.path.join(saved, found[0]), staging)
                staged.append((staging, path))
            try:
                if self.domain.state() not in ("shut off", "crashed"):
                    self.domain.stop(force=True)
                for staging, path in staged:
                    os.replace(staging, path)
            finally:
                for staging, _path in staged:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(staging)
            if definition is not None:  # the entry's memory size and vCPUs, which the image needs
                current = self.domain.definition()
                sized = Sizing.of(definition).apply(current)
                if sized != current:
                    self.domain.define(sized)
            self.domain.restore_memory(os.path.join(saved, os.fsdecode(MEMORY_FILE)))
        return counts

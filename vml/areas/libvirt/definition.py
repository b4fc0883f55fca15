"""Domain definitions (libvirt's XML) without libvirt-python: a new VM's, its forwarded SSH port, the sizing an entry carries."""

from __future__ import annotations

import os
import posixpath
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Protocol

from vml.areas.libvirt.host import kvm_usable
from vml.entry import DOMAIN_FILE
from vml.errors import CorruptObject

QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
ElementTree.register_namespace("qemu", QEMU_NAMESPACE)  # definitions written back keep libvirt's prefix
GUEST_SSH_PORT = 22


class DriverConnection(Protocol):
    """What a new definition asks of a connection (driver.connect's libvirt.virConnect)."""

    def getType(self) -> str: ...


def domain_type(connection: DriverConnection) -> str:
    """The domain type to ask for: kvm where /dev/kvm works, else software emulation."""
    driver = connection.getType().lower()
    if driver != "qemu":
        return driver
    return "kvm" if kvm_usable() else "qemu"


def new_domain_xml(connection: DriverConnection | None, name: str, disk: str, *, kind: str | None = None, memory_mib: int = 1024, vcpus: int = 1,
                   console: str | None = None, kernel: str | None = None, initrd: str | None = None,
                   cmdline: str | None = None, ssh_port: int | None = None, uuid_text: str | None = None) -> bytes:
    """A minimal definition booting `disk` (a qcow2 overlay), through its own bootloader or,
    given a kernel, directly (the base image's kernel, initrd and command line). With
    `ssh_port` (QEMU only), the guest has a user-mode network whose port 22 is forwarded
    to 127.0.0.1:ssh_port: no bridge, no root network set-up, reachable from this host only."""
    if kind is None:
        assert connection is not None, "a domain type, or the connection that decides it"
        kind = domain_type(connection)
    domain = ElementTree.Element("domain", type=kind)
    ElementTree.SubElement(domain, "name").text = name
    if uuid_text is not None:
        ElementTree.SubElement(domain, "uuid").text = uuid_text
    ElementTree.SubElement(domain, "memory", unit="KiB").text = str(memory_mib * 1024)
    ElementTree.SubElement(domain, "vcpu").text = str(vcpus)
    # ACPI: 'vml vm stop' (libvirt's shutdown) presses the power button; without it, QEMU
    # runs with -no-acpi and the guest never hears it.
    ElementTree.SubElement(ElementTree.SubElement(domain, "features"), "acpi")
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


DEPLOY_NAMESPACE = "urn:x-vml:deploy:1"  # a deployed domain's <metadata>: which entry and deployment it is


def deployed_domain_xml(name: str, disk: str, *, kind: str, kernel: str | None, initrd: str | None, cmdline: str | None,
                        network: str | None, ssh_port: int | None, sizing: Sizing, entry: str, deployment: str) -> bytes:
    """A domain another host runs of an entry (vml deploy): its own overlay `disk`, booted
    with the kernel and initrd carried beside it (or the disk's bootloader), a serial console
    on a pty ('virsh console'), and vml's note of what it is. Its network: the host's libvirt
    `network`, else user-mode with the guest's sshd on the host's loopback `ssh_port`."""
    domain = ElementTree.fromstring(new_domain_xml(None, name, disk, kind=kind, kernel=kernel, initrd=initrd, cmdline=cmdline,
                                                   ssh_port=None if network else ssh_port))
    devices = domain.find("devices")
    assert devices is not None  # new_domain_xml writes one
    if network:
        interface = ElementTree.SubElement(devices, "interface", type="network")
        ElementTree.SubElement(interface, "source", network=network)
        ElementTree.SubElement(interface, "model", type="virtio")
    ElementTree.SubElement(devices, "serial", type="pty")
    ElementTree.SubElement(devices, "console", type="pty")
    metadata = ElementTree.Element("metadata")
    domain.insert(1, metadata)
    ElementTree.SubElement(metadata, f"{{{DEPLOY_NAMESPACE}}}deployed", entry=entry, deployment=deployment)
    return sizing.apply(ElementTree.tostring(domain))


def deployment_of(xml: bytes) -> tuple[str, str] | None:
    """(entry, deployment) of a domain `deployed_domain_xml` defined; None for any other."""
    for element in ElementTree.fromstring(xml).iter(f"{{{DEPLOY_NAMESPACE}}}deployed"):
        return element.get("entry", ""), element.get("deployment", "")
    return None


def disk_files_in(xml: bytes) -> list[str]:
    """The files a definition's disks are (disks that are block devices or volumes left out)."""
    sources = ElementTree.fromstring(xml).findall("./devices/disk/source")
    return [source.get("file") for source in sources if source.get("file")]


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


@dataclass(frozen=True, slots=True)
class Sizing:
    """The parts of a definition that travel with an entry: a checkout, or a new VM on
    another host, takes these; paths, ports, uuid and devices stay the host's own."""

    memory_kib: int | None
    vcpus: int | None

    @classmethod
    def of(cls, xml: bytes) -> Sizing:
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
    """Whether a saved definition asks for another memory size or vCPU count than `current`,
    or shares other host folders with its guest."""
    try:
        return Sizing.of(saved) != Sizing.of(current) or shared_folders(saved) != shared_folders(current)
    except CorruptObject:
        return True


def shared_folders(xml: bytes) -> list[tuple[str, str, bool]]:
    """The (host, guest path, read-only) of each shared folder vml mounts (tags are the host's numbering)."""
    try:
        return sorted((share.host, share.guest, share.read_only) for share in shares_in(xml) if share.guest is not None)
    except ElementTree.ParseError as error:
        raise CorruptObject(f"a saved domain definition ({DOMAIN_FILE}) is not XML: {error}") from None


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


# -- shared folders: a host directory in the guest, as a 9p filesystem (virtio transport)

VML_NAMESPACE = "urn:x-vml:domain:1"  # where vml keeps, in a definition's <metadata>, what libvirt has no place for
ElementTree.register_namespace("vml", VML_NAMESPACE)
ElementTree.register_namespace("vmldeploy", DEPLOY_NAMESPACE)


@dataclass(frozen=True, slots=True)
class Share:
    host: str  # the host directory
    guest: str | None  # where vml mounts it in the guest; None: a filesystem vml did not add
    tag: str  # the 9p mount tag the guest mounts it by
    read_only: bool


def shares_in(xml: bytes) -> list[Share]:
    """The host directories a definition shares with its guest (<filesystem type='mount'>),
    with the guest path vml mounts each at (from vml's metadata)."""
    definition = ElementTree.fromstring(xml)
    guest_paths = {element.get("tag"): element.get("guest") for element in definition.iter(f"{{{VML_NAMESPACE}}}share")}
    found = []
    for filesystem in definition.findall("./devices/filesystem"):
        source, target = filesystem.find("source"), filesystem.find("target")
        if filesystem.get("type", "mount") != "mount" or source is None or target is None or not source.get("dir"):
            continue
        tag = target.get("dir", "")
        found.append(Share(source.get("dir", ""), guest_paths.get(tag), tag, filesystem.find("readonly") is not None))
    return found


def with_share(xml: bytes, host: str, guest: str, read_only: bool) -> tuple[bytes, Share]:
    """`xml` sharing directory `host` with its guest under a new mount tag (vml0, vml1...),
    noted in vml's metadata as mounted at `guest`."""
    definition = ElementTree.fromstring(xml)
    taken = {share.tag for share in shares_in(xml)}
    share = Share(host, guest, next(f"vml{n}" for n in range(len(taken) + 1) if f"vml{n}" not in taken), read_only)
    devices = definition.find("devices")
    if devices is None:
        devices = ElementTree.SubElement(definition, "devices")
    # passthrough: the guest sees the host's owners and modes (QEMU runs as root here).
    filesystem = ElementTree.SubElement(devices, "filesystem", type="mount", accessmode="passthrough")
    ElementTree.SubElement(filesystem, "source", dir=host)
    ElementTree.SubElement(filesystem, "target", dir=share.tag)
    if read_only:
        ElementTree.SubElement(filesystem, "readonly")
    _vml_shares(definition, create=True).append(ElementTree.Element(f"{{{VML_NAMESPACE}}}share", tag=share.tag, guest=guest))
    return ElementTree.tostring(definition), share


def without_share(xml: bytes, tag: str) -> bytes:
    """`xml` without the shared folder of mount tag `tag`."""
    definition = ElementTree.fromstring(xml)
    devices = definition.find("devices")
    for filesystem in definition.findall("./devices/filesystem"):
        target = filesystem.find("target")
        if devices is not None and target is not None and target.get("dir") == tag:
            devices.remove(filesystem)
    noted = _vml_shares(definition, create=False)
    if noted is not None:
        for element in list(noted):
            if element.get("tag") == tag:
                noted.remove(element)
    return ElementTree.tostring(definition)


def _vml_shares(definition: ElementTree.Element, *, create: bool) -> ElementTree.Element | None:
    metadata = definition.find("metadata")
    if metadata is None:
        if not create:
            return None
        metadata = ElementTree.Element("metadata")
        definition.insert(1, metadata)
    noted = metadata.find(f"{{{VML_NAMESPACE}}}shares")
    if noted is None and create:
        noted = ElementTree.SubElement(metadata, f"{{{VML_NAMESPACE}}}shares")
    return noted


SYSTEM_TREES = ("/proc", "/sys", "/dev", "/run")  # the guest's own: no shared folder in them
SYSTEM_DIRECTORIES = ("/", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/boot", "/var", "/root", "/opt")  # none mounted over


def shareable_guest_path(path: str) -> bool:
    """Whether a shared folder may be mounted at `path` in the guest: absolute, normal, not
    over one of the system's directories and not in its own trees."""
    if not path.startswith("/") or "\0" in path or "\n" in path or posixpath.normpath(path) != path or path in SYSTEM_DIRECTORIES:
        return False
    return not any(path == system or path.startswith(system + "/") for system in SYSTEM_TREES)


def carried_shares(xml: bytes, saved: bytes) -> tuple[bytes, list[Share], list[Share]]:
    """`xml` (a new domain's) with the shared folders an entry's definition `saved` had, each
    whose host directory exists here; (the definition, the shares carried, those left out).
    A share at a guest path no share may have (an entry made to mount over /etc) is left out
    as if its folder were missing."""
    carried, missing = [], []
    for share in shares_in(saved):
        if share.guest is None:
            continue  # a filesystem vml did not add: the host's own business, like its disks
        if os.path.isdir(share.host) and shareable_guest_path(share.guest):
            xml, made = with_share(xml, share.host, share.guest, share.read_only)
            carried.append(made)
        else:
            missing.append(share)
    return xml, carried, missing

"""libvirt-python's one home: connections (and the embedded driver's event loop), Domain with errors a user can act on, VmInfo."""

from __future__ import annotations

import functools
import os
import threading
import uuid
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field

from vml.areas.libvirt.definition import disk_files_in, host_facing
from vml.areas.libvirt.embed import EMBED_QEMU_CONF, embedded_root, wait_for_embedded_driver
from vml.areas.libvirt.host import connect_hint, kvm_usable
from vml.durable import write_atomically
from vml.errors import AreaError


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
_EVENT_LOOP: list[threading.Thread] = []


class NoSuchDomain(AreaError):
    """The domain is not defined at that URI."""


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
    def undefined(cls, domain: Domain) -> VmInfo:
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
        wait_for_embedded_driver(uri, embed_root)
    try:
        connection = libvirt.open(uri)
    except libvirt.libvirtError as error:
        message = error.get_error_message() or str(error)
        if embed_root is not None and "pid file" in message:
            raise AreaError(f"cannot connect to libvirt at {uri}: another program (not vml) uses its embedded driver ({message})") from None
        raise AreaError(f"cannot connect to libvirt at {uri}: {message}{connect_hint(uri)}") from None
    _CONNECTIONS[uri] = connection
    return connection


def _prepare_embedded(root: str) -> None:
    """What the embedded driver needs and a daemon would give: an event loop running in
    this process and a qemu.conf."""
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    conf = os.path.join(root, "etc", "qemu.conf")
    if not os.path.exists(conf) and os.geteuid() == 0:
        write_atomically(conf, EMBED_QEMU_CONF.encode())
    if not _EVENT_LOOP:
        libvirt.virEventRegisterDefaultImpl()

        def run_events() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _EVENT_LOOP.append(threading.Thread(target=run_events, name="libvirt-events", daemon=True))
        _EVENT_LOOP[0].start()


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
            raise NoSuchDomain(f"no domain {self.name!r} at {self.uri} (domains: {known})") from None

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
        disks = disk_files_in(self.definition())
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
    def live_definition(self) -> bytes:
        """The running domain's definition: the devices it has now."""
        return self._lookup().XMLDesc(0).encode()

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


def domains_using(connection: libvirt.virConnect, path: str) -> list[str]:
    """The domains at `connection` with `path` among their disks."""
    real = os.path.realpath(path)
    return [domain.name() for domain in connection.listAllDomains()
            if real in map(os.path.realpath, disk_files_in(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode()))]


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

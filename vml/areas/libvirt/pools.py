"""A libvirt host's storage pool as vml deploys to it: volumes uploaded from files here (and
known complete), overlays on them, their removal. libvirt-python comes through driver.py."""

from __future__ import annotations

import io
import os
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from vml.areas.libvirt.definition import deployment_of
from vml.areas.libvirt.driver import _fail, connect, libvirt
from vml.areas.libvirt.host import kvm_usable
from vml.errors import AreaError, UsageError

DEFAULT_POOL = "vml"
HEAD = 4096  # written last: a volume whose first 4 KiB are all zero is an upload cut short
_CHUNK = 1 << 20

Sent = Callable[[int], None] | None  # hears the bytes sent so far


@dataclass(frozen=True, slots=True)
class Volume:
    name: str
    path: str  # on the host
    bytes: int


class Pool:
    """A directory storage pool on the libvirt host at `uri`: the one named, else vml's
    ('vml'), else the host's 'default'; `directory` makes 'vml' there if it is missing."""

    def __init__(self, uri: str, name: str | None = None, directory: str | None = None):
        self.uri = uri
        self.connection = connect(uri)
        self.pool = self._find(name, directory)
        self.name = self.pool.name()

    def _find(self, name: str | None, directory: str | None) -> libvirt.virStoragePool:
        for candidate in ([name] if name else [DEFAULT_POOL, "default"]):
            try:
                pool = self.connection.storagePoolLookupByName(candidate)
            except libvirt.libvirtError:
                continue
            try:
                if not pool.isActive():
                    pool.create(0)
                pool.refresh(0)
            except libvirt.libvirtError as error:
                raise _fail(f"cannot use storage pool {candidate} of {self.uri}", error, self.uri) from None
            return pool
        if directory is None:
            wanted = f"no storage pool {name!r}" if name else f"neither a storage pool {DEFAULT_POOL!r} nor 'default'"
            raise UsageError(f"{self.uri} has {wanted}: give --pool-dir DIR (a directory on that host) for vml to make "
                             f"pool {name or DEFAULT_POOL} there, or --pool NAME of one it has")
        return self._define(name or DEFAULT_POOL, directory)

    def _define(self, name: str, directory: str) -> libvirt.virStoragePool:
        if not os.path.isabs(directory):
            raise UsageError(f"--pool-dir must be an absolute path on the host, not {directory!r}")
        pool_xml = ElementTree.Element("pool", type="dir")
        ElementTree.SubElement(pool_xml, "name").text = name
        ElementTree.SubElement(ElementTree.SubElement(pool_xml, "target"), "path").text = directory
        try:
            pool = self.connection.storagePoolDefineXML(ElementTree.tostring(pool_xml).decode(), 0)
            pool.build(0)  # makes the directory if it is missing
            pool.create(0)
            pool.setAutostart(1)
        except libvirt.libvirtError as error:
            raise _fail(f"cannot make storage pool {name} at {directory} on {self.uri}", error, self.uri) from None
        return pool

    def _lookup(self, name: str) -> libvirt.virStorageVol | None:
        try:
            return self.pool.storageVolLookupByName(name)
        except libvirt.libvirtError:
            return None

    def volume(self, name: str) -> Volume | None:
        """The volume `name`, if the pool has it whole: an upload cut short is not one."""
        found = self._lookup(name)
        if found is None:
            return None
        try:
            head = self._read_head(found)
            _kind, capacity, _allocation = found.info()
        except libvirt.libvirtError:
            return None
        if not head.strip(b"\0"):
            return None
        return Volume(name, found.path(), capacity)

    def _read_head(self, found: libvirt.virStorageVol) -> bytes:
        stream = self.connection.newStream(0)
        found.download(stream, 0, HEAD, 0)
        data = bytearray()
        while len(data) < HEAD:
            piece = stream.recv(HEAD - len(data))
            if not isinstance(piece, bytes) or not piece:
                break
            data += piece
        stream.finish()
        return bytes(data)

    def upload(self, name: str, path: str, sent: Sent = None) -> Volume:
        """Copy file `path` here into volume `name` (replacing an incomplete one), its first
        4 KiB last, so that `volume` knows a volume cut short from a whole one."""
        with open(path, "rb") as source:
            return self._upload(name, source, os.path.getsize(path), os.path.basename(path), sent)

    def upload_bytes(self, name: str, data: bytes) -> Volume:
        """`upload` of `data`, a small file made here (a marker)."""
        return self._upload(name, io.BytesIO(data), len(data), name, None)

    def _upload(self, name: str, source: BinaryIO, size: int, what: str, sent: Sent) -> Volume:
        head = source.read(HEAD)
        if not head.strip(b"\0"):
            raise AreaError(f"{what} begins with {HEAD} zero bytes: vml cannot tell it whole on a host once uploaded")
        self.delete(name)
        volume_xml = ElementTree.Element("volume")
        ElementTree.SubElement(volume_xml, "name").text = name
        ElementTree.SubElement(volume_xml, "capacity", unit="bytes").text = str(size)
        ElementTree.SubElement(volume_xml, "allocation", unit="bytes").text = "0"
        ElementTree.SubElement(ElementTree.SubElement(volume_xml, "target"), "format", type="raw")
        try:
            made = self.pool.createXML(ElementTree.tostring(volume_xml).decode(), 0)
            done = self._send(made, source, len(head), size, what, sent) if size > len(head) else 0
            self._send(made, source, 0, len(head), what, None)
        except libvirt.libvirtError as error:
            raise _fail(f"cannot upload {what} to pool {self.name} of {self.uri}", error, self.uri) from None
        if sent is not None:
            sent(done + len(head))
        return Volume(name, made.path(), size)

    def _send(self, volume: libvirt.virStorageVol, source: BinaryIO, offset: int, end: int, what: str, sent: Sent) -> int:
        stream = self.connection.newStream(0)
        volume.upload(stream, offset, end - offset, 0)
        source.seek(offset)
        done = 0
        try:
            while offset + done < end:
                data = source.read(min(_CHUNK, end - offset - done))
                if not data:
                    raise AreaError(f"{what} got shorter while it was uploaded")
                done += len(data)
                while data:
                    data = data[stream.send(data):]
                if sent is not None:
                    sent(done)
            stream.finish()
        except BaseException:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            raise
        return done

    def overlay(self, name: str, backing: Volume, backing_format: str = "qcow2") -> Volume:
        """A new qcow2 volume `name` on `backing` (a volume in `backing_format`): a domain's own disk."""
        volume_xml = ElementTree.Element("volume")
        ElementTree.SubElement(volume_xml, "name").text = name
        ElementTree.SubElement(volume_xml, "capacity", unit="bytes").text = "0"  # the backing image's size
        ElementTree.SubElement(ElementTree.SubElement(volume_xml, "target"), "format", type="qcow2")
        backing_store = ElementTree.SubElement(volume_xml, "backingStore")
        ElementTree.SubElement(backing_store, "path").text = backing.path
        ElementTree.SubElement(backing_store, "format", type=backing_format)
        try:
            made = self.pool.createXML(ElementTree.tostring(volume_xml).decode(), 0)
        except libvirt.libvirtError as error:
            raise _fail(f"cannot make disk {name} in pool {self.name} of {self.uri}", error, self.uri) from None
        return Volume(name, made.path(), made.info()[1])

    def delete(self, name: str) -> bool:
        """Delete volume `name`; False if the pool has none of that name."""
        found = self._lookup(name)
        if found is None:
            return False
        try:
            found.delete(0)
        except libvirt.libvirtError as error:
            raise _fail(f"cannot delete volume {name} of pool {self.name} on {self.uri}", error, self.uri) from None
        return True

    def names(self) -> list[str]:
        try:
            return sorted(self.pool.listVolumes())
        except libvirt.libvirtError as error:
            raise _fail(f"cannot list pool {self.name} of {self.uri}", error, self.uri) from None


def delete_volume_at(uri: str, path: str) -> bool:
    """Delete the volume whose file on the host is `path`; False if no pool has it."""
    try:
        found = connect(uri).storageVolLookupByPath(path)
    except libvirt.libvirtError:
        return False
    try:
        found.delete(0)
    except libvirt.libvirtError as error:
        raise _fail(f"cannot delete volume {path} on {uri}", error, uri) from None
    return True


def offers_kvm(uri: str) -> bool:
    """Whether the host at `uri` gives its x86_64 guests KVM: its capabilities say so, and for
    this machine's own libvirt, the CPU has the extensions (a nested /dev/kvm without them
    runs guests slower than software emulation; see host.kvm_usable)."""
    if not urllib.parse.urlsplit(uri).hostname and not kvm_usable():
        return False
    capabilities = ElementTree.fromstring(connect(uri).getCapabilities())
    return any(domain.get("type") == "kvm" for domain in capabilities.findall("./guest/arch/domain"))


def domain_names(uri: str) -> list[str]:
    try:
        return [domain.name() for domain in connect(uri).listAllDomains()]
    except libvirt.libvirtError as error:
        raise _fail(f"cannot list the domains of {uri}", error, uri) from None


def deployed_entries(uri: str) -> set[str]:
    """The entries whose domains vml deployed on `uri` are defined there."""
    try:
        definitions = [domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode() for domain in connect(uri).listAllDomains()]
    except libvirt.libvirtError as error:
        raise _fail(f"cannot list the domains of {uri}", error, uri) from None
    return {found[0] for found in map(deployment_of, definitions) if found is not None}

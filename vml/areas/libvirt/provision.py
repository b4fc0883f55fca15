"""Making and deleting the libvirt domain of an area (loaded through kinds.provisioning()): its settings,
a domain defined on an overlay of a base image (written out of the store once), and its removal."""

from __future__ import annotations

import contextlib
import os
import shutil
import time

from vml import durable
from vml.areas.kinds import LIBVIRT
from vml.areas.libvirt.definition import Sizing, forwarded_port, new_domain_xml
from vml.areas.libvirt.driver import Domain, NoSuchDomain, domains_using, unused_uuid
from vml.areas.libvirt.host import free_port, make_overlay
from vml.areas.restore import Restore
from vml.config import AreaConfig
from vml.entry import base_entry, entry_root
from vml.errors import CorruptObject, UsageError
from vml.objects.walk import listing_loader
from vml.refs.bases import BaseName
from vml.repo import Repository


def define_vm(repo: Repository, name: str, domain: Domain, base: BaseName, settings: dict[str, str], *,
              saved_definition: bytes | None = None) -> dict[str, str]:
    """Define the area's domain on a new overlay of `base`'s image, sized as
    `saved_definition` (an entry's) if given, with a newly forwarded SSH port when vml
    reaches the guest that way. Returns the settings that changed (the port)."""
    sizing = Sizing.of(saved_definition) if saved_definition else Sizing(None, None)
    image, boot = base_image(repo, base)
    state_dir = repo.area_state_dir(name)
    os.makedirs(state_dir, exist_ok=True)
    overlay = os.path.join(state_dir, "disk.qcow2")
    if os.path.exists(overlay):  # left by an area of this name that was removed: never lost
        using = domains_using(domain.connection, overlay)
        if using:
            raise UsageError(f"{overlay} is the disk of domain {', '.join(using)} (kept when area {name} was removed): "
                             f"delete that domain, or use another area name")
        durable.rename(overlay, os.path.join(state_dir, f"disk-before-{time.strftime('%Y%m%dT%H%M%S')}.qcow2"))
    make_overlay(image, overlay)
    changed = {}
    port = None
    if settings.get("knownhosts"):
        port = free_port()
        changed["port"] = str(port)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(settings["knownhosts"])  # a new guest: its key is learnt at the first login
    xml = new_domain_xml(domain.connection, domain.name, overlay, console=os.path.join(state_dir, "console.log"),
                         ssh_port=port, uuid_text=unused_uuid(domain.connection, saved_definition), **boot)
    domain.define(sizing.apply(xml))
    settings.update(changed)
    return changed


def base_image(repo: Repository, base: BaseName) -> tuple[str, dict[str, str]]:
    """The path of a base's image file, written out of the store once and kept read-only,
    and its boot settings (kernel and initrd paths beside it, cmdline), if it has them."""
    entry, info = base_entry(repo.git, base)
    if info.image is None:
        raise UsageError(f"base {base} is a file tree, not a disk image: a domain needs a base added with --image")
    names = [info.image] + [info.boot[k] for k in ("kernel", "initrd") if info.boot and info.boot.get(k)]
    for file_name in names:
        if file_name in ("", ".", "..") or "/" in file_name or "\0" in file_name:
            raise CorruptObject(f"base {base} names a file {file_name!r}, which is not a file name")
    directory = os.path.join(repo.vml_dir, "images", base.name, base.version)
    path = os.path.join(directory, info.image)
    if not os.path.exists(path):
        temp = directory + ".tmp"
        shutil.rmtree(temp, ignore_errors=True)
        Restore(repo.store, listing_loader(repo.store)).run(entry_root(repo.git, entry), os.fsencode(temp))
        for file_name in names:
            os.chmod(os.path.join(temp, file_name), 0o444)
        os.makedirs(os.path.dirname(directory), exist_ok=True)
        durable.fsync_tree(temp)
        durable.rename(temp, directory)
    boot = {k: os.path.join(directory, v) for k, v in (info.boot or {}).items() if k in ("kernel", "initrd") and v}
    if info.boot and info.boot.get("cmdline"):
        boot["cmdline"] = info.boot["cmdline"]
    return path, boot


def delete_vm(repo: Repository, config: AreaConfig, domain) -> list[str]:
    with repo.area_lock(config.name):
        state_dir = os.path.realpath(repo.area_state_dir(config.name))
        if domain.exists():
            disks = domain.delete()
            deleted = [f"domain {domain.name} at {domain.uri}"]
        else:  # a delete cut short after the undefine: finish it
            disks, deleted = [os.path.join(state_dir, "disk.qcow2")], []
        for disk in disks:  # only the overlays vml made; a domain's own disks elsewhere stay
            if os.path.dirname(os.path.realpath(disk)) == state_dir and os.path.exists(disk):
                os.unlink(disk)
                deleted.append(disk)
        if not deleted:
            raise UsageError(f"domain {domain.name} does not exist at {domain.uri}: there is nothing to delete")
        for file_name in ("statcache", "known_hosts"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(state_dir, file_name))
    return deleted


def vm_area_config(repo: Repository, name: str, uri: str, domain_name: str | None, *, ssh: dict[str, str] | None,
                   base: BaseName | None, root: str, identity: str | None) -> AreaConfig:
    """The settings of a libvirt area: a domain that exists (`domain_name`), a new one
    defined now on an overlay of `base`'s image, or none yet ('vml checkout ENTRY --new-vm'
    makes it from an entry). `ssh`: how its guest's files are reached, if given."""
    domain = Domain(uri, domain_name or f"vml-{name}")
    settings = {"uri": uri, "domain": domain.name}
    if ssh:
        settings.update(ssh)
    if base is None and domain_name is not None:
        try:
            domain.info()  # it must exist
        except NoSuchDomain as error:
            raise UsageError(str(error)) from None  # a name given now, not a guest that went away
        if not ssh:
            settings.update(_forwarded_ssh_settings(repo, name, domain, root=root, identity=identity, existing=True))
        return AreaConfig(name, LIBVIRT, f"{uri}#{domain.name}", settings)
    if domain.exists():
        raise UsageError(f"a domain named {domain.name!r} exists already at {uri}: give another --domain NAME")
    settings["owned"] = "true"  # vml defines it (now from --base, or later with checkout --new-vm) and may delete it
    if not ssh:
        settings.update(_forwarded_ssh_settings(repo, name, domain, root=root, identity=identity, existing=False))
        if base is None and "host" not in settings:
            raise UsageError(f"an area whose domain 'checkout --new-vm' makes later needs a way to its guest: --ssh, "
                             f"or a QEMU driver, whose domains vml reaches through a forwarded port ({uri} is not QEMU)")
    if base is not None:
        define_vm(repo, name, domain, base, settings)
    return AreaConfig(name, LIBVIRT, f"{uri}#{domain.name}", settings)


def _forwarded_ssh_settings(repo: Repository, name: str, domain: Domain, *, root: str, identity: str | None, existing: bool) -> dict[str, str]:
    """How vml reaches the guest of a VM it defines: root@127.0.0.1 on a forwarded port
    (chosen when the VM is defined), with the area's own known_hosts."""
    if domain.connection.getType() != "QEMU":
        return {}
    if existing:
        port = forwarded_port(domain.definition())
        if port is None:
            return {}  # someone else's domain: its files need --ssh
    settings = {"host": "127.0.0.1", "user": "root", "root": root,
                "knownhosts": os.path.join(repo.area_state_dir(name), "known_hosts"),
                "console": os.path.join(repo.area_state_dir(name), "console.log")}
    if existing:
        settings["port"] = str(port)
    if identity:
        settings["identity"] = identity
    return settings

"""The kinds of working area, and opening the right one for an area's configuration: the
one place that switches on an area's kind (the porcelain asks `is_vm`, never the kind)."""

from __future__ import annotations

import os
from types import ModuleType
from typing import TYPE_CHECKING, cast

from vml.areas.directory import DirectoryArea
from vml.areas.protocol import AreaConfig, Domain, VmArea, WorkingArea
from vml.areas.rules import Rules, everything, guest_rules
from vml.errors import AreaError, UsageError

if TYPE_CHECKING:
    from vml.areas.ssh import SshTarget

DIR, SSH, LIBVIRT = "dir", "ssh", "libvirt"
KINDS = (DIR, SSH, LIBVIRT)


def default_rules(kind: str) -> Rules:
    """What an area of `kind` keeps unless told otherwise: a directory all of it, a guest
    (over ssh, in a domain) what a user changes."""
    return everything() if kind == DIR else guest_rules()


def is_vm(config: AreaConfig) -> bool:
    """Whether the area is a virtual machine vml can start, stop, save and resume (libvirt)."""
    return config.kind == LIBVIRT


def as_vm(working_area: WorkingArea) -> VmArea:
    """The area as the virtual machine it is; callers have checked `is_vm` (or refused)."""
    if not is_vm(working_area.config):
        raise UsageError(f"area {working_area.config.name} is a {working_area.config.kind} area, not a virtual machine")
    return cast(VmArea, working_area)


def open_domain(config: AreaConfig) -> Domain:
    """The libvirt domain of a VM area, without opening its files."""
    return libvirt_module().Domain(config.settings["uri"], config.settings["domain"])  # type: ignore[no-any-return]


def undefined_vm_info(domain: Domain) -> object:
    """What `vm info` says of a domain that is not (or no longer) defined."""
    return libvirt_module().VmInfo.undefined(domain)


def definitions_differ(old: bytes, new: bytes) -> bool:
    """Domain definitions compare by what travels between hosts (memory, vCPUs), not by
    the paths and ports each host gives its own copy; without libvirt-python, any
    difference counts."""
    try:
        return bool(libvirt_module().definitions_differ(old, new))
    except AreaError:
        return old != new


def open_area(config: AreaConfig, rules: Rules, *, accept_new_host_key: bool = False) -> WorkingArea:
    if config.kind == DIR:
        return DirectoryArea(config, rules)
    if config.kind == SSH:
        from vml.areas.ssh import SshArea  # paramiko is loaded only for guests

        return SshArea(config, ssh_target(config), rules, accept_new_host_key=accept_new_host_key)
    if config.kind == LIBVIRT:
        from vml.areas.ssh import SshArea

        files = None
        if "host" in config.settings:
            # A VM vml defined keeps its guest's host key in the area's own known_hosts file,
            # learnt at the first login after the VM was made (its port is new each time).
            own_keys = config.settings.get("knownhosts")
            first_login = own_keys is not None and not os.path.exists(own_keys)
            files = SshArea(config, ssh_target(config), rules, accept_new_host_key=accept_new_host_key or first_login)
        return libvirt_module().LibvirtArea(config, rules, files)
    raise UsageError(f"area {config.name}: unknown kind {config.kind!r} (this vml knows {', '.join(KINDS)})")


def libvirt_module() -> ModuleType:
    """vml.areas.libvirt, loaded only for domains: libvirt-python is an optional extra."""
    try:
        from vml.areas import libvirt
    except ImportError as error:
        raise AreaError(f"libvirt areas need libvirt-python ({error}): pip install 'vml[libvirt]' "
                        f"(./scripts/setup installs it with libvirt-dev)") from None
    return libvirt


def provisioning() -> ModuleType:
    """vml.areas.libvirt.provision: making and deleting an area's domain (libvirt-python is
    loaded only for domains)."""
    libvirt_module()
    from vml.areas.libvirt import provision

    return provision


def ssh_target(config: AreaConfig) -> SshTarget:
    from vml.areas.ssh import SshTarget

    settings = config.settings
    if "host" not in settings:
        raise UsageError(f"area {config.name}: no ssh host configured (vml area add NAME --ssh user@host)")
    return SshTarget(
        settings["host"],
        int(settings["port"]) if settings.get("port") else None,
        settings.get("user") or None,
        settings.get("identity") or None,
        settings.get("root", "/"),
        settings.get("knownhosts") or None,
    )

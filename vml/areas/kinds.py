"""The kinds of working area, and opening the right one for an area's configuration."""

from __future__ import annotations

import os

from vml.areas.base import AreaConfig, WorkingArea
from vml.areas.directory import DirectoryArea
from vml.areas.rules import Rules
from vml.errors import AreaError, UsageError

KINDS = ("dir", "ssh", "libvirt")


def open_area(config: AreaConfig, rules: Rules, *, accept_new_host_key: bool = False) -> WorkingArea:
    if config.kind == "dir":
        return DirectoryArea(config, rules)
    if config.kind == "ssh":
        from vml.areas.ssh import SshArea  # paramiko is loaded only for guests

        return SshArea(config, ssh_target(config), rules, accept_new_host_key=accept_new_host_key)
    if config.kind == "libvirt":
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


def libvirt_module():
    """vml.areas.libvirt, loaded only for domains: libvirt-python is an optional extra."""
    try:
        from vml.areas import libvirt
    except ImportError as error:
        raise AreaError(f"libvirt areas need libvirt-python ({error}): pip install 'vml[libvirt]' "
                        f"(./scripts/setup installs it with libvirt-dev)") from None
    return libvirt


def ssh_target(config: AreaConfig):
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

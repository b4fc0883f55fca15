"""qemu:///embed outside libvirt-python: a URI's root=DIR, the qemu.conf vml gives it, the lock vml processes queue on."""

from __future__ import annotations

import fcntl
import os
import time
import urllib.parse

from vml.areas.libvirt.host import seconds_from_environment
from vml.errors import AreaError, UsageError

_EMBEDDED_LOCKS: dict[str, int] = {}  # root -> descriptor of its vml.lock, held for the process's life

# qemu:///embed runs QEMU as this process's user when its qemu.conf says so (as root, the
# driver would otherwise switch to a libvirt-qemu user, who cannot read a repository's files).
# remember_owner and dynamic_ownership off: libvirt neither chowns vml's images and kernels
# nor writes its trusted.libvirt.security xattrs onto them.
EMBED_QEMU_CONF = 'user = "root"\ngroup = "root"\nstdio_handler = "file"\nremember_owner = 0\ndynamic_ownership = 0\n'


def embedded_root(uri: str) -> str | None:
    """The directory of a qemu:///embed?root=DIR URI (libvirt's QEMU driver inside this
    process: no daemon; its domains and their QEMU processes outlive the process)."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "qemu" or parsed.path != "/embed":
        return None
    roots = urllib.parse.parse_qs(parsed.query).get("root")
    if not roots or not os.path.isabs(roots[0]):
        raise UsageError(f"{uri}: qemu:///embed needs root=DIR, an absolute path (qemu:///embed?root=/var/lib/vml-vms)")
    return roots[0]


def wait_for_embedded_driver(uri: str, root: str) -> None:
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

"""A second libvirt host on this machine for the tests of vml deploy: a libvirtd of its own,
run by the unprivileged account vml-host (scripts/setup makes it), reached over a real sshd
on 127.0.0.1 as qemu+ssh://vml-host@testhost/session, as a remote host is.

Everything of it lives in one temp directory; libvirtd and sshd run under `timeout`, so they
stop by themselves even if the test run is killed. Also: a tiny multiboot kernel, which QEMU
boots (it halts) where a real guest's kernel would cost a minute of emulation.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from support.sshd import SshServer, running_sshd

USER = "vml-host"
LIFETIME = "1800"  # seconds: libvirtd's own deadline


@dataclass
class LibvirtHost:
    uri: str
    root: Path  # the host's files: its pools go under root / "pools"
    ssh: SshServer

    def connection(self):
        import libvirt

        return libvirt.open(self.uri)


def multiboot_kernel() -> bytes:
    """A multiboot (flat binary) kernel: disable interrupts and halt, for ever."""
    magic, flags, load = 0x1BADB002, 0x00010000, 0x100000  # flags: the load addresses below are valid
    header = struct.pack("<8I", magic, flags, -(magic + flags) & 0xFFFFFFFF, load, load, 0, 0, load + 32)
    return header + bytes([0xFA, 0xF4, 0xEB, 0xFD]) + b"\0" * 8160  # cli; hlt; jmp hlt


@contextlib.contextmanager
def second_libvirt_host():
    try:
        account = pwd.getpwnam(USER)
    except KeyError:
        raise RuntimeError(f"user {USER} is missing: run ./scripts/setup (it makes it)") from None
    root = Path(tempfile.mkdtemp(prefix="vml-host-"))
    root.chmod(0o755)  # sshd reads the authorized keys as vml-host
    home = root / "home"
    xdg = {name: home / sub for name, sub in (("XDG_RUNTIME_DIR", "run"), ("XDG_CONFIG_HOME", "config"),
                                               ("XDG_CACHE_HOME", "cache"), ("XDG_DATA_HOME", "data"))}
    for path in [home, root / "pools", *xdg.values()]:
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, account.pw_uid, account.pw_gid)
    (home / "run").chmod(0o700)
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home), **{k: str(v) for k, v in xdg.items()}}
    log = open(root / "libvirtd.log", "wb")
    daemon = subprocess.Popen([shutil.which("timeout") or "timeout", LIFETIME, "/usr/sbin/libvirtd"], user=USER, group=account.pw_gid,
                              env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=home)
    socket = xdg["XDG_RUNTIME_DIR"] / "libvirt" / "libvirt-sock"
    deadline = time.monotonic() + 30
    while not socket.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            raise RuntimeError(f"libvirtd did not start: {(root / 'libvirtd.log').read_text()}")
        time.sleep(0.1)
    set_env = " ".join(f"{k}={v}" for k, v in xdg.items())
    try:
        with running_sshd(root / "sshd", f"SetEnv {set_env}\n") as server:
            wrapper = root / "ssh"
            wrapper.write_text(f"#!/bin/sh\nexec ssh -F {server.home / '.ssh' / 'config'} \"$@\"\n")
            wrapper.chmod(0o755)
            yield LibvirtHost(f"qemu+ssh://{USER}@testhost/session?command={wrapper}", root, server)
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
        # what its domains left running (a test that failed half way): QEMU outlives libvirtd
        subprocess.run(["pkill", "-u", USER, "-f", str(root)], check=False)
        log.close()
        shutil.rmtree(root, ignore_errors=True)

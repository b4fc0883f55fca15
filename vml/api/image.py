"""vml image build: a bootable disk image from an entry's full root tree (seed 002's P2V: a
physical machine captured over --ssh, made into a VM).

The entry's files are written out (as root: owners kept), the mount points a running
system needs and an entry never holds (proc, sys, dev, run, tmp...) are made, /etc/fstab
mounts the disk as / (the machine's own, naming its disks, is kept beside as
fstab.vml-original), and mkfs.ext4 -d makes the file system image from the tree, in qcow2
(qemu-img) unless asked for raw. The image has no bootloader: it boots with the kernel and
initrd of the tree's /boot (or the ones named), written beside it, directly (libvirt
<kernel>, QEMU -kernel); `--base NAME:VERSION` stores the three as a base, which `vml area
add --libvirt URI --base NAME:VERSION` boots.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from vml.api._common import Progress, entry_info, resolve_entry
from vml.api.bases import BaseInfo, BootFiles, base_add
from vml.areas.restore import Restore
from vml.entry import entry_root
from vml.errors import AreaError, UsageError
from vml.objects.manifest import KIND_DIR, KIND_FILE, Listing
from vml.objects.walk import listing_loader, node_at
from vml.repo import Repository

Loader = Callable[..., Listing]

DEFAULT_CMDLINE = "root=/dev/vda rw console=ttyS0"
# Directories a running Linux system mounts over or writes to, which no entry holds (a
# guest's rules leave them out): made empty, with their usual modes.
MOUNT_POINTS = (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755), ("tmp", 0o1777), ("var/tmp", 0o1777),
                ("var/cache", 0o755), ("mnt", 0o755))
ROOT_MARKS = (b"etc", b"usr")  # a full root tree has both
_KERNEL = re.compile(rb"^(vmlinuz|vmlinux|kernel)-(.+)$")


@dataclass(frozen=True, slots=True)
class ImageResult:
    entry: str
    path: str
    format: str
    bytes: int  # the image file's size on disk
    kernel: str  # the file written beside the image
    initrd: str | None
    cmdline: str
    files: int
    seconds: float
    base: BaseInfo | None = None


def image_build(repo: Repository, spec: str, output: str, *, kernel: str | None = None, initrd: str | None = None,
                cmdline: str | None = None, raw: bool = False, base: str | None = None, area: str | None = None,
                progress: Progress = None) -> ImageResult:
    """A bootable disk image of entry `spec`'s root tree at `output`, its kernel and initrd
    beside it (OUTPUT-STEM.vmlinuz, .initrd.img); with `base` (NAME:VERSION) stored as a
    base image too."""
    started = time.monotonic()
    for program, package in (("mkfs.ext4", "e2fsprogs"), ("qemu-img", "qemu-utils")):
        if shutil.which(program) is None:
            raise AreaError(f"{program} is missing: install {package} (./scripts/setup does)")
    if os.geteuid() != 0:
        raise UsageError("vml image build writes the entry's files with their owners: run it as root")
    target = os.path.abspath(output)
    if os.path.lexists(target):
        raise UsageError(f"{output} exists: name a new file")
    if not os.path.isdir(os.path.dirname(target)):
        raise UsageError(f"{os.path.dirname(target)} is not a directory")
    base_parts = base.rpartition(":") if base is not None else None
    if base_parts is not None and not base_parts[1]:
        raise UsageError(f"give the base as NAME:VERSION, not {base!r}")
    entry_id = resolve_entry(repo, spec, area)
    info = entry_info(repo, entry_id)
    root_id = entry_root(repo.git, entry_id)
    load = listing_loader(repo.store)
    if not all((found := node_at(load, root_id, mark)) is not None and found.kind == KIND_DIR for mark in ROOT_MARKS):
        raise UsageError(f"entry {entry_id[:12]} holds no full root tree (no /etc and /usr): capture the machine's whole root "
                         f"(vml area add NAME --ssh root@HOST --include /) first")
    kernel_path, initrd_path = _boot_files(load, root_id, kernel, initrd)
    stem = target[: -len(".qcow2")] if target.endswith(".qcow2") else os.path.splitext(target)[0]
    kernel_out, initrd_out = stem + ".vmlinuz", (stem + ".initrd.img") if initrd_path else None
    for path in (kernel_out, initrd_out):
        if path and os.path.lexists(path):
            raise UsageError(f"{path} exists: the kernel and initrd go beside the image; name another image")
    work = tempfile.mkdtemp(prefix="image-", dir=repo.temp_dir())
    made: list[str] = []
    try:
        tree = os.path.join(work, "root")
        counts = Restore(repo.store, load, progress=progress).run(root_id, os.fsencode(tree))
        _as_a_system(tree)
        for inside, outside in ((kernel_path, kernel_out), (initrd_path, initrd_out)):
            if inside is not None and outside is not None:
                shutil.copyfile(os.path.join(tree, os.fsdecode(inside)), outside)
                made.append(outside)
        made.append(target)
        raw_image = target if raw else os.path.join(work, "disk.raw")
        _make_filesystem(tree, raw_image, info.logical_bytes, counts.nodes)
        if not raw:
            _run(["qemu-img", "convert", "-O", "qcow2", raw_image, target], "convert the image to qcow2")
    except BaseException:
        for path in made:  # nothing half made is left beside the output
            if os.path.exists(path):
                os.unlink(path)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    line = cmdline or DEFAULT_CMDLINE
    stored = None
    if base_parts is not None:
        stored = base_add(repo, base_parts[0], base_parts[2], image=target, boot=BootFiles(kernel_out, initrd_out, line))
    return ImageResult(entry_id, target, "raw" if raw else "qcow2", os.path.getsize(target), kernel_out, initrd_out, line,
                       info.files, round(time.monotonic() - started, 1), stored)


def _boot_files(load: Loader, root_id: bytes, kernel: str | None, initrd: str | None) -> tuple[bytes, bytes | None]:
    """The tree's kernel and initrd (relative paths): those named, else /boot's newest
    vmlinuz-VERSION and the initrd of the same version (Debian's initrd.img-VERSION,
    Red Hat's initramfs-VERSION.img)."""
    if kernel is not None:
        return _file_in(load, root_id, kernel) or _missing(kernel), (_file_in(load, root_id, initrd) or _missing(initrd)) if initrd else None
    boot = node_at(load, root_id, b"boot")
    names = [node.name for node in load(boot.tree).nodes if node.kind == KIND_FILE] if boot is not None and boot.kind == KIND_DIR and boot.tree else []
    kernels = sorted((match.group(2), name) for name in names if (match := _KERNEL.match(name)))
    if not kernels:
        raise UsageError("the entry has no kernel in /boot (vmlinuz-VERSION): name one with --kernel PATH (a path in the entry)")
    version, name = max(kernels, key=lambda item: _version_key(item[0]))
    for candidate in (b"initrd.img-" + version, b"initramfs-" + version + b".img", b"initrd-" + version):
        if candidate in names:
            return b"boot/" + name, b"boot/" + candidate
    return b"boot/" + name, (_file_in(load, root_id, initrd) or _missing(initrd)) if initrd else None


def _missing(path: str) -> NoReturn:
    raise UsageError(f"the entry has no file {path} to boot with")


def _file_in(load: Loader, root_id: bytes, path: str) -> bytes | None:
    relative = os.fsencode(path.strip("/"))
    node = node_at(load, root_id, relative)
    return relative if node is not None and node.kind == KIND_FILE else None


def _version_key(version: bytes) -> list[int | bytes]:
    return [int(part) if part.isdigit() else part for part in re.split(rb"(\d+)", version)]


def _through_directories(tree: str, relative: str) -> bool:
    """Whether every directory on the way to `relative` is a directory of the tree, not a
    symlink (an entry's /var -> / would have the host's own /var changed)."""
    path = tree
    for part in relative.split("/")[:-1]:
        path = os.path.join(path, part)
        if os.path.islink(path) or not os.path.isdir(path):
            return False
    return True


def _as_a_system(tree: str) -> None:
    """The mount points a booting system needs, and an fstab that mounts this disk as /;
    nothing is made or changed through a symlink of the entry's."""
    for relative, mode in MOUNT_POINTS:
        path = os.path.join(tree, relative)
        if not os.path.lexists(path) and _through_directories(tree, relative):
            os.mkdir(path)
            os.chmod(path, mode)
    if not _through_directories(tree, "etc/fstab"):
        raise UsageError("the entry's /etc is not a directory (a symlink?): it is not a root tree an image can boot")
    fstab = os.path.join(tree, "etc", "fstab")
    wanted = "# written by vml image build: this VM's disk is /dev/vda (the machine's own: fstab.vml-original)\n/dev/vda / ext4 defaults 0 1\n"
    if os.path.islink(fstab):
        os.unlink(fstab)
    elif os.path.exists(fstab):
        with open(fstab) as current:
            if current.read() != wanted:
                os.replace(fstab, fstab + ".vml-original")
    with open(fstab, "w") as written:
        written.write(wanted)


def _make_filesystem(tree: str, image: str, logical_bytes: int, nodes: int) -> None:
    """An ext4 image of `tree`: room for its files and a quarter more (at least 256 MiB
    free), and inodes for its nodes and as many again."""
    size_mib = (logical_bytes * 5 // 4 >> 20) + 256 + nodes * 4 // 1024
    _run(["mkfs.ext4", "-q", "-F", "-L", "vml-root", "-N", str(nodes * 2 + 16384), "-d", tree, image, f"{size_mib}M"],
         "make the file system")


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise AreaError(f"cannot {what}: {argv[0]}: {last[0]}")

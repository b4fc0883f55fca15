"""Fidelity: every file type and attribute survives commit then checkout, exactly.

Runs as root on ext4: chown, mknod, security.capability and POSIX ACLs are all real.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from support.treecompare import compare, compare_snapshots, snapshot

MiB = 1024 * 1024
SPARSE_SIZE = 64 * MiB

# A v2 file capability (magic 0x02000000, permitted bit 13); the kernel stores it as given.
CAPABILITY = bytes.fromhex("0000000200200000000000000000000000000000")
# And one with cap_net_bind_service (bit 10) permitted and effective (magic | 1).
CAP_NET_BIND = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)

ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF


def acl_blob(entries: list[tuple[int, int, int]]) -> bytes:
    """The kernel's posix_acl_xattr format: le32 version 2, then (le16 tag, le16 perm, le32 id)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, ident) for tag, perm, ident in entries)


ACCESS_ACL = acl_blob(
    [
        (ACL_USER_OBJ, 6, ACL_UNDEFINED_ID),
        (ACL_USER, 4, 1000),
        (ACL_GROUP_OBJ, 4, ACL_UNDEFINED_ID),
        (ACL_GROUP, 6, 2000),
        (ACL_MASK, 6, ACL_UNDEFINED_ID),
        (ACL_OTHER, 4, ACL_UNDEFINED_ID),
    ]
)
DEFAULT_ACL = acl_blob(
    [
        (ACL_USER_OBJ, 7, ACL_UNDEFINED_ID),
        (ACL_USER, 5, 1000),
        (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID),
        (ACL_MASK, 5, ACL_UNDEFINED_ID),
        (ACL_OTHER, 0, ACL_UNDEFINED_ID),
    ]
)

ODD_NS = 1234567890123456789
LONG_NAME = b"L" * 251 + b".txt"
assert len(LONG_NAME) == 255

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, capabilities)")


def _p(root: Path, rel: bytes) -> bytes:
    return os.path.join(os.fsencode(root), rel)


def build_everything(root: Path) -> None:
    """A tree with every file type vml keeps and every attribute it must keep exactly."""
    r = os.fsencode(root)

    def path(rel: bytes) -> bytes:
        return os.path.join(r, rel)

    def write(rel: bytes, data: bytes) -> None:
        with open(path(rel), "wb") as f:
            f.write(data)

    for d in (b"dirs", b"dirs/empty", b"dirs/setgid", b"dirs/sticky", b"links", b"links/a", b"links/b",
              b"links/b/c", b"special", b"names", b".git", b".git/objects", b"attrs", b"owned", b"aclc"):
        os.makedirs(path(d), exist_ok=True)
    # plain and odd files
    write(b"empty", b"")
    write(b"plain.txt", b"hello\n")
    write(b"binary.bin", bytes(range(256)) * 1000)
    write(b"setuid", b"#!/bin/sh\necho hi\n")
    write(b"dirs/setgid/inside", b"in setgid\n")
    write(b"dirs/sticky/inside", b"in sticky\n")
    write(b".git/HEAD", b"ref: refs/heads/main\n")
    write(b".git/config", b"[core]\n\tbare = false\n")
    write(b".git/objects/ab", b"\x78\x01object")
    # names
    write(b"names/\xff\xfe", b"not utf-8\n")
    write(b"names/caf\xc3\xa9", b"utf-8 name\n")
    write(b"names/new\nline", b"newline in name\n")
    write(b"names/" + LONG_NAME, b"long name\n")
    write(b"names/ space and tab\t", b"spaces\n")
    os.mkdir(path(b"names/\xfe\xfd-dir"))
    write(b"names/\xfe\xfd-dir/x", b"inside undecodable dir\n")
    # symlinks
    os.symlink(b"/etc/passwd", path(b"abs-link"))
    os.symlink(b"plain.txt", path(b"rel-link"))
    os.symlink(b"../nowhere/at/all", path(b"dangling-link"))
    os.symlink(b"dirs", path(b"dir-link"))
    os.symlink(b"\xff\xfe", path(b"names/link-to-undecodable"))
    # hardlinks: three links across directories, and two links in one
    write(b"links/a/three", b"three links to one inode\n" * 100)
    os.link(path(b"links/a/three"), path(b"links/b/three-2"))
    os.link(path(b"links/a/three"), path(b"links/b/c/three-3"))
    write(b"links/two-1", b"two links\n")
    os.link(path(b"links/two-1"), path(b"links/two-2"))
    # special files
    os.mkfifo(path(b"special/fifo"), 0o640)
    os.mknod(path(b"special/null"), stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(path(b"special/loop"), stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mknod(path(b"special/bigdev"), stat.S_IFBLK | 0o600, os.makedev(259, 65537))
    # hardlinks of every other kind Linux allows: a FIFO, devices and a symlink, each two names of one inode
    os.link(path(b"special/fifo"), path(b"special/fifo-2"))
    os.link(path(b"special/null"), path(b"links/null-2"))
    os.link(path(b"special/loop"), path(b"special/loop-2"))
    os.link(path(b"rel-link"), path(b"links/rel-link-2"), follow_symlinks=False)
    # sparse file: 64 MiB with a few bytes at 0, 10 MiB and the end
    fd = os.open(path(b"sparse.img"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, SPARSE_SIZE)
        os.pwrite(fd, b"START", 0)
        os.pwrite(fd, b"MIDDLE", 10 * MiB)
        os.pwrite(fd, b"END", SPARSE_SIZE - 3)
    finally:
        os.close(fd)
    # a file large enough to span several chunks
    write(b"big.bin", os.urandom(3 * MiB) + b"\0" * MiB + os.urandom(MiB // 3))
    # a socket: must be skipped, and reported
    here = os.getcwd()
    os.chdir(path(b"special"))
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("sock")
        sock.close()
    finally:
        os.chdir(here)
    assert stat.S_ISSOCK(os.lstat(path(b"special/sock")).st_mode)

    # owners (before capabilities: chown clears security.capability)
    os.chown(path(b"owned"), 1234, 5678)
    write(b"owned/file", b"owned by 1234:5678\n")
    os.chown(path(b"owned/file"), 1234, 5678)
    os.symlink(b"file", path(b"owned/link"))
    os.chown(path(b"owned/link"), 1234, 5678, follow_symlinks=False)
    os.chown(path(b"special/fifo"), 1234, 5678)
    os.chown(path(b"links/a/three"), 4321, 8765)
    write(b"owned/nobody", b"owned by a user and group with names\n")
    os.chown(path(b"owned/nobody"), 65534, 65534)  # nobody:nogroup on Debian
    # modes
    os.chmod(path(b"setuid"), 0o4755)
    os.chmod(path(b"dirs/setgid"), 0o2755)
    os.chmod(path(b"dirs/sticky"), 0o1777)
    os.chmod(path(b"plain.txt"), 0o600)
    os.chmod(path(b"owned/file"), 0o6750)
    os.chmod(path(b"dirs/empty"), 0o500)
    # xattrs: user.* text and binary, capabilities, ACLs
    write(b"attrs/user", b"has user xattrs\n")
    os.setxattr(path(b"attrs/user"), "user.text", b"some value")
    os.setxattr(path(b"attrs/user"), "user.binary", bytes(range(256)))
    os.setxattr(path(b"attrs/user"), "user.empty", b"")
    os.setxattr(path(b"attrs"), "user.on-a-dir", b"\x00\x01\x02\xff")
    write(b"attrs/cap", b"\x7fELF pretend binary\n")
    os.chmod(path(b"attrs/cap"), 0o755)
    os.setxattr(path(b"attrs/cap"), "security.capability", CAPABILITY)
    write(b"attrs/cap-bind", b"\x7fELF pretend server\n")
    os.chmod(path(b"attrs/cap-bind"), 0o750)
    os.chown(path(b"attrs/cap-bind"), 1234, 5678)
    os.setxattr(path(b"attrs/cap-bind"), "security.capability", CAP_NET_BIND)
    write(b"attrs/acl", b"has an access ACL\n")
    os.setxattr(path(b"attrs/acl"), "system.posix_acl_access", ACCESS_ACL)
    os.setxattr(path(b"aclc"), "system.posix_acl_default", DEFAULT_ACL)
    os.setxattr(path(b"aclc"), "system.posix_acl_access", ACCESS_ACL)
    # a file created in a dir with a default ACL inherits an access ACL
    write(b"aclc/inherits", b"inherited ACL\n")
    assert os.getxattr(path(b"attrs/cap"), "security.capability") == CAPABILITY
    assert os.getxattr(path(b"attrs/acl"), "system.posix_acl_access") == ACCESS_ACL
    assert stat.S_IMODE(os.stat(path(b"attrs/acl")).st_mode) == 0o664  # group bits come from the mask

    # times last, children before parents, symlinks themselves; odd nanoseconds
    count = 0
    for dirpath, dirnames, filenames in os.walk(r, topdown=False):
        for name in filenames + dirnames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isdir(full):
                count += 1
                ns = ODD_NS + count * 1_000_003_007
                os.utime(full, ns=(ns, ns), follow_symlinks=False)
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                count += 1
                ns = ODD_NS + count * 1_000_003_007
                os.utime(full, ns=(ns, ns), follow_symlinks=False)
    os.utime(path(b"empty"), ns=(1, 1))
    os.utime(path(b"plain.txt"), ns=(ODD_NS, ODD_NS))
    os.utime(path(b"sparse.img"), ns=(999_999_999, 2_000_000_000_000_000_001))
    os.utime(r, ns=(ODD_NS - 7, ODD_NS - 7))


@pytest.fixture
def full_guest(guest: Path) -> Path:
    build_everything(guest)
    return guest


def _commit(repo, message: str) -> dict:
    return repo("commit", "-m", message, "--json").json()


def test_every_file_type_and_attribute_round_trips(repo, full_guest: Path, tmp_path: Path, worker_processes: str):
    before = snapshot(full_guest, ignore={b"special/sock"})
    result = _commit(repo, "everything")
    assert result["created"]
    assert any("special/sock" in s and "socket" in s for s in result["skipped"]), result["skipped"]
    assert len(result["skipped"]) == 1, result["skipped"]
    shown = repo("show", result["entry"], "--json").json()
    assert shown["info"]["skipped"] == result["skipped"]

    out = tmp_path / "restored"
    done = repo("checkout", result["entry"], "--to", str(out), "--json").json()
    assert done["not_reproduced"] == []

    # the socket is not there, and everything else is identical
    assert not os.path.lexists(out / "special" / "sock")
    assert compare(full_guest, out, ignore={b"special/sock"}) == []
    # the source was not disturbed by the commit
    assert compare_snapshots(before, snapshot(full_guest, ignore={b"special/sock"})) == []


def test_checkout_into_a_setgid_target_with_a_default_acl_gives_the_saved_attributes(repo, full_guest: Path, tmp_path: Path, worker_processes: str):
    """New files take the group of a setgid directory and inherit its default ACL: a
    checkout into such a target still gives each file the owner and xattrs it was saved
    with (it skips setting them only where a new file is born with them)."""
    result = _commit(repo, "everything")
    out = tmp_path / "restored"
    out.mkdir()
    os.chown(out, 0, 4321)
    os.chmod(out, 0o2775)
    os.setxattr(out, "system.posix_acl_default", DEFAULT_ACL)
    assert repo("checkout", result["entry"], "--to", str(out), "--json").json()["not_reproduced"] == []
    assert compare(full_guest, out, ignore={b"special/sock"}) == []
    plain = os.stat(out / "attrs" / "user")  # saved root:root, no ACL
    assert (plain.st_uid, plain.st_gid) == (0, 0)
    assert "system.posix_acl_access" not in os.listxattr(out / "attrs" / "user")


def test_specific_attributes_after_checkout(repo, full_guest: Path, tmp_path: Path):
    """The same as above, checked attribute by attribute for clearer failures."""
    entry = _commit(repo, "everything")["entry"]
    out = tmp_path / "restored"
    repo("checkout", entry, "--to", str(out))
    o = os.fsencode(out)

    def st(rel: bytes) -> os.stat_result:
        return os.lstat(os.path.join(o, rel))

    assert stat.S_IMODE(st(b"setuid").st_mode) == 0o4755
    assert stat.S_IMODE(st(b"owned/file").st_mode) == 0o6750
    assert stat.S_IMODE(st(b"dirs/setgid").st_mode) == 0o2755 and stat.S_ISDIR(st(b"dirs/setgid").st_mode)
    assert stat.S_IMODE(st(b"dirs/sticky").st_mode) == 0o1777
    assert stat.S_IMODE(st(b"dirs/empty").st_mode) == 0o500 and os.listdir(os.path.join(o, b"dirs/empty")) == []
    assert (st(b"owned/file").st_uid, st(b"owned/file").st_gid) == (1234, 5678)
    assert (st(b"owned").st_uid, st(b"owned").st_gid) == (1234, 5678)
    assert (st(b"owned/link").st_uid, st(b"owned/link").st_gid) == (1234, 5678)
    assert (st(b"links/b/c/three-3").st_uid, st(b"links/b/c/three-3").st_gid) == (4321, 8765)
    assert st(b"plain.txt").st_mtime_ns == ODD_NS
    assert st(b"empty").st_mtime_ns == 1 and st(b"empty").st_size == 0
    assert st(b"sparse.img").st_mtime_ns == 2_000_000_000_000_000_001
    assert st(b".").st_mtime_ns == ODD_NS - 7
    # xattrs
    user = os.path.join(o, b"attrs/user")
    assert os.getxattr(user, "user.binary") == bytes(range(256))
    assert os.getxattr(user, "user.text") == b"some value"
    assert os.getxattr(user, "user.empty") == b""
    assert os.getxattr(os.path.join(o, b"attrs"), "user.on-a-dir") == b"\x00\x01\x02\xff"
    assert os.getxattr(os.path.join(o, b"attrs/cap"), "security.capability") == CAPABILITY
    assert os.getxattr(os.path.join(o, b"attrs/cap-bind"), "security.capability") == CAP_NET_BIND
    assert (st(b"attrs/cap-bind").st_uid, stat.S_IMODE(st(b"attrs/cap-bind").st_mode)) == (1234, 0o750)
    assert os.getxattr(os.path.join(o, b"attrs/acl"), "system.posix_acl_access") == ACCESS_ACL
    assert stat.S_IMODE(st(b"attrs/acl").st_mode) == 0o664
    assert os.getxattr(os.path.join(o, b"aclc"), "system.posix_acl_default") == DEFAULT_ACL
    # symlinks, stored as is
    assert os.readlink(os.path.join(o, b"abs-link")) == b"/etc/passwd"
    assert os.readlink(os.path.join(o, b"rel-link")) == b"plain.txt"
    assert os.readlink(os.path.join(o, b"dangling-link")) == b"../nowhere/at/all"
    assert os.readlink(os.path.join(o, b"dir-link")) == b"dirs" and stat.S_ISLNK(st(b"dir-link").st_mode)
    # hardlinks: one inode per group, with the right link count
    three = [st(b"links/a/three"), st(b"links/b/three-2"), st(b"links/b/c/three-3")]
    assert len({s.st_ino for s in three}) == 1 and all(s.st_nlink == 3 for s in three)
    two = [st(b"links/two-1"), st(b"links/two-2")]
    assert len({s.st_ino for s in two}) == 1 and all(s.st_nlink == 2 for s in two)
    assert three[0].st_ino != two[0].st_ino
    for first, second in ((b"special/fifo", b"special/fifo-2"), (b"special/null", b"links/null-2"),
                          (b"special/loop", b"special/loop-2"), (b"rel-link", b"links/rel-link-2")):
        assert st(first).st_ino == st(second).st_ino and st(first).st_nlink == 2, (first, second)
    # special files
    assert stat.S_ISFIFO(st(b"special/fifo").st_mode) and stat.S_IMODE(st(b"special/fifo").st_mode) == 0o640
    null = st(b"special/null")
    assert stat.S_ISCHR(null.st_mode) and (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    loop = st(b"special/loop")
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 0)
    big = st(b"special/bigdev")
    assert (os.major(big.st_rdev), os.minor(big.st_rdev)) == (259, 65537)
    assert not os.path.lexists(os.path.join(o, b"special/sock"))
    # names
    assert sorted(os.listdir(os.path.join(o, b"names"))) == sorted(os.listdir(_p(full_guest, b"names")))
    assert open(os.path.join(o, b"names/\xff\xfe"), "rb").read() == b"not utf-8\n"
    assert open(os.path.join(o, b"names/new\nline"), "rb").read() == b"newline in name\n"
    assert open(os.path.join(o, b"names/" + LONG_NAME), "rb").read() == b"long name\n"
    assert open(os.path.join(o, b".git/HEAD"), "rb").read() == b"ref: refs/heads/main\n"


def test_sparse_file_keeps_its_holes(repo, full_guest: Path, tmp_path: Path, worker_processes: str):
    entry = _commit(repo, "sparse")["entry"]
    out = tmp_path / "restored"
    repo("checkout", entry, "--to", str(out))
    original = os.lstat(full_guest / "sparse.img")
    restored = os.lstat(out / "sparse.img")
    assert restored.st_size == SPARSE_SIZE
    with open(full_guest / "sparse.img", "rb") as a, open(out / "sparse.img", "rb") as b:
        while True:
            x, y = a.read(MiB), b.read(MiB)
            assert x == y
            if not x:
                break
    with open(out / "sparse.img", "rb") as b:
        assert b.read(5) == b"START"
        b.seek(10 * MiB)
        assert b.read(6) == b"MIDDLE"
        b.seek(SPARSE_SIZE - 3)
        assert b.read() == b"END"
    # holes kept: no more blocks than the original, give or take a few (512-byte units)
    assert original.st_blocks < 1024, "the test's own file should be sparse"
    assert restored.st_blocks <= original.st_blocks + 64, (restored.st_blocks, original.st_blocks)


def _modify_area(guest: Path) -> None:
    g = os.fsencode(guest)

    def path(rel: bytes) -> bytes:
        return os.path.join(g, rel)

    with open(path(b"binary.bin"), "r+b") as f:  # content changed, same size
        f.seek(1000)
        f.write(b"CHANGED")
    with open(path(b"plain.txt"), "ab") as f:  # content and size changed
        f.write(b"more\n")
    os.unlink(path(b"empty"))  # deleted
    os.unlink(path(b"links/b/three-2"))  # one hardlink of three deleted
    os.unlink(path(b"links/two-2"))  # the group broken, then re-made as an independent file
    with open(path(b"links/two-2"), "wb") as f:
        f.write(b"two links\n")
    with open(path(b"added-file"), "wb") as f:  # added
        f.write(b"new\n")
    os.makedirs(path(b"added-dir/sub"))
    os.symlink(b"/etc", path(b"added-dir/sub/link"))
    os.chmod(path(b"setuid"), 0o755)  # metadata only
    os.chown(path(b"owned/file"), 0, 0)  # clears setuid/setgid too
    os.removexattr(path(b"attrs/user"), "user.binary")
    os.setxattr(path(b"attrs/user"), "user.new", b"x")
    os.removexattr(path(b"attrs/cap"), "security.capability")
    os.setxattr(path(b"attrs/acl"), "system.posix_acl_access", acl_blob(
        [(ACL_USER_OBJ, 7, ACL_UNDEFINED_ID), (ACL_GROUP_OBJ, 0, ACL_UNDEFINED_ID), (ACL_OTHER, 0, ACL_UNDEFINED_ID)]))
    os.utime(path(b"rel-link"), ns=(5, 5), follow_symlinks=False)
    os.unlink(path(b"names/new\nline"))
    with open(path(b"names/\xff\xfe"), "wb") as f:
        f.write(b"rewritten")
    # a file replaced by a directory
    os.unlink(path(b"big.bin"))
    os.makedirs(path(b"big.bin/inner"))
    with open(path(b"big.bin/inner/f"), "wb") as f:
        f.write(b"x")
    # a directory replaced by a symlink (pointing outside, to tempt the restore)
    os.rename(path(b".git"), path(b"git-moved"))
    os.symlink(path(b"git-moved"), path(b".git"))
    # a directory replaced by a file, a symlink replaced by a directory
    import shutil
    shutil.rmtree(path(b"dirs/sticky"))
    with open(path(b"dirs/sticky"), "wb") as f:
        f.write(b"was a dir")
    os.unlink(path(b"dir-link"))
    os.mkdir(path(b"dir-link"))
    # special files changed
    os.unlink(path(b"special/null"))
    os.mknod(path(b"special/null"), stat.S_IFCHR | 0o666, os.makedev(1, 5))
    os.unlink(path(b"special/fifo"))
    with open(path(b"special/fifo"), "wb") as f:
        f.write(b"not a fifo")
    # the sparse file filled in
    with open(path(b"sparse.img"), "r+b") as f:
        f.seek(20 * MiB)
        f.write(b"\xaa" * MiB)
    # a new file in the dir with a default ACL (inherits an access ACL)
    with open(path(b"aclc/new"), "wb") as f:
        f.write(b"new\n")
    os.utime(path(b"dirs"), ns=(42, 42))


def test_checkout_force_puts_a_modified_area_back_exactly(repo, full_guest: Path, tmp_path: Path, worker_processes: str):
    entry = _commit(repo, "everything")["entry"]
    before = snapshot(full_guest, ignore={b"special/sock"})
    _modify_area(full_guest)
    assert compare_snapshots(before, snapshot(full_guest, ignore={b"special/sock"})) != []
    repo("checkout", entry, "-a", "wa1", "--force")
    problems = compare_snapshots(before, snapshot(full_guest, ignore={b"special/sock"}))
    assert problems == []
    # and the area is clean now: a commit records nothing new
    again = _commit(repo, "again")
    assert again["created"] is False and again["entry"] == entry


def test_checkout_force_after_git_dir_replaced_by_outside_symlink(repo, full_guest: Path, tmp_path: Path):
    """A dir replaced by a symlink to a dir outside the area: restoring must not write there."""
    entry = _commit(repo, "everything")["entry"]
    before = snapshot(full_guest, ignore={b"special/sock"})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"keep me\n")
    outside_before = snapshot(outside)
    import shutil

    shutil.rmtree(full_guest / ".git")
    os.symlink(outside, full_guest / ".git")
    shutil.rmtree(full_guest / "owned")
    os.symlink(outside, full_guest / "owned")
    repo("checkout", entry, "-a", "wa1", "--force")
    assert compare_snapshots(before, snapshot(full_guest, ignore={b"special/sock"})) == []
    assert compare_snapshots(outside_before, snapshot(outside)) == []


def test_checkout_without_force_refuses_and_names_the_changes(repo, full_guest: Path, tmp_path: Path):
    entry = _commit(repo, "everything")["entry"]
    other = tmp_path / "other"
    (full_guest / "plain.txt").write_bytes(b"edited\n")
    os.unlink(full_guest / "empty")
    (full_guest / "added-file").write_bytes(b"new\n")
    os.chmod(full_guest / "setuid", 0o755)
    during = snapshot(full_guest, ignore={b"special/sock"})
    result = repo("checkout", entry, "-a", "wa1", check=False)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for name in ("plain.txt", "added-file", "setuid"):
        assert name in lines[0], lines[0]
    # A deleted file loses nothing when the checkout brings it back, so it is not named.
    assert "empty" not in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    # nothing was touched
    assert compare_snapshots(during, snapshot(full_guest, ignore={b"special/sock"})) == []
    assert not other.exists()
    # With only deletions left, the checkout goes ahead and brings the file back.
    repo("checkout", entry, "-a", "wa1", "--force")
    os.unlink(full_guest / "empty")
    repo("checkout", entry, "-a", "wa1")
    assert (full_guest / "empty").exists()


# -- inode flags (chattr): kept, compared and put back, checked with e2fsprogs' own lsattr


def lsattr(path: Path) -> str:
    """The flags lsattr shows for one file or directory, as a sorted string of letters."""
    done = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True)
    return "".join(sorted(done.stdout.split()[0].replace("-", "").replace("e", "")))  # e: ext4's extents, never kept


def chattr(flags: str, *paths: Path) -> None:
    subprocess.run(["chattr", flags, *map(str, paths)], check=True)


@pytest.fixture
def ext4(tmp_path: Path):
    """A small ext4 filesystem of the test's own (a loop-mounted image): inode flags need
    one, and /tmp may be a tmpfs, which has none."""
    image, mount = tmp_path / "ext4.img", tmp_path / "ext4"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    yield mount
    subprocess.run(["chattr", "-R", "-i", "-a", str(mount)], capture_output=True)
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def flagged_guest(ext4: Path):
    """Files and directories with the flags chattr sets, on ext4."""
    guest = ext4 / "guest"
    (guest / "flags" / "dir-immutable").mkdir(parents=True)
    (guest / "flags" / "dir-noatime").mkdir()
    (guest / "flags" / "dir-immutable" / "inside").write_text("in an immutable directory\n")
    for name in ("immutable", "append-only", "nodump", "several"):
        (guest / "flags" / name).write_text(f"{name}\n")
    chattr("+i", guest / "flags" / "immutable", guest / "flags" / "dir-immutable")
    chattr("+a", guest / "flags" / "append-only")
    chattr("+d", guest / "flags" / "nodump")
    chattr("+A", guest / "flags" / "dir-noatime")
    chattr("+dAS", guest / "flags" / "several")
    return guest


def test_inode_flags_are_kept_and_put_back(vml, flagged_guest: Path, ext4: Path):
    guest, repo = flagged_guest, vml
    vml("init")
    vml("area", "add", "wa1", "--dir", str(guest))
    paths = ["flags/immutable", "flags/append-only", "flags/nodump", "flags/several", "flags/dir-immutable", "flags/dir-noatime"]
    wanted = {p: lsattr(guest / p) for p in paths}
    assert wanted == {"flags/immutable": "i", "flags/append-only": "a", "flags/nodump": "d", "flags/several": "ASd",
                      "flags/dir-immutable": "i", "flags/dir-noatime": "A"}, wanted
    entry = repo("commit", "-m", "flags", "--json").json()["entry"]
    out = ext4 / "out"
    done = repo("checkout", entry, "--to", str(out), "--json").json()
    assert done["not_reproduced"] == []
    assert {p: lsattr(out / p) for p in paths} == wanted
    assert (out / "flags" / "dir-immutable" / "inside").read_text() == "in an immutable directory\n"
    assert compare(guest, out) == []

    # A change of flags alone is a change of properties, named with lsattr's letters.
    chattr("-d", guest / "flags" / "nodump")
    [change] = [c for c in repo("diff", entry, "--json").json() if c["path"] == "flags/nodump"]
    assert (change["status"], change["changes"]) == ("P", ["flags"])
    assert (change["old"]["flags"], change["new"]["flags"]) == ("d", "")
    assert "flags d -> -" in repo("diff", entry, "--", "flags/nodump").stdout

    # Immutable and append-only files and directories do not stop a checkout putting the
    # area back: changed content, a new file in an immutable directory, a new immutable file.
    chattr("-i", guest / "flags" / "immutable", guest / "flags" / "dir-immutable")
    (guest / "flags" / "immutable").write_text("changed\n")
    (guest / "flags" / "dir-immutable" / "added").write_text("new\n")
    (guest / "flags" / "new-immutable").write_text("not in the entry\n")
    chattr("+i", guest / "flags" / "immutable", guest / "flags" / "dir-immutable", guest / "flags" / "new-immutable")
    with open(guest / "flags" / "append-only", "a") as appended:
        appended.write("more\n")
    repo("checkout", entry, "--force")
    assert {p: lsattr(guest / p) for p in paths} == wanted
    assert compare(guest, out) == []
    assert repo("status", "--json").json()["clean"] is True
    repo.fsck_clean()


def test_a_tree_as_deep_as_paths_allow(repo, guest: Path, tmp_path: Path):
    """2000 nested directories (a 4000-byte path, under PATH_MAX): saved, compared, checked
    and put back like any tree (a 600-deep one once failed to check out: RecursionError)."""
    depth = 2000
    fd = os.open(guest, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("bottom", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    bottom = "/".join(["d"] * depth) + "/bottom"
    out = tmp_path / "out"
    try:
        entry = _commit(repo, "deep")["entry"]
        assert repo("status", "--json").json()["clean"] is True
        done = repo("checkout", entry, "--to", str(out), "--json").json()
        assert done["not_reproduced"] == [] and done["counts"]["files_written"] == 3  # with the guest fixture's two
        assert os.path.exists(os.path.join(out, bottom))
        os.unlink(os.path.join(guest, bottom))
        assert [(c["status"], c["path"]) for c in repo("diff", entry, "--json").json() if c["status"] != "P"] == [("D", bottom)]
        repo("checkout", entry, "--force")
        assert os.path.exists(os.path.join(guest, bottom))
        repo.fsck_clean()
    finally:  # here: pytest's own cleanup recurses once per level, past Python's limit
        subprocess.run(["rm", "-rf", str(guest / "d"), str(out)], check=True)

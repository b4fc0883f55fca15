"""Reading and writing the metadata of local files: xattrs, inode flags, owner names,
sparse extents."""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import pwd
import stat
import struct

from vml.objects.manifest import KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_SYMLINK

# A file's type as st_mode says it -> the kind of its node, and back (sockets have none).
KIND_OF_TYPE = {
    stat.S_IFREG: KIND_FILE,
    stat.S_IFDIR: KIND_DIR,
    stat.S_IFLNK: KIND_SYMLINK,
    stat.S_IFCHR: KIND_CHAR,
    stat.S_IFBLK: KIND_BLOCK,
    stat.S_IFIFO: KIND_FIFO,
}
TYPE_OF_KIND = {kind: file_type for file_type, kind in KIND_OF_TYPE.items()}

_NO_XATTRS = {errno.ENOTSUP, errno.ENODATA, errno.EPERM, errno.EACCES}

# Inode flags (chattr/lsattr), read and set with the ioctls of linux/fs.h (a long argument).
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
# The flags a user sets with chattr and a restore can set again, by lsattr's letters. The
# others (extents, inline data, encryption, verity, casefold, DAX...) are the filesystem's
# way of storing a file, not a property of it: never saved, never set.
FLAG_LETTERS = {
    "s": 0x1, "u": 0x2, "c": 0x4, "S": 0x8, "i": 0x10, "a": 0x20, "d": 0x40, "A": 0x80,
    "j": 0x4000, "t": 0x8000, "D": 0x10000, "T": 0x20000, "C": 0x800000, "P": 0x20000000,
}
KEPT_FLAGS = sum(FLAG_LETTERS.values())
# Flags under which a file cannot be replaced, renamed over, removed or given other metadata.
PROTECTING_FLAGS = FLAG_LETTERS["i"] | FLAG_LETTERS["a"]
_NO_FLAGS = {errno.ENOTTY, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS}
_INT_AT = struct.Struct("<i").unpack_from


def _all_flags(fd: int) -> int:
    """Every inode flag of an open file, the filesystem's own too (FS_IOC_GETFLAGS)."""
    raw = bytearray(8)  # (filled in place: a bytes argument is copied there and back, twice the time)
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, raw, True)
    return _INT_AT(raw)[0]


def read_flags(fd: int) -> int:
    """The kept inode flags of an open regular file or directory; 0 where the filesystem has none."""
    try:
        return _all_flags(fd) & KEPT_FLAGS
    except OSError as error:
        if error.errno in _NO_FLAGS:
            return 0
        raise


def dir_flags(path: bytes) -> int:
    """The kept inode flags of a directory, by path (it is never followed if a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return 0  # gone or unreadable: its other metadata came from lstat already
    try:
        return read_flags(fd)
    finally:
        os.close(fd)


def write_flags(fd: int, flags: int) -> None:
    """Set the kept inode flags of an open file or directory to `flags`, leaving the
    filesystem's own flags as they are; raises OSError where that cannot be done."""
    current = _all_flags(fd)
    wanted = (current & ~KEPT_FLAGS) | (flags & KEPT_FLAGS)
    if wanted != current:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("<q", wanted))


def clear_flags(dir_fd: int, name: bytes) -> None:
    """Clear the inode flags of a regular file or directory (never a device or FIFO: opening
    one could act on it)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        write_flags(fd, 0)
    except OSError:
        pass  # a filesystem without flags: the removal's own error will say what is wrong
    finally:
        os.close(fd)


def clear_flags_below(dir_fd: int, name: bytes) -> None:
    """Clear the flags of `name`, and of everything below it if it is a directory."""
    clear_flags(dir_fd, name)
    if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
        return
    for _path, dirnames, filenames, fd in os.fwalk(name, dir_fd=dir_fd):
        for child in dirnames + filenames:
            clear_flags(fd, os.fsencode(child))


def flag_letters(flags: int) -> str:
    """lsattr's letters of the kept flags, in lsattr's order of this table ('' for none)."""
    return "".join(letter for letter, bit in FLAG_LETTERS.items() if flags & bit)


def read_xattrs(path: bytes | int) -> tuple[tuple[bytes, bytes], ...]:
    """All extended attributes (user.*, security.*, system.posix_acl_*, trusted.*), sorted by name."""
    follow = isinstance(path, int)
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as error:
        if error.errno in _NO_XATTRS:
            return ()
        raise
    if not names:
        return ()
    pairs = []
    for name in names:
        try:
            value = os.getxattr(path, name, follow_symlinks=follow)
        except OSError as error:
            if error.errno in _NO_XATTRS:
                continue
            raise
        pairs.append((os.fsencode(name), value))
    pairs.sort()
    return tuple(pairs)


def data_extents(fd: int, size: int) -> tuple[tuple[int, int], ...] | None:
    """The (offset, length) data regions of a file with holes, or None if it has none."""
    extents = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as error:
                if error.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, end - start))
            offset = end
    except OSError as error:
        if error.errno in (errno.EINVAL, errno.ENOTSUP):
            return None  # the filesystem cannot tell holes apart
        raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    if len(extents) == 1 and extents[0] == (0, size):
        return None
    return tuple(extents)


class OwnerNames:
    """uid/gid to names, from the guest's own /etc/passwd and /etc/group when the tree has them."""

    def __init__(self, root: bytes | None = None):
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}
        self._from_tree = False
        if root is not None:
            self._from_tree = self._load(os.path.join(root, b"etc/passwd"), self._users)
            self._load(os.path.join(root, b"etc/group"), self._groups)

    @staticmethod
    def _load(path: bytes, table: dict[int, str]) -> bool:
        try:
            if os.path.islink(path):
                return False  # a guest's symlink must not make us read a host file
            with open(path, "rb") as table_file:
                for line in table_file:
                    fields = line.decode("utf-8", "replace").split(":")
                    if len(fields) >= 3 and fields[2].isdigit():
                        table.setdefault(int(fields[2]), fields[0])
            return True
        except OSError:
            return False

    def user(self, uid: int) -> str | None:
        if uid not in self._users and not self._from_tree:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._users[uid] = None
        return self._users.get(uid)

    def group(self, gid: int) -> str | None:
        if gid not in self._groups and not self._from_tree:
            try:
                self._groups[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                self._groups[gid] = None
        return self._groups.get(gid)

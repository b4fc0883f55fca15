"""Reading and writing the metadata of local files: xattrs, owner names, sparse extents."""

from __future__ import annotations

import errno
import os
import pwd
import grp

_NO_XATTRS = {errno.ENOTSUP, errno.ENODATA, errno.EPERM, errno.EACCES}


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

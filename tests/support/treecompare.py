"""Exhaustive comparison of two file trees, walking with lstat (never following symlinks).

`snapshot(root)` records, for every path under root (root itself is b"."), the file type,
the full st_mode, owner, size (not for directories: ext4 directory sizes depend on history),
st_mtime_ns, every xattr (user.*, security.*, system.posix_acl_*, trusted.*), the symlink
target, the device numbers, a digest of a regular file's content, st_nlink and the set of
paths in the tree that share its inode (the hardlink group). `compare(a, b)` lists the
differences between two trees as readable strings: an empty list means identical.
"""

from __future__ import annotations

import hashlib
import os
import stat

_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def _xattrs(path: bytes) -> tuple[tuple[bytes, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    pairs = []
    for name in names:
        pairs.append((os.fsencode(name), os.getxattr(path, name, follow_symlinks=False)))
    return tuple(sorted(pairs))


def _digest(path: bytes) -> str:
    hasher = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                break
            hasher.update(block)
    finally:
        os.close(fd)
    return hasher.hexdigest()


def _walk(root: bytes, rel: bytes, out: dict[bytes, os.stat_result]) -> None:
    path = os.path.join(root, rel) if rel != b"." else root
    st = os.lstat(path)
    out[rel] = st
    if stat.S_ISDIR(st.st_mode):
        for name in sorted(os.listdir(path)):
            _walk(root, name if rel == b"." else rel + b"/" + name, out)


def snapshot(root: str | bytes, *, ignore: set[bytes] = frozenset()) -> dict[bytes, dict]:
    """Everything observable about the tree at `root`, keyed by relative path (bytes)."""
    root = os.fsencode(root)
    stats: dict[bytes, os.stat_result] = {}
    _walk(root, b".", stats)
    for name in ignore:
        stats.pop(name, None)
    inodes: dict[tuple[int, int], list[bytes]] = {}
    for rel, st in stats.items():
        if not stat.S_ISDIR(st.st_mode):
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    result = {}
    for rel, st in stats.items():
        path = os.path.join(root, rel) if rel != b"." else root
        fmt = stat.S_IFMT(st.st_mode)
        info = {
            "type": _TYPES.get(fmt, oct(fmt)),
            "mode": oct(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
            "xattrs": _xattrs(path),
        }
        if fmt != stat.S_IFDIR:
            info["size"] = st.st_size
            info["nlink"] = st.st_nlink
            info["links"] = tuple(sorted(inodes[(st.st_dev, st.st_ino)]))
        if fmt == stat.S_IFLNK:
            info["target"] = os.readlink(path)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            info["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        elif fmt == stat.S_IFREG:
            info["sha256"] = _digest(path)
        result[rel] = info
    return result


def compare_snapshots(a: dict[bytes, dict], b: dict[bytes, dict]) -> list[str]:
    problems = []
    for rel in sorted(a.keys() | b.keys()):
        if rel not in b:
            problems.append(f"{rel!r}: only in the first tree")
        elif rel not in a:
            problems.append(f"{rel!r}: only in the second tree")
        else:
            for key in sorted(a[rel].keys() | b[rel].keys()):
                if a[rel].get(key) != b[rel].get(key):
                    problems.append(f"{rel!r}: {key} {a[rel].get(key)!r} != {b[rel].get(key)!r}")
    return problems


def compare(a: str | bytes, b: str | bytes, *, ignore: set[bytes] = frozenset()) -> list[str]:
    """Differences between the trees at `a` and `b` (empty: identical)."""
    return compare_snapshots(snapshot(a, ignore=ignore), snapshot(b, ignore=ignore))

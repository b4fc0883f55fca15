"""A node as a pax tar member and back, for the GNU tar at a guest's end: the node kind of
each member type, xattrs as SCHILY.xattr records, times exact to the nanosecond, and sparse
files in GNU tar's sparse format 1.0. Guest capture reads members with it, guest restore
writes them."""

from __future__ import annotations

import tarfile

from vml.objects.chunker import Extents
from vml.objects.manifest import KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_SYMLINK, Node

XATTR_PREFIX = "SCHILY.xattr."
KIND_OF_TAR_TYPE = {
    tarfile.REGTYPE: KIND_FILE,
    tarfile.AREGTYPE: KIND_FILE,
    tarfile.CONTTYPE: KIND_FILE,
    tarfile.GNUTYPE_SPARSE: KIND_FILE,
    tarfile.DIRTYPE: KIND_DIR,
    tarfile.SYMTYPE: KIND_SYMLINK,
    tarfile.CHRTYPE: KIND_CHAR,
    tarfile.BLKTYPE: KIND_BLOCK,
    tarfile.FIFOTYPE: KIND_FIFO,
}
TAR_TYPE_OF_KIND = {
    KIND_FILE: tarfile.REGTYPE,
    KIND_DIR: tarfile.DIRTYPE,
    KIND_SYMLINK: tarfile.SYMTYPE,
    KIND_CHAR: tarfile.CHRTYPE,
    KIND_BLOCK: tarfile.BLKTYPE,
    KIND_FIFO: tarfile.FIFOTYPE,
}


def parse_time(text: bytes) -> int:
    """Nanoseconds from find's or tar's 'seconds.fraction', exactly (a float would round);
    digits past the nanosecond are dropped, as the kernel has none."""
    negative = text.startswith(b"-")
    seconds, _, fraction = text.lstrip(b"-").partition(b".")
    nanoseconds = int(seconds or b"0") * 1_000_000_000 + int(fraction[:9].ljust(9, b"0"))
    return -nanoseconds if negative else nanoseconds


def exact_time(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{seconds}.{fraction:09d}"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


# -- reading (a guest's capture)


def member_rel(name: str) -> bytes:
    """A member's path relative to the top (b"" for the top itself)."""
    raw = _raw(name).rstrip(b"/")
    if raw in (b".", b""):
        return b""
    return raw[2:] if raw.startswith(b"./") else raw


def node_of_member(member: tarfile.TarInfo, name: bytes, user: str | None, group: str | None) -> Node:
    """The node a member describes, named `name` and owned by `user` and `group` (tar's
    names may be the guest's numbers), without its data: chunks and extents are its
    reader's (see member_extents)."""
    kind = KIND_OF_TAR_TYPE[member.type]
    headers = member.pax_headers
    mtime_ns = parse_time(headers["mtime"].encode()) if "mtime" in headers else int(member.mtime) * 1_000_000_000
    xattrs = tuple(sorted(
        (_raw(key[len(XATTR_PREFIX):]), _raw(value)) for key, value in headers.items() if key.startswith(XATTR_PREFIX)
    ))
    node = Node(name=name, kind=kind, mode=member.mode & 0o7777, uid=member.uid, gid=member.gid, user=user, group=group,
                mtime_ns=mtime_ns, size=member.size if kind == KIND_FILE else 0, xattrs=xattrs)
    if kind == KIND_SYMLINK:
        node.target = _raw(member.linkname)
    elif kind in (KIND_CHAR, KIND_BLOCK):
        node.rdev = (member.devmajor, member.devminor)
    return node


def member_extents(member: tarfile.TarInfo) -> Extents | None:
    """The data extents of a sparse file's member; None for a file without holes."""
    if member.sparse is None:
        return None
    extents = tuple((offset, length) for offset, length in member.sparse if length)
    return None if extents == ((0, member.size),) else extents


# -- writing (a restore onto a guest)


def names_another(path: bytes, node: Node) -> bool:
    """Whether `node` at `path` is another name of an inode first named elsewhere: a link
    member, whose data is not sent again."""
    return node.hardlink is not None and node.hardlink != path


def member_of_node(path: bytes, node: Node) -> tuple[tarfile.TarInfo, bytes]:
    """The member that makes `node` at `path` (relative) when GNU tar extracts it, and the
    bytes its data starts with: a sparse file's map, read before its data extents."""
    info = tarfile.TarInfo("./" + _text(path) if path else ".")
    info.type = TAR_TYPE_OF_KIND[node.kind]
    info.mode = node.mode
    info.uid, info.gid = node.uid, node.gid
    info.uname, info.gname = node.user or "", node.group or ""
    info.mtime = node.mtime_ns // 1_000_000_000
    headers = {"mtime": exact_time(node.mtime_ns)}
    for name, value in node.xattrs:
        headers[XATTR_PREFIX + _text(name)] = _text(value)
    info.pax_headers = headers
    prefix = b""
    if names_another(path, node):  # another name of an inode the stream (or the guest) holds already
        info.type = tarfile.LNKTYPE
        info.linkname = "./" + _text(node.hardlink)
    elif node.kind == KIND_FILE:
        info.size = node.size
        if node.extents is not None:
            prefix = _sparse_map(node)
            info.size = len(prefix) + sum(length for _offset, length in node.extents)
            info.pax_headers.update({
                "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                "GNU.sparse.name": info.name, "GNU.sparse.realsize": str(node.size),
            })
    elif node.kind == KIND_SYMLINK:
        info.linkname = _text(node.target)
    elif node.kind in (KIND_CHAR, KIND_BLOCK):
        info.devmajor, info.devminor = node.rdev
    return info, prefix


def _sparse_map(node: Node) -> bytes:
    """GNU tar's sparse format 1.0: the map in decimal lines, padded to a 512-byte block."""
    extents = list(node.extents)
    end = extents[-1][0] + extents[-1][1] if extents else 0
    if end < node.size or not extents:
        extents.append((node.size, 0))  # the size of a file that ends in a hole
    lines = [str(len(extents))] + [str(number) for extent in extents for number in extent]
    text = ("\n".join(lines) + "\n").encode()
    return text + bytes(-len(text) % tarfile.BLOCKSIZE)

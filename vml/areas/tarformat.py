"""A node as a pax tar member and back, for the GNU tar at a guest's end: the node kind of
each member type, xattrs as SCHILY.xattr records, times exact to the nanosecond, and sparse
files in GNU tar's sparse formats (read: 1.0 and 0.x; written: 1.0). Guest capture reads
members with it (TarReader), guest restore writes them."""

from __future__ import annotations

import struct
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import IO

from vml.objects.chunker import Extents
from vml.objects.manifest import KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_SYMLINK, Node

_compiled: ModuleType | None
try:
    from vml.areas import _tarheader as _compiled  # (built by scripts/setup: see setup.py)
except ImportError:  # (a tree not built: every header read in Python)
    _compiled = None

XATTR_PREFIX = "SCHILY.xattr."
_XATTR_PREFIX = XATTR_PREFIX.encode()
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
    if len(text) > 11 and text[-11:-10] == b"." and text[:1] != b"-":  # GNU find's %T@: ten digits after the point
        return int(text.replace(b".", b"", 1)) // 10
    negative = text.startswith(b"-")
    seconds, _, fraction = text.lstrip(b"-").partition(b".")
    nanoseconds = int(seconds or b"0") * 1_000_000_000 + int(fraction[:9].ljust(9, b"0"))
    return -nanoseconds if negative else nanoseconds


def exact_time(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{seconds}.{fraction:09d}"


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


# -- reading (a guest's capture)
#
# A reader of its own rather than tarfile's: tarfile parses each member's three header blocks
# field by field in Python and reads data through a 10 KiB buffer; reading the stream of a
# guest's 75,000 paths (2 GB) took 7.4-9.8 CPU-seconds with tarfile, 2.0-2.7 with this one.
# It reads the one dialect a guest's GNU tar writes here (pax headers, sparse files in the GNU
# formats 1.0 and 0.x) with one struct unpack a header, data straight from a buffered stream.


class TarStreamError(tarfile.ReadError):
    """The stream is not the tar vml asked for: damaged, cut short or of another kind."""


BLOCK = tarfile.BLOCKSIZE
_DEVICE_TYPES = (tarfile.CHRTYPE, tarfile.BLKTYPE)
_ZERO_BLOCK = bytes(BLOCK)
# ustar: name, mode, uid, gid, size, mtime, checksum, type, linkname, magic+version, uname,
# gname, devmajor, devminor, prefix.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")


def _number(field: bytes) -> int:
    """A header's number: octal text, or base-256 (GNU's form for what octal cannot hold)."""
    if field[0] & 0x80:
        if field[0] not in (0x80, 0xFF):
            raise TarStreamError(f"a header holds {field!r} where a number belongs")
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * len(field) - 8)) if field[0] == 0xFF else value
    digits = field.rstrip(b"\0 ")  # (int takes the leading spaces)
    try:
        return int(digits, 8) if digits.strip() else 0
    except ValueError:
        raise TarStreamError(f"a header holds {field!r} where a number belongs") from None


# kind, size, name (its prefix joined), mode (permission bits), uid, gid, mtime (seconds),
# linkname, devmajor, devminor (0 but for a device)
_Header = tuple[bytes, int, bytes, int, int, int, int, bytes, int, int]


def _header(block: bytes) -> _Header:
    """A header block's fields, with its numbers read (_tarheader.c, where they are plain
    octal and its checksum that of unsigned bytes: every header a GNU tar writes here)."""
    if _compiled is not None and (head := _compiled.header(block)) is not None:
        return head
    fields = _USTAR.unpack(block)
    checksum = _number(fields[6])
    if checksum != _byte_sum(block) - sum(block[148:156]) + 8 * 32 and checksum != _signed_checksum(block):
        raise TarStreamError("a header's checksum does not match")
    kind = fields[7]
    name, prefix = fields[0].split(b"\0", 1)[0], fields[14].split(b"\0", 1)[0]
    device = kind in _DEVICE_TYPES
    return (kind, _number(fields[4]), prefix + b"/" + name if prefix else name, _number(fields[1]) & 0o7777, _number(fields[2]),
            _number(fields[3]), _number(fields[5]), fields[8].split(b"\0", 1)[0], _number(fields[12]) if device else 0,
            _number(fields[13]) if device else 0)


def _records(data: bytes) -> list[tuple[bytes, bytes]]:
    """A pax header's records ("<length> <key>=<value>\\n"), keys and values as bytes."""
    records: list[tuple[bytes, bytes]] = []
    start = 0
    while start < len(data) and data[start] != 0:
        space = data.find(b" ", start)
        try:
            end = start + int(data[start:space])
        except ValueError:
            raise TarStreamError("a damaged pax header") from None
        if space < 0 or end > len(data) or data[end - 1] != 0x0A or end <= space:
            raise TarStreamError("a damaged pax header")
        key, equals, value = data[space + 1 : end - 1].partition(b"=")
        if not equals:
            raise TarStreamError("a damaged pax header")
        records.append((key, value))
        start = end
    return records


@dataclass(slots=True)
class TarMember:
    """One member of a guest's tar stream: its path as the guest's bytes, its header's
    metadata with the pax records applied, and where its data lies in a sparse file."""

    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int  # the file's size (a sparse file's full size, holes included)
    mtime_ns: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: tuple[tuple[bytes, bytes], ...]
    extents: Extents | None  # a sparse file's data regions; None: the data is the whole file


class TarReader:
    """The members of a tar stream, in order; a member's data is read (`read`, `readinto`)
    before the next member is asked for, and whatever of it was not read is skipped."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self._left = 0  # data bytes of the current member not yet read
        self._padding = 0

    def __iter__(self) -> Iterator[TarMember]:
        pax: list[tuple[bytes, bytes]] = []
        global_pax: list[tuple[bytes, bytes]] = []
        while True:
            if self._left or self._padding:
                self._skip(self._left + self._padding)
                self._left = self._padding = 0
            block = self._stream.read(BLOCK)
            if not block or block == _ZERO_BLOCK:
                return  # the end (tar ends with zero blocks; a stream cut between members is its sender's to report)
            if len(block) < BLOCK:
                raise TarStreamError("the stream ends inside a header")
            head = _header(block)
            kind, size = head[0], head[1]
            self._start_data(size)
            if kind in (b"x", b"g"):
                records = _records(self.read(size))
                (pax if kind == b"x" else global_pax).extend(records)
                continue
            ordered = global_pax + pax
            pax = []
            try:
                member = self._member(head, ordered)
            except ValueError:  # a pax number or a sparse map that is not one
                raise TarStreamError(f"a damaged header (of {head[2]!r})") from None
            yield member

    def _member(self, head: _Header, ordered: list[tuple[bytes, bytes]]) -> TarMember:
        """The member of a header and the pax records before it (global ones first: a later
        record of a key wins)."""
        kind, size, name, mode, uid, gid, mtime_seconds, linkname, devmajor, devminor = head
        records = dict(ordered)
        name = records.get(b"path", name)
        if b"size" in records:  # a size octal cannot hold
            size = int(records[b"size"])
            self._start_data(size)
        mtime = records.get(b"mtime")
        extents = None
        if b"GNU.sparse.major" in records or b"GNU.sparse.offset" in records or b"GNU.sparse.map" in records:
            name = records.get(b"GNU.sparse.name", name)
            extents = self._sparse_map(records, ordered)
            size = int(records.get(b"GNU.sparse.realsize") or records.get(b"GNU.sparse.size") or b"0")
            if extents == ((0, size),):
                extents = None  # data from end to end: no hole, as a local capture of the file says
        return TarMember(
            name=name,
            type=kind,
            mode=mode,
            uid=int(records[b"uid"]) if b"uid" in records else uid,
            gid=int(records[b"gid"]) if b"gid" in records else gid,
            size=size,
            mtime_ns=parse_time(mtime) if mtime is not None else mtime_seconds * 1_000_000_000,
            linkname=records.get(b"linkpath") or linkname,
            devmajor=devmajor,
            devminor=devminor,
            xattrs=tuple(sorted((key[len(_XATTR_PREFIX):], value) for key, value in records.items() if key.startswith(_XATTR_PREFIX))),
            extents=extents,
        )

    def _sparse_map(self, records: dict[bytes, bytes], ordered: list[tuple[bytes, bytes]]) -> Extents:
        """The data regions of a sparse file: format 1.0 keeps its map at the start of the
        data (decimal lines, padded to a block); 0.1 in one record; 0.0 in repeated ones."""
        if records.get(b"GNU.sparse.major") == b"1":
            text = b""
            while True:
                if self._left < BLOCK:
                    raise TarStreamError("a sparse file's map is cut short")
                text += self.read(BLOCK)
                numbers = text.split(b"\n")
                if numbers[0] and len(numbers) - 1 >= 1 + 2 * int(numbers[0]):
                    break
            count = int(numbers[0])
            values = [int(n) for n in numbers[1 : 1 + 2 * count]]
        elif b"GNU.sparse.map" in records:
            values = [int(n) for n in records[b"GNU.sparse.map"].split(b",") if n]
        else:
            values = [int(value) for key, value in ordered if key in (b"GNU.sparse.offset", b"GNU.sparse.numbytes")]
        return tuple((values[i], values[i + 1]) for i in range(0, len(values) - 1, 2) if values[i + 1])

    def _start_data(self, size: int) -> None:
        self._left, self._padding = size, -size % BLOCK

    def read(self, size: int) -> bytes:
        """Up to `size` bytes of the current member's data (all of it that is left, if less)."""
        size = min(size, self._left)
        data = self._stream.read(size)
        if len(data) < size:
            raise TarStreamError("the stream ends inside a member's data")
        self._left -= size
        return data

    def readinto(self, buffer: memoryview) -> int:
        want = min(len(buffer), self._left)
        if not want:
            return 0
        got = self._stream.readinto(buffer[:want])
        if not got:
            raise TarStreamError("the stream ends inside a member's data")
        self._left -= got
        return got

    def _skip(self, count: int) -> None:
        while count:
            got = len(self._stream.read(min(count, 1 << 20)))
            if not got:
                raise TarStreamError("the stream ends inside a member's data")
            count -= got

    def drain(self) -> None:
        """Read the stream to its end (tar pads its last record), so the sender is not left waiting."""
        while self._stream.read(1 << 20):
            pass


def member_rel(name: bytes) -> bytes:
    """A member's path relative to the top (b"" for the top itself)."""
    name = name.rstrip(b"/")
    if name in (b".", b""):
        return b""
    return name[2:] if name.startswith(b"./") else name


def node_of_member(member: TarMember, name: bytes, user: str | None, group: str | None) -> Node:
    """The node a member describes, named `name` and owned by `user` and `group` (tar's
    names may be the guest's numbers), without its data: chunks and extents are its
    reader's."""
    kind = KIND_OF_TAR_TYPE[member.type]
    node = Node(name=name, kind=kind, mode=member.mode, uid=member.uid, gid=member.gid, user=user, group=group,
                mtime_ns=member.mtime_ns, size=member.size if kind == KIND_FILE else 0, xattrs=member.xattrs)
    if kind == KIND_SYMLINK:
        node.target = member.linkname
    elif kind in (KIND_CHAR, KIND_BLOCK):
        node.rdev = (member.devmajor, member.devminor)
    return node


def _byte_sum(block: bytes) -> int:
    """sum(block) of a 512-byte header, in C (sum() took 2 us, two headers a member): the low
    half of Adler-32 is 1 + the bytes' sum modulo 65,521, exact over 256 bytes (65,280 at most)."""
    view = memoryview(block)
    return (zlib.adler32(view[:256]) & 0xFFFF) + (zlib.adler32(view[256:]) & 0xFFFF) - 2


def _signed_checksum(block: bytes) -> int:
    """The checksum some old tars computed over signed bytes."""
    signed = struct.unpack_from("148b8x356b", block)
    return sum(signed) + 8 * 32


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

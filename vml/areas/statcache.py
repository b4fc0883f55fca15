"""The stat cache of an area: what each path looked like when its content was last read.

A file whose (inode, size, mtime, ctime, mode, owner, link count) match its cached values
is not read again; its cached manifest node is reused. A directory whose children all match
keeps its listing id. Entries changed within the timestamp granularity of the scan are never
cached ("racy git"), so a change in the same clock tick is not missed.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import msgpack

from vml.durable import atomic_file
from vml.objects.hashing import fingerprint128

FORMAT = 3  # 2: each directory's children as a list, decoded when the file was read
# Larger than every common filesystem's timestamp granularity (FAT: 2 s).
RACY_WINDOW_NS = 2_000_000_000

# The key is packed into 64 bytes: a tuple of eight ints costs four times the memory, and a
# guest has hundreds of thousands of files.
_KEY = struct.Struct("<QqqqIIIQ")


def stat_key(st: os.stat_result) -> bytes:
    return _KEY.pack(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid, st.st_nlink)


def dir_fingerprint(items: list[tuple]) -> bytes:
    """A directory as its children look to lstat or to a listing: (name, stat key, child
    listing id or None, hardlink group or None) each. Equal to the cached one, the
    directory's listing is the cached one."""
    return fingerprint128(msgpack.packb(items, use_bin_type=True))


def pack_key(inode: int, size: int, mtime_ns: int, ctime_ns: int, mode: int, uid: int, gid: int, nlink: int) -> bytes:
    """The key of a path described by a listing rather than by lstat (a guest's find)."""
    return _KEY.pack(inode, size, mtime_ns, ctime_ns, mode, uid, gid, nlink)


def pack_children(children: list[tuple[bytes, bytes, bytes]]) -> bytes:
    """A directory's children, (name, stat key, node bytes) each, as the cache file keeps them."""
    return msgpack.packb(children, use_bin_type=True)


class CachedDir:
    """One directory of the cache. Its children are kept as the file stores them (one
    msgpack string) and decoded only when a scan looks into the directory; `release` drops
    the decoded form again, so a scan holds decoded only the directories it is working on."""

    __slots__ = ("fingerprint", "listing_id", "totals", "_children", "_packed")

    def __init__(self, fingerprint: bytes | None, listing_id: bytes, totals: tuple[int, int, int],
                 children: dict[bytes, tuple[bytes, bytes]] | None = None, *, packed: bytes | None = None):
        self.fingerprint = fingerprint  # None: something in it was racy; the listing must be rebuilt
        self.listing_id = listing_id
        self.totals = totals
        self._children = children if children is not None or packed is not None else {}
        self._packed = packed

    @property
    def children(self) -> dict[bytes, tuple[bytes, bytes]]:
        """name -> (stat key, node bytes); a damaged entry reads as empty (its files are read again)."""
        if self._children is None:
            try:
                self._children = {name: (key, node) for name, key, node in msgpack.unpackb(self._packed, raw=True, use_list=False)}
            except (ValueError, TypeError, msgpack.UnpackException):
                self._children = {}
        return self._children

    def packed(self) -> bytes:
        if self._packed is None:
            self._packed = pack_children([(name, key, node) for name, (key, node) in self.children.items()])
        return self._packed

    def same_children(self, fingerprint: bytes | None) -> CachedDir:
        """This directory again with another fingerprint, its children shared as they are."""
        return CachedDir(fingerprint, self.listing_id, self.totals, None if self._packed is not None else self._children,
                         packed=self._packed)

    def release(self) -> None:
        if self._packed is not None:
            self._children = None


@dataclass(slots=True)
class StatCache:
    dirs: dict[bytes, CachedDir] = field(default_factory=dict)
    loaded_from: str | None = None  # the file it was read from, by `load`
    same_as: str | None = None  # a file that holds these very entries: `save` to it writes nothing

    @classmethod
    def load(cls, path: str) -> StatCache:
        """The cache, one directory at a time; a lost, damaged or older cache is an empty one
        (it only costs reading the files again)."""
        dirs = {}
        try:
            with open(path, "rb") as cache_file:
                unpacker = msgpack.Unpacker(cache_file, raw=True, use_list=False, max_buffer_size=0)
                if unpacker.read_array_header() != 2:
                    return cls()
                version = unpacker.unpack()
                if version not in (2, FORMAT):
                    return cls()
                for _ in range(unpacker.read_map_header()):
                    rel = unpacker.unpack()
                    fingerprint, listing_id, totals, children = unpacker.unpack()
                    if version == FORMAT:
                        if not isinstance(children, bytes):
                            raise ValueError("a directory's children are not one string")
                        dirs[rel] = CachedDir(fingerprint, listing_id, tuple(totals), packed=children)
                    else:
                        dirs[rel] = CachedDir(fingerprint, listing_id, tuple(totals), {name: (key, node) for name, key, node in children})
        except (FileNotFoundError, ValueError, TypeError, KeyError, IndexError, msgpack.UnpackException):
            return cls()
        return cls(dirs, loaded_from=path)

    def save(self, path: str) -> None:
        """Written a directory at a time (no second copy of the cache in memory), then renamed;
        not at all when it holds what the file holds already."""
        if self.same_as == path and os.path.exists(path):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        packer = msgpack.Packer(use_bin_type=True)
        with atomic_file(path, buffering=1024 * 1024) as out:
            out.write(packer.pack_array_header(2) + packer.pack(FORMAT) + packer.pack_map_header(len(self.dirs)))
            for rel, d in self.dirs.items():
                out.write(packer.pack(rel) + packer.pack((d.fingerprint, d.listing_id, d.totals, d.packed())))

"""The stat cache of an area: what each path looked like when its content was last read.

A file whose (inode, size, mtime, ctime, mode, owner, link count) match its cached values
is not read again; its cached manifest node is reused. A directory whose children all match
keeps its listing id. Entries changed within the timestamp granularity of the scan are never
cached ("racy git"), so a change in the same clock tick is not missed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import msgpack

from vml.objects.pack import write_file_atomically

FORMAT = 1
# Larger than every common filesystem's timestamp granularity (FAT: 2 s).
RACY_WINDOW_NS = 2_000_000_000


def stat_key(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid, st.st_gid, st.st_nlink)


@dataclass(slots=True)
class CachedDir:
    fingerprint: bytes | None  # None: something in it was racy; the listing must be rebuilt
    listing_id: bytes
    totals: tuple[int, int, int]
    children: dict[bytes, tuple[tuple, bytes]] = field(default_factory=dict)  # name -> (stat key, node bytes)


@dataclass(slots=True)
class StatCache:
    dirs: dict[bytes, CachedDir] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str) -> "StatCache":
        try:
            with open(path, "rb") as cache_file:
                raw = msgpack.unpackb(cache_file.read(), raw=True, use_list=False, strict_map_key=False)
        except (FileNotFoundError, ValueError, msgpack.UnpackException):
            return cls()  # a lost or damaged cache only costs re-reading files
        try:
            if raw[0] != FORMAT:
                return cls()
            dirs = {}
            for rel, (fingerprint, listing_id, totals, children) in raw[1].items():
                dirs[rel] = CachedDir(fingerprint, listing_id, tuple(totals), {name: (tuple(key), node) for name, key, node in children})
        except (TypeError, ValueError, KeyError, AttributeError, IndexError):
            return cls()  # not the shape we write: start from scratch
        return cls(dirs)

    def save(self, path: str) -> None:
        body = {
            rel: (d.fingerprint, d.listing_id, d.totals, [(name, key, node) for name, (key, node) in d.children.items()])
            for rel, d in self.dirs.items()
        }
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_file_atomically(path, msgpack.packb((FORMAT, body), use_bin_type=True), os.path.dirname(path))

"""Restore a saved tree onto a tree that lives elsewhere (a guest) with a tar stream.

From the difference between what the guest holds and the entry, the guest is sent the
paths to delete (those the entry lacks or holds as another type) and one pax tar stream
of what must change: new and changed files with their data, and header-only members for
metadata changes and for every directory above a change (so its mtime is set last, by
tar). Unchanged files never cross the network.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from typing import IO, Callable

from vml.areas.capture.guest import XATTR_PREFIX
from vml.areas.restore.local import RestoreProgress
from vml.areas.rules import Rules
from vml.errors import CorruptObject
from vml.objects.diff import DELETED, diff_roots
from vml.objects.manifest import KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_SYMLINK, Listing, Node, check_name
from vml.objects.store import ChunkStore
from vml.objects.walk import node_at, root_node
from vml.pathnames import quote_path

_TAR_TYPES = {
    KIND_FILE: tarfile.REGTYPE,
    KIND_DIR: tarfile.DIRTYPE,
    KIND_SYMLINK: tarfile.SYMTYPE,
    KIND_CHAR: tarfile.CHRTYPE,
    KIND_BLOCK: tarfile.BLKTYPE,
    KIND_FIFO: tarfile.FIFOTYPE,
}


@dataclass(slots=True)
class GuestPlan:
    deletions: list[bytes] = field(default_factory=list)  # relative paths, parents before children
    members: list[tuple[bytes, Node]] = field(default_factory=list)  # what the tar stream carries, in order
    data_bytes: int = 0


def plan_restore(load: Callable[..., Listing], target_root: bytes, current_root: bytes | None,
                 entry_rules: Rules | None = None) -> GuestPlan:
    """What must change on the guest to make it hold `target_root`; nothing the entry's
    own rules did not cover (`entry_rules`) is deleted."""
    plan = GuestPlan()
    chosen: dict[bytes, Node] = {}
    if current_root is None:
        chosen[b""] = root_node(load, target_root)
        changes = diff_roots(load, None, target_root)
    else:
        changes = diff_roots(load, current_root, target_root)
    for change in changes:
        path = b"" if change.path == b"." else change.path
        for part in path.split(b"/") if path else ():
            check_name(part)
        if change.status == DELETED and entry_rules is not None and not entry_rules.admits(path, change.old.kind == KIND_DIR):
            continue  # outside what the entry was saved from: not the entry's to delete
        if change.status == DELETED or (change.old is not None and change.new is not None and change.old.kind != change.new.kind):
            if not any(path.startswith(gone + b"/") for gone in plan.deletions[-1:]):
                plan.deletions.append(path)
        if change.new is not None:
            chosen[path] = change.new
    for path in list(chosen):  # every directory above a change, so tar sets its metadata after
        parent = path
        while parent:
            parent = parent.rpartition(b"/")[0]
            if parent in chosen:
                break
            chosen[parent] = node_at(load, target_root, parent)
    for path in sorted(chosen, key=lambda p: p.split(b"/") if p else []):
        node = chosen[path]
        plan.members.append((path, node))
        if node.kind == KIND_FILE and not _names_another(path, node):
            plan.data_bytes += node.size
    return plan


def write_tar(plan: GuestPlan, store: ChunkStore, sink: IO[bytes], counts: RestoreProgress) -> None:
    """The plan's members as a pax tar stream on `sink` (GNU tar on the guest extracts it)."""
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape") as archive:
        for path, node in plan.members:
            info = _member_info(path, node)
            if info.type == tarfile.REGTYPE:
                prefix = b""
                if node.extents is not None:
                    prefix = _sparse_map(node)
                    info.size = len(prefix) + sum(length for _offset, length in node.extents)
                    info.pax_headers.update({
                        "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                        "GNU.sparse.name": info.name, "GNU.sparse.realsize": str(node.size),
                    })
                archive.addfile(info, _NodeReader(store, node, path, prefix))
                counts.files_written += 1
                counts.bytes_written += node.size
            else:
                archive.addfile(info)
                if info.type == tarfile.LNKTYPE:
                    counts.files_written += 1
                else:
                    counts.metadata_only += 1
            counts.nodes += 1


def _member_info(path: bytes, node: Node) -> tarfile.TarInfo:
    info = tarfile.TarInfo("./" + path.decode("utf-8", "surrogateescape") if path else ".")
    info.type = _TAR_TYPES[node.kind]
    info.mode = node.mode
    info.uid, info.gid = node.uid, node.gid
    info.uname, info.gname = node.user or "", node.group or ""
    info.mtime = node.mtime_ns // 1_000_000_000
    headers = {"mtime": _exact_time(node.mtime_ns)}
    for name, value in node.xattrs:
        headers[XATTR_PREFIX + name.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = headers
    if _names_another(path, node):  # another name of an inode the stream (or the guest) holds already
        info.type = tarfile.LNKTYPE
        info.linkname = "./" + node.hardlink.decode("utf-8", "surrogateescape")
    elif node.kind == KIND_FILE:
        info.size = node.size
    elif node.kind == KIND_SYMLINK:
        info.linkname = node.target.decode("utf-8", "surrogateescape")
    elif node.kind in (KIND_CHAR, KIND_BLOCK):
        info.devmajor, info.devminor = node.rdev
    return info


def _names_another(path: bytes, node: Node) -> bool:
    return node.hardlink is not None and node.hardlink != path


def _exact_time(ns: int) -> str:
    seconds, fraction = divmod(ns, 1_000_000_000)
    return f"{seconds}.{fraction:09d}"


class _NodeReader:
    """What tarfile copies for a file: its stored data (the data extents only, for a sparse
    file), after `prefix` (a sparse file's map)."""

    def __init__(self, store: ChunkStore, node: Node, path: bytes, prefix: bytes = b""):
        self._store = store
        self._path = path
        self._chunks = iter(node.chunk_ids())
        self._buffer = memoryview(prefix)

    def read(self, size: int) -> bytes:
        out = bytearray()
        while len(out) < size:
            if not self._buffer:
                chunk = next(self._chunks, None)
                if chunk is None:
                    raise CorruptObject(f"{quote_path(self._path)}: stored data is shorter than the file's size")
                self._buffer = memoryview(self._store.get(chunk))
            take = self._buffer[: size - len(out)]
            out += take
            self._buffer = self._buffer[len(take):]
        return bytes(out)


def _sparse_map(node: Node) -> bytes:
    """GNU tar's sparse format 1.0: the map in decimal lines, padded to a 512-byte block."""
    extents = list(node.extents)
    end = extents[-1][0] + extents[-1][1] if extents else 0
    if end < node.size or not extents:
        extents.append((node.size, 0))  # the size of a file that ends in a hole
    lines = [str(len(extents))] + [str(number) for extent in extents for number in extent]
    text = ("\n".join(lines) + "\n").encode()
    return text + bytes(-len(text) % tarfile.BLOCKSIZE)

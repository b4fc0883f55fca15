"""Restore a saved tree onto a tree that lives elsewhere (a guest) with a tar stream.

From the difference between what the guest holds and the entry, the guest is sent the
paths to delete (those the entry lacks or holds as another type) and one pax tar stream
of what must change: new and changed files with their data, and header-only members for
metadata changes and for every directory above a change (so its mtime is set last, by
tar). Unchanged files never cross the network.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from vml.areas.restore.local import RestoreProgress
from vml.areas.rules import Rules, may_delete
from vml.areas.tarformat import member_of_node, names_another
from vml.errors import CorruptObject
from vml.objects.diff import DELETED, diff_roots
from vml.objects.manifest import KIND_DIR, KIND_FILE, Listing, Node, check_name
from vml.objects.store import ChunkStore
from vml.objects.walk import node_at, root_node
from vml.pathnames import quote_path


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
        if change.status == DELETED and not may_delete(path, change.old.kind == KIND_DIR, entry_rules):
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
        if node.kind == KIND_FILE and not names_another(path, node):
            plan.data_bytes += node.size
    return plan


def write_tar(plan: GuestPlan, store: ChunkStore, sink: IO[bytes], counts: RestoreProgress) -> None:
    """The plan's members as a pax tar stream on `sink` (GNU tar on the guest extracts it)."""
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape") as archive:
        for path, node in plan.members:
            info, prefix = member_of_node(path, node)
            if info.type == tarfile.REGTYPE:
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

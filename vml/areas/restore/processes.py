"""Writer processes of a large restore (vml/workers.py): each opens the same store read-only
and is given batches of files with the descriptors of the directories they go in, and
writes them relative to those exactly as a writer thread would (files.py)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from vml.areas.restore.files import Birth, FileWriter
from vml.objects.manifest import KIND_FILE, Node
from vml.objects.store import ChunkStore
from vml.workers import FILE_COST, Handler, Workers, then

Item = tuple[int, Node, bytes, bytes]  # directory descriptor, node, name to write it as, path from the top
Done = tuple[int, int, list[tuple[bytes, str]]]  # files written, their bytes, what could not be kept


class WriterProcesses:
    """`submit` hands a batch to a writer and gives a Future of its `Done`, after `on_done`
    has been called with it."""

    def __init__(self, store_root: str, birth: Birth, count: int, on_done: Callable[[Done], None]):
        self._on_done = on_done
        self._workers = Workers(f"{__name__}:writer", (store_root, birth), count, role="writer process of the restore")

    def submit(self, batch: list[Item]) -> Future:
        descriptors: list[int] = []
        places: dict[int, int] = {}
        items = []
        work = 0
        for dir_fd, node, name, rel in batch:
            work += node.size + FILE_COST
            place = places.get(dir_fd)
            if place is None:
                place = places[dir_fd] = len(descriptors)
                descriptors.append(dir_fd)
            # A node's fields, not the node: pickle writes a tuple of numbers and bytes in C,
            # a dataclass through Python (it was a sixth of the restoring process's time).
            items.append((place, node.name, node.mode, node.uid, node.gid, node.mtime_ns, node.size, node.xattrs, node.chunks, node.extents,
                          name, rel))
        return then(self._workers.submit(items, descriptors=descriptors, weight=work), self._count)

    def _count(self, done: Done) -> Done:
        self._on_done(done)
        return done

    def close(self, *, kill: bool = False) -> None:
        self._workers.close(kill=kill)


def writer(setup: tuple[str, Birth]) -> Handler:
    store_root, birth = setup
    not_restored: list[tuple[bytes, str]] = []
    files = FileWriter(ChunkStore(store_root).open(), birth, not_restored)

    def write(items: list[tuple], descriptors: list[int]) -> Done:
        not_restored.clear()  # (what a failed batch left: that restore has failed)
        written = written_bytes = 0
        for place, node_name, mode, uid, gid, mtime_ns, size, xattrs, chunks, extents, name, rel in items:
            node = Node(node_name, KIND_FILE, mode, uid, gid, None, None, mtime_ns, size, xattrs, chunks=chunks, extents=extents)
            files.write_file(descriptors[place], node, name, rel)
            written += 1
            written_bytes += size
        return written, written_bytes, not_restored[:]

    return write

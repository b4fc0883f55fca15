"""Verifying the chunk store: every pack read whole and every blob hashed, then each entry's
tree walked to name the files that damaged or missing blobs belong to."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from vml.errors import CorruptObject, UnsafePath
from vml.objects.ids import ObjectId
from vml.objects.manifest import KIND_DIR, KIND_FILE, MAX_DEPTH, Listing
from vml.objects.pack import read_table
from vml.objects.store import ChunkStore
from vml.objects.walk import node_at

MAX_REPORTED = 100  # damaged paths named below one directory (a listing named 2^40 times must not list them all)


@dataclass(slots=True)
class PackCheck:
    packs: int = 0
    blobs: int = 0
    bytes: int = 0
    damaged_blobs: set[bytes] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_packs(store: ChunkStore, progress: Callable[[int, int], None] | None = None) -> PackCheck:
    """Read every pack and verify every blob in it against its id (and the sums of the
    large index files, which opening a store does not check)."""
    store.verify_indexes()
    result = PackCheck(
        problems=[f"{p.path}: {p.message}" for p in store.problems if not p.recovered],
        warnings=[f"{p.path}: {p.message}" for p in store.problems if p.recovered],
    )
    pack_files = store.list_pack_files()
    indexed = {store.pack_ids[location[0]] for _id, location in store.items()}
    unreadable = set(indexed - pack_files.keys())
    for pack_id in sorted(unreadable):
        result.problems.append(f"pack {pack_id.short()} is listed in the index but missing")

    def check_one(pack_id: ObjectId) -> tuple[int, int, list[bytes], list[str]]:
        damaged, problems, blobs, size = [], [], 0, 0
        pack_no = store.pack_number(pack_id)
        try:
            entries = read_table(pack_files[pack_id])
        except CorruptObject as error:
            unreadable.add(pack_id)
            return 0, 0, [], [str(error)]
        for entry in entries:
            blobs += 1
            size += entry.length
            location = (pack_no, entry.offset, entry.length, entry.raw_length, entry.blob_type, entry.flag)
            try:
                store.read_location(entry.id, location)
            except CorruptObject as error:
                problems.append(str(error))
                found = store.location(entry.id)
                if found is None or found[0] == pack_no:
                    damaged.append(entry.id)
        return blobs, size, damaged, problems

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="vml-fsck") as pool:
        for done, (blobs, size, damaged, problems) in enumerate(pool.map(check_one, sorted(pack_files)), 1):
            result.packs += 1
            result.blobs += blobs
            result.bytes += size
            result.damaged_blobs.update(damaged)
            result.problems.extend(problems)
            if progress:
                progress(done, len(pack_files))
    # Every blob the index places in a missing or unreadable pack is lost with it.
    bad_numbers = {store.pack_number(pack_id) for pack_id in unreadable}
    result.damaged_blobs.update(blob_id for blob_id, location in store.items() if location[0] in bad_numbers)
    return result


class TreeChecker:
    """Finds, for an entry's tree, every path whose data or listing is damaged or missing,
    and a root whose list of hardlink groups disagrees with its nodes. Results are
    remembered per listing id, so entries sharing subtrees cost little more."""

    def __init__(self, store: ChunkStore, load: Callable[..., Listing], damaged: set[bytes]):
        self.store = store
        self.load = load
        self.damaged = damaged
        self._memo: dict[bytes, list[tuple[bytes, str]]] = {}
        self._totals: dict[bytes, tuple[int, int, int]] = {}  # listing id -> what it declares (checked)
        self._linked: dict[bytes, int] = {}  # listing id -> nodes below it that name a hardlink group's first member

    def _blob_problem(self, blob_id: bytes) -> str | None:
        if blob_id in self.damaged:
            return "damaged"
        if blob_id not in self.store:
            return "missing"
        return None

    def check_root(self, root_id: bytes) -> list[tuple[bytes, str]]:
        problem = self._blob_problem(root_id)
        if problem:
            return [(b"/", f"root listing {problem}")]
        try:
            listing = self.load(root_id, root=True)
        except (CorruptObject, UnsafePath) as error:
            return [(b"/", str(error))]
        top = listing.nodes[0].tree
        found = self.check_listing(top)
        if not found and (listing.totals.nodes, listing.totals.files, listing.totals.bytes) != self._totals.get(top):
            found = [(b"/", "damaged manifest: the root's totals are not its top directory's")]
        if listing.links is not None and not found:
            found = self._check_groups(root_id, listing.links, self._linked.get(top, 0))
        return found

    def _check_groups(self, root_id: bytes, table: tuple[tuple[bytes, ...], ...], linked: int) -> list[tuple[bytes, str]]:
        """The root's groups must be exactly those its nodes name: each later member names
        the first, which names none, and no other node names one (checked by lookups and a
        count, never by expanding the tree)."""
        wrong = []
        for group in table:
            first = node_at(self.load, root_id, group[0])
            members = [node_at(self.load, root_id, path) for path in group[1:]]
            if first is None or first.hardlink is not None or any(m is None or m.hardlink != group[0] for m in members):
                wrong.append((group[0], "hardlink group listed in the root does not match the tree's nodes"))
        if not wrong and linked != sum(len(group) - 1 for group in table):
            wrong.append((b"/", "the tree has hardlinks its root does not list"))
        return wrong

    def check_listing(self, listing_id: bytes, depth: int = 0) -> list[tuple[bytes, str]]:
        """(path relative to this listing, reason) for everything wrong below it."""
        found = self._memo.get(listing_id)
        if found is not None:
            return found
        if depth >= MAX_DEPTH:
            return [(b".", f"directories nested deeper than {MAX_DEPTH} levels")]
        problem = self._blob_problem(listing_id)
        linked = 0
        if problem:
            found = [(b".", f"directory listing {problem}")]
        else:
            found = []
            try:
                listing = self.load(listing_id)
            except (CorruptObject, UnsafePath) as error:
                listing = Listing([])
                found.append((b".", str(error)))
            totals = [len(listing.nodes), 0, 0]
            for node in listing.nodes:
                if node.hardlink is not None:
                    linked += 1
                if node.kind == KIND_DIR:
                    for path, reason in self.check_listing(node.tree, depth + 1)[:MAX_REPORTED]:
                        found.append((node.name if path == b"." else node.name + b"/" + path, reason))
                    linked += self._linked.get(node.tree, 0)
                    below = self._totals.get(node.tree, (0, 0, 0))
                    totals = [totals[0] + below[0], totals[1] + below[1], totals[2] + below[2]]
                elif node.kind == KIND_FILE:
                    totals[1] += 1
                    totals[2] += node.size
                    for chunk_id in node.chunk_ids():
                        problem = self._blob_problem(chunk_id)
                        if problem:
                            found.append((node.name, f"data {problem}"))
                            break
            if not found and (listing.totals.nodes, listing.totals.files, listing.totals.bytes) != tuple(totals):
                found.append((b".", "damaged manifest: its totals are not those of what it lists"))
            self._totals[listing_id] = (listing.totals.nodes, listing.totals.files, listing.totals.bytes)
        self._memo[listing_id] = found
        self._linked[listing_id] = linked
        return found

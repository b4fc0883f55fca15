"""A capture's tree, bottom up, for both walkers (local.py, guest.py): each directory's
listing from its children's nodes or, where the stat cache vouches for every child, the
cached listing, decoding no node; then the root and the result. Whichever walker found
the files, they give the same listings and the same stat cache."""

from __future__ import annotations

from dataclasses import dataclass

from vml.areas.capture.sink import open_sink
from vml.areas.statcache import CachedDir, StatCache, dir_fingerprint, pack_children
from vml.objects.ids import ObjectId
from vml.objects.manifest import Node, Totals, decode_node, encode_listing_of_encoded, encode_node, encode_root
from vml.objects.store import ChunkStore


@dataclass(slots=True)
class CaptureProgress:
    files: int = 0
    bytes: int = 0
    files_read: int = 0
    bytes_read: int = 0


@dataclass(slots=True)
class CaptureResult:
    root_id: ObjectId
    totals: Totals
    cache: StatCache
    skipped: list[tuple[bytes, str]]
    changed_while_reading: list[bytes]
    progress: CaptureProgress
    listings: dict[bytes, bytes]  # listings kept in memory by a dry capture (id -> bytes)


@dataclass(slots=True)
class Child:
    """One child of a directory being listed, as the walker found it."""

    name: bytes
    key: bytes  # its stat cache key
    encoded: bytes  # its node, encoded
    node: Node | None  # the same node decoded, where the walker has it (None: decoded here)
    hardlink: bytes | None  # for another name of an inode, the path of its first name
    size: int  # what it counts for in the progress
    cacheable: bool  # its node may be reused next time its key is the same (not racy, read whole)
    listing_id: bytes | None = None  # a directory's listing
    totals: Totals | None = None  # and its totals

    def fingerprinted(self) -> tuple:
        return self.name, self.key, self.listing_id, self.hardlink


def other_name(first: Node, name: bytes, first_path: bytes) -> Node:
    """The node of another name of an inode: a copy of its first name's, naming that path."""
    node = decode_node(encode_node(first))
    node.name, node.hardlink = name, first_path
    return node


class Assembly:
    """One capture's sink (where its chunks and listings go), new stat cache and counts."""

    def __init__(self, store: ChunkStore, old_cache: StatCache, dry_run: bool):
        self.store = store
        self.sink = open_sink(store, dry_run)
        self.old_cache = old_cache
        self.new_cache = StatCache()
        self.counts = CaptureProgress()
        self._rebuilt = 0  # directories whose listing was built, not reused whole

    def has_data(self, node: Node) -> bool:
        """Whether a cached node's data is still in the store (gc may have removed it since)."""
        return all(chunk in self.store for chunk in node.chunk_ids())

    def reuse(self, rel: bytes, fingerprinted: list[tuple], size: int) -> tuple[bytes, Totals] | None:
        """The cached listing of the directory `rel` if its children, as (name, stat key,
        listing id, first name) each, are the cached ones (the walker has checked each is a
        cache hit) and `size` the bytes they count for; None if anything may have changed."""
        cached = self.old_cache.dirs.get(rel)
        if cached is None or cached.fingerprint is None:
            return None
        fingerprint = dir_fingerprint(fingerprinted)
        if fingerprint != cached.fingerprint or cached.listing_id not in self.store:
            return None
        self.new_cache.dirs[rel] = cached.same_children(fingerprint)
        self.counts.files += len(fingerprinted)
        self.counts.bytes += size
        return cached.listing_id, Totals(*cached.totals)

    def listing(self, rel: bytes, children: list[Child]) -> tuple[bytes, Totals]:
        """The listing of the directory `rel` from its children's nodes, and its totals."""
        totals = Totals()
        cache_children = []
        reusable = True  # false when something in it must not be trusted next time
        for child in children:
            totals.add_node(child.node if child.node is not None else decode_node(child.encoded))
            if child.totals is not None:
                totals.add(child.totals)
            if child.cacheable:
                cache_children.append((child.name, child.key, child.encoded))
            else:
                reusable = False
            self.counts.files += 1
            self.counts.bytes += child.size
        self._rebuilt += 1
        fingerprint = dir_fingerprint([child.fingerprinted() for child in children])
        cached = self.old_cache.dirs.get(rel)
        if cached is not None and cached.fingerprint == fingerprint and cached.listing_id in self.store:
            listing_id = cached.listing_id
        else:
            listing_id = self.sink.listing(encode_listing_of_encoded([child.encoded for child in children], totals))
        # (Its children packed as the cache file keeps them, now: held as dicts until the cache
        # was saved, they made the runtimes tree's first commit 47 MB larger (267 MB at its
        # peak), and packing them all took a tenth of a second after its last file was read.)
        self.new_cache.dirs[rel] = CachedDir(fingerprint if reusable else None, listing_id, (totals.nodes, totals.files, totals.bytes),
                                             packed=pack_children(cache_children))
        return listing_id, totals

    def distrust(self, rel: bytes, name: bytes) -> None:
        """A child of the directory `rel`, listed already, that must not be trusted next time
        (found to have changed as it was read, after its directory was listed): the directory's
        new cache entry without it, and with no fingerprint, as `listing` would have made it."""
        cached = self.new_cache.dirs.get(rel)
        if cached is not None:
            children = [(child, key, node) for child, (key, node) in cached.children.items() if child != name]
            self.new_cache.dirs[rel] = CachedDir(None, cached.listing_id, cached.totals, packed=pack_children(children))

    def result(self, top: Node, listing_id: bytes, totals: Totals, links: list[list[bytes]],
               skipped: list[tuple[bytes, str]], changed_while_reading: list[bytes]) -> CaptureResult:
        """The capture's result, its root listing stored: `top` (the top directory's node)
        holding `listing_id`, with the tree's `totals` and hardlink groups (`links`)."""
        top.name, top.tree = b"", listing_id
        totals = Totals(totals.nodes, totals.files, totals.bytes)
        root_id = self.sink.listing(encode_root(top, totals, links))
        # Every directory reused whole, and no other: the new cache is the old one, entry for
        # entry, and saving it would write the same bytes again (an unchanged re-commit).
        if self._rebuilt == 0 and self.new_cache.dirs.keys() == self.old_cache.dirs.keys():
            self.new_cache.same_as = self.old_cache.loaded_from
        return CaptureResult(root_id, totals, self.new_cache, skipped, changed_while_reading, self.counts, self.sink.listings)

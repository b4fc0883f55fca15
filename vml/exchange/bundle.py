"""Bundle files: the entries and blobs of an export in one file, checked whole before import.

Layout (integers little-endian):

    b"VMLBNDL\\x01"
    u32 header length, header (JSON): format, kind, entry, ref, requires, commits
    u32 git object count, then per object: u8 type (1 commit, 2 tree, 3 blob), 20-byte id,
        u32 length, content
    u32 pack count, then per pack: u64 length, a vml pack (vml/objects/pack.py); a count of
        0xFFFFFFFF: packs follow until the trailer (a transfer, written while it is sent)
    32-byte BLAKE3 of everything before it

`requires` names the entries the receiver must already have: the bundle holds only what
is new since them. Import reads the file twice: first to check everything (trailer hash,
every git object's id, every blob's id, that each entry's tree is complete given the
required entries), then to store it. A damaged or hostile bundle is rejected before
anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from vml.durable import atomic_file
from vml.entry import ENTRY_FILE, BaseRef, EntryInfo
from vml.errors import BaseMissing, CorruptObject, UsageError
from vml.exchange.fetch import parse_commit, parse_tree
from vml.exchange.push import manifest_lists, root_pairs
from vml.objects.compress import MAX_BLOB
from vml.objects.hashing import StreamingId, object_id
from vml.objects.ids import ObjectId
from vml.objects.manifest import decode_listing
from vml.objects.pack import TARGET_SIZE, TYPE_TREE, PackEntry, open_blob, parse_table
from vml.objects.store import ChunkStore
from vml.objects.walk import missing_blobs, privileged_nodes, shared_blobs
from vml.refs.bases import BaseName
from vml.refs.git import GitDag
from vml.refs.namespace import BASE_PREFIX, BRANCH_PREFIX, PUBLIC_PREFIX, REFS_PREFIX, TAG_PREFIX

MAGIC = b"VMLBNDL\x01"
FORMAT = 1
FULL, INCREMENTAL, DIFFERENTIAL, SINCE = "full", "incremental", "differential", "since"
TRANSFER = "transfer"  # a push or fetch over HTTP: the refs it carries are in the header's "refs"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_OBJECT = struct.Struct("<B20sI")
_TYPES = {"commit": 1, "tree": 2, "blob": 3}
_TYPE_NAMES = {code: name for name, code in _TYPES.items()}
TRAILER = 32
MAX_HEADER = 16 * 1024 * 1024
UNTIL_TRAILER = 0xFFFFFFFF  # the pack count of a streamed bundle
MAX_PACK = TARGET_SIZE + MAX_BLOB + (16 << 20)  # a pack is cut after the blob that passes TARGET_SIZE; it is read whole
VERIFY_THREADS = 2  # packs checked at once (zstd and BLAKE3 release the GIL)


@dataclass(frozen=True, slots=True)
class BundleInfo:
    kind: str
    entry: str
    ref: str | None
    requires: list[str]
    commits: list[str]
    blobs: int
    bytes: int  # the bundle file's size
    packs: int = 0  # written: how many packs it holds
    bases: dict[str, str] = field(default_factory=dict)  # base refs the bundle carries -> their commits
    refs: dict[str, str] = field(default_factory=dict)  # a transfer's refs -> their entries
    parents: dict[str, list[str]] = field(default_factory=dict)  # read: each commit it holds -> its parents
    privileged: tuple[int, list[tuple[bytes, str]]] = (0, [])  # setuid/setgid-root files and devices it brings


# -- export


class Sink(Protocol):
    """Where a bundle is written: an open file, or one another thread reads as it grows."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...



def write_bundle(git: GitDag, store: ChunkStore, path: str, *, entry: str, ref: str | None, kind: str,
                 requires: list[str], tmp_dir: str, base: BaseRef | None = None, base_roots: list[ObjectId] = (),
                 bases: dict[str, str] | None = None, refs: dict[str, str] | None = None, sink: Sink | None = None) -> BundleInfo:
    """Write a bundle of `entry` holding every commit not reachable from `requires` and every
    blob their trees need that the trees of `requires` (and of the base image, for a
    differential bundle) lack; `bases` (ref -> commit) go along whole, for a receiver
    that must need nothing; `refs` (a transfer's) go along like `entry`. Atomic: FILE is
    whole or absent. With `sink` (an open file) the bundle is streamed into it instead,
    each pack as soon as it is made, for a reader that follows the file as it grows."""
    bases = bases or {}
    refs = refs or {}
    commits = git.commits_between([entry, *bases.values(), *refs.values()], requires)
    load = store.get_many  # (a server's cache of a bucket reads what it lacks a level of directories at a time)
    new_lists = manifest_lists(git, commits)
    have = shared_blobs(load, load, root_pairs(manifest_lists(git, requires) + ([list(base_roots)] if base_roots else []), new_lists))
    listings, chunks = missing_blobs(load, [root for roots in new_lists for root in roots], have.__contains__)
    header = {"format": FORMAT, "kind": kind, "entry": entry, "ref": ref, "requires": requires, "commits": commits}
    if base is not None:
        header["base"] = {"name": base.name, "version": base.version, "digest": base.digest}
    if bases:
        header["bases"] = bases
    if refs:
        header["refs"] = refs
    blob_ids = chunks + [listing_id for listing_id, _data in listings]  # children before parents
    staging = tempfile.mkdtemp(prefix="bundle-", dir=tmp_dir)
    try:
        if sink is not None:
            size, packs = _write_contents(git, store, sink, header, commits, blob_ids, staging, streamed=True)
        else:
            with atomic_file(os.path.abspath(path)) as file_sink:
                size, packs = _write_contents(git, store, file_sink, header, commits, blob_ids, staging, streamed=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BundleInfo(kind, entry, ref, requires, commits, len(blob_ids), size, packs=packs, bases=bases, refs=refs)


def _write_contents(git: GitDag, store: ChunkStore, sink: Sink, header: dict, commits: list[str], blob_ids: list[bytes],
                    staging: str, *, streamed: bool) -> tuple[int, int]:
    """Write the bundle; (its size, its number of packs)."""
    hasher = StreamingId()
    size = packs_written = 0

    def emit(data: bytes) -> None:
        nonlocal size
        sink.write(data)
        hasher.update(data)
        size += len(data)

    encoded = json.dumps(header, sort_keys=True).encode()
    emit(MAGIC + _U32.pack(len(encoded)) + encoded)
    git_objects = [o for c in commits for o in git.tree_objects(c) + [c]]
    emit(_U32.pack(len(git_objects)))
    for object_hex in git_objects:
        type_name, content = git.read_raw(object_hex)
        emit(_OBJECT.pack(_TYPES[type_name], bytes.fromhex(object_hex), len(content)) + content)
    made = store.copy_to_packs(blob_ids, staging)
    if streamed:
        emit(_U32.pack(UNTIL_TRAILER))
        packs: Iterator[str] = (pack_file for _pack_id, pack_file, _entries in made)
    else:  # staged: the count comes first
        staged = [pack_file for _pack_id, pack_file, _entries in made]
        emit(_U32.pack(len(staged)))
        packs = iter(staged)
    for pack_path in packs:
        emit(_U64.pack(os.path.getsize(pack_path)))
        with open(pack_path, "rb") as pack_file:
            for piece in iter(lambda: pack_file.read(1024 * 1024), b""):
                emit(piece)
        os.unlink(pack_path)
        packs_written += 1
        if streamed:
            sink.flush()
    sink.write(hasher.digest())
    sink.flush()
    return size + TRAILER, packs_written


# -- import


@dataclass(frozen=True, slots=True)
class _Contents:
    header: dict
    git_objects: list[tuple[str, str, bytes]]  # (id, type name, content)
    packs: list[tuple[int, int]]  # (offset in the file, length)
    size: int


class _Reader:
    def __init__(self, bundle_file, size: int):
        self.file = bundle_file
        self.size = size
        self.position = 0

    def take(self, length: int) -> bytes:
        if length < 0 or self.position + length > self.size - TRAILER:
            raise CorruptObject("the bundle is truncated or its lengths are damaged")
        data = self.file.read(length)
        if len(data) != length:
            raise CorruptObject("the bundle is truncated")
        self.position += length
        return data

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]


def _check_trailer(bundle_file, size: int) -> None:
    if size < len(MAGIC) + TRAILER:
        raise CorruptObject("the file is too short to be a vml bundle")
    hasher = StreamingId()
    remaining = size - TRAILER
    bundle_file.seek(0)
    while remaining:
        piece = bundle_file.read(min(remaining, 4 * 1024 * 1024))
        if not piece:
            raise CorruptObject("the bundle is truncated")
        hasher.update(piece)
        remaining -= len(piece)
    if bundle_file.read(TRAILER) != hasher.digest():
        raise CorruptObject("the bundle is damaged (its checksum does not match)")


def _parse(bundle_file, size: int) -> _Contents:
    bundle_file.seek(0)
    reader = _Reader(bundle_file, size)
    if reader.take(len(MAGIC)) != MAGIC:
        raise CorruptObject("not a vml bundle (bad magic)")
    header_length = reader.u32()
    if header_length > MAX_HEADER:
        raise CorruptObject("the bundle header is impossibly large")
    try:
        header = json.loads(reader.take(header_length))
        if header.get("format") != FORMAT:
            raise ValueError(f"unknown bundle format {header.get('format')!r}")
        for key in ("requires", "commits"):
            if not isinstance(header.get(key), list) or not all(_is_hex_id(c) for c in header[key]):
                raise ValueError(f"bad {key!r}")
        if not _is_hex_id(header.get("entry")) or header.get("kind") not in (FULL, INCREMENTAL, DIFFERENTIAL, SINCE, TRANSFER):
            raise ValueError("bad entry or kind")
        ref = header.get("ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith((BRANCH_PREFIX, TAG_PREFIX, PUBLIC_PREFIX))
                                    and GitDag.is_valid_ref_name(ref)):
            raise ValueError("bad ref name")
        bases = header.get("bases", {})
        if not isinstance(bases, dict) or not all(
            isinstance(name, str) and name.startswith(BASE_PREFIX) and GitDag.is_valid_ref_name(name) and name.count("/") == 4
            and _is_hex_id(commit) and commit in header["commits"] for name, commit in bases.items()
        ):
            raise ValueError("bad base refs")
        refs = header.get("refs", {})
        if not isinstance(refs, dict) or not all(isinstance(name, str) and name.startswith(REFS_PREFIX) and GitDag.is_valid_ref_name(name)
                                                  and _is_hex_id(commit) for name, commit in refs.items()):
            raise ValueError("bad refs")
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise CorruptObject(f"the bundle header is damaged: {error}") from None
    git_objects = []
    for _ in range(reader.u32()):
        type_code, raw_id, length = _OBJECT.unpack(reader.take(_OBJECT.size))
        if type_code not in _TYPE_NAMES:
            raise CorruptObject("the bundle holds an unknown kind of git object")
        content = reader.take(length)
        type_name = _TYPE_NAMES[type_code]
        object_hex = raw_id.hex()
        if hashlib.sha1(f"{type_name} {length}".encode() + b"\0" + content).hexdigest() != object_hex:
            raise CorruptObject(f"git object {object_hex[:12]} in the bundle is damaged (hash mismatch)")
        git_objects.append((object_hex, type_name, content))
    packs = []
    count = reader.u32()
    while len(packs) < count if count != UNTIL_TRAILER else reader.position < size - TRAILER:
        length = _U64.unpack(reader.take(8))[0]
        packs.append((reader.position, length))
        if reader.position + length > size - TRAILER:
            raise CorruptObject("the bundle is truncated (a pack runs past its end)")
        if length > MAX_PACK:
            raise CorruptObject(f"the bundle holds a pack of {length:,} bytes, more than a pack can be ({MAX_PACK:,})")
        bundle_file.seek(length, os.SEEK_CUR)
        reader.position += length
    if reader.position != size - TRAILER:
        raise CorruptObject("the bundle has bytes it does not describe")
    return _Contents(header, git_objects, packs, size)


def _is_hex_id(value) -> bool:
    return isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value)


CheckedPack = tuple[list[PackEntry], dict[bytes, bytes]]  # a pack's table, and the raw bytes of its listings


def _check_pack(fd: int, start: int, length: int) -> CheckedPack:
    """Every blob of the pack at `start` checked against its id."""
    return _check_pack_data(_read_pack(fd, start, length))


def _read_pack(fd: int, start: int, length: int) -> bytes:
    data = os.pread(fd, length, start)
    if len(data) != length:
        raise CorruptObject("the bundle is truncated")
    return data


def _check_pack_data(data: bytes) -> CheckedPack:
    entries, listings = [], {}
    for e, _payload, raw in _pack_blobs(data):
        entries.append(e)
        if e.blob_type == TYPE_TREE:
            listings[e.id] = raw
    return entries, listings


def _pack_blobs(data: bytes) -> Iterator[tuple[PackEntry, bytes, bytes]]:
    """(table entry, stored payload, raw bytes) of every blob of one pack's bytes, each
    verified against its id."""
    for e in parse_table("in the bundle", len(data), lambda offset, size: data[offset : offset + size]):
        payload = data[e.offset : e.offset + e.length]
        try:
            raw = open_blob(e.id, e.flag, payload, e.raw_length)
        except CorruptObject:
            raise CorruptObject(f"object {e.id.hex()[:16]} in the bundle is damaged (hash mismatch)") from None
        yield e, payload, raw


def _verify_packs(bundle_file, contents: _Contents, checked: dict[tuple[int, int], CheckedPack]) -> tuple[list[list[PackEntry]], dict[bytes, bytes]]:
    """Every blob of every pack checked against its id, packs side by side (those in
    `checked` were, while the bundle arrived): each pack's table, and the raw bytes of the
    listings (the check of the trees reads them)."""
    fd = bundle_file.fileno()

    def check(pack: tuple[int, int]) -> CheckedPack:
        return checked[pack] if pack in checked else _check_pack(fd, *pack)

    with ThreadPoolExecutor(max_workers=VERIFY_THREADS, thread_name_prefix="vml-verify") as pool:
        results = list(pool.map(check, contents.packs))
    return [entries for entries, _listings in results], {i: raw for _entries, listings in results for i, raw in listings.items()}


class ArrivingBundle:
    """Checks the packs of a bundle while it is still arriving (an upload to a server), so
    that little is left to check when it is whole. Only a hint: the bundle is parsed anew
    when whole, and a pack checked here counts only if it lies exactly where that parse
    finds one. The file must only grow (an upload appends at its end, nothing else writes it)."""

    def __init__(self, path: str, stage: str | None = None):
        self.path = path
        self.stage = stage  # where checked packs are copied, durably, for the store to take by renaming (STAGE-N.pack)
        self.checked: dict[tuple[int, int], CheckedPack] = {}
        self.staged: dict[tuple[int, int], tuple[str, ObjectId]] = {}  # (start, length) -> (its copy, its pack id)
        self._position = 0  # where the next unparsed part starts
        self._stage = "head"
        self._objects_left = 0
        self._stopped = False

    def advance(self, available: int) -> None:
        """Check every pack that lies wholly within the first `available` bytes."""
        if self._stopped:
            return
        try:
            with open(self.path, "rb") as bundle_file:
                while self._step(bundle_file.fileno(), available):
                    pass
        except (CorruptObject, ValueError, OSError, struct.error):
            self._stopped = True  # a damaged bundle: its check when whole says what is wrong

    def _step(self, fd: int, available: int) -> bool:
        at = self._position

        def have(length: int) -> bool:
            return at + length <= available

        if self._stage == "head":
            if not have(len(MAGIC) + 4):
                return False
            header_length = _U32.unpack(os.pread(fd, 4, at + len(MAGIC)))[0]
            if header_length > MAX_HEADER or not have(len(MAGIC) + 4 + header_length + 4):
                return False
            at += len(MAGIC) + 4 + header_length
            self._objects_left = _U32.unpack(os.pread(fd, 4, at))[0]
            self._position, self._stage = at + 4, "objects"
        elif self._stage == "objects":
            if self._objects_left == 0:
                if not have(4):
                    return False
                self._position, self._stage = at + 4, "packs"
                return True
            if not have(_OBJECT.size):
                return False
            _type, _id, length = _OBJECT.unpack(os.pread(fd, _OBJECT.size, at))
            if not have(_OBJECT.size + length):
                return False
            self._position = at + _OBJECT.size + length
            self._objects_left -= 1
        else:
            if not have(8):
                return False
            length = _U64.unpack(os.pread(fd, 8, at))[0]
            if length > MAX_PACK or not have(8 + length):
                return False
            data = _read_pack(fd, at + 8, length)
            self.checked[(at + 8, length)] = _check_pack_data(data)
            if self.stage is not None:
                self.staged[(at + 8, length)] = _staged_copy(f"{self.stage}-{len(self.staged)}.pack", data)
            self._position = at + 8 + length
        return True


def _staged_copy(path: str, data: bytes) -> tuple[str, ObjectId]:
    """A checked pack's bytes in a file of their own, fsynced: (the file, the pack's id)."""
    with open(path, "wb") as sink:
        sink.write(data)
        sink.flush()
        os.fsync(sink.fileno())
    return path, object_id(data)


def _store_packs(bundle_file, contents: _Contents, tables: list[list[PackEntry]], wanted: set[bytes], store: ChunkStore,
                 staged: dict[tuple[int, int], tuple[str, ObjectId]]) -> None:
    """Store the wanted blobs of checked packs: a pack all of whose blobs are wanted and new
    is taken whole (renamed into the store if it was staged); of another, the wanted blobs
    the store lacks are added one by one."""
    fd = bundle_file.fileno()
    for (start, length), entries in zip(contents.packs, tables):
        if all(e.id in wanted and e.id not in store for e in entries):
            if (start, length) in staged:
                store.adopt_file(*staged[(start, length)], entries)
            else:
                store.adopt_pack(fd, start, length, entries)
            continue
        data = os.pread(fd, length, start)
        for e in entries:
            if e.id in wanted:
                store.add(e.id, e.blob_type, e.flag, data[e.offset : e.offset + e.length], e.raw_length)


def _blobs(bundle_file, contents: _Contents) -> Iterator[tuple[PackEntry, bytes, bytes]]:
    """(table entry, stored payload, raw bytes) of every blob, each verified against its id."""
    for start, length in contents.packs:
        yield from _pack_blobs(_read_pack(bundle_file.fileno(), start, length))


@dataclass(frozen=True, slots=True)
class Readable:
    """What a receiver may count on besides the bundle: by default everything it holds. A
    server receiving from one of many users counts only on what that user may read, and
    never looks at anything else it holds (vml/server/exchange.py): whether it holds a blob
    the user cannot read must make no difference to what it answers."""

    commit: Callable[[str], bool]
    git_object: Callable[[str], bool]
    blob: Callable[[bytes], bool]
    strict: bool = False  # listings are read from the bundle only, never from the store
    # Strict: instead of `blob`, the trees of the entries the bundle builds on (each entry's
    # list), whose blobs along the paths where the new trees differ are what it may count on.
    builds_on: Callable[[], list[list[ObjectId]]] | None = None


def read_bundle(git: GitDag, store: ChunkStore, path: str, readable: Readable | None = None,
                checked: dict[tuple[int, int], CheckedPack] | None = None,
                staged: dict[tuple[int, int], tuple[str, ObjectId]] | None = None) -> tuple[BundleInfo, Callable[..., None]]:
    """Check a bundle whole; return what it holds and a function that stores it.
    Nothing is written until that function is called. `checked` and `staged`: the packs an
    ArrivingBundle checked already, and copied."""
    readable = readable or Readable(git.has_object, git.has_object, store.__contains__)
    try:
        bundle_file = open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"no such bundle: {path}") from None
    with bundle_file:
        size = os.fstat(bundle_file.fileno()).st_size
        _check_trailer(bundle_file, size)
        contents = _parse(bundle_file, size)
        header = contents.header
        _check_base(git, header.get("base"))
        missing = [c for c in header["requires"] if not readable.commit(c)]
        if missing:
            raise UsageError(
                f"this bundle needs entries this repository lacks: {', '.join(c[:12] for c in missing)} "
                f"(fetch or import them first, or export with --full)"
            )
        objects = {object_hex: (type_name, content) for object_hex, type_name, content in contents.git_objects}
        root_lists = _check_commits(git, header, objects, readable)
        roots = [root for listed_roots in root_lists for root in listed_roots]
        pack_tables, raw_listings = _verify_packs(bundle_file, contents, checked or {})
        in_bundle = {e.id for table in pack_tables for e in table}

        def load_raw(blob_ids: list[bytes]) -> list[bytes]:
            if readable.strict and not all(b in raw_listings for b in blob_ids):
                missing = next(b for b in blob_ids if b not in raw_listings)
                raise CorruptObject(f"it lacks listing {missing.hex()[:16]}, which its entries need")
            return [raw_listings[b] if b in raw_listings else store.get(b) for b in blob_ids]

        known = readable.blob
        if readable.builds_on is not None:  # only what those trees hold, found where the new ones differ
            shared = shared_blobs(store.get_many, lambda ids: [raw_listings.get(i) for i in ids],
                                  root_pairs(readable.builds_on(), root_lists))
            known = shared.__contains__
        try:
            listings, chunks = missing_blobs(load_raw, roots, known)
        except CorruptObject as error:
            raise CorruptObject(f"the bundle is incomplete or damaged: {error}") from None
        absent = [b for b in chunks + [listing_id for listing_id, _data in listings] if b not in in_bundle]
        if absent:
            raise CorruptObject(f"the bundle is incomplete: it lacks {len(absent)} objects its entries need (first {absent[0].hex()[:16]})")
        order = chunks + [listing_id for listing_id, _data in listings]
        new_listings = {listing_id: data for listing_id, data in listings}
        privileged = (0, []) if header["kind"] == TRANSFER else privileged_nodes(  # an import reports them; a push or fetch does not
            lambda blob_id, root=False: decode_listing(new_listings[blob_id], root=root), roots, set(new_listings))
    info = BundleInfo(header["kind"], header["entry"], header["ref"], header["requires"], header["commits"], len(in_bundle), size,
                      packs=len(contents.packs), bases=dict(header.get("bases", {})), refs=dict(header.get("refs", {})),
                      parents={c: parse_commit(objects[c][1])[1] for c in header["commits"]}, privileged=privileged)

    def store_all(*, trusted: bool = False) -> None:
        """Store what was checked. `trusted`: the file is this process's own (a transfer it
        received into a directory nobody else writes), so its blobs are not verified again,
        and a pack whose blobs are all new and all needed is taken whole, as it is."""
        with open(path, "rb") as again:
            if os.fstat(again.fileno()).st_size != size:
                raise CorruptObject("the bundle changed while it was imported; nothing was recorded")
            wanted = set(order)
            try:
                if trusted:
                    _store_packs(again, contents, pack_tables, wanted, store, staged or {})
                else:
                    for e, payload, _raw in _blobs(again, contents):  # verified again: the file is read anew
                        if e.id in wanted:
                            store.add(e.id, e.blob_type, e.flag, payload, e.raw_length)
                store.flush()
            except BaseException:
                store.abandon()
                raise
        for object_hex in _parents_first(contents.git_objects):
            type_name, content = objects[object_hex]
            git.write_raw(type_name, content, object_hex)

    return info, store_all


def _check_commits(git: GitDag, header: dict, objects: dict[str, tuple[str, bytes]], readable: Readable) -> list[list[ObjectId]]:
    """Every commit listed is in the bundle with its tree and entry file, and its parents are
    in the bundle or readable here; returns each one's manifest roots. A strict receiver also
    wants every git object below each tree in the bundle or readable."""
    roots = []
    listed = set(header["commits"])
    for tip in [header["entry"], *header.get("refs", {}).values()]:
        if tip not in listed and not readable.commit(tip):
            raise CorruptObject("the bundle does not hold the entry it names")

    def held(object_id: str | None) -> tuple[str, bytes] | None:
        if object_id is None:
            return None
        return objects.get(object_id) or (git.read_raw(object_id) if readable.git_object(object_id) else None)

    for commit_id in header["commits"]:
        if objects.get(commit_id, ("", b""))[0] != "commit":
            raise CorruptObject(f"the bundle lists entry {commit_id[:12]} but does not hold it")
        tree_id, parents = parse_commit(objects[commit_id][1])
        for parent in parents:
            if parent not in listed and not readable.commit(parent):
                raise UsageError(f"this bundle needs entry {parent[:12]}, which this repository lacks")
        tree = held(tree_id)
        if tree is None or tree[0] != "tree":
            raise CorruptObject(f"the bundle lacks the tree of entry {commit_id[:12]}")
        items = parse_tree(tree[1])
        entry_file = next((item for is_tree, name, item in items if not is_tree and name == ENTRY_FILE), None)
        data = held(entry_file)
        if data is None:
            raise CorruptObject(f"entry {commit_id[:12]} in the bundle has no {ENTRY_FILE}")
        if readable.strict:
            _check_tree_held(items, held, commit_id)
        roots.append(EntryInfo.from_toml(data[1]).manifests())
    return roots


def _check_tree_held(items: list[tuple[bool, str, str]], held: Callable[[str | None], tuple[str, bytes] | None], commit_id: str) -> None:
    stack = list(items)
    while stack:
        is_tree, _name, item_id = stack.pop()
        found = held(item_id)
        if found is None:
            raise CorruptObject(f"the bundle lacks git object {item_id[:12]} of entry {commit_id[:12]}")
        if is_tree:
            stack.extend(parse_tree(found[1]))


def _check_base(git: GitDag, base: dict | None) -> None:
    """A differential bundle needs its base image here, the same image (by digest)."""
    if base is None:
        return
    try:
        name, version, digest = str(base["name"]), str(base["version"]), str(base["digest"])
    except (KeyError, TypeError):
        raise CorruptObject("damaged bundle header: its base is not a name, version and digest") from None
    commit = git.ref_target(BaseName(name, version).ref) if "/" not in name + version else None
    held = EntryInfo.from_toml(git.read_file(commit, ENTRY_FILE) or b"").base if commit else None
    if held is None:
        what = f"this bundle is differential to base {name}:{version} ({digest[:19]}…)"
        raise BaseMissing(f"{what}, which this repository lacks: add it with 'vml base add {name} {version} --image FILE' or fetch it first",
                          f"{name}:{version}", what)
    if held.digest != digest:
        raise UsageError(f"this bundle is differential to base {name}:{version} with digest {digest[:19]}…, "
                         f"but the base of that name here has {held.digest[:19]}…")


def _parents_first(git_objects: list[tuple[str, str, bytes]]) -> list[str]:
    """Trees and blobs first, then commits in the order written (export lists parents first)."""
    return [o[0] for o in git_objects if o[1] != "commit"] + [o[0] for o in git_objects if o[1] == "commit"]

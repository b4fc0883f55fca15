"""Another vml repository seen through a transport: its refs, git objects and blobs.

The remote's files have the layout of any repository (vml/repo.py), so a repository that
was pushed to is also one that vml opens directly. Git objects travel as loose objects
(entries hold three or four small ones each); blobs travel in packs, never one by one.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
import zlib
from dataclasses import dataclass

from vml.durable import write_atomically
from vml.errors import ConcurrentUpdate, CorruptObject, MissingObject, UsageError, VmlError
from vml.objects.gc import UPLOAD_GRACE
from vml.objects.hashing import object_id
from vml.objects.ids import ObjectId
from vml.objects.index import IndexFile, encode_index, parse_index, read_index
from vml.objects.pack import PackEntry, parse_table
from vml.refs.namespace import BASE_PREFIX, BRANCH_PREFIX, PUBLIC_PREFIX, TAG_PREFIX
from vml.repo import FORMAT_LINE
from vml.transport.base import MissingFile, Transport, TransportError

STORE = "vml/store"
PUSH_MARKERS = "vml/locks"  # push-<id> files: a push is writing (see check_no_push)
PUSH_PREFIX = "push-"
LOCK_WAIT = 10.0  # seconds a push waits for another push's ref lock before giving up
EXCHANGED = (BRANCH_PREFIX, TAG_PREFIX, BASE_PREFIX, PUBLIC_PREFIX)  # the refs push and fetch carry


@dataclass(frozen=True, slots=True)
class RemoteBlob:
    pack: ObjectId
    offset: int
    length: int
    raw_length: int
    blob_type: int
    flag: int


class RemoteBlobs:
    """Where each blob of a remote is: its sorted index files, searched where they lie (as a
    local store searches its own), then the blobs no such file names, in a dict."""

    def __init__(self, indexes: list[IndexFile]):
        self._indexes = indexes
        self._loose: dict[bytes, RemoteBlob] = {}

    def get(self, blob_id: bytes) -> RemoteBlob | None:
        found = self._loose.get(blob_id)
        if found is None:
            for index in self._indexes:
                record = index.find(blob_id)
                if record is not None:
                    _id, pack_no, blob_type, flag, offset, length, raw_length = record
                    return RemoteBlob(index.pack_ids[pack_no], offset, length, raw_length, blob_type, flag)
        return found

    def __contains__(self, blob_id: bytes) -> bool:
        return self.get(blob_id) is not None

    def __getitem__(self, blob_id: bytes) -> RemoteBlob:
        found = self.get(blob_id)
        if found is None:
            raise KeyError(blob_id)
        return found

    __iter__ = None  # (looked up one by one: the whole list is `RemoteRepository.packs`)

    def add(self, pack_id: ObjectId, entries: list[PackEntry]) -> None:
        for e in entries:
            self._loose[e.id] = RemoteBlob(pack_id, e.offset, e.length, e.raw_length, e.blob_type, e.flag)


def _entries_by_pack(index: IndexFile) -> dict[ObjectId, list[PackEntry]]:
    """Each pack the index file names and its entries, in the pack's order (as its table)."""
    found: dict[ObjectId, list[PackEntry]] = {}
    for raw_id, pack_no, blob_type, flag, offset, length, raw_length in index.records():
        found.setdefault(index.pack_ids[pack_no], []).append(PackEntry(ObjectId(raw_id), blob_type, flag, offset, length, raw_length))
    for entries in found.values():
        entries.sort(key=lambda e: e.offset)
    return found


def pack_file(pack_id: ObjectId) -> str:
    hex_id = pack_id.hex()
    return f"{STORE}/packs/{hex_id[:2]}/{hex_id}.pack"


class RemoteRepository:
    def __init__(self, transport: Transport, cache_dir: str | None = None):
        """`cache_dir`: where index files read from the remote are kept (they never change)."""
        self.transport = transport
        self.cache_dir = cache_dir
        try:
            format_line = transport.read("vml/format").decode("utf-8", "replace")
        except MissingFile:
            raise UsageError(f"{transport.location} is not a vml repository (make one with 'vml init --bare')") from None
        if format_line != FORMAT_LINE:
            raise UsageError(f"{transport.location} has an unsupported vml format ({format_line.strip()!r})")
        self._surveyed: tuple[list[IndexFile], dict[ObjectId, list[PackEntry]], set[ObjectId]] | None = None
        self._packs: dict[ObjectId, list[PackEntry]] | None = None
        self._blobs: RemoteBlobs | None = None
        self._sent: set[ObjectId] = set()  # packs put since the survey

    @property
    def location(self) -> str:
        return str(self.transport.location)

    # -- refs

    def refs(self) -> dict[str, str]:
        """Branches, tags and base images: name -> commit id (loose refs win over packed-refs, as in git)."""
        found = {}
        try:
            packed = self.transport.read("packed-refs").decode()
        except MissingFile:
            packed = ""
        for line in packed.splitlines():
            if line and line[0] not in "#^" and " " in line:
                commit_id, name = line.split(" ", 1)
                if name.startswith(EXCHANGED):
                    found[name] = commit_id
        for path in self.transport.list_tree("refs"):  # one listing (one request per 1,000 refs on object storage)
            if path.startswith(EXCHANGED) and not path.endswith(".lock"):
                found[path] = self._read_ref(path)
        return {name: target for name, target in sorted(found.items()) if target}

    def _read_ref(self, path: str) -> str | None:
        try:
            value = self.transport.read(path).decode().strip()
        except MissingFile:
            return None
        if len(value) == 40 and all(c in "0123456789abcdef" for c in value):
            return value
        return None  # symbolic refs are not exchanged

    def default_branch(self) -> str | None:
        try:
            head = self.transport.read("HEAD").decode().strip()
        except MissingFile:
            return None
        symbolic = f"ref: {BRANCH_PREFIX}"
        return head[len(symbolic) :] if head.startswith(symbolic) else None

    def update_ref(self, name: str, new: str, expected: str | None) -> None:
        """Compare-and-swap: under git's lock-file protocol (create NAME.lock exclusively,
        check the ref still holds `expected`, rename the lock over the ref), or on object
        storage, which has neither rename nor lock, by a write conditional on the ref's ETag."""
        if not self.transport.renames:
            return self._swap_ref(name, new, expected)
        lock = name + ".lock"
        deadline = time.monotonic() + LOCK_WAIT
        while not self.transport.create_exclusive(lock, (new + "\n").encode()):
            if time.monotonic() > deadline:
                raise ConcurrentUpdate(
                    f"{name} on {self.location} is locked by another push (or a stale {lock} left by a crash: remove it if no push runs)"
                )
            time.sleep(0.1)
        try:
            current = self.refs().get(name)
            if current != expected:
                raise ConcurrentUpdate(f"{name} on {self.location} moved to {current and current[:12]} meanwhile")
            self.transport.rename(lock, name)
        except BaseException:
            self.transport.remove(lock)
            raise

    def _swap_ref(self, name: str, new: str, expected: str | None) -> None:
        """The object storage's own compare-and-swap: nothing a crash can leave behind."""
        found = self.transport.read_tagged(name)  # type: ignore[attr-defined]
        current = found[0].decode("ascii", "replace").strip() if found else None
        if current != expected:
            raise ConcurrentUpdate(f"{name} on {self.location} moved to {current and current[:12]} meanwhile")
        if not self.transport.write_if(name, (new + "\n").encode(), found[1] if found else None):  # type: ignore[attr-defined]
            raise ConcurrentUpdate(f"{name} on {self.location} moved meanwhile")

    # -- pushes in progress

    def announce_push(self) -> str:
        """Mark a push in progress, so that a gc of the remote, which a transport cannot
        lock, keeps the blobs this push counts on; removed by `end_push`."""
        marker = f"{PUSH_MARKERS}/{PUSH_PREFIX}{uuid.uuid4().hex}"
        self.transport.write(marker, f"{socket.gethostname()} {os.getpid()} {int(time.time())}\n".encode())
        return marker

    def end_push(self, marker: str) -> None:
        try:
            self.transport.remove(marker)
        except TransportError:
            pass  # the connection is gone: gc ignores markers older than an hour

    # -- git objects

    @staticmethod
    def _object_path(object_id: str) -> str:
        return f"objects/{object_id[:2]}/{object_id[2:]}"

    def has_object(self, object_id: str) -> bool:
        return self.transport.exists(self._object_path(object_id))

    def read_object(self, object_id: str) -> tuple[str, bytes]:
        """(type name, content) of a loose git object, checked against its id."""
        try:
            stored = self.transport.read(self._object_path(object_id))
        except MissingFile:
            raise TransportError(
                f"{self.location} lacks git object {object_id[:12]} (only loose git objects are read over a transport; "
                f"was the remote repacked by git gc?)"
            ) from None
        try:
            raw = zlib.decompress(stored)
        except zlib.error:
            raise CorruptObject(f"git object {object_id[:12]} on {self.location} is damaged") from None
        if hashlib.sha1(raw).hexdigest() != object_id:
            raise CorruptObject(f"git object {object_id[:12]} on {self.location} is damaged (hash mismatch)")
        header, _, content = raw.partition(b"\0")
        type_name, _, length = header.decode("ascii", "replace").partition(" ")
        if type_name not in ("commit", "tree", "blob", "tag") or length != str(len(content)):
            raise CorruptObject(f"git object {object_id[:12]} on {self.location} has a bad header")
        return type_name, content

    def write_object(self, object_id: str, type_name: str, content: bytes) -> None:
        raw = f"{type_name} {len(content)}".encode() + b"\0" + content
        if hashlib.sha1(raw).hexdigest() != object_id:
            raise CorruptObject(f"git object {object_id[:12]} does not hash to its id")
        self.transport.write(self._object_path(object_id), zlib.compress(raw, 1))

    # -- blobs

    def _survey(self) -> tuple[list[IndexFile], dict[ObjectId, list[PackEntry]], set[ObjectId]]:
        """The remote's sorted index files (searched where they lie: the local cache's copies,
        mapped); the entries of every other pack: those an older index file names, and those
        no index names yet (a push cut off before its index), from their own tables; and the
        packs the sorted files name."""
        if self._surveyed is not None:
            return self._surveyed
        indexes: list[IndexFile] = []
        tables: dict[ObjectId, list[PackEntry]] = {}
        named: set[ObjectId] = set()
        for name in self.transport.list(f"{STORE}/index"):
            if not name.endswith(".idx"):
                continue
            try:
                index = self._index_file(name)
            except (CorruptObject, MissingFile):
                continue  # damaged, or merged away meanwhile: its packs' own tables are read below
            if index.sorted:
                indexes.append(index)
                named.update(index.pack_ids)
            else:
                for pack_id, entries in _entries_by_pack(index).items():
                    tables.setdefault(pack_id, entries)  # a pack two index files name: once
        for path in self.transport.list_tree(f"{STORE}/packs"):  # one listing, not one per fan-out directory
            name = path.rsplit("/", 1)[-1]
            if not (name.endswith(".pack") and len(name) == 69):
                continue
            pack_id = ObjectId(bytes.fromhex(name[:64]))
            if pack_id not in named and pack_id not in tables:
                try:
                    tables[pack_id] = self.pack_table(pack_id)
                except CorruptObject:
                    continue  # a damaged pack holds nothing we can count on: resend its blobs
        self._surveyed = (indexes, tables, named)
        return self._surveyed

    def packs(self) -> dict[ObjectId, list[PackEntry]]:
        """Every pack the remote holds and all its blobs, decoded (gc's view of the whole
        store; push and fetch look blobs up one by one through `blobs`)."""
        if self._packs is None:
            indexes, tables, _named = self._survey()
            packs: dict[ObjectId, list[PackEntry]] = {}
            for index in indexes:
                for pack_id, entries in _entries_by_pack(index).items():
                    packs.setdefault(pack_id, entries)
            for pack_id, entries in tables.items():
                packs.setdefault(pack_id, entries)
            self._packs = packs
        return self._packs

    def has_pack(self, pack_id: ObjectId) -> bool:
        """Whether the remote holds the pack (as `packs` would list it), none decoded."""
        if self._packs is not None:
            return pack_id in self._packs
        _indexes, tables, named = self._survey()
        return pack_id in named or pack_id in tables or pack_id in self._sent

    def blobs(self) -> RemoteBlobs:
        """Where each blob the remote holds is (one place, if several packs hold it)."""
        if self._blobs is None:
            indexes, tables, _named = self._survey()
            self._blobs = RemoteBlobs(indexes)
            for pack_id, entries in tables.items():
                self._blobs.add(pack_id, entries)
        return self._blobs

    def forget_blobs(self) -> None:
        """Read the index files and packs afresh at the next `packs` or `blobs`."""
        self._packs = self._blobs = self._surveyed = None
        self._sent = set()

    def _index_file(self, name: str) -> IndexFile:
        """An index file, from the local cache when it has been read before (index files
        never change: each is named by the hash of its content), mapped if it is large."""
        if self.cache_dir is None:
            return parse_index(name, self.transport.read(f"{STORE}/index/{name}"))
        cached = os.path.join(self.cache_dir, name)
        if os.path.exists(cached):
            try:
                return read_index(cached)
            except CorruptObject:
                os.unlink(cached)  # a damaged copy: read the remote's again
        data = self.transport.read(f"{STORE}/index/{name}")
        if object_id(data).hex() + ".idx" != name:
            return parse_index(name, data)  # (not kept: it is not the file its name says)
        os.makedirs(self.cache_dir, exist_ok=True)
        write_atomically(cached, data)
        return read_index(cached)

    def pack_table(self, pack_id: ObjectId) -> list[PackEntry]:
        path = pack_file(pack_id)
        size = self.transport.size(path)
        return parse_table(pack_id.hex(), size, lambda offset, length: self.transport.read_ranges(path, [(offset, length)])[0])

    def put_pack(self, pack_id: ObjectId, local_path: str, entries: list[PackEntry], progress=None) -> None:
        self.transport.write_from(pack_file(pack_id), local_path, progress)
        self._sent.add(pack_id)
        if self._packs is not None:
            self._packs[pack_id] = entries
        if self._blobs is not None:
            self._blobs.add(pack_id, entries)

    def put_index(self, packs: dict[ObjectId, list[PackEntry]]) -> None:
        data = encode_index(packs)
        self.transport.write(f"{STORE}/index/{object_id(data).hex()}.idx", data)

    def read_blobs(self, wanted: list[tuple[bytes, RemoteBlob]]) -> list[bytes]:
        """The stored (compressed) payloads of blobs, one request round per pack."""
        by_pack: dict[ObjectId, list[int]] = {}
        for position, (_blob_id, where) in enumerate(wanted):
            by_pack.setdefault(where.pack, []).append(position)
        payloads: list[bytes] = [b""] * len(wanted)
        for pack_id, positions in by_pack.items():
            ranges = [(wanted[p][1].offset, wanted[p][1].length) for p in positions]
            for position, payload in zip(positions, self.transport.read_ranges(pack_file(pack_id), ranges)):
                payloads[position] = payload
        return payloads

    def close(self) -> None:
        self.transport.close()


class RemoteSource:
    """A remote as the source of a store that is its cache (vml.objects.store.BlobSource):
    a server whose repository is in a bucket keeps only what it has read, and reads the
    rest from the bucket. Where blobs are comes from the remote's index files as last read
    (`RemoteRepository.forget_blobs` reads them again); a pack gone meanwhile (a gc
    rewrote it) makes them be read again, once."""

    def __init__(self, remote: RemoteRepository):
        self.remote = remote

    def locate(self, blob_id: bytes) -> PackEntry | None:
        found = self.remote.blobs().get(blob_id)
        return None if found is None else _entry(blob_id, found)

    def read(self, blob_ids: list[bytes]) -> list[tuple[PackEntry, bytes]]:
        try:
            return self._read(blob_ids)
        except (MissingFile, MissingObject):
            self.remote.forget_blobs()  # a gc rewrote a pack, or a push added one, since they were read
        try:
            return self._read(blob_ids)
        except MissingFile as error:
            raise MissingObject(f"{self.remote.location} lost a pack while it was read ({error}): try again") from None

    def _read(self, blob_ids: list[bytes]) -> list[tuple[PackEntry, bytes]]:
        where = self.remote.blobs()
        for blob_id in blob_ids:
            if blob_id not in where:
                raise MissingObject(f"object {blob_id.hex()[:16]} is in neither this store nor {self.remote.location}")
        wanted = [(blob_id, where[blob_id]) for blob_id in blob_ids]
        return [(_entry(blob_id, found), payload) for (blob_id, found), payload in zip(wanted, self.remote.read_blobs(wanted))]


def _entry(blob_id: bytes, found: RemoteBlob) -> PackEntry:
    return PackEntry(ObjectId(blob_id), found.blob_type, found.flag, found.offset, found.length, found.raw_length)


def init_remote(transport: Transport) -> None:
    """Make an empty repository through a transport (object storage: `vml init --bare
    s3://BUCKET/PREFIX`): HEAD and a git config, then the format line, which marks a
    repository whole; an error if one is there already."""
    if transport.exists("vml/format"):
        raise UsageError(f"{transport.location} is already a vml repository")
    transport.write("HEAD", f"ref: {BRANCH_PREFIX}main\n".encode())
    transport.write("config", b"[core]\n\trepositoryformatversion = 0\n\tbare = true\n[vml]\n\tformat = 1\n\tbare = true\n")
    if not transport.create_exclusive("vml/format", FORMAT_LINE.encode()):
        raise UsageError(f"{transport.location} is already a vml repository")


def check_no_push(repository_path: str) -> None:
    """gc waits for pushes into this repository (they cannot take its lock over a transport):
    a push relies on blobs it saw here, which may be unreachable until its ref moves."""
    locks = os.path.join(repository_path, PUSH_MARKERS)
    for name in os.listdir(locks):
        if not name.startswith(PUSH_PREFIX):
            continue
        path = os.path.join(locks, name)
        if time.time() - os.path.getmtime(path) > UPLOAD_GRACE:
            os.unlink(path)  # left by a push that was cut off long ago
        else:
            raise VmlError(f"a push into this repository is in progress ({path}); run gc again when it is done")

"""The chunk store: put and get blobs by id; packs and index files underneath.

Writes go to packs in a temp directory and become visible only when a pack is complete and
fsynced. `flush` then writes an index file for the new packs. A crash between the two
leaves packs without an index: `open` finds them and reads their own tables.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from vml.durable import PendingFile, fsync_dir
from vml.errors import CorruptObject, MissingObject, VmlError
from vml.objects import compress as compression
from vml.objects.hashing import StreamingId, object_id
from vml.objects.ids import ObjectId
from vml.objects.index import IndexFile, PendingIndex, list_index_files, merge_indexes, read_index
from vml.objects.pack import TARGET_SIZE, TYPE_DATA, DamagedBlob, PackEntry, PackWriter, open_blob, pack_path, read_table

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

# A location is a plain tuple (pack number, offset, length, raw length, type, flag): the store
# keeps one per blob, and tuples are the cheapest Python object for that.
PACK_NO, OFFSET, LENGTH, RAW_LENGTH, BLOB_TYPE, FLAG = range(6)


@dataclass(frozen=True, slots=True)
class StoreProblem:
    path: str
    message: str
    recovered: bool = False  # the data is still reachable (e.g. through the packs' own tables)


SOURCE_BATCH = 32 * 1024 * 1024  # bytes asked of a source at once while copying blobs out


class BlobSource(Protocol):
    """Where a store that is a cache reads the blobs it lacks: a server's bucket
    (vml/server/bucket.py). The store checks every payload against its id."""

    def locate(self, blob_id: bytes) -> PackEntry | None:
        """The blob's table entry (type, flag, sizes), if the source holds it."""

    def read(self, blob_ids: list[bytes]) -> list[tuple[PackEntry, bytes]]:
        """Each blob's entry and its payload as stored; MissingObject for one it lacks."""


class ChunkStore:
    def __init__(self, root: str, source: BlobSource | None = None):
        """`source`: where blobs this store lacks are read from; the store then holds
        copies of some of them (those read one by one: listings, a file shown)."""
        self.root = root
        self.source = source
        self.packs_dir = os.path.join(root, "packs")
        self.index_dir = os.path.join(root, "index")
        self.tmp_dir = os.path.join(root, "tmp")
        self.pack_ids: list[ObjectId] = []
        self._pack_numbers: dict[ObjectId, int] = {}
        # Sorted index files (format 3), searched where they lie, each with the store's number
        # of each pack it names: opening a store decodes none of their records.
        self._indexes: list[tuple[IndexFile, list[int]]] = []
        # Blobs no sorted index file holds: packs not indexed yet (written here, adopted, or
        # left by a crash), and the records of older index files, decoded whole.
        self._locations: dict[bytes, tuple] = {}
        self._older_indexes: list[IndexFile] = []  # merged into a sorted file by the next flush
        self._indexed_packs: set[ObjectId] = set()
        self._unindexed = PendingIndex()
        self._writer: PackWriter | None = None
        self._pending: dict[bytes, PackEntry] = {}
        # Full packs are fsynced and renamed on a thread of their own, so that the threads
        # filling the next pack never wait for the disk. Each entry: the pack's blobs, its job.
        self._finishing: list[tuple[dict[bytes, PackEntry], Future]] = []
        self._finisher: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._read_fds: dict[int, int] = {}
        self.problems: list[StoreProblem] = []
        self.bytes_added = 0
        self._kept_from_source = False

    @staticmethod
    def create(root: str) -> None:
        for sub in ("packs", "index", "tmp"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)

    def open(self) -> ChunkStore:
        opened: set[str] = set()
        for _attempt in range(100):
            vanished = False
            for path in list_index_files(self.index_dir):
                if path in opened:
                    continue
                try:
                    index = read_index(path)
                except FileNotFoundError:
                    vanished = True  # merged into a new file by another process: list again
                    continue
                except CorruptObject as error:
                    # The packs still describe themselves; fall back to reading their tables.
                    self.problems.append(StoreProblem(path, f"{error}; its packs were read directly (vml gc rewrites the index)", True))
                else:
                    self._use_index(index)
                opened.add(path)
            if not vanished:
                break
        self._recover_unindexed_packs()
        return self

    def _use_index(self, index: IndexFile) -> None:
        numbers = [self._register_pack(pack_id) for pack_id in index.pack_ids]
        if index.sorted:
            self._indexes.append((index, numbers))
        else:
            try:
                for raw_id, pack_no, blob_type, flag, offset, length, raw_length in index.records():
                    self._locations[raw_id] = (numbers[pack_no], offset, length, raw_length, blob_type, flag)
            except CorruptObject as error:
                self._read_tables_instead(index, error)
                return
            self._older_indexes.append(index)
        self._indexed_packs.update(index.pack_ids)

    def _read_tables_instead(self, index: IndexFile, error: CorruptObject) -> None:
        """An index file found damaged after it was opened: its packs' own tables stand in."""
        self.problems.append(StoreProblem(index.name, f"{error}; its packs were read directly (vml gc rewrites the index)", True))
        self._indexes = [(other, numbers) for other, numbers in self._indexes if other is not index]
        files = self.list_pack_files()
        for pack_id in index.pack_ids:
            if pack_id in files:
                try:
                    self._add_pack_entries(pack_id, read_table(files[pack_id]))
                except CorruptObject as damaged:
                    self.problems.append(StoreProblem(files[pack_id], str(damaged)))

    def _indexed_location(self, blob_id: bytes) -> tuple | None:
        """Where a sorted index file says the blob is."""
        for index, numbers in tuple(self._indexes):
            try:
                record = index.find(blob_id)
            except CorruptObject as error:
                self._read_tables_instead(index, error)
                return self.location(blob_id)
            if record is not None:
                _id, pack_no, blob_type, flag, offset, length, raw_length = record
                return (numbers[pack_no], offset, length, raw_length, blob_type, flag)
        return None

    def verify_indexes(self) -> bool:
        """Check the sums of the large index files that were mapped unchecked (fsck, or a
        failed read); one that is damaged gives way to its packs' tables. Whether one was."""
        found = False
        for index, _numbers in tuple(self._indexes):
            try:
                index.verify()
            except CorruptObject as error:
                self._read_tables_instead(index, error)
                found = True
        return found

    def _register_pack(self, pack_id: ObjectId) -> int:
        pack_no = self._pack_numbers.get(pack_id)
        if pack_no is None:
            pack_no = self._pack_numbers[pack_id] = len(self.pack_ids)
            self.pack_ids.append(pack_id)
        return pack_no

    def list_pack_files(self) -> dict[ObjectId, str]:
        found = {}
        for sub in sorted(os.listdir(self.packs_dir)):
            sub_dir = os.path.join(self.packs_dir, sub)
            for name in os.listdir(sub_dir):
                if name.endswith(".pack") and len(name) == 69:
                    found[ObjectId(bytes.fromhex(name[:64]))] = os.path.join(sub_dir, name)
        return found

    def unindexed_bytes(self) -> int:
        """The size of the pack files in packs/ that no index file names (yet): written by
        this process, a reader process of its commit, or one killed before its flush."""
        return sum(os.path.getsize(path) for pack_id, path in self.list_pack_files().items() if pack_id not in self._indexed_packs)

    def _recover_unindexed_packs(self) -> None:
        for pack_id, path in self.list_pack_files().items():
            if pack_id in self._indexed_packs:
                continue
            try:
                entries = read_table(path)
            except CorruptObject as error:
                self.problems.append(StoreProblem(path, str(error)))
                continue
            self._add_pack_entries(pack_id, entries)
            self._unindexed.add(pack_id, entries)

    def _add_pack_entries(self, pack_id: ObjectId, entries: list[PackEntry]) -> None:
        pack_no = self._register_pack(pack_id)
        for e in entries:
            self._locations[e.id] = (pack_no, e.offset, e.length, e.raw_length, e.blob_type, e.flag)

    # -- queries

    def __contains__(self, blob_id: bytes) -> bool:
        return self.holds(blob_id) or (self.source is not None and self.source.locate(blob_id) is not None)

    def holds_nothing(self) -> bool:
        """Whether the store, as it is now, has no blob and no source to ask (a first commit's)."""
        with self._lock:
            return not (self._locations or self._pending or self._indexes or self._finishing or self.source is not None)

    def holds(self, blob_id: bytes) -> bool:
        """Whether this store has the blob itself (not only its source)."""
        if blob_id in self._locations or blob_id in self._pending:
            return True
        if self._indexes and self._indexed_location(blob_id) is not None:
            return True
        if any(blob_id in blobs for blobs, _job in tuple(self._finishing)):
            return True
        return blob_id in self._locations  # a pack may have finished while we looked

    def pack_number(self, pack_id: ObjectId) -> int:
        return self._register_pack(pack_id)

    def location(self, blob_id: bytes) -> tuple | None:
        found = self._locations.get(blob_id)
        if found is None and self._indexes:
            found = self._indexed_location(blob_id)
        return found

    def stored_size(self, blob_id: bytes) -> int:
        """The blob's size as stored (compressed)."""
        return self._recorded(blob_id, LENGTH, "length")

    def raw_size(self, blob_id: bytes) -> int:
        """The blob's size as recorded for its raw bytes (a read checks that it is true)."""
        return self._recorded(blob_id, RAW_LENGTH, "raw_length")

    def _recorded(self, blob_id: bytes, field: int, name: str) -> int:
        found = self.location(blob_id)
        if found is not None:
            return found[field]
        for blobs in [self._pending] + [blobs for blobs, _job in tuple(self._finishing)]:
            if blob_id in blobs:
                return getattr(blobs[blob_id], name)
        found = self._locations.get(blob_id)
        if found is not None:
            return found[field]
        entry = self.source.locate(blob_id) if self.source is not None else None
        if entry is None:
            raise MissingObject(f"object {blob_id.hex()[:16]} is not in the store")
        return getattr(entry, name)

    def items(self) -> Iterator[tuple[bytes, tuple]]:
        """Every blob and its location, decoded as they go; a blob that two packs hold may
        come twice."""
        yield from list(self._locations.items())
        for index, numbers in tuple(self._indexes):
            for raw_id, pack_no, blob_type, flag, offset, length, raw_length in index.records():
                yield raw_id, (numbers[pack_no], offset, length, raw_length, blob_type, flag)

    # -- reads

    def _read_fd(self, pack_no: int) -> int:
        fd = self._read_fds.get(pack_no)
        if fd is None:
            path = pack_path(self.packs_dir, self.pack_ids[pack_no])
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise MissingObject(f"pack {self.pack_ids[pack_no].short()} is missing") from None
            with self._lock:
                existing = self._read_fds.setdefault(pack_no, fd)
            if existing != fd:
                os.close(fd)
                fd = existing
        return fd

    def get(self, blob_id: bytes) -> bytes:
        """The blob's raw bytes, verified against its id; never returns bad bytes."""
        location = self.location(blob_id)
        if location is None:
            if not self.holds(blob_id):
                if self.source is not None:
                    return self._keep_from_source(blob_id)
                if self.verify_indexes():
                    return self.get(blob_id)
                raise MissingObject(f"object {blob_id.hex()[:16]} is not in the store")
            location = self.location(blob_id)
            if location is None:  # in a pack still being written
                self.flush_pack()
                location = self._locations[blob_id]
        try:
            return self.read_location(blob_id, location)
        except CorruptObject:
            if self.verify_indexes():  # a damaged record of a large index, not the pack
                return self.get(blob_id)
            raise

    def read_location(self, blob_id: bytes, location: tuple) -> bytes:
        return self.decode_payload(blob_id, location, self.read_payload(blob_id, location))

    def read_payload(self, blob_id: bytes, location: tuple) -> bytes:
        """The blob's bytes as stored (compressed), unverified."""
        fd = self._read_fd(location[PACK_NO])
        payload = os.pread(fd, location[LENGTH], location[OFFSET])
        if len(payload) != location[LENGTH]:
            raise CorruptObject(f"object {blob_id.hex()[:16]}: pack {self.pack_ids[location[PACK_NO]].short()} is truncated")
        return payload

    def decode_payload(self, blob_id: bytes, location: tuple, payload: bytes) -> bytes:
        try:
            return open_blob(blob_id, location[FLAG], payload, location[RAW_LENGTH])
        except DamagedBlob:
            raise CorruptObject(
                f"object {blob_id.hex()[:16]} in pack {self.pack_ids[location[PACK_NO]].short()} is damaged (hash mismatch)"
            ) from None

    def _keep_from_source(self, blob_id: bytes) -> bytes:
        """A blob only the source holds: read, checked, kept here, returned."""
        return self._keep_all_from_source([blob_id])[blob_id]

    def _keep_all_from_source(self, blob_ids: list[bytes]) -> dict[bytes, bytes]:
        """Blobs only the source holds, read in one batch, each checked, kept here."""
        assert self.source is not None
        found = {}
        for entry, payload in self.source.read(blob_ids):
            found[bytes(entry.id)] = self._checked(entry, payload)
            self.add(ObjectId(entry.id), entry.blob_type, entry.flag, payload, entry.raw_length)
        self._kept_from_source = True  # made durable by `close`, in one pack with the others
        return found

    def get_many(self, blob_ids: list[bytes]) -> list[bytes]:
        """The raw bytes of several blobs (each verified); those only the source holds are
        read from it in one batch, and kept."""
        if self.source is None:
            return [self.get(blob_id) for blob_id in blob_ids]
        absent = [blob_id for blob_id in dict.fromkeys(blob_ids) if not self.holds(blob_id)]
        found = self._keep_all_from_source(absent) if absent else {}
        return [found[blob_id] if blob_id in found else self.get(blob_id) for blob_id in blob_ids]

    @staticmethod
    def _checked(entry: PackEntry, payload: bytes) -> bytes:
        try:
            return open_blob(entry.id, entry.flag, payload, entry.raw_length)
        except DamagedBlob:
            raise CorruptObject(f"object {entry.id.hex()[:16]} arrived damaged from the store's source (hash mismatch)") from None

    def _with_payloads(self, blob_ids: list[bytes]) -> Iterator[tuple[bytes, PackEntry, bytes]]:
        """Each blob's id, entry and payload as stored (each verified), in the order given:
        from this store, else from its source in batches, which are not kept here."""
        position = 0
        while position < len(blob_ids):
            batch, size = [], 0
            while position < len(blob_ids) and (not batch or size < SOURCE_BATCH):
                blob_id = blob_ids[position]
                location = self.location(blob_id)
                if location is None and self.source is not None:
                    entry = self.source.locate(blob_id)
                    size += entry.length if entry is not None else 0
                batch.append((blob_id, location))
                position += 1
            wanted = [blob_id for blob_id, location in batch if location is None]
            fetched = {entry.id: (entry, payload) for entry, payload in self.source.read(wanted)} if wanted and self.source else {}
            for blob_id, location in batch:
                if location is not None:
                    payload = self.read_payload(blob_id, location)
                    self.decode_payload(blob_id, location, payload)  # never pass on bad bytes
                    yield blob_id, PackEntry(ObjectId(blob_id), location[BLOB_TYPE], location[FLAG], 0, len(payload), location[RAW_LENGTH]), payload
                elif blob_id in fetched:
                    entry, payload = fetched[blob_id]
                    self._checked(entry, payload)
                    yield blob_id, entry, payload
                else:
                    raise MissingObject(f"object {blob_id.hex()[:16]} is not in the store")

    def copy_to_packs(self, blob_ids: list[bytes], directory: str) -> Iterator[tuple[ObjectId, str, list[PackEntry]]]:
        """Copy blobs as stored (each verified, none recompressed), in the order given, into
        packs of ~16 MiB under `directory`; yield (pack id, path, entries) as each is finished.
        For sending elsewhere: the packs are not part of this store."""
        writer = PackWriter(directory)
        try:
            for blob_id, entry, payload in self._with_payloads(blob_ids):
                writer.add(ObjectId(blob_id), entry.blob_type, entry.flag, payload, entry.raw_length)
                if writer.size >= TARGET_SIZE:
                    yield self._finish_copy(writer, directory)
                    writer = PackWriter(directory)
            if writer.entries:
                yield self._finish_copy(writer, directory)
            else:
                writer.abandon()
        except BaseException:
            writer.abandon()
            raise

    @staticmethod
    def _finish_copy(writer: PackWriter, directory: str) -> tuple[ObjectId, str, list[PackEntry]]:
        pack_id = writer.finish(directory)
        return pack_id, pack_path(directory, pack_id), writer.entries

    # -- writes

    def put(self, data: bytes | memoryview, blob_type: int = TYPE_DATA) -> ObjectId:
        """Hash, compress and store data unless the store has it already."""
        blob_id = object_id(data)
        if blob_id not in self:
            flag, payload = compression.compress(data)
            self.add(blob_id, blob_type, flag, payload, len(data))
        return blob_id

    def add(self, blob_id: ObjectId, blob_type: int, flag: int, payload: bytes, raw_length: int) -> None:
        """Append a compressed blob; thread-safe, and a blob already stored is skipped."""
        if raw_length > compression.MAX_BLOB:  # readers would refuse it as a lie
            raise VmlError(f"an object of {raw_length:,} bytes is larger than vml stores ({compression.MAX_BLOB >> 20} MiB): "
                           f"a directory of millions of names? split it")
        if self._indexes and self._indexed_location(blob_id) is not None:
            return
        with self._lock:
            if blob_id in self._locations or blob_id in self._pending:
                return
            if self._writer is None:
                self._writer = PackWriter(self.tmp_dir)
            try:
                self._pending[blob_id] = self._writer.add(blob_id, blob_type, flag, payload, raw_length)
            except BaseException:  # (a full disk): the pack lacks bytes its table would name, so it is never finished
                self._drop_writer_locked()
                raise
            self.bytes_added += len(payload)
            if self._writer.size >= TARGET_SIZE:
                self._finish_pack_locked()

    def adopt_pack(self, source_fd: int, offset: int, length: int, entries: list[PackEntry]) -> ObjectId:
        """Take a whole pack from elsewhere (a received bundle holds vml packs): its bytes at
        `offset` in `source_fd`, copied as they are. The caller has verified every blob and
        made sure the store has none of them. Indexed by the next `flush`."""
        pending = PendingFile(self.tmp_dir, "pack")
        hasher = StreamingId()
        try:
            copied = 0
            while copied < length:
                piece = os.pread(source_fd, min(4 * 1024 * 1024, length - copied), offset + copied)
                if not piece:
                    raise CorruptObject("a pack ends early (the file is truncated)")
                pending.file.write(piece)
                hasher.update(piece)
                copied += len(piece)
            pack_id = hasher.digest()
            final = pack_path(self.packs_dir, pack_id)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            pending.commit(final)
        except BaseException:
            pending.discard()
            raise
        self._adopted(pack_id, entries)
        return pack_id

    def adopt_file(self, path: str, pack_id: ObjectId, entries: list[PackEntry]) -> None:
        """Take a whole pack that is a durable file already, on this filesystem (a received
        pack, checked and staged as it arrived), by renaming it; as adopt_pack otherwise."""
        final = pack_path(self.packs_dir, pack_id)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.rename(path, final)
        fsync_dir(os.path.dirname(final))
        self._adopted(pack_id, entries)

    def adopt_written(self, pack_id: ObjectId, entries: list[PackEntry]) -> None:
        """Take a pack another process wrote into this store's packs/ and made durable (a
        reader process of a commit): as adopt_file, with the file in place already."""
        self._adopted(pack_id, entries)

    def _adopted(self, pack_id: ObjectId, entries: list[PackEntry]) -> None:
        """A whole pack now in packs/: its blobs found from now on, indexed by the next flush."""
        with self._lock:
            self._add_pack_entries(pack_id, entries)
            self._unindexed.add(pack_id, entries)
            self.bytes_added += sum(e.length for e in entries)

    def _finish_pack_locked(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if self._finisher is None:
            from concurrent.futures import ThreadPoolExecutor  # (a command that writes no pack never needs it)

            self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vml-pack")
        # Listed as finishing before it leaves _pending, so `in` never misses it.
        self._finishing.append((self._pending, self._finisher.submit(self._complete_pack, writer, self._pending)))
        self._pending = {}

    def _complete_pack(self, writer: PackWriter, blobs: dict[bytes, PackEntry]) -> None:
        try:
            pack_id = writer.finish(self.packs_dir)
        except BaseException:
            writer.abandon()
            raise
        with self._lock:
            self._add_pack_entries(pack_id, writer.entries)  # before it stops being "finishing"
            self._unindexed.add(pack_id, writer.entries)
            self._finishing = [item for item in self._finishing if item[0] is not blobs]

    def _wait_for_packs(self) -> None:
        """Wait until every full pack is durable; raise the first error one of them met."""
        for _blobs, job in tuple(self._finishing):
            job.result()

    def flush_pack(self) -> None:
        with self._lock:
            self._finish_pack_locked()
        self._wait_for_packs()

    def flush(self) -> None:
        """Make everything added durable: finish the open pack, then index the new packs,
        then merge the small index files (`_merge_indexes`)."""
        self.flush_pack()
        with self._lock:
            if not self._unindexed and not self._older_indexes:
                return
            if self._unindexed:
                new = self._unindexed.write(self.index_dir, self.tmp_dir)
                self._indexes.append((new, [self._register_pack(pack_id) for pack_id in new.pack_ids]))
                self._indexed_packs.update(self._unindexed.packs)
                self._unindexed = PendingIndex()
            self._merge_indexes()

    def _merge_indexes(self) -> None:
        """Keep the sorted index files few: merge the smallest ones whose sizes do not grow
        at least twofold (as git's geometric repack does), and every older-format file. A
        store of n blobs then has at most log2(n) files, and each record is rewritten
        O(log n) times over the store's life. The inputs go only once the merged file is
        durable; a process that listed them meanwhile lists again (`open`)."""
        sizes = sorted(self._indexes, key=lambda item: item[0].count)
        take = 0
        for position in range(len(sizes) - 1, 0, -1):
            if sizes[position][0].count < 2 * sizes[position - 1][0].count:
                take = position + 1
                break
        total = sum(index.count for index, _numbers in sizes[:take])
        while take < len(sizes) and sizes[take][0].count < 2 * total:
            total += sizes[take][0].count
            take += 1
        inputs = [index for index, _numbers in sizes[:take]] if take >= 2 else []
        inputs += self._older_indexes
        if len(inputs) < 2 and not self._older_indexes:
            return
        try:
            merged = read_index(merge_indexes(self.index_dir, self.tmp_dir, inputs))
        except (OSError, CorruptObject) as error:  # a full disk, a damaged input: the files stay as they are
            self.problems.append(StoreProblem(self.index_dir, f"index files not merged: {error}", True))
            return
        merged.verified = True  # written just now
        self._indexes = [item for item in self._indexes if item[0] not in inputs]
        self._indexes.append((merged, [self._register_pack(pack_id) for pack_id in merged.pack_ids]))
        self._older_indexes = []
        for index in inputs:
            if index.name != merged.name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.index_dir, index.name))

    def abandon(self) -> None:
        for blobs, job in tuple(self._finishing):
            try:
                job.result()
            except Exception:
                with self._lock:  # a pack that failed leaves nothing behind (PackWriter.abandon)
                    self._finishing = [item for item in self._finishing if item[0] is not blobs]
        with self._lock:
            self._drop_writer_locked()

    def _drop_writer_locked(self) -> None:
        """The open pack discarded, and the blobs it held known no more."""
        if self._writer is not None:
            self._writer.abandon()
            self._writer = None
            for blob_id in self._pending:
                self._locations.pop(blob_id, None)
            self._pending.clear()

    def close(self) -> None:
        if self._kept_from_source:  # copies of the source's blobs, each checked: worth keeping
            self._kept_from_source = False
            try:
                self.flush()
            except OSError:
                pass  # (a full disk: the cache stays as it was)
        self.abandon()
        if self._finisher is not None:
            self._finisher.shutdown()
            self._finisher = None
        for fd in self._read_fds.values():
            os.close(fd)
        self._read_fds.clear()

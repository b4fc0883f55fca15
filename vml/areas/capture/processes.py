"""Reader processes of a large capture (vml/workers.py): each is given batches of files by
path and stat, reads and cuts them as a reading thread would (local.py: read_content),
hashes each chunk, and compresses and writes into packs of its own those neither the store
(opened read-only, as it was when the reader started) nor this reader has met. A full pack
is made durable in the store's packs/ on a thread of the reader; each answer names the packs
finished since the last, which the capture's process adopts into its store (indexed by its
next flush), and `finish` has every reader close its last pack.

Written so, a new chunk crosses no process boundary (each compressed chunk was sent back to
be written by the capture's process, which also walks the tree). That alone saved nothing
measurable in the base tree's commit (5.8 s either way); what it bought is that an answer
is ids only, whatever the size of the files, so large files go to the readers too (local.py:
PROCESSES_AFTER). Each reader is told, with its next batch, the chunks the others wrote; a
chunk that two readers meet at once (or a reader and a thread) is stored twice, each copy
whole and indexed, and gc keeps one.

A guest's capture (guest.py) hands a reader the pipe of a tar stream instead (StreamReaders):
the reader parses it, stores each file's data as it would a file's, and answers with the
members' metadata and chunk ids, a run of paths at a time."""

from __future__ import annotations

import contextlib
import gc
import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from queue import SimpleQueue
from tarfile import DIRTYPE, TarError
from typing import Any

from vml.areas.capture.guest import MARK_COPIES, MARKS, ReadMember, member_fields, store_member
from vml.areas.capture.local import ToRead, read_content
from vml.areas.tarformat import TarMember, TarReader, member_rel
from vml.objects import compress as compression
from vml.objects.hashing import raw_object_id
from vml.objects.ids import ObjectId
from vml.objects.pack import TARGET_SIZE, TYPE_DATA, PackEntry, PackWriter
from vml.objects.store import ChunkStore
from vml.workers import FILE_COST, Handler, Workers

# Packs durable in packs/: the id and table of contents of each, as plain bytes and tuples
# (a PackEntry took 6.7 µs to pickle and unpickle, an ObjectId 1.5: a tuple of bytes 0.3).
FinishedPack = tuple[bytes, list[tuple[bytes, int, int, int, int, int]]]
Finished = list[FinishedPack]
FINISH = "finish"  # the request that has a reader close its last pack
# A piece of a tar stream to read (StreamReaders): STREAM, the stream's key, and, in its first
# request only, the bytes read of it ahead (None after). A piece ends at a mark (guest.py).
StreamRequest = tuple[str, int, bytes | None]
STREAM = "tar"
STREAM_BUFFER = 1024 * 1024


class ReaderProcesses:
    """`submit` hands a batch of files to a reader and gives a Future of the files'
    contents, once the packs the reader finished meanwhile are in `store`; `finish`, once
    every batch is answered, adopts every reader's last pack."""

    def __init__(self, store: ChunkStore, count: int):
        self._store = store
        self._workers = Workers(f"{__name__}:reader", store.root, count, role="reader process of the commit")
        # The chunks readers wrote, as each answer said, told to each other reader with its
        # next batch, so that one seldom writes a chunk another has (the base tree's commit
        # stored 702 chunks twice, 4.9 MB, without): (reader, ids) of each answer from
        # `_told_from` on, and where each reader has got to.
        self._written: list[tuple[int, list[bytes]]] = []
        self._told_from = 0
        self._told = [0] * count

    def submit(self, batch: list[ToRead]) -> Future:
        work = sum(file[1] for file in batch) + FILE_COST * len(batch)
        return self.send(batch, (), work, self._workers.least_busy())

    def send(self, body: list[ToRead] | StreamRequest, descriptors: Sequence[int], work: int, number: int) -> Future:
        """`body` to reader `number`, with the chunks the others wrote since it was last told:
        a Future of its answer's first part, once the packs it finished meanwhile are adopted."""
        contents: Future = Future()
        # (Answers are appended on other threads; only this one reads and trims the list.)
        answers = self._written[self._told[number] - self._told_from :]
        self._told[number] += len(answers)
        oldest = min(self._told)
        if oldest - self._told_from > 256:  # every reader has been told these: forget them
            del self._written[: oldest - self._told_from]
            self._told_from = oldest
        news = [blob_id for origin, written in answers if origin != number for blob_id in written]

        def answered(answer: Future) -> None:
            # (On the thread the answer came in on: whatever fails here is the batch's error,
            # or the capture would wait for its contents forever.)
            try:
                error = answer.exception()
                if error is not None:  # the packs it finished before it failed are the store's still
                    self._adopt(getattr(error, "finished_packs", []))
                    raise error
                files, finished, written = answer.result()
                self._adopt(finished)
                if written:
                    self._written.append((number, written))
            except BaseException as failed:
                contents.set_exception(failed)
            else:
                contents.set_result(files)

        self._workers.submit((body, news), descriptors=descriptors, weight=work, to=number).add_done_callback(answered)
        return contents

    def _adopt(self, finished: Finished) -> None:
        for pack_id, table in finished:
            self._store.adopt_written(ObjectId(pack_id), [PackEntry(ObjectId(blob_id), blob_type, flag, offset, length, raw_length)
                                                          for blob_id, blob_type, flag, offset, length, raw_length in table])

    def finish(self) -> None:
        for answer in self._workers.each(FINISH):
            self._adopt(answer.result())

    def close(self, *, kill: bool = False) -> None:
        pids = self._workers.pids()
        self._workers.close(kill=kill)
        if kill:  # a killed reader leaves its open pack behind
            for name in os.listdir(self._store.tmp_dir):
                if any(name.startswith(_temp_prefix(pid)) for pid in pids):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self._store.tmp_dir, name))


class StreamReaders:
    """Tar streams of a guest's files (guest.py), each read by a reader process of its own a
    piece at a time: `start` hands one over (the descriptor it is read from, and what was
    read of it ahead), `ask` asks for its next pieces, `collect` gives each piece's members
    on the calling thread until every piece asked for has come. A piece ends at a mark
    (guest.py: MARK), or at the stream's end: the capture gives a stream more paths, and asks
    for their pieces, as it answers. The processes start with the first stream and stay for
    the capture's next fetch; `finish` adopts their last packs."""

    def __init__(self, store: ChunkStore, count: int):
        self.count = count
        self._store = store
        self._readers: ReaderProcesses | None = None
        self._started = 0
        self._answers: SimpleQueue[tuple[int, Future]] = SimpleQueue()
        self._asked = 0  # pieces asked for and not yet collected
        self._descriptors: dict[int, int] = {}  # each stream's, as the capture's process has it

    def prepare(self) -> None:
        """Start the processes (a Python each, 0.3 s before it reads), if not yet."""
        if self._readers is None:
            self._readers = ReaderProcesses(self._store, self.count)

    def start(self, descriptor: int, ahead: bytes, pieces: int) -> int:
        """The stream's key (0, 1, ...: at most `count` streams a fetch), its reader asked
        for its first `pieces` pieces (see `ask`)."""
        self.prepare()
        key, self._started = self._started, self._started + 1
        self._descriptors[key] = descriptor
        self._ask(key, ahead, [descriptor])
        self.ask(key, pieces - 1)
        return key

    def ask(self, key: int, pieces: int = 1) -> None:
        """Ask a stream's reader for its next pieces: only for pieces the stream's tar has
        been sent the paths of (or its end, once it has them all). A reader waits for each
        piece it is asked for, and reads no request meanwhile: one that waited for paths the
        capture's process would send once its request was read stopped them both (a
        request carries the chunks other readers wrote, 400 KB after a head start)."""
        for _piece in range(pieces):
            self._ask(key, None, [])

    def _ask(self, key: int, ahead: bytes | None, descriptors: list[int]) -> None:
        assert self._readers is not None
        future = self._readers.send((STREAM, key, ahead), descriptors, 0, key % self.count)
        future.add_done_callback(lambda answer: self._answers.put((key, answer)))
        self._asked += 1

    def collect(self, take: Callable[[int, list[ReadMember], bool], None]) -> None:
        """Every piece asked for, each given to `take` with its stream's key, and whether it
        ended the stream, as it comes (`take` may ask for more); the first error a reader met
        is raised (the others' pieces are left), a damaged stream's naming the descriptor it
        was read from (`descriptor`): the area tells which stream broke, and how."""
        while self._asked:
            key, answer = self._answers.get()
            self._asked -= 1
            try:
                members, at_end = answer.result()
            except TarError as error:
                error.descriptor = self._descriptors[key]  # type: ignore[attr-defined]
                raise
            take(key, members, at_end)
        self._started = 0

    def finish(self) -> None:
        if self._readers is not None:
            self._readers.finish()

    def close(self, *, kill: bool = False) -> None:
        if self._readers is not None:
            self._readers.close(kill=kill)
            self._readers = None


def _temp_prefix(pid: int) -> str:
    return f"pack-reader-{pid}."


class _Packs:
    """A reader's packs: the one being filled, and the full ones being made durable."""

    def __init__(self, store: ChunkStore):
        self._store = store
        self._writer: PackWriter | None = None
        self._finishing: list[Future] = []
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vml-reader-pack")

    def add(self, blob_id: bytes, flag: int, payload: bytes, raw_length: int) -> None:
        if self._writer is None:
            self._writer = PackWriter(self._store.tmp_dir, name=_temp_prefix(os.getpid()) + "pack")
        try:
            self._writer.add(blob_id, TYPE_DATA, flag, payload, raw_length)
        except BaseException:  # (a full disk): the pack goes, and the next chunk starts another
            self._writer.abandon()
            self._writer = None
            raise
        if self._writer.size >= TARGET_SIZE:
            self._close_writer()

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            self._finishing.append(self._finisher.submit(self._complete, writer))

    def _complete(self, writer: PackWriter) -> FinishedPack:
        try:
            pack_id = writer.finish(self._store.packs_dir)
            return bytes(pack_id), [(bytes(e.id), e.blob_type, e.flag, e.offset, e.length, e.raw_length) for e in writer.entries]
        except BaseException:
            writer.abandon()
            raise

    def finished(self, *, wait: bool = False) -> Finished:
        """The packs made durable since the last call (`wait`: every pack, the open one too);
        the first error one of them met is raised, with the others that were made durable."""
        if wait:
            self._close_writer()
        done = [job for job in self._finishing if wait or job.done()]
        self._finishing = [job for job in self._finishing if job not in done]
        finished = [job.result() for job in done if job.exception() is None]
        for job in done:
            error = job.exception()
            if error is not None:
                raise _with_packs(error, finished)
        return finished

    def durable(self) -> Finished:
        """The packs made durable since the last call, whatever became of the others."""
        try:
            return self.finished()
        except BaseException as error:
            return getattr(error, "finished_packs", [])


def _with_packs(error: BaseException, finished: Finished) -> BaseException:
    """The error, carrying the packs a reader made durable before it: they reach the
    capture's process with it (an exception's attributes are pickled with it)."""
    error.finished_packs = finished  # type: ignore[attr-defined]
    return error


class _Streams:
    """A reader's tar streams, by key, each read a piece a request (StreamReaders)."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[TarReader, Iterator[TarMember], io.BufferedReader]] = {}
        self._marks: dict[int, int] = {}  # the marks each stream has sent so far

    def read(self, request: StreamRequest, descriptors: list[int], chunk: Callable[[memoryview], bytes]) -> tuple[list[ReadMember], bool]:
        """The members up to the first mark of the next run's (guest.py: MARK), or to the
        stream's end, and whether it ended; a stream's first request brings its descriptor
        (its own copy is kept: the request's is closed) and what was read of it ahead. (The
        first member is never a mark: it may be the top, which a mark names again.)"""
        _kind, key, ahead = request
        if ahead is not None:
            stream = io.BufferedReader(_ReadAhead(ahead, os.dup(descriptors[0])), STREAM_BUFFER)
            archive = TarReader(stream)
            self._open[key] = (archive, iter(archive), stream)
            self._marks[key] = -1  # (see above)
        if key not in self._open:
            return [], True  # (a piece asked for after the last)
        archive, members, stream = self._open[key]
        piece: list[ReadMember] = []
        for member in members:
            piece.append((member_fields(member), store_member(archive, member, chunk)))
            if member.type == DIRTYPE and member_rel(member.name) in MARKS:
                self._marks[key] = marks = self._marks[key] + 1
                if marks % MARK_COPIES == 1:  # the first of a run's
                    return piece, False
            elif self._marks[key] < 0:
                self._marks[key] = 0
        archive.drain()
        stream.close()
        del self._open[key]
        return piece, True


class _ReadAhead(io.RawIOBase):
    """A descriptor's data, after the bytes read from it ahead (by the capture's process)."""

    def __init__(self, ahead: bytes, descriptor: int):
        self._ahead = ahead
        self._file = io.FileIO(descriptor, "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if not self._ahead:
            return self._file.readinto(buffer)
        count = min(len(buffer), len(self._ahead))
        buffer[:count] = self._ahead[:count]
        self._ahead = self._ahead[count:]
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


def reader(store_root: str) -> Handler:
    gc.disable()  # (what a reader makes is acyclic and short-lived: the collector found nothing, at 1.5 % of its time)
    store = ChunkStore(store_root).open()
    met: set[bytes] = set()  # chunks this reader or another has written
    written: list[bytes] = []  # the ones it wrote for the batch at hand
    packs = _Packs(store)
    streams = _Streams()
    # (The store stays as it was opened: a first commit's is empty, and asking it for every
    # chunk was a twentieth of a reader's Python.)
    stored = (lambda blob_id: False) if store.holds_nothing() else store.__contains__

    def chunk(data: memoryview) -> bytes:
        blob_id = raw_object_id(data)  # (plain bytes: see Finished)
        if blob_id not in met and not stored(blob_id):
            flag, payload = compression.compress(data)
            packs.add(blob_id, flag, payload, len(data))
            met.add(blob_id)
            written.append(blob_id)
        return blob_id

    def read(request: tuple[list[ToRead] | StreamRequest, list[bytes]] | str, descriptors: list[int]) -> tuple[Any, Finished, list[bytes]] | Finished:
        """A batch of files, or a piece of a tar stream, and the chunks other readers wrote
        since this one was last told: the files' contents (or the piece's members), the packs
        finished since the last answer, the chunks written for the request."""
        if isinstance(request, str):  # FINISH
            return packs.finished(wait=True)
        body, news = request
        met.update(news)
        written.clear()
        try:
            if isinstance(body, tuple):
                answer: Any = streams.read(body, descriptors, chunk)
            else:
                answer = [read_content(file, chunk) for file in body]
        except BaseException as error:
            raise _with_packs(error, packs.durable()) from None
        return answer, packs.finished(), written

    return read

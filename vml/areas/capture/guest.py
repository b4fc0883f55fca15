"""Capture a tree that lives elsewhere (a guest) from a metadata listing and a tar stream.

The guest's `find` lists every path with its metadata; the stat cache vouches for what
did not change; only the rest is asked for as one tar stream (GNU tar, pax format, with
xattrs and sparse maps). The result is the same Merkle tree of listings a local capture
of the same files gives, node for node, so entries from either kind of area compare.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import SimpleQueue
from types import ModuleType
from typing import IO, TYPE_CHECKING, Protocol

from vml.areas.capture.assemble import Assembly, CaptureProgress, CaptureResult, Child, other_name
from vml.areas.rules import Rules, Scope
from vml.areas.statcache import RACY_WINDOW_NS, StatCache, pack_key
from vml.areas.tarformat import KIND_OF_TAR_TYPE, TarMember, TarReader, member_rel, node_of_member, parse_time
from vml.objects.chunker import WHOLE_FILE_BYTES, chunk_file, cut_whole, one_chunk
from vml.objects.manifest import (
    KIND_BLOCK,
    KIND_CHAR,
    KIND_DIR,
    KIND_FIFO,
    KIND_FILE,
    KIND_SYMLINK,
    Node,
    Totals,
    decode_node,
    encode_node,
)
from vml.objects.store import ChunkStore
from vml.workers import FILE_COST
from vml.workers import wanted as workers_wanted

if TYPE_CHECKING:
    from vml.areas.capture.processes import StreamReaders

_compiled: ModuleType | None
try:
    from vml.areas.capture import _listing as _compiled  # (built by scripts/setup: see setup.py)
except ImportError:  # (a tree not built: every record parsed in Python, a third of the speed)
    _compiled = None

# One record per path: fixed fields, then path and symlink target, NUL-separated. Owners by
# number only: find's %u and %g look each file's owner up again (two thirds of
# find's time on a guest's 75,000 paths); the names are looked up once a number (`owner_names`).
FIND_FORMAT = r"%y %m %U %G %s %T@ %C@ %i %n %D %b\0%p\0%l\0"
_FIELDS_PER_RECORD = 3
BATCH_BYTES = 4 * 1024 * 1024
BATCH_ITEMS = 256
MAX_BYTES_IN_FLIGHT = 64 * 1024 * 1024
# A fetch of this much work (bytes, and FILE_COST a path) crosses as one tar stream a reader
# process, each read and stored there (processes.py: StreamReaders), where one stream read by
# this process kept 1.6 of two cores busy; each stream is made of runs of about RUN_WORK.
PARALLEL_WORK = 128 * 1024 * 1024
RUN_WORK = 8 * 1024 * 1024
# What ends each run of a stream read by a reader process: the top again, under a name no
# listing holds ("./." and 1,500 "/." more on the guest: GNU tar keeps it whole, in a pax
# record), MARK_COPIES times. Its reader answers at the first of each run's copies
# (processes.py: StreamReaders), and is given the next run then; the copies after it push it
# out of tar's last record (tar writes 10 KiB at a time, and a mark is 4 KiB: 3.5 of pax
# header for its name, 0.5 of ustar), else a mark after a run of little data waits in tar for
# names that are not sent before it is read. (The top as "./." took 24 copies, of 0.5 to 1.5
# KiB each: an eighth of the base tree's members, each stat'ed by tar and parsed by a reader.)
MARK = b"." + b"/." * 1500
MARK_COPIES = 4
RUNS_AHEAD = 2
# A first capture's streams start with up to this many runs each, from the listing as it came,
# while the tree is made from it (GuestCapture._head_start): the base tree's first commit made
# its tree in 0.3 s with one core waiting, and in 0.55 s beside the readers; 16 runs keep a
# reader busy past that.
HEAD_START_RUNS = 16
MARKS = (MARK, b"")  # the names (member_rel's) of a mark, and of the top (a stream's first member: mark 0)
_TYPES = {
    b"f": (KIND_FILE, stat.S_IFREG),
    b"d": (KIND_DIR, stat.S_IFDIR),
    b"l": (KIND_SYMLINK, stat.S_IFLNK),
    b"c": (KIND_CHAR, stat.S_IFCHR),
    b"b": (KIND_BLOCK, stat.S_IFBLK),
    b"p": (KIND_FIFO, stat.S_IFIFO),
}

OpenedTar = contextlib.AbstractContextManager[tuple[IO[bytes], Callable[[], list[tuple[bytes, str]]]]]


class OpenTar(Protocol):
    """Opens a tar stream of the given runs of paths (relative, in the order given: each run
    is sent to the guest as it comes, the iteration may wait for the next) that holds about
    the given number of bytes; `reader`: to be read by a reader process (handoff), through a
    descriptor wherever the area can make one. The context's value is (stream, problems),
    where problems() lists (path, message) the guest's tar reported."""

    def __call__(self, runs: Iterable[list[bytes]], size: int, *, reader: bool = False) -> OpenedTar: ...


@dataclass(slots=True)
class GuestPath:
    rel: bytes
    kind: int
    mode: int  # permission bits with setuid, setgid, sticky
    uid: int
    gid: int
    user: str | None
    group: str | None
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: tuple[int, int]  # (device, inode): hardlink identity
    nlink: int
    target: bytes | None
    key: bytes  # the stat cache key, packed as a local capture packs it

    @property
    def racy_after(self) -> int:
        return max(self.mtime_ns, self.ctime_ns)


def _unsafe(rel: bytes) -> bool:
    """Whether a relative path has an empty, "." or ".." part: between slashes added at both
    ends, such a part is "//", "/./" or "/../" (three searches, not a split of every path)."""
    wrapped = b"/" + rel + b"/"
    return b"//" in wrapped or b"/./" in wrapped or b"/../" in wrapped


OwnerNames = Callable[[set[int], set[int]], tuple[dict[int, str], dict[int, str]]]


def parse_names(data: bytes) -> dict[int, str]:
    """Names by number from passwd or group lines (getent's, or the files'): the first line
    of a number names it, as getpwuid answers."""
    names: dict[int, str] = {}
    for line in data.splitlines():
        fields = line.split(b":")
        if len(fields) > 2 and fields[2].isdigit():
            name = fields[0].decode("utf-8", "replace")
            if name != fields[2].decode():  # (a name that is its own number is no name: find printed it so)
                names.setdefault(int(fields[2]), name)
    return names


GuestListing = tuple[dict[bytes, "GuestPath"], list[tuple[bytes, str]]]  # paths by relative name, the ones skipped


def parse_listing(data: bytes) -> GuestListing:
    """Paths by relative name (b"" is the top) and the ones skipped, from find's output
    (owners' names not yet known: see `name_owners`)."""
    parser = ListingParser()
    parser.feed(data)
    return parser.close()


class ListingParser:
    """find's output parsed piece by piece as it arrives (`feed`), so that parsing a large
    guest's listing goes on while its find still runs: its plain records in C (_listing.c: the
    base tree's 75,000 took 0.3 CPU-seconds here, and 0.55 s of a first commit over ssh,
    before any stream could start), any other record here (`_records`)."""

    def __init__(self) -> None:
        self.paths: dict[bytes, GuestPath] = {}
        self.skipped: list[tuple[bytes, str]] = []
        self.file_bytes = 0  # the size of the regular files parsed so far
        self._rest = b""  # the fields of a record not whole yet
        self._spec = (GuestPath, pack_key, _TYPES, KIND_FILE, KIND_SYMLINK)

    def feed(self, data: bytes) -> None:
        data = self._rest + data if self._rest else data
        start = 0
        while _compiled is not None:
            start, file_bytes = _compiled.parse(data, start, self.paths, self._spec)
            self.file_bytes += file_bytes
            end = _record_end(data, start)  # (a record C left to this parser, or one not whole yet)
            if end < 0:
                break
            self._records(data[start:end].split(b"\0"), _FIELDS_PER_RECORD)
            start = end + 1
        fields = data[start:].split(b"\0") if start else data.split(b"\0")
        whole = (len(fields) - 1) // _FIELDS_PER_RECORD * _FIELDS_PER_RECORD  # (the last field may be cut)
        self._rest = b"\0".join(fields[whole:])
        self._records(fields, whole)

    def close(self) -> GuestListing:
        """The listing, once find's output has all been fed."""
        if self._rest:  # output cut short: its whole fields, as parse_listing always read them
            fields = self._rest.split(b"\0")
            self._records(fields, len(fields) // _FIELDS_PER_RECORD * _FIELDS_PER_RECORD)
            self._rest = b""
        return self.paths, self.skipped

    def _records(self, fields: list[bytes], stop: int) -> None:
        paths, skipped = self.paths, self.skipped
        file_bytes = self.file_bytes
        for start in range(0, stop, _FIELDS_PER_RECORD):
            head, path, target = fields[start : start + _FIELDS_PER_RECORD]
            kind_code, mode, uid, gid, size, mtime, ctime, inode, nlink, device, _blocks = head.split(b" ")
            rel = path[2:] if path.startswith(b"./") else b"" if path == b"." else path
            if rel and _unsafe(rel):
                skipped.append((rel, "a name the guest's listing should not hold"))  # never a path outside the tree
                continue
            if kind_code not in _TYPES:
                skipped.append((rel, "socket" if kind_code == b"s" else "unknown file type"))
                continue
            kind, type_bits = _TYPES[kind_code]
            permissions = int(mode, 8)
            uid_number, gid_number = int(uid), int(gid)
            mtime_ns, ctime_ns = parse_time(mtime), parse_time(ctime)
            size_number, inode_number, nlink_number = int(size), int(inode), int(nlink)
            if kind == KIND_FILE:
                file_bytes += size_number
            key = pack_key(inode_number, size_number, mtime_ns, ctime_ns, type_bits | permissions, uid_number, gid_number, nlink_number)
            paths[rel] = GuestPath(
                rel, kind, permissions, uid_number, gid_number, None, None,
                size_number if kind == KIND_FILE else 0, mtime_ns, ctime_ns, (int(device), inode_number), nlink_number,
                target if kind == KIND_SYMLINK else None, key,
            )
        self.file_bytes = file_bytes


def _record_end(data: bytes, start: int) -> int:
    """Where the record at `start` ends (its last NUL), or -1 if it is not whole."""
    end = start - 1
    for _field in range(_FIELDS_PER_RECORD):
        end = data.find(b"\0", end + 1)
        if end < 0:
            break
    return end


def name_owners(paths: dict[bytes, GuestPath], owner_names: OwnerNames) -> None:
    """Give each path its owner's and group's names, looked up once a number."""
    users, groups = owner_names({p.uid for p in paths.values()}, {p.gid for p in paths.values()})
    for guest_path in paths.values():
        guest_path.user = users.get(guest_path.uid)
        guest_path.group = groups.get(guest_path.gid)


# A member a reader process read: TarMember's fields in order (a tuple pickles in a fraction
# of a dataclass's time), and its chunk ids (joined; empty for all but a regular file).
ReadMember = tuple[tuple, bytes]


def member_fields(member: TarMember) -> tuple:
    return (member.name, member.type, member.mode, member.uid, member.gid, member.size, member.mtime_ns, member.linkname,
            member.devmajor, member.devminor, member.xattrs, member.extents)


def member_pieces(archive: TarReader, member: TarMember) -> Iterator[tuple[bytes, bool]]:
    """A regular file member's data as it is stored: pieces of (data, whether it is still to
    be cut into chunks). A file of one chunk, or of up to WHOLE_FILE_BYTES, is read at once
    (its data extents back to back, which cut_whole cuts as chunk_file would:
    tests/objects/test_chunker.py); a larger one chunk by chunk."""
    if member.size <= WHOLE_FILE_BYTES:
        data = archive.read(member.size)
        if data:
            yield data, not one_chunk(member.size, member.extents)
        return
    # The view is reused for the next chunk: each is copied.
    for chunk in chunk_file(lambda buffer, _offset: archive.readinto(buffer), member.size, member.extents):
        yield bytes(chunk), False


def store_member(archive: TarReader, member: TarMember, chunk: Callable[[memoryview], bytes]) -> bytes:
    """A member's data stored with `chunk`, on the calling thread: its chunk ids, joined."""
    if KIND_OF_TAR_TYPE.get(member.type) != KIND_FILE or not member.size:
        return b""
    if one_chunk(member.size, member.extents):  # (most files: without member_pieces' generator)
        return chunk(memoryview(archive.read(member.size)))
    return b"".join([
        b"".join([chunk(piece) for piece in cut_whole(data)]) if cut else chunk(memoryview(data))
        for data, cut in member_pieces(archive, member)
    ])


def handoff(stream: IO[bytes]) -> tuple[int, bytes] | None:
    """The descriptor a stream reads from, and what it has read of it ahead (a reader process
    reads on from there); None for a stream that is no descriptor's (paramiko's channel)."""
    try:
        descriptor = stream.fileno()
    except OSError:  # (io.UnsupportedOperation is one)
        return None
    peek = getattr(stream, "peek", None)
    ahead = peek() if peek is not None else b""
    if ahead:
        stream.read(len(ahead))  # (what it held: no read of the descriptor)
    return descriptor, ahead


@dataclass(slots=True)
class _Batch:
    """Data stored by one worker task, (data, whether to cut it into chunks) each; the ids
    of each item's chunks, in order, once it is done."""

    items: list[tuple[bytes, bool]] = field(default_factory=list)
    size: int = 0
    future: Future | None = None

    def ids(self) -> list[bytes]:
        assert self.future is not None, "a batch is submitted before its ids are asked for"
        return self.future.result()


@dataclass(slots=True)
class _Dir:
    rel: bytes
    names: list[bytes]


def stream_readers(store: ChunkStore, dry_run: bool) -> StreamReaders:
    """The reader processes (not started yet) whose streams a large fetch crosses in (see
    GuestCapture._runs): VML_WORKER_PROCESSES, else one a core; none in a dry run (they
    store), or where the store reads blobs from a source."""
    from vml.areas.capture.processes import StreamReaders  # (which imports this module)

    return StreamReaders(store, 0 if dry_run or store.source is not None else workers_wanted())


class _Feed:
    """The runs of paths one tar stream is to send, given as the capture goes: the area's
    feeding thread iterates it, waiting for each run, and ends the stream's paths at `end`."""

    def __init__(self) -> None:
        self._runs: SimpleQueue[list[bytes] | None] = SimpleQueue()
        self.ended = False

    def give(self, run: list[bytes]) -> None:
        self._runs.put(run)

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self._runs.put(None)

    def __iter__(self) -> Iterator[list[bytes]]:
        while (run := self._runs.get()) is not None:
            yield run


class _Fetching:
    """A fetch's tar streams, each read by a reader process (StreamReaders): each stream is
    given `ahead` runs as it opens (`open`), and one more each time its reader comes to the
    end of one (its MARKs) while it has fewer than RUNS_AHEAD, so that all end together: a
    stream given half the paths at the start ended 0.8 s before the other (the base tree's
    first commit). Runs may come in two parts, the rest `last` (_head_start). A stream that
    cannot be handed over (no descriptor: paramiko's channel) is given every run it may be
    and read by this process (`read_here`)."""

    def __init__(self, open_tar: OpenTar, streams: StreamReaders, size: int):
        self.opened = contextlib.ExitStack()  # the streams' contexts
        self._open_tar, self._streams, self._size = open_tar, streams, size
        self._left: deque[list[bytes]] = deque()
        self._last = False  # `_left` holds every run still to give
        self._feeds: dict[int, _Feed] = {}  # by stream key
        self._in_flight: dict[int, int] = {}  # runs given to each stream and not answered yet
        self._started: list[_Feed] = []
        self._problems: list[Callable[[], list[tuple[bytes, str]]]] = []

    def open(self, runs: list[list[bytes]], ahead: int, read_here: Callable[[IO[bytes]], None], *, last: bool) -> None:
        """Opens up to a stream a reader process (each given `ahead` of `runs`)."""
        self._left.extend(runs)
        self._last = last
        for _number in range(self._streams.count):
            feed = _Feed()
            self._started.append(feed)
            given = self._give(feed, ahead)  # (queued before the stream opens: the area sends them once its tar has logged in)
            stream, problems = self.opened.enter_context(self._open_tar(feed, self._size, reader=True))
            self._problems.append(problems)
            handed = handoff(stream)
            if handed is None:
                self._give(feed, len(self._left))
                feed.end()
                read_here(stream)
            else:
                key = self._streams.start(*handed, pieces=given + feed.ended)
                self._feeds[key], self._in_flight[key] = feed, given
            if not self._left:
                break

    def last(self, runs: list[list[bytes]], read_here: Callable[[IO[bytes]], None]) -> None:
        """The rest of the runs, given as the streams open so far answer (new ones opened
        where none was handed over)."""
        if not self._feeds:
            self.open(runs, RUNS_AHEAD, read_here, last=True)
            return
        self._left.extend(runs)
        self._last = True
        for key in self._feeds:
            self._give_more(key)

    def _give(self, feed: _Feed, count: int) -> int:
        count = max(0, min(count, len(self._left)))
        for _ in range(count):
            feed.give([*self._left.popleft(), *[MARK] * MARK_COPIES])
        if self._last and not self._left:
            feed.end()
        return count

    def _give_more(self, key: int) -> None:
        """Runs up to RUNS_AHEAD unanswered, and a piece asked for each (and for the
        stream's end, once its paths are all sent: StreamReaders.ask)."""
        feed = self._feeds[key]
        if feed.ended:
            return
        given = self._give(feed, RUNS_AHEAD - self._in_flight[key])
        self._in_flight[key] += given
        self._streams.ask(key, given + feed.ended)

    def collect(self, take: Callable[[list[ReadMember]], None]) -> list[tuple[bytes, str]]:
        """Every piece of every stream, given to `take` as it comes; the problems the
        streams' tars reported."""
        def answered(key: int, members: list[ReadMember], at_end: bool) -> None:
            if not at_end:  # (a run's piece, up to its mark)
                self._in_flight[key] -= 1
                self._give_more(key)
            take(members)

        self._streams.collect(answered)
        return [problem for problems in self._problems for problem in problems()]

    def end_feeds(self) -> None:
        """No stream's feeding thread is left waiting for runs (an error, or the end)."""
        for feed in self._started:
            feed.end()


class GuestCapture:
    def __init__(
        self,
        listing: bytes | GuestListing,
        guest_now_ns: int,
        open_tar: OpenTar,
        store: ChunkStore,
        old_cache: StatCache,
        *,
        rules: Rules,
        dry_run: bool = False,
        expected: Callable[[bytes], Node | None] | None = None,
        progress: Callable[[CaptureProgress], None] | None = None,
        owner_names: OwnerNames,
        streams: StreamReaders | None = None,
        head_start: bool = False,
    ):
        """`streams`: the reader processes of a large fetch's streams (`stream_readers`),
        closed by `run`; `head_start`: a first capture's streams may open before its tree
        is made (the area has their tars logged in already: see _head_start)."""
        self.paths, self.skipped = parse_listing(listing) if isinstance(listing, bytes) else listing
        self._owner_names = owner_names
        self.expected = expected
        self._trusted: dict[bytes, bytes | None] = {}
        self.open_tar = open_tar
        self.store = store
        self.old_cache = old_cache
        self.rules = rules
        self.tree = Assembly(store, old_cache, dry_run)
        self.counts = self.tree.counts
        self.racy_after = guest_now_ns - RACY_WINDOW_NS
        self._progress = progress or (lambda counts: None)
        self.changed_while_reading: list[bytes] = []
        self._fetched: dict[bytes, Node] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="vml-hash")
        self._in_flight: deque[tuple[Future, int]] = deque()
        self._bytes_in_flight = 0
        self._unfinished: list[tuple[Node, list[tuple[_Batch, int]]]] = []
        self._batch = _Batch()
        self._uncacheable: set[bytes] = set()
        self._present: set[bytes] = set()  # the paths of the tree being built (for its hardlink groups)
        self._dirs: dict[bytes, _Dir] = {}  # the tree the rules admit (_tree)
        self._hardlinks: dict[bytes, list[bytes]] = {}
        self._built: dict[bytes, tuple[bytes, Totals]] = {}  # the directories listed so far (_build)
        self._missing: list[bytes] = []  # files whose cached nodes' data left the store
        self._streams = streams if streams is not None else stream_readers(store, dry_run)
        self._head_start_wanted = head_start
        self._head: _Fetching | None = None  # streams opened before the tree was made (_head_start)
        self._head_opening: Future | None = None  # their opening, on a thread (_head_start)
        self._head_unhanded: list[IO[bytes]] = []  # one no reader process could take: read in _fetch_streams
        self._head_given: set[bytes] = set()  # the paths given to them
        self._head_pending: set[bytes] = set()  # of those, the ones not read yet

    def run(self) -> CaptureResult:
        if b"" not in self.paths:
            raise FileNotFoundError("the guest's listing has no top directory")
        failed = True
        try:
            # The owners' names are asked for (a round trip to the guest) while the tree is made.
            naming = self._pool.submit(name_owners, self.paths, self._owner_names)
            if self._head_start_wanted:
                self._head_start()
            self._dirs = dirs = self._tree()
            self._hardlinks = hardlinks = self._hardlink_groups(dirs)
            wanted = self._to_fetch(dirs, hardlinks)
            naming.result()
            while True:
                self._built, self._missing = {}, []
                self._present.clear()
                self._fetch(wanted)
                self._finish_hashing()
                result = self._build()
                if not self._missing:
                    failed = False
                    return result
                wanted = self._missing  # cached nodes whose data left the store (gc): read them now
        finally:
            if self._head is not None:  # (an error before the fetch: its streams end unread)
                with contextlib.suppress(Exception):  # (its error is the one raised, or came after it)
                    self._opened_head()
                self._head.end_feeds()
                self._head.opened.close()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._streams.close(kill=failed)

    def _head_start(self) -> None:
        """A first capture's streams opened while its tree is made, each given up to
        HEAD_START_RUNS runs of the files the listing named first that the tree will hold
        (the rules' scopes as _tree finds them, top down: find names a directory before
        what it holds), but for the names of a hardlinked inode, which wait for the tree.
        Not for a fetch that crosses as one stream read here (see _runs), nor where a
        capture may trust what it has (a stat cache, a checkout's entry). They open on a
        thread: each waits for its tar's login, which the base tree's first commit had not
        finished for 0.1-0.35 s after the listing, and the tree is made meanwhile."""
        if self.old_cache.dirs or self.expected is not None or self._streams.count < 2:
            return
        paths = self.paths.values()
        if sum(FILE_COST + path.size for path in paths) < PARALLEL_WORK:
            return
        runs: list[list[bytes]] = []
        run: list[bytes] = [b""]  # (the top: a stream's first member, never in a later run: see _runs)
        run_work = FILE_COST
        scopes = {b"": self.rules.root_scope()}
        for path in paths:
            parent = scopes.get(path.rel.rpartition(b"/")[0]) if path.rel else None
            if parent is None:
                continue  # the top, or below a directory the tree leaves out
            scope = self._scope(path.rel, path.kind, parent)
            if scope is Scope.OUT:
                continue
            if path.kind == KIND_DIR:
                scopes[path.rel] = scope
            elif path.kind == KIND_FILE and path.nlink == 1:
                run.append(path.rel)
                run_work += FILE_COST + path.size
                if run_work >= RUN_WORK:
                    runs.append(run)
                    run, run_work = [], 0
                    if len(runs) == HEAD_START_RUNS * self._streams.count:
                        break
        if len(runs) < self._streams.count:
            return  # (as few files as this cross as well after the tree is made)
        head = self._head = _Fetching(self.open_tar, self._streams, len(runs) * RUN_WORK)
        self._head_given = {rel for run in runs for rel in run}
        self._head_pending = set(self._head_given)
        ahead = -(-len(runs) // self._streams.count)  # (every stream some)
        self._head_opening = self._pool.submit(head.open, runs, ahead, self._head_unhanded.append, last=False)

    def _opened_head(self) -> None:
        """Once the head start's streams are open (raising what stopped them)."""
        opening, self._head_opening = self._head_opening, None
        if opening is not None:
            opening.result()

    # -- the tree the rules admit, in a local capture's order

    def _tree(self) -> dict[bytes, _Dir]:
        children: dict[bytes, list[bytes]] = {}
        for rel in self.paths:
            if rel:
                parent, _, name = rel.rpartition(b"/")
                children.setdefault(parent, []).append(name)
        dirs: dict[bytes, _Dir] = {}
        scopes = {b"": self.rules.root_scope()}
        order = [b""]
        while order:
            rel = order.pop()
            kept = []
            for name in sorted(children.get(rel, ())):
                child_rel = rel + b"/" + name if rel else name
                path = self.paths[child_rel]
                scope = self._scope(child_rel, path.kind, scopes[rel])
                if scope is Scope.OUT:
                    continue
                kept.append(name)
                if path.kind == KIND_DIR:
                    scopes[child_rel] = scope
                    order.append(child_rel)
            dirs[rel] = _Dir(rel, kept)
        return dirs

    def _scope(self, rel: bytes, kind: int, parent: Scope) -> Scope:
        """Whether the rules take a path in, its parent's scope given (every path, where
        the rules are everything)."""
        return Scope.IN if self.rules.everything else self.rules.scope(rel, kind == KIND_DIR, parent)

    def _preorder(self, dirs: dict[bytes, _Dir]) -> Iterator[bytes]:
        stack = [iter(dirs[b""].names)]
        parents = [b""]
        while stack:
            name = next(stack[-1], None)
            if name is None:
                stack.pop()
                parents.pop()
                continue
            rel = parents[-1] + b"/" + name if parents[-1] else name
            yield rel
            if rel in dirs:
                stack.append(iter(dirs[rel].names))
                parents.append(rel)

    def _hardlink_groups(self, dirs: dict[bytes, _Dir]) -> dict[bytes, list[bytes]]:
        """Each path that shares its inode with another path of the tree -> its group, the
        paths of that inode in walk order (the first is the one the others name)."""
        groups: dict[tuple[int, int], list[bytes]] = {}
        for rel in self._preorder(dirs):
            path = self.paths[rel]
            if path.kind != KIND_DIR and path.nlink > 1:  # any kind but a directory may have several names
                groups.setdefault(path.inode, []).append(rel)
        return {rel: members for members in groups.values() if len(members) > 1 for rel in members}

    # -- what must cross the network

    def _cached_node(self, rel: bytes) -> bytes | None:
        parent, _, name = rel.rpartition(b"/")
        cached = self.old_cache.dirs.get(parent)
        hit = cached.children.get(name) if cached is not None else None
        path = self.paths.get(rel)
        if path is None:
            return None
        if hit is None or hit[0] != path.key or path.racy_after >= self.racy_after:
            return self._trust(rel, path) if self.expected is not None else None
        return hit[1]

    def _trust(self, rel: bytes, path: GuestPath) -> bytes | None:
        """Right after a checkout wrote a path, the node the entry has there, if the listing
        shows exactly its metadata (tar set its mtime to the entry's: a later write would
        change it): what vml just sent is not read back. Hardlinks are always read."""
        if rel not in self._trusted:
            node = self.expected(rel) if path.nlink == 1 or path.kind == KIND_DIR else None
            matches = node is not None and node.hardlink is None and (
                node.kind, node.mode, node.uid, node.gid, node.mtime_ns, node.size, node.target
            ) == (path.kind, path.mode, path.uid, path.gid, path.mtime_ns, path.size, path.target)
            self._trusted[rel] = encode_node(node) if matches else None
        return self._trusted[rel]

    def _to_fetch(self, dirs: dict[bytes, _Dir], hardlinks: dict[bytes, list[bytes]]) -> list[bytes]:
        """The top (always), and every path the stat cache cannot vouch for; a hardlink group
        is read once, through its first member, if any of its members changed."""
        changed_groups = {group[0] for member, group in hardlinks.items() if self._cached_node(member) is None}
        wanted = [b""]
        for rel in self._preorder(dirs):
            group = hardlinks.get(rel)
            if group is not None:
                if group[0] == rel and rel in changed_groups:
                    wanted.append(rel)
            elif self._cached_node(rel) is None:
                wanted.append(rel)
        return wanted

    def _fetch(self, wanted: list[bytes]) -> None:
        head = self._head
        if head is not None:  # (its paths are each in `wanted`: see _head_start)
            self._opened_head()
            self._head = None
            wanted = [rel for rel in wanted if rel not in self._head_given]
        if not wanted and head is None:
            return
        pending, self._head_pending = set(wanted) | self._head_pending, set()
        size = sum(self.paths[rel].size for rel in wanted if rel in self.paths)
        runs = self._runs(wanted, streams=head is not None)
        if runs is None:
            with self.open_tar([wanted], size) as (stream, problems):
                self._read_stream(stream, pending)
                reported = problems()
        else:
            reported = self._fetch_streams(runs, size, pending, head)
        for rel, message in reported:
            if "changed as we read it" in message:
                self.changed_while_reading.append(rel)
                self._uncacheable.add(rel)
                parent, _, name = rel.rpartition(b"/")
                if rel and parent in self._built:  # listed already, its stat cache entry trusting the path
                    self.tree.distrust(parent, name)
        for rel in pending:
            why = next((m for r, m in reported if r == rel), None)
            if why is None or "No such file" not in why:
                # Unreadable, or unexplained (tar quotes odd names in its messages): never
                # left out in silence.
                self.skipped.append((rel, why or "the guest's tar did not send it"))
            self.paths.pop(rel, None)  # deleted since the listing, or skipped: not part of this entry

    def _runs(self, wanted: list[bytes], *, streams: bool = False) -> list[list[bytes]] | None:
        """`wanted` as runs of about RUN_WORK (bytes, and FILE_COST a path) for a stream a
        reader process (_fetch_streams), in walk order but any run of more than a few runs'
        work (a large file) first, so that no stream is left with one at the end, and the
        top (if wanted) first of all: a reader takes no stream's first member for a mark,
        and the top is one by name (processes.py: _Streams); None for one stream read here:
        a fetch of less than PARALLEL_WORK, or where no reader may store (a dry run), unless
        `streams` (opened already)."""
        def work(rel: bytes) -> int:
            path = self.paths.get(rel)
            return FILE_COST + (path.size if path is not None else 0)

        if not streams and (self._streams.count < 2 or sum(map(work, wanted)) < PARALLEL_WORK):
            return None
        runs: list[tuple[int, list[bytes]]] = []
        run: list[bytes] = []
        run_work = 0
        for rel in wanted:
            run.append(rel)
            run_work += work(rel)
            if run_work >= RUN_WORK:
                runs.append((run_work, run))
                run, run_work = [], 0
        if run:
            runs.append((run_work, run))
        runs.sort(key=lambda weighed: weighed[1][0] != b"" and weighed[0] < 4 * RUN_WORK)  # (stable: the rest stay in walk order)
        return [run for _work, run in runs]

    def _fetch_streams(self, runs: list[list[bytes]], size: int, pending: set[bytes], head: _Fetching | None) -> list[tuple[bytes, str]]:
        """The runs through one tar stream a reader process (_Fetching), after those the
        streams opened early were given (`head`)."""
        fetching = head if head is not None else _Fetching(self.open_tar, self._streams, size)
        blockers = self._blockers(pending)

        def read_here(stream: IO[bytes]) -> None:
            self._read_stream(stream, pending)

        with fetching.opened:
            try:
                unhanded, self._head_unhanded = self._head_unhanded, []
                for stream in unhanded:  # (given every run of the head start: see _Fetching.open)
                    read_here(stream)
                if head is not None:
                    fetching.last(runs, read_here)
                else:
                    fetching.open(runs, RUNS_AHEAD, read_here, last=True)
                return fetching.collect(lambda members: self._take_read(members, pending, blockers))
            finally:
                fetching.end_feeds()  # (an error: the streams' feeding threads are not left waiting)

    def _read_stream(self, stream: IO[bytes], pending: set[bytes]) -> None:
        """A tar stream read on this thread, its data stored by the threads (_hash_later)."""
        archive = TarReader(stream)
        for member in archive:
            rel = self._admit(member, pending)
            if rel is None:
                continue
            node = self._fetched_node(member, rel)
            if node.kind == KIND_FILE:
                tickets = [self._hash_later(data, cut=cut) for data, cut in member_pieces(archive, member)]
                self._unfinished.append((node, tickets))  # node.chunks once the workers are done: see _finish_hashing
            self._progress(self.counts)
        archive.drain()

    def _take_read(self, members: list[ReadMember], pending: set[bytes], blockers: dict[bytes, int]) -> None:
        """Members a reader process read, their data stored already; the directories they
        complete are built."""
        for fields, chunks in members:
            member = TarMember(*fields)
            rel = member_rel(member.name)
            if rel not in pending:
                continue  # a mark, a link tar added, or a name it altered
            if self._admit(member, pending, rel) is not None:
                self._fetched_node(member, rel).chunks = chunks
            self._resolved(rel, blockers)
        self._progress(self.counts)

    def _admit(self, member: TarMember, pending: set[bytes], rel: bytes | None = None) -> bytes | None:
        """The member's path (`rel`, if known), if it is one asked for and still of its listed kind."""
        if rel is None:
            rel = member_rel(member.name)
        if rel not in pending:
            return None  # a link tar added, or a name it altered
        pending.discard(rel)
        if KIND_OF_TAR_TYPE.get(member.type) != self.paths[rel].kind:
            # Replaced by another type (or linked) between the listing and the read: left
            # out of this entry, like a file deleted meanwhile.
            self.changed_while_reading.append(rel)
            self.paths.pop(rel)
            return None
        return rel

    def _member_node(self, member: TarMember, rel: bytes) -> Node:
        """The member's node, without its data."""
        path = self.paths[rel]  # of the member's own kind: _admit checked they agree
        node = node_of_member(member, rel.rpartition(b"/")[2], path.user, path.group)
        if (node.kind, node.mode, node.uid, node.gid, node.mtime_ns, node.size) != (
            path.kind, path.mode, path.uid, path.gid, path.mtime_ns, path.size
        ):
            self.changed_while_reading.append(rel)  # it changed between the listing and the read
            self._uncacheable.add(rel)
        return node

    def _fetched_node(self, member: TarMember, rel: bytes) -> Node:
        """The member's node, fetched: a file's extents set and its reading counted (its
        chunks are its reader's to set)."""
        node = self._fetched[rel] = self._member_node(member, rel)
        if node.kind == KIND_FILE:
            node.extents = member.extents
            self.counts.files_read += 1
            self.counts.bytes_read += member.size
        return node

    def _hash_later(self, data: bytes, *, cut: bool) -> tuple[_Batch, int]:
        """Cut (if `cut`), hash, compress and store data on a worker, while this thread reads
        the stream on (zstd took a third of its time, FastCDC a sixth); the ticket names the
        ids once it is done. Data goes in batches: a future, its lock and a worker's wake-up
        per small file were a third of this thread's time. Memory stays bounded: at most
        MAX_BYTES_IN_FLIGHT of data waits for the workers."""
        batch = self._batch
        batch.items.append((data, cut))
        batch.size += len(data)
        ticket = batch, len(batch.items) - 1
        if batch.size >= BATCH_BYTES or len(batch.items) >= BATCH_ITEMS:
            self._submit_batch()
        return ticket

    def _submit_batch(self) -> None:
        batch = self._batch
        if not batch.items:
            return
        while self._in_flight and self._bytes_in_flight + batch.size > MAX_BYTES_IN_FLIGHT:
            future, size = self._in_flight.popleft()
            future.result()
            self._bytes_in_flight -= size
        chunk = self.tree.sink.chunk
        items, batch.items = batch.items, []  # the data is the worker's alone, freed when it is done

        def store_all() -> list[bytes]:
            return [b"".join([chunk(piece) for piece in cut_whole(data)]) if cut else chunk(data) for data, cut in items]

        batch.future = self._pool.submit(store_all)
        self._in_flight.append((batch.future, batch.size))
        self._bytes_in_flight += batch.size
        self._batch = _Batch()

    def _finish_hashing(self) -> None:
        self._streams.finish()  # the readers' last packs: in the store before the entry names them
        self._submit_batch()
        for node, tickets in self._unfinished:
            node.chunks = b"".join(batch.ids()[index] for batch, index in tickets)
        self._unfinished.clear()
        self._in_flight.clear()
        self._bytes_in_flight = 0

    # -- listings, bottom up

    def _build(self) -> CaptureResult:
        """The tree, bottom up: the directories not built yet (see _resolved); the files
        whose cached nodes' data left the store are in _missing."""
        for rel in reversed([b"", *(r for r in self._preorder(self._dirs) if r in self._dirs)]):
            if rel not in self._built:
                self._build_dir(rel)
        listing_id, totals = self._built[b""]
        top = self._fetched.get(b"")
        if top is None:
            raise FileNotFoundError("the guest's top directory could not be read")
        groups = {group[0]: [member for member in group if member in self._present] for group in self._hardlinks.values()}
        links = [members for members in groups.values() if len(members) > 1]
        return self.tree.result(top, listing_id, totals, links, self.skipped, self.changed_while_reading)

    def _build_dir(self, rel: bytes) -> None:
        """A directory's listing, once its subdirectories' are built and its children fetched."""
        directory, built, hardlinks = self._dirs[rel], self._built, self._hardlinks
        reused = self._reuse(directory, built, hardlinks)
        built[rel] = reused if reused is not None else self.tree.listing(rel, self._listed(directory, built, hardlinks, self._missing))

    def _blockers(self, pending: set[bytes]) -> dict[bytes, int]:
        """What each directory waits for before it is built while its files are still being
        fetched (_resolved): its subdirectories, and its children still pending; one that
        holds another name of a hardlinked inode waits for the end (_build)."""
        blockers = dict.fromkeys(self._dirs, 0)
        for rel in self._dirs:
            if rel:
                blockers[rel.rpartition(b"/")[0]] += 1
        for rel in pending:
            if rel:
                blockers[rel.rpartition(b"/")[0]] += 1
        for rel in self._hardlinks:
            if _named_first(rel, self._hardlinks) is not None:
                blockers[rel.rpartition(b"/")[0]] += 1  # (never counted down)
        return blockers

    def _resolved(self, rel: bytes, blockers: dict[bytes, int]) -> None:
        """A pending path came (or was left out): each directory it was the last wait of is
        built, and then its parent may be (a directory is its parent's wait too). Building
        while the readers still read left 0.4 s of it for after the last file (the base tree)."""
        while rel:
            parent = rel.rpartition(b"/")[0]
            blockers[parent] -= 1
            if blockers[parent]:
                return
            self._build_dir(parent)
            rel = parent

    def _reuse(self, directory: _Dir, built, hardlinks) -> tuple[bytes, Totals] | None:
        """The cached listing of a directory in which the cache vouches for every child,
        decoding no node (the common case of a re-commit or a status); None otherwise."""
        rel = directory.rel
        cached = self.old_cache.dirs.get(rel)
        if cached is None or cached.fingerprint is None:
            return None
        fingerprinted, child_rels, size = [], [], 0
        for name in directory.names:
            child_rel = rel + b"/" + name if rel else name
            path = self.paths.get(child_rel)
            if path is None or child_rel in self._fetched or path.racy_after >= self.racy_after:
                return None
            hit = cached.children.get(name)
            if hit is None or hit[0] != path.key:
                return None
            subdir = built.get(child_rel) if path.kind == KIND_DIR else None
            fingerprinted.append((name, path.key, subdir[0] if subdir else None, _named_first(child_rel, hardlinks)))
            child_rels.append(child_rel)
            size += path.size
        reused = self.tree.reuse(rel, fingerprinted, size)
        if reused is not None:
            self._present.update(child_rels)
        return reused

    def _listed(self, directory: _Dir, built, hardlinks, missing: list[bytes]) -> list[Child]:
        """The children of a directory as its listing will hold them."""
        children = []
        for name in directory.names:
            child_rel = directory.rel + b"/" + name if directory.rel else name
            path = self.paths.get(child_rel)
            if path is None:
                continue  # vanished or unreadable: reported by the fetch
            subdir = built.get(child_rel) if path.kind == KIND_DIR else None
            first = _named_first(child_rel, hardlinks)
            encoded, node = self._child_node(child_rel, path, subdir, first, missing)
            if encoded is None:
                continue
            self._present.add(child_rel)
            cacheable = child_rel not in self._uncacheable and path.racy_after < self.racy_after
            listing_id, totals = subdir if subdir is not None else (None, None)
            children.append(Child(name, path.key, encoded, node, first, path.size, cacheable, listing_id, totals))
        return children

    def _child_node(self, rel: bytes, path: GuestPath, subdir, first: bytes | None, missing) -> tuple[bytes | None, Node | None]:
        """`first`: the path its hardlink group names first, if not itself (_named_first)."""
        if first is not None:
            source = self._fetched.get(first)
            if source is None:
                cached = self._cached_node(first)
                if cached is None:
                    return None, None  # the group's first member vanished
                source = decode_node(cached)
            node = other_name(source, rel.rpartition(b"/")[2], first)
            return encode_node(node), node
        node = self._fetched.get(rel)
        if node is None:
            cached = self._cached_node(rel)
            if cached is None:
                return None, None
            if path.kind == KIND_DIR:
                node = decode_node(cached)
                node.tree = subdir[0]
                return encode_node(node), node
            if path.kind == KIND_FILE:
                node = decode_node(cached)
                if not self.tree.has_data(node):
                    missing.append(rel)
                return cached, node
            return cached, None
        if path.kind == KIND_DIR:
            node.tree = subdir[0]
        return encode_node(node), node


def _named_first(rel: bytes, hardlinks: dict[bytes, list[bytes]]) -> bytes | None:
    """The path a node names as its hardlink group's first member: None for the first itself."""
    group = hardlinks.get(rel)
    return group[0] if group is not None and group[0] != rel else None

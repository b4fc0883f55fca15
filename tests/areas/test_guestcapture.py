"""Parsing what a guest sends: find's listing (hostile names refused) and exact times."""

from __future__ import annotations

import os

from vml.areas.capture import parse_listing, parse_names, parse_time
from vml.objects.manifest import KIND_DIR, KIND_FILE, KIND_SYMLINK


def _record(kind: bytes, path: bytes, target: bytes = b"", mode: bytes = b"644") -> bytes:
    head = b"%s %s 0 0 12 1700000000.1234567890 1700000001.0000000000 42 1 2049 8" % (kind, mode)
    return b"\0".join([head, path, target]) + b"\0"


def test_listing_keeps_odd_names_and_refuses_escaping_ones():
    listing = b"".join([
        _record(b"d", b".", mode=b"755"),
        _record(b"f", b"./new\nline"),
        _record(b"f", b"./\xff\xfe"),
        _record(b"l", b"./link", b"../../etc/passwd", b"777"),
        _record(b"f", b"./../outside"),
        _record(b"f", b"./a/../../b"),
        _record(b"f", b"./a//b"),
        _record(b"s", b"./socket"),
    ])
    paths, skipped = parse_listing(listing)
    assert set(paths) == {b"", b"new\nline", b"\xff\xfe", b"link"}
    assert paths[b""].kind == KIND_DIR and paths[b"new\nline"].kind == KIND_FILE
    assert paths[b"link"].kind == KIND_SYMLINK and paths[b"link"].target == b"../../etc/passwd"  # a target is data
    assert paths[b"new\nline"].mtime_ns == 1_700_000_000_123_456_789 and paths[b"new\nline"].uid == 0
    assert sorted(rel for rel, _why in skipped) == [b"../outside", b"a/../../b", b"a//b", b"socket"]


def test_listing_parsed_piece_by_piece_as_it_arrives_is_the_listing():
    """find's output fed in pieces cut anywhere (inside a name, between a record's fields)
    gives what the whole output gives, and a listing cut short keeps its whole records."""
    import random

    from vml.areas.capture import ListingParser

    records = [_record(b"d", b".", mode=b"755")] + [_record(b"f", b"./dir %d/file\n%d" % (n, n)) for n in range(300)]
    records.append(_record(b"l", b"./link", b"target with spaces"))
    whole = b"".join(records)
    expected_paths, expected_skipped = parse_listing(whole)
    assert len(expected_paths) == 302
    rng = random.Random(7)
    for _trial in range(20):
        parser = ListingParser()
        start = 0
        while start < len(whole):
            size = rng.choice([1, 2, 3, 50, 999])
            parser.feed(whole[start : start + size])
            start += size
        paths, skipped = parser.close()
        assert paths == expected_paths and skipped == expected_skipped
        assert parser.file_bytes == 300 * 12  # (each _record's size)
    cut = whole[: len(b"".join(records[:100])) + 30]  # the 101st record cut inside its head
    parser = ListingParser()
    parser.feed(cut[:500])
    parser.feed(cut[500:])
    assert parser.close()[0] == parse_listing(cut)[0] and len(parse_listing(cut)[0]) == 100


def test_the_compiled_parser_is_built_and_reads_a_listing_as_the_python_one_does(monkeypatch):
    """_listing.c parses the plain records and leaves every other one to the Python parser:
    both give the same paths, skipped names, sizes and errors, fed in any pieces."""
    import random
    import struct

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from vml.areas.capture import ListingParser, guest

    compiled = guest._compiled
    assert compiled is not None, "vml/areas/capture/_listing.c is not built: run ./scripts/setup"
    # Plain records, each with at most one field made odd (a refusal rule at a time).
    number = st.integers(0, 10**6).map(str)
    time = st.integers(0, 4 * 10**9).map(lambda s: f"{s}.{random.Random(s).randrange(10**10):010d}")
    head = st.tuples(st.sampled_from("fdlcbp"), st.sampled_from(["644", "755", "4755", "0", "07777"]), number, number, number, time,
                     time, number, number, number, number).map(list)
    odd_values = ["9" * 18, "9" * 19, "18446744073709551616", "4503599627370497", "-1", "+5", "", "1_0", "x", "8", "١",
                           "1.5", "12", "-1.5000000000", "0.0000000001", "9000000001.0000000000", "99999999999.0000000000", "1700000000.123456789x",
                           "17x0000000.1234567890", ".1234567890", "1700000000,1234567890", "s", "D", "ff", "0 1"]
    made_odd = st.one_of(st.none(), st.tuples(st.integers(0, 10), st.sampled_from(odd_values)))
    name = st.one_of(st.sampled_from([".", "./a", "./a/b c", "./x\ny", "./../up", "./a/./b", "./a//b", "./", "/abs", "a", "./..",
                                      "./a/..", "./.hidden", "./a/..b", "./\udcff"]),
                     st.text(alphabet="ab/. ", max_size=8).map(lambda t: "./" + t))

    def as_record(head: list[str], change, name: str, target: str) -> bytes:
        if change is not None:
            head[change[0]] = change[1]
        return b"\0".join(part.encode("utf-8", "surrogateescape") for part in (" ".join(head), name, target)) + b"\0"

    record = st.builds(as_record, head, made_odd, name, st.sampled_from(["", "target", "../../etc/passwd", "t\x01"]))

    def parse(listing: bytes, cuts: list[int]):
        parser = ListingParser()
        try:
            for start, end in zip([0, *cuts], [*cuts, len(listing)]):
                parser.feed(listing[start:end])
            paths, skipped = parser.close()
        except (ValueError, struct.error) as error:
            return type(error)
        return paths, skipped, parser.file_bytes

    @settings(max_examples=500, deadline=None)
    @given(st.lists(record, max_size=12), st.lists(st.integers(0, 2000), max_size=4))
    def agree(records, cuts):
        listing = b"".join(records)
        cuts = sorted(min(cut, len(listing)) for cut in cuts)
        with monkeypatch.context() as python_only:
            python_only.setattr(guest, "_compiled", None)
            expected = parse(listing, cuts)
        assert parse(listing, cuts) == expected

    agree()
    plain_head = "f 644 0 0 12 1700000000.1234567890 1700000001.0000000000 42 1 2049 8"
    one_odd_field = [as_record(plain_head.split(" "), (index, value), name, "t")  # (each rule, whatever hypothesis draws)
                     for index in range(11) for value in odd_values for name in ("./a", "./a/..")]
    one_odd_field.append(b"".join(as_record(plain_head.split(" "), (4, "9" * 18), f"./{n}", "") for n in range(10)))  # (sizes past 2**63)
    with monkeypatch.context() as python_only:
        python_only.setattr(guest, "_compiled", None)
        expected = [parse(record, []) for record in one_odd_field]
    assert [parse(record, []) for record in one_odd_field] == expected
    plain = b"".join(_record(b"f", b"./f%d" % n) for n in range(50))
    assert compiled.parse(plain, 0, {}, ListingParser()._spec) == (len(plain), 50 * 12)  # (every plain record in C)


def test_owner_names_are_the_first_line_of_each_number():
    """As getpwuid answers: the first name of a number; a name that is its own number is none
    (find printed the number so); damaged lines are passed over."""
    passwd = b"root:x:0:0:root:/root:/bin/bash\ntoor:x:0:0::/root:/bin/sh\n1234:x:1234:1234::/:/bin/sh\ngarbage\nu:x:notanumber\n"
    assert parse_names(passwd) == {0: "root"}
    assert parse_names(b"nogroup:x:65534:\nwheel:x:10:alice,bob\n") == {65534: "nogroup", 10: "wheel"}


def test_times_are_exact_to_the_nanosecond():
    assert parse_time(b"1577836800.1234567890") == 1_577_836_800_123_456_789  # find's %T@: ten digits
    assert parse_time(b"1796558785.641658758") == 1_796_558_785_641_658_758  # tar's pax mtime: nine
    assert parse_time(b"1796558785.64165875") == 1_796_558_785_641_658_750
    assert parse_time(b"0.0000000010") == 1 and parse_time(b"10.0000000000") == 10_000_000_000
    assert parse_time(b"0.000000001") == 1
    assert parse_time(b"12") == 12_000_000_000
    assert parse_time(b"-1.5") == -1_500_000_000


def test_a_path_that_changes_type_during_the_read_is_left_out(tmp_path):
    """The listing says file, the guest's tar then sends a directory (replaced meanwhile):
    the path is left out and reported, never stored as a broken node."""
    import contextlib
    import io
    import tarfile

    from vml.areas.capture import GuestCapture
    from vml.areas.rules import Rules
    from vml.areas.statcache import StatCache
    from vml.objects.store import ChunkStore
    from vml.objects.walk import listing_loader, walk_nodes

    listing = _record(b"d", b".", mode=b"755") + _record(b"f", b"./x") + _record(b"f", b"./y")
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, kind, data in ((".", tarfile.DIRTYPE, b""), ("./x", tarfile.DIRTYPE, b""), ("./y", tarfile.REGTYPE, b"y" * 12)):
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode, info.mtime = kind, len(data), 0o755 if name == "." else 0o644, 1700000000
            info.pax_headers = {"mtime": "1700000000.123456789"}
            archive.addfile(info, io.BytesIO(data) if data else None)

    @contextlib.contextmanager
    def open_tar(paths, _size):
        yield io.BytesIO(stream.getvalue()), lambda: []

    ChunkStore.create(str(tmp_path / "store"))
    store = ChunkStore(str(tmp_path / "store")).open()
    result = GuestCapture(listing, 1800000000 * 10**9, open_tar, store, StatCache(), rules=Rules(("/",)),
                          owner_names=lambda uids, gids: ({0: "root"}, {0: "root"})).run()
    store.flush()
    names = [path for path, _node in walk_nodes(listing_loader(store), result.root_id)]
    assert names == [b"y"] and result.changed_while_reading == [b"x"]
    store.close()


def test_the_quick_path_check_answers_as_splitting_does():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from vml.areas.capture.guest import _unsafe

    @settings(max_examples=2000, deadline=None)
    @given(st.lists(st.sampled_from([b"", b".", b"..", b"a", b".a", b"a.", b"...", b"a.b", b"/", b"./"]), min_size=1, max_size=5))
    def check(parts):
        rel = b"/".join(parts)
        if rel:
            assert _unsafe(rel) == any(part in (b"", b".", b"..") for part in rel.split(b"/")), rel

    check()


def _guest_stream(tmp_path, guest):
    """A real find's listing of `guest` and a real GNU tar's stream of every path in it, as the
    ssh area asks for them (FIND_FORMAT; the capture's tar options)."""
    import subprocess

    from vml.areas.capture import FIND_FORMAT

    listing = subprocess.run(["find", ".", "-printf", FIND_FORMAT], cwd=guest, check=True, capture_output=True).stdout
    names = b"".join(field + b"\0" for field in listing.split(b"\0")[1::3])
    stream = tmp_path / "stream.tar"
    subprocess.run(["tar", "-c", "-f", str(stream), "--format=posix", "--xattrs", "--xattrs-include=*",
                    "--pax-option=delete=atime,delete=ctime", "--sparse", "--no-recursion", "--null", "--no-unquote", "-T", "-"],
                   cwd=guest, input=names, check=True)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(bytes(10240))
    return listing, stream, empty


def test_streams_read_by_reader_processes_give_this_process_s_tree_and_cache(tmp_path, monkeypatch):
    """The same listing and tar stream captured by this process, and by two reader processes
    (one stream each, the second empty): the same root and the same stat cache, directories
    listed as their files came included; a file the guest's tar says changed as it read it is
    left out of its directory's cache entry either way, though that directory was listed
    before tar said so."""
    import contextlib
    import time

    from vml.areas.capture import GuestCapture
    from vml.areas.capture import guest as guestcapture
    from vml.areas.capture.processes import StreamReaders
    from vml.areas.rules import Rules
    from vml.areas.statcache import StatCache
    from vml.objects.fsck import TreeChecker, check_packs
    from vml.objects.store import ChunkStore
    from vml.objects.walk import listing_loader

    guest = tmp_path / "guest"
    for number in range(40):
        directory = guest / f"d{number % 7}" / f"e{number % 3}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"f{number}").write_bytes(bytes([number]) * (number * 997))
    (guest / "d1" / "changed").write_bytes(b"being written\n" * 100)
    (guest / "big").write_bytes(os.urandom(3_000_000))
    listing, stream, empty = _guest_stream(tmp_path, guest)
    handed = []
    original = guestcapture.handoff
    monkeypatch.setattr(guestcapture, "handoff", lambda opened: handed.append(1) or original(opened))
    monkeypatch.setattr(guestcapture, "PARALLEL_WORK", 0)
    monkeypatch.setattr(guestcapture, "RUN_WORK", 64 * 1024)

    def capture(name: str, readers: int):
        ChunkStore.create(str(tmp_path / name))
        store = ChunkStore(str(tmp_path / name)).open()
        files = iter([(stream, [(b"d1/changed", "file changed as we read it")]), (empty, [])])

        @contextlib.contextmanager
        def open_tar(runs, _size, *, reader=False):
            path, problems = next(files)
            with open(path, "rb") as opened:
                yield opened, lambda: problems

        result = GuestCapture(listing, time.time_ns() + 10 * 10**9, open_tar, store, StatCache(), rules=Rules(("/",)),
                              owner_names=lambda uids, gids: ({}, {}), streams=StreamReaders(store, readers)).run()
        store.flush()
        store.close()
        # Every pack whole and indexed (the readers' too), every blob of the tree in the store.
        reopened = ChunkStore(str(tmp_path / name)).open()
        packs = check_packs(reopened)
        assert packs.problems == [] and packs.damaged_blobs == set() and packs.blobs > 40
        assert TreeChecker(reopened, listing_loader(reopened), set()).check_root(result.root_id) == []
        reopened.close()
        return result

    here = capture("here", 0)
    assert handed == []
    apart = capture("apart", 2)
    assert len(handed) == 2
    assert apart.root_id == here.root_id and apart.totals == here.totals
    assert apart.changed_while_reading == here.changed_while_reading == [b"d1/changed"]

    def entries(cache):
        return {rel: (d.fingerprint, d.listing_id, d.totals, d.children) for rel, d in cache.dirs.items()}

    assert entries(apart.cache) == entries(here.cache)
    assert b"changed" not in apart.cache.dirs[b"d1"].children and apart.cache.dirs[b"d1"].fingerprint is None
    assert b"e0" in apart.cache.dirs[b"d1"].children and apart.cache.dirs[b"d2"].fingerprint is not None


def test_a_stream_s_runs_start_with_the_top_before_any_large_file(tmp_path, monkeypatch):
    """Runs for reader processes: any run of a large file goes before the rest, but never
    before the top's, which a reader takes for the stream's top only as its first member
    (else for the mark that ends a run: one answer early, and the stream's end unasked)."""
    from vml.areas.capture import guest as guestcapture
    from vml.areas.capture.guest import GuestCapture
    from vml.areas.capture.processes import StreamReaders
    from vml.areas.rules import Rules
    from vml.areas.statcache import StatCache
    from vml.objects.store import ChunkStore

    monkeypatch.setattr(guestcapture, "RUN_WORK", 64 * 1024)
    monkeypatch.setattr(guestcapture, "PARALLEL_WORK", 0)
    listing = _record(b"d", b".", mode=b"755") + b"".join(_record(b"f", b"./small%02d" % n) for n in range(9))
    listing += _record(b"f", b"./zz-large").replace(b" 12 ", b" 1048576 ", 1)
    ChunkStore.create(str(tmp_path / "store"))
    store = ChunkStore(str(tmp_path / "store")).open()
    capture = GuestCapture(listing, 1800000000 * 10**9, lambda runs, size, reader=False: None, store, StatCache(),
                           rules=Rules(("/",)), owner_names=lambda uids, gids: ({}, {}), streams=StreamReaders(store, 2))
    dirs = capture._tree()
    runs = capture._runs(capture._to_fetch(dirs, capture._hardlink_groups(dirs)))
    assert runs is not None and runs[0][0] == b"" and runs[1] == [b"zz-large"]
    assert sorted(rel for run in runs for rel in run) == sorted(capture.paths)
    store.close()

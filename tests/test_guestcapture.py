"""Parsing what a guest sends: find's listing (hostile names refused) and exact times."""

from __future__ import annotations

from vml.areas.guestcapture import parse_listing, parse_time
from vml.objects.manifest import KIND_DIR, KIND_FILE, KIND_SYMLINK


def _record(kind: bytes, path: bytes, target: bytes = b"", mode: bytes = b"644") -> bytes:
    head = b"%s %s 0 0 12 1700000000.1234567890 1700000001.0000000000 42 1 2049 8" % (kind, mode)
    return b"\0".join([head, b"root", b"root", path, target]) + b"\0"


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
    assert paths[b"new\nline"].mtime_ns == 1_700_000_000_123_456_789 and paths[b"new\nline"].user == "root"
    assert sorted(rel for rel, _why in skipped) == [b"../outside", b"a/../../b", b"a//b", b"socket"]


def test_times_are_exact_to_the_nanosecond():
    assert parse_time(b"1577836800.1234567890") == 1_577_836_800_123_456_789
    assert parse_time(b"0.000000001") == 1
    assert parse_time(b"12") == 12_000_000_000
    assert parse_time(b"-1.5") == -1_500_000_000

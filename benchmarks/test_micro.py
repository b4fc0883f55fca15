"""Micro-benchmarks of vml's inner loops, so that a regression shows up as a number.

Not part of the test suite: run `.venv/bin/python -m pytest benchmarks/test_micro.py`
(pytest-benchmark, from the `bench` extra). Each reports MB/s or per-item cost on 64 MiB of
incompressible data or on a 5,000-node directory listing.
"""

from __future__ import annotations

import os
import random

import pytest

from vml.objects import compress
from vml.objects.chunker import cut_buffer
from vml.objects.hashing import object_id
from vml.objects.manifest import KIND_FILE, Node, Totals, decode_listing, encode_listing
from vml.objects.pack import TYPE_DATA, PackWriter

DATA = random.Random(1).randbytes(64 * 1024 * 1024)
TEXT = b"".join(b"line %d of a configuration file with some words\n" % i for i in range(1_000_000))[: 64 * 1024 * 1024]


def _listing(count: int = 5000) -> tuple[list[Node], Totals]:
    nodes = [
        Node(name=b"file%05d.so" % i, kind=KIND_FILE, mode=0o644, uid=0, gid=0, user="root", group="root",
             mtime_ns=1_700_000_000_000_000_000 + i, size=4096 + i, chunks=object_id(b"%d" % i))
        for i in range(count)
    ]
    return nodes, Totals(count, count, sum(n.size for n in nodes))


@pytest.fixture(params=["random", "text"])
def data(request):
    return DATA if request.param == "random" else TEXT


def test_chunking(benchmark, data):
    benchmark(lambda: sum(len(chunk) for chunk in cut_buffer(data)))


def test_hashing(benchmark, data):
    benchmark(object_id, data)


def test_compression(benchmark, data):
    chunks = [bytes(chunk) for chunk in cut_buffer(data)]
    benchmark(lambda: [compress.compress(chunk) for chunk in chunks])


def test_pack_writing(benchmark, tmp_path):
    chunks = [(object_id(c), bytes(c)) for c in cut_buffer(DATA)]
    packs = tmp_path / "packs"

    def write():
        writer = PackWriter(str(tmp_path))
        for chunk_id, payload in chunks:
            writer.add(chunk_id, TYPE_DATA, 0, payload, len(payload))
        writer.finish(str(packs))

    os.makedirs(packs, exist_ok=True)
    benchmark(write)


def test_listing_encoding(benchmark):
    nodes, totals = _listing()
    benchmark(encode_listing, nodes, totals)


def test_listing_decoding(benchmark):
    encoded = encode_listing(*_listing())
    benchmark(decode_listing, encoded)

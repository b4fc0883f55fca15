"""The manifest encoding is canonical: a listing built from pre-encoded nodes is byte-equal
to one encoded whole, so both paths of a capture give the same listing ids."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vml.objects.manifest import (
    KIND_DIR,
    KIND_FILE,
    KIND_SYMLINK,
    Node,
    Totals,
    decode_listing,
    encode_listing,
    encode_listing_of_encoded,
    encode_node,
)

names = st.binary(min_size=1, max_size=40).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))
nodes = st.builds(
    Node,
    name=names,
    kind=st.sampled_from([KIND_FILE, KIND_SYMLINK, KIND_DIR]),
    mode=st.integers(0, 0o7777),
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 2**32 - 1),
    user=st.one_of(st.none(), st.text(max_size=12)),
    group=st.one_of(st.none(), st.text(max_size=12)),
    mtime_ns=st.integers(-(2**62), 2**62),
    size=st.integers(0, 2**40),
    xattrs=st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=300)), max_size=3).map(tuple),
    target=st.one_of(st.none(), st.binary(max_size=50)),
    chunks=st.lists(st.binary(min_size=32, max_size=32), max_size=3).map(b"".join),
    extents=st.one_of(st.none(), st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**30)), max_size=3).map(tuple)),
    tree=st.binary(min_size=32, max_size=32),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(nodes, max_size=20, unique_by=lambda n: n.name), st.integers(0, 2**50), st.integers(0, 2**40), st.integers(0, 2**62))
def test_listing_from_encoded_nodes_is_byte_equal(listing_nodes, count, files, size):
    listing_nodes.sort(key=lambda n: n.name)
    totals = Totals(count, files, size)
    whole = encode_listing(listing_nodes, totals)
    assert encode_listing_of_encoded([encode_node(n) for n in listing_nodes], totals) == whole
    decoded = decode_listing(whole)
    assert [n.name for n in decoded.nodes] == [n.name for n in listing_nodes]
    assert (decoded.totals.nodes, decoded.totals.files, decoded.totals.bytes) == (count, files, size)

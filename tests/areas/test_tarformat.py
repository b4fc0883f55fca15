"""The guest's tar stream as vml reads it (tarformat.TarReader), member for member against
Python's tarfile on streams the real GNU tar writes: long and non-UTF-8 names, xattrs with
binary values, hardlinks, devices, fifos, and sparse files in each of GNU tar's sparse
formats; and damaged or cut streams refused with TarStreamError."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from vml.areas.tarformat import KIND_OF_TAR_TYPE, TarReader, TarStreamError, _number, member_rel
from vml.objects.manifest import KIND_FILE

TAR_ARGS = ["--format=posix", "--xattrs", "--xattrs-include=*", "--sparse"]


def _tree(root: Path) -> None:
    root.mkdir()
    (root / "empty").write_bytes(b"")
    (root / "small").write_bytes(b"hello\n")
    (root / "block-exact").write_bytes(os.urandom(1024))
    (root / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    deep = root / ("d" * 90) / ("e" * 90) / ("f" * 90)
    deep.mkdir(parents=True)
    (deep / ("long-name-" + "x" * 150)).write_bytes(b"deep\n")
    os.symlink("t" * 200, root / "long-target")
    os.symlink("small", root / "link")
    os.link(root / "small", root / "hard")
    os.mkfifo(root / "fifo")
    (root / os.fsdecode(b"caf\xe9-latin1")).write_bytes(b"not utf-8\n")
    (root / "caf\u00e9-utf8").write_bytes(b"utf-8\n")
    os.setxattr(root / "small", "user.binary", b"a\x00\x01\xffb")
    os.setxattr(root / "small", "user.text", b"value with = and \n newline")
    os.chmod(root / "block-exact", 0o4751)
    os.utime(root / "small", ns=(1_600_000_000_123_456_789, 1_700_000_000_987_654_321))
    with open(root / "sparse", "wb") as sparse:  # data, a hole, data, and a hole at the end
        sparse.write(os.urandom(5000))
        sparse.seek(3 * 1024 * 1024)
        sparse.write(os.urandom(70_000))
        sparse.truncate(8 * 1024 * 1024)
    try:
        os.mknod(root / "null", 0o620 | 0o020000, os.makedev(1, 3))
    except PermissionError:
        pass  # not root: the other members still cover the reader


def _stream(root: Path, *extra: str) -> bytes:
    return subprocess.run(["tar", "-c", "-f", "-", *TAR_ARGS, *extra, "-C", str(root), "."], check=True, capture_output=True).stdout


def _read_all(stream: bytes) -> dict[bytes, tuple]:
    """Each member's metadata and data (a sparse file's data extents back to back) as vml reads them."""
    reader = TarReader(io.BufferedReader(io.BytesIO(stream)))
    found = {}
    for member in reader:
        data = reader.read(member.size) if member.extents is None else b"".join(iter(lambda: reader.read(65536), b""))
        found[member_rel(member.name)] = (
            member.type, member.mode, member.uid, member.gid, member.size, member.mtime_ns, member.linkname,
            (member.devmajor, member.devminor), member.xattrs, member.extents, data,
        )
    reader.drain()
    return found


def _read_with_tarfile(stream: bytes) -> dict[bytes, tuple]:
    """The same, as Python's tarfile reads it."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:", encoding="utf-8", errors="surrogateescape") as archive:
        for info in archive:
            raw = info.name.encode("utf-8", "surrogateescape")
            headers = info.pax_headers
            xattrs = tuple(sorted((k[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape"), v.encode("utf-8", "surrogateescape"))
                                  for k, v in headers.items() if k.startswith("SCHILY.xattr.")))
            extents = None
            data = b""
            if info.sparse is not None:
                extents = tuple((offset, length) for offset, length in info.sparse if length)
                whole = archive.extractfile(info).read()
                data = b"".join(whole[offset : offset + length] for offset, length in extents)
            elif info.isfile():
                data = archive.extractfile(info).read()
            seconds, _, fraction = headers.get("mtime", str(int(info.mtime))).partition(".")
            mtime_ns = int(seconds) * 10**9 + int(fraction[:9].ljust(9, "0"))
            found[member_rel(raw)] = (
                info.type if info.type != tarfile.GNUTYPE_SPARSE else tarfile.REGTYPE, info.mode & 0o7777, info.uid, info.gid,
                info.size, mtime_ns, info.linkname.encode("utf-8", "surrogateescape"),
                (info.devmajor, info.devminor), xattrs, extents, data,
            )
    return found


@pytest.mark.parametrize("sparse_version", ["1.0", "0.1", "0.0"])
def test_every_member_reads_as_tarfile_reads_it(tmp_path: Path, sparse_version: str):
    _tree(tmp_path / "tree")
    stream = _stream(tmp_path / "tree", f"--sparse-version={sparse_version}")
    ours, theirs = _read_all(stream), _read_with_tarfile(stream)
    assert ours.keys() == theirs.keys()
    for rel in ours:
        assert ours[rel] == theirs[rel], rel
    # The tree's odd members are there as themselves, not just alike in both readers.
    # (the file system rounds data regions to its blocks: tar saw two, from 0 and from 3 MiB)
    assert [offset for offset, _length in ours[b"sparse"][9]] == [0, 3 * 1024 * 1024]
    assert sum(length for _offset, length in ours[b"sparse"][9]) == len(ours[b"sparse"][10]) < 100_000
    assert ours[b"sparse"][4] == 8 * 1024 * 1024
    assert (b"user.binary", b"a\x00\x01\xffb") in ours[b"small"][8]
    assert ours[b"small"][5] == 1_700_000_000_987_654_321
    assert b"caf\xe9-latin1" in ours
    assert ours[b"hard"][0] == tarfile.LNKTYPE and ours[b"hard"][6] == b"./small"
    assert ours[b"block-exact"][1] == 0o4751
    assert ours[b"long-target"][6] == b"t" * 200
    assert any(len(rel) > 400 for rel in ours)
    assert KIND_OF_TAR_TYPE[ours[b"big"][0]] == KIND_FILE and len(ours[b"big"][10]) == 3 * 1024 * 1024 + 17


def test_unread_data_is_skipped(tmp_path: Path):
    _tree(tmp_path / "tree")
    reader = TarReader(io.BufferedReader(io.BytesIO(_stream(tmp_path / "tree"))))
    names = []
    for member in reader:
        names.append(member_rel(member.name))
        if member.size:
            reader.read(3)  # a part of it: the rest is skipped by the next step
    assert set(names) == set(_read_with_tarfile(_stream(tmp_path / "tree")))


def test_a_damaged_header_is_refused(tmp_path: Path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a").write_bytes(b"data\n" * 100)
    stream = bytearray(_stream(tmp_path / "tree"))
    stream[1024 + 130] ^= 0x01  # inside the second member's header (its mode)
    with pytest.raises(TarStreamError, match="checksum"):
        _read_all(bytes(stream))


@pytest.mark.parametrize("cut", ["in a header", "in the data", "in a sparse map"])
def test_a_stream_cut_short_is_refused(tmp_path: Path, cut: str):
    root = tmp_path / "tree"
    root.mkdir()
    if cut == "in a sparse map":
        with open(root / "s", "wb") as sparse:
            sparse.seek(1 << 20)
            sparse.write(b"x" * 10)
    else:
        (root / "a").write_bytes(os.urandom(100_000))
    stream = _stream(root)
    # Members: the top directory (pax header, its records, header), then the file's three.
    file_data = 6 * 512
    where = {"in a header": file_data - 100, "in the data": file_data + 5000, "in a sparse map": file_data + 1}[cut]
    message = {"in a header": "ends inside a header", "in the data": "ends inside a member's data", "in a sparse map": "ends inside a member's data"}[cut]
    with pytest.raises(TarStreamError, match=message):
        _read_all(stream[:where])


def test_a_stream_that_ends_between_members_ends_the_members(tmp_path: Path):
    """tar's end blocks missing after a whole member: the members read are all there is (the
    sender's exit status says whether it finished: ssh.py checks it)."""
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a").write_bytes(b"x" * 600)
    stream = _stream(tmp_path / "tree")
    assert set(_read_all(stream[: 6 * 512 + 1024])) == {b"", b"a"}


def test_numbers_in_octal_and_base_256():
    assert _number(b"0000644\x00") == 0o644
    assert _number(b"     17 ") == 0o17
    assert _number(b"\x00" * 8) == 0
    assert _number(b"\x80" + (5_000_000_000).to_bytes(11, "big")) == 5_000_000_000
    assert _number(b"\xff" * 8) == -1
    with pytest.raises(TarStreamError):
        _number(b"12a45\x00")


def test_a_damaged_pax_record_is_refused(tmp_path: Path):
    info = tarfile.TarInfo("./a")
    info.pax_headers = {"comment": "fine"}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b""))
    stream = bytearray(raw.getvalue())
    records = stream.index(b"comment=fine")
    stream[records - 3 : records - 1] = b"99"  # a record length past the header's data
    # (the header checksum covers only the header block: the records are the reader's to check)
    with pytest.raises(TarStreamError, match="pax"):
        _read_all(bytes(stream))


def test_a_pax_number_that_is_none_is_refused():
    info = tarfile.TarInfo("./a")
    info.pax_headers = {"uid": "12x"}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(TarStreamError, match="damaged header"):
        _read_all(raw.getvalue())


def test_a_sparse_member_without_a_hole_reads_as_a_plain_file():
    """A sparse map naming the whole file (a writer may send one) is no hole: the node must be
    the one a local capture gives (no extents), or the entries of the two areas would differ."""
    from vml.areas.tarformat import member_of_node
    from vml.objects.manifest import Node

    data = os.urandom(5000)
    node = Node(name=b"f", kind=KIND_FILE, mode=0o644, uid=0, gid=0, user="root", group="root", mtime_ns=10**18,
                size=len(data), extents=((0, len(data)),))
    info, prefix = member_of_node(b"f", node)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(prefix + data))
    reader = TarReader(io.BufferedReader(io.BytesIO(raw.getvalue())))
    member = next(iter(reader))
    assert (member.extents, member.size, reader.read(member.size)) == (None, len(data), data)


def test_the_compiled_header_reader_is_built_and_reads_every_header_as_python_does(tmp_path: Path, monkeypatch):
    """_tarheader.c reads plain headers and leaves the rest (a damaged one, a checksum over
    signed bytes, base-256 numbers) to the Python reader: both give the same fields, or the
    same error, for every header of a real GNU tar stream and for each byte of them changed."""
    import random
    import struct

    from vml.areas import tarformat

    compiled = tarformat._compiled
    assert compiled is not None, "vml/areas/_tarheader.c is not built: run ./scripts/setup"
    _tree(tmp_path / "tree")
    stream = _stream(tmp_path / "tree")
    gnu = io.BytesIO()  # base-256 numbers (GNU's form for a uid octal cannot hold), a device, a long name's prefix
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as archive:
        members = (("big-uid", tarfile.REGTYPE, 2**40), ("dev", tarfile.CHRTYPE, 0), ("blk", tarfile.BLKTYPE, 0),
                   ("p" * 120 + "/" + "n" * 90, tarfile.REGTYPE, 7))
        for name, kind, uid in members:
            info = tarfile.TarInfo(name)
            info.type, info.uid, info.devmajor, info.devminor = kind, uid, 8, 1
            archive.addfile(info, io.BytesIO(b""))
    ustar = io.BytesIO()
    with tarfile.open(fileobj=ustar, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        info = tarfile.TarInfo("u" * 130 + "/" + "v" * 80)
        archive.addfile(info, io.BytesIO(b""))
    blocks = [data[start : start + 512] for data in (stream, gnu.getvalue(), ustar.getvalue()) for start in range(0, len(data), 512)]
    headers = [block for block in blocks if block[257:262] == b"ustar"]  # (the magic of POSIX's and GNU's headers)
    assert len(headers) > 30 and {b"3", b"4"} <= {block[156:157] for block in headers}
    signed = bytearray(headers[0])
    signed[20] = 0xE9  # (a byte past 127: sums over signed and unsigned bytes differ)
    signed[148:156] = b"%06o\0 " % tarfile.calc_chksums(bytes(signed))[1]
    rng = random.Random(5)
    changed = []
    for block in headers:
        for where in [*range(100, 157), *range(329, 345), *rng.sample(range(512), 8)]:
            for value in (b"0", b"7", b"8", b" ", b"\0", b"\x80", b"\xff", b"-", b"x"):
                edited = bytearray(block)
                edited[where : where + 1] = value
                changed.append(bytes(edited))
                edited[148:156] = b"%06o\0 " % tarfile.calc_chksums(bytes(edited))[0]  # (and its checksum made good again)
                changed.append(bytes(edited))

    def read(block: bytes):
        try:
            return tarformat._header(block)
        except (TarStreamError, struct.error) as error:
            return type(error), str(error)

    every = [*headers, bytes(signed), *changed]
    with monkeypatch.context() as python_only:
        python_only.setattr(tarformat, "_compiled", None)
        expected = [read(block) for block in every]
    assert [read(block) for block in every] == expected
    assert sum(compiled.header(block) is None for block in headers) == 1  # (GNU's base-256 uid)
    assert compiled.header(bytes(signed)) is None and read(bytes(signed)) == expected[len(headers)]
    with monkeypatch.context() as python_only:
        python_only.setattr(tarformat, "_compiled", None)
        whole = _read_all(stream)
    assert _read_all(stream) == whole

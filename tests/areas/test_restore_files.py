"""Writing one restored file's content (restore/files.py), whose size the manifest gives and
whose chunks the store gives: a file of one chunk (most files, written at once) and a file
of several are written whole, and one whose chunks hold more or fewer bytes than its size
is refused, whichever way it is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vml.areas.restore.files import Birth, FileWriter
from vml.errors import CorruptObject
from vml.objects.manifest import KIND_FILE, Node
from vml.objects.pack import TYPE_DATA
from vml.objects.store import ChunkStore


@pytest.fixture
def writer(tmp_path: Path) -> FileWriter:
    root = str(tmp_path / "store")
    ChunkStore.create(root)
    return FileWriter(ChunkStore(root).open(), Birth(), [])


def _file(writer: FileWriter, pieces: list[bytes], size: int) -> Node:
    chunks = b"".join(writer.store.put(piece, TYPE_DATA) for piece in pieces)
    return Node(b"f", KIND_FILE, 0o644, 0, 0, None, None, 0, size, (), chunks=chunks)


@pytest.mark.parametrize("pieces", [[b"one chunk"], [b"first ", b"second ", b"third"]], ids=["one chunk", "three chunks"])
def test_a_file_is_written_whole_and_its_size_is_checked(writer: FileWriter, tmp_path: Path, pieces: list[bytes]):
    content = b"".join(pieces)
    for size, written in ((len(content), True), (len(content) - 1, False), (len(content) + 1, False)):
        path = tmp_path / f"out-{size}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if written:
                assert writer.write_content(fd, _file(writer, pieces, size)) == len(content)
            else:
                with pytest.raises(CorruptObject, match="damaged manifest: b'f' has (more data than its size|.* bytes of data, expected)"):
                    writer.write_content(fd, _file(writer, pieces, size))
        finally:
            os.close(fd)
        if written:
            assert path.read_bytes() == content

"""One contract for every transport: the local path, SFTP against a real sshd, S3 against
two real object stores (SeaweedFS, Ceph RGW), and the in-memory reference implementation
pass the same tests."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from vml.transport.base import MissingFile, TransportError, open_transport, parse_url

S3_SERVERS = {"s3-seaweedfs": "seaweedfs", "s3-ceph": "ceph_rgw"}  # param -> the session fixture that starts it


@pytest.fixture(params=["local", "memory", "sftp", "sftp-paramiko", *S3_SERVERS])
def transport(request, tmp_path: Path, monkeypatch):
    """(sftp: paramiko's SFTP over the OpenSSH client's connection; sftp-paramiko: over
    paramiko's own, where `ssh` is missing or cannot log in.)"""
    root = tmp_path / "root"
    root.mkdir()
    if request.param == "local":
        url = str(root)
    elif request.param == "memory":
        url = f"memory://{uuid.uuid4().hex}"
    elif request.param in S3_SERVERS:
        server = request.getfixturevalue(S3_SERVERS[request.param])
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        url = f"s3://{server.new_bucket()}/some/prefix"
    else:
        server = request.getfixturevalue("sshd")
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("VML_SSH_CLIENT", "paramiko" if request.param == "sftp-paramiko" else "openssh")
        url = server.url(root)
    opened = open_transport(url)
    if request.param.startswith("sftp"):
        assert (opened._sftp.sock.get_name() == "openssh-sftp") == (request.param == "sftp"), opened._sftp.sock.get_name()
    yield opened
    opened.close()


def test_write_read_and_ranges(transport, tmp_path: Path):
    transport.write("a/b/c.bin", b"0123456789")
    assert transport.read("a/b/c.bin") == b"0123456789"
    assert transport.size("a/b/c.bin") == 10
    assert transport.read_ranges("a/b/c.bin", [(0, 2), (5, 3)]) == [b"01", b"567"]
    with pytest.raises(TransportError, match="shorter"):
        transport.read_ranges("a/b/c.bin", [(8, 5)])
    local = tmp_path / "upload"
    local.write_bytes(b"x" * (3 << 20))
    moved = []
    transport.write_from("packs/p.pack", str(local), moved.append)
    assert transport.read("packs/p.pack") == b"x" * (3 << 20) and sum(moved) == 3 << 20
    transport.write("a/b/c.bin", b"new")  # replaced whole
    assert transport.read("a/b/c.bin") == b"new"
    assert transport.bytes_sent >= (3 << 20) + 13 and transport.bytes_received >= (3 << 20) + 18


def test_listing(transport):
    for path in ("refs/heads/main", "refs/heads/topic/x", "refs/tags/v1"):
        transport.write(path, b"id\n")
    assert transport.list("refs") == ["heads", "tags"]
    assert transport.list("refs/heads") == ["main", "topic"]
    assert transport.list_tree("refs") == ["refs/heads/main", "refs/heads/topic/x", "refs/tags/v1"]
    assert transport.list("absent") == [] and transport.list_tree("absent") == []
    assert transport.exists("refs/tags/v1") and not transport.exists("refs/tags/v2")


def test_exclusive_create_rename_remove(transport):
    assert transport.create_exclusive("refs/heads/main.lock", b"one\n")
    assert not transport.create_exclusive("refs/heads/main.lock", b"two\n")
    assert transport.read("refs/heads/main.lock") == b"one\n"
    if transport.renames:
        transport.write("refs/heads/main", b"old\n")
        transport.rename("refs/heads/main.lock", "refs/heads/main")
        assert transport.read("refs/heads/main") == b"one\n" and not transport.exists("refs/heads/main.lock")
    else:  # object storage: no rename; refs move by conditional writes
        with pytest.raises(TransportError, match="no rename"):
            transport.rename("refs/heads/main.lock", "refs/heads/main")
        transport.remove("refs/heads/main.lock")
        transport.write("refs/heads/main", b"one\n")
    transport.remove("refs/heads/main")
    transport.remove("refs/heads/main")  # removing what is gone is fine
    assert not transport.exists("refs/heads/main")


def test_conditional_writes_of_object_storage(transport):
    if transport.renames:
        pytest.skip("files have rename: refs move under lock files (RemoteRepository.update_ref)")
    assert transport.read_tagged("refs/heads/main") is None
    assert transport.write_if("refs/heads/main", b"a\n", None)
    assert not transport.write_if("refs/heads/main", b"b\n", None)  # exists already
    data, tag = transport.read_tagged("refs/heads/main")
    assert data == b"a\n"
    assert transport.write_if("refs/heads/main", b"c\n", tag)
    assert not transport.write_if("refs/heads/main", b"d\n", tag)  # moved since: the old tag no longer matches
    assert transport.read("refs/heads/main") == b"c\n"
    assert not transport.write_if("refs/heads/gone", b"x\n", tag)  # a tag of an object that is not there
    assert sum(transport.requests.values()) >= 8 and transport.requests["PutObject"] >= 5


def test_many_names_list_in_few_requests(transport):
    for number in range(30):
        transport.write(f"vml/store/packs/{number % 3:02x}/{number:064x}.pack", b"p")
    before = sum(transport.requests.values())
    assert len(transport.list_tree("vml/store/packs")) == 30 and transport.list("vml/store/packs") == ["00", "01", "02"]
    if not transport.renames:
        assert sum(transport.requests.values()) - before == 2  # one request per listing, however deep


def test_missing_files_and_escapes(transport):
    with pytest.raises(MissingFile):
        transport.read("nope")
    with pytest.raises(MissingFile):
        transport.size("nope")
    for bad in ("../outside", "/etc/passwd", "a/../../b", "a//b", ""):
        with pytest.raises(TransportError, match="outside"):
            transport.read(bad)
        with pytest.raises(TransportError, match="outside"):
            transport.write(bad, b"x")


def test_url_forms():
    assert parse_url("ssh://alice@host:2222/srv/r.vml").port == 2222
    assert str(parse_url("ssh://alice@host:2222/srv/r.vml")) == "ssh://alice@host:2222/srv/r.vml"
    assert parse_url("file:///srv/r.vml").path == "/srv/r.vml"
    assert parse_url("relative/r.vml").path.endswith("/relative/r.vml")
    assert (parse_url("s3://team-bucket/atlas/main").host, parse_url("s3://team-bucket/atlas/main").path) == ("team-bucket", "/atlas/main")
    assert str(parse_url("s3://team-bucket/atlas")) == "s3://team-bucket/atlas" and parse_url("s3://team-bucket").path == ""
    for bad in ("ftp://host/x", "ssh:///nohost", "file://otherhost/x", "ssh://host:notaport/x", "s3://UPPER/x", "s3://b/x",
                "s3://bucket/../x", "s3://bucket/x?endpoint=y"):
        with pytest.raises(Exception) as raised:
            parse_url(bad)
        assert any(word in str(raised.value) for word in ("URL", "host", "port", "BUCKET", "outside")), raised.value


def test_a_dropped_openssh_connection_is_a_transport_error(sshd, tmp_path: Path, monkeypatch):
    """The ssh process carrying SFTP dies (the network went): one clear error, no hang."""
    for key, value in sshd.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VML_SSH_CLIENT", "openssh")
    (tmp_path / "root").mkdir()
    opened = open_transport(sshd.url(tmp_path / "root"))
    try:
        opened.write("packs/p.pack", b"x" * 1000)
        opened._sftp.sock._process.kill()
        with pytest.raises(TransportError, match="connection dropped"):
            opened.read("packs/p.pack")
    finally:
        opened.close()

"""Base images from a catalog (issue 22, seed 004): a JSON catalog on a real HTTP server on
127.0.0.1 names versions with their image, kernel and initrd; `vml base fetch` downloads
them, resumes what a dropped connection or a killed command left, checks every digest
before use, and stores the base; a checkout or an import that lacks the base says how to
fetch it, or fetches it when the catalog was added with --auto-fetch."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import blake3
import pytest
from conftest import Vml, one_line_error
from support.files_server import FilesServer
from support.processes import start

IMAGE_BYTES = 6 << 20


@pytest.fixture
def published(tmp_path: Path):
    """A directory served over HTTP holding base 'guest' version 1: an image, a kernel, an
    initrd and catalog.json naming them with their SHA-256 digests."""
    root = tmp_path / "published"
    root.mkdir()
    # Half random, half text: an image that is neither all compressible nor all not.
    (root / "disk.qcow2").write_bytes(os.urandom(IMAGE_BYTES // 2) + b"guest block\n" * (IMAGE_BYTES // 24))
    (root / "vmlinuz").write_bytes(os.urandom(300_000))
    (root / "initrd.img").write_bytes(os.urandom(200_000))
    write_catalog(root)
    server = FilesServer(root).start()
    yield server
    server.stop()


def digest(path: Path, algorithm: str = "sha256") -> str:
    data = path.read_bytes()
    return f"{algorithm}:" + (hashlib.sha256(data).hexdigest() if algorithm == "sha256" else blake3.blake3(data).hexdigest())


def write_catalog(root: Path, *, name: str = "guest", image_digest: str | None = None, algorithm: str = "sha256") -> None:
    version = {
        "image": {"url": "disk.qcow2", "digest": image_digest or digest(root / "disk.qcow2", algorithm),
                  "size": (root / "disk.qcow2").stat().st_size},
        "kernel": {"url": "vmlinuz", "digest": digest(root / "vmlinuz", algorithm)},
        "initrd": {"url": "initrd.img", "digest": digest(root / "initrd.img", algorithm)},
        "cmdline": "root=/dev/vda rw console=ttyS0", "published": "2026-12-05",
    }
    (root / "catalog.json").write_text(json.dumps({"vml-catalog": 1, "name": name, "latest": "1", "versions": {"1": version}}))


def test_catalog_add_list_show_remove(vml: Vml, published: FilesServer, tmp_path: Path):
    vml("init")
    url = published.url + "/catalog.json"
    added = vml("base", "catalog", "add", "guest", url, "--json").json()
    assert added["url"] == url and not added["auto_fetch"] and added["latest"] == "1"
    [version] = added["versions"]
    assert version["version"] == "1" and version["digest"] == digest(published.root / "disk.qcow2") and not version["here"]
    asked = len(published.requests)
    assert vml("base", "catalog", "list", "--json").json() == [{"name": "guest", "url": url, "auto_fetch": False, "latest": None,
                                                                  "versions": None}]
    assert len(published.requests) == asked  # list reads no catalog: it works offline
    text = vml("base", "catalog", "show", "guest").stdout
    assert "2026-12-05" in text and "(latest)" in text

    again = vml("base", "catalog", "add", "guest", url, check=False)
    assert "--replace" in one_line_error(again)
    assert vml("base", "catalog", "add", "guest", url, "--auto-fetch", "--replace", "--json").json()["auto_fetch"]
    assert vml("base", "catalog", "remove", "guest", "--json").json()["name"] == "guest"
    assert vml("base", "catalog", "list", "--json").json() == []
    assert "no catalog for base 'guest'" in one_line_error(vml("base", "catalog", "show", "guest", check=False))
    vml.fsck_clean()


@pytest.mark.parametrize("case, expected", [
    ("other-name", "is the catalog of base 'other', not of 'guest'"),
    ("not-json", "not a catalog (not JSON"),
    ("no-format", 'no "vml-catalog": 1'),
    ("bad-digest", "is not sha256:HEX or blake3:HEX"),
    ("missing", "Not Found (HTTP 404)"),
    ("ftp", "an http(s):// or file:// URL"),
    ("local-file", "is a file of this machine"),
])
def test_a_bad_catalog_is_one_line_and_records_nothing(vml: Vml, published: FilesServer, case: str, expected: str):
    vml("init")
    root = published.root
    name = {"other-name": "other.json", "not-json": "broken.json", "no-format": "plain.json", "bad-digest": "short.json",
            "local-file": "local.json"}.get(case)
    if case == "other-name":
        write_catalog(root, name="other")
        (root / "catalog.json").rename(root / name)
    elif case == "not-json":
        (root / name).write_text('{"vml-catalog": 1, "name": "guest", ')
    elif case == "no-format":
        (root / name).write_text('{"name": "guest", "versions": {}}')
    elif case == "local-file":  # a web catalog naming /etc/shadow as an image
        document = json.loads((root / "catalog.json").read_text())
        document["versions"]["1"]["image"]["url"] = "file:///etc/shadow"
        (root / name).write_text(json.dumps(document))
    elif case == "bad-digest":
        write_catalog(root, image_digest="sha256:1234")
        (root / "catalog.json").rename(root / name)
    url = {"missing": published.url + "/nowhere.json", "ftp": "ftp://127.0.0.1/catalog.json"}.get(case, f"{published.url}/{name}")
    failed = vml("base", "catalog", "add", "guest", url, check=False)
    assert expected in one_line_error(failed)
    assert vml("base", "catalog", "list", "--json").json() == []
    vml.fsck_clean()


def test_fetch_checks_the_digests_and_stores_the_base(vml: Vml, published: FilesServer, tmp_path: Path):
    vml("init")
    vml("base", "catalog", "add", "guest", published.url + "/catalog.json")
    fetched = vml("base", "fetch", "guest:1", "--json").json()
    image = published.root / "disk.qcow2"
    assert fetched["base"]["digest"] == digest(image, "blake3")  # what 'vml base add --image' of the same file records
    assert fetched["downloaded_bytes"] == image.stat().st_size + 500_000 and fetched["resumed_bytes"] == 0
    assert not (tmp_path / ".vml" / "vml" / "downloads").exists()  # stored: nothing left beside the store
    # The image, kernel and initrd come back byte for byte; the command line is recorded.
    vml("checkout", fetched["base"]["entry"], "--to", str(tmp_path / "out"))
    for name in ("disk.qcow2", "vmlinuz", "initrd.img"):
        assert (tmp_path / "out" / name).read_bytes() == (published.root / name).read_bytes()
    assert 'cmdline = "root=/dev/vda rw console=ttyS0"' in vml("show", f"{fetched['base']['entry']}:entry.toml").stdout
    shown = vml("base", "catalog", "show", "guest", "--json").json()
    assert shown["versions"][0]["here"]

    # Asked again (NAME alone: the latest), it downloads nothing.
    asked = len(published.requests)
    again = vml("base", "fetch", "guest", "--json").json()
    assert again["already_here"] and again["base"]["entry"] == fetched["base"]["entry"]
    assert [path for path, _range in published.requests[asked:]] == ["/catalog.json"]
    assert "no version '7' of guest (it lists 1)" in one_line_error(vml("base", "fetch", "guest:7", check=False))
    vml.fsck_clean()


def test_a_wrong_digest_is_refused_and_the_download_dropped(vml: Vml, published: FilesServer, tmp_path: Path):
    vml("init")
    write_catalog(published.root, image_digest="sha256:" + "0" * 64)
    vml("base", "catalog", "add", "guest", published.url + "/catalog.json")
    failed = vml("base", "fetch", "guest:1", check=False)
    line = one_line_error(failed, code=1)
    assert "disk.qcow2: the downloaded image has digest sha256:" in line and "not used, and deleted" in line
    assert vml("base", "list", "--json").json() == []
    assert not list((tmp_path / ".vml" / "vml" / "downloads").rglob("disk.qcow2*"))  # the next fetch starts it again
    # Published right, it is fetched whole (the kernel already downloaded is checked and kept).
    write_catalog(published.root)
    fetched = vml("base", "fetch", "guest:1", "--json").json()
    assert fetched["base"]["digest"] == digest(published.root / "disk.qcow2", "blake3")
    vml.fsck_clean()


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_a_dropped_connection_is_resumed(vml: Vml, published: FilesServer, ranges: bool):
    vml("init")
    write_catalog(published.root, algorithm="blake3")
    published.cut_after["/disk.qcow2"] = 2_000_000
    published.ignore_range = not ranges  # a server without Range support sends it all again
    vml("base", "catalog", "add", "guest", published.url + "/catalog.json")
    fetched = vml("base", "fetch", "guest:1", "--json").json()
    assert fetched["base"]["digest"] == digest(published.root / "disk.qcow2", "blake3")
    assert published.ranges("/disk.qcow2") == [None, "bytes=2000000-"]
    vml.fsck_clean()


def test_a_killed_fetch_goes_on_where_it_stopped(vml: Vml, published: FilesServer, tmp_path: Path):
    vml("init")
    vml("base", "catalog", "add", "guest", published.url + "/catalog.json")
    published.rate = 2 << 20  # bytes a second: the image takes 3 s
    fetching = start(tmp_path, "base", "fetch", "guest:1")
    part = tmp_path / ".vml" / "vml" / "downloads" / "guest" / "1" / "disk.qcow2.part"
    deadline = time.monotonic() + 60
    while (not part.exists() or part.stat().st_size < 1 << 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(fetching.pid, signal.SIGKILL)
    fetching.communicate(timeout=60)
    had = part.stat().st_size
    assert (1 << 20) <= had < IMAGE_BYTES
    assert vml("base", "list", "--json").json() == []  # nothing stored by a killed fetch
    published.rate = None
    fetched = vml("base", "fetch", "guest:1", "--json").json()
    assert fetched["resumed_bytes"] == had and fetched["downloaded_bytes"] == IMAGE_BYTES + 500_000 - had
    assert published.ranges("/disk.qcow2")[-1] == f"bytes={had}-"
    assert fetched["base"]["digest"] == digest(published.root / "disk.qcow2", "blake3")
    vml.fsck_clean()


def test_an_entry_on_a_missing_base_offers_the_fetch_or_does_it(vml: Vml, published: FilesServer, tmp_path: Path):
    """A colleague's differential bundle (the entry without its base's data) imports where
    the base can be fetched: the error says how, and with --auto-fetch vml does it."""
    author = Vml(tmp_path / "author")
    (tmp_path / "author").mkdir()
    author("init")
    author("base", "add", "guest", "1", "--image", str(published.root / "disk.qcow2"), "--kernel", str(published.root / "vmlinuz"),
           "--initrd", str(published.root / "initrd.img"), "--cmdline", "root=/dev/vda rw console=ttyS0")
    work = tmp_path / "work"
    (work / "home").mkdir(parents=True)
    (work / "home" / "results.txt").write_text("mass 125.1 GeV\n")
    author("area", "add", "lab", "--dir", str(work), "--base", "guest:1")
    entry = author("commit", "-m", "analysis", "--json").json()["entry"]
    bundle = tmp_path / "analysis.vmlb"
    author("export", "main", "--differential", "-o", str(bundle))
    assert bundle.stat().st_size < 100_000  # the entry travels without its base

    vml("init")
    lacking = one_line_error(vml("import", str(bundle), check=False))
    assert "base guest:1" in lacking and "which this repository lacks" in lacking and "catalog add guest URL" in lacking
    vml("base", "catalog", "add", "guest", published.url + "/catalog.json")
    offered = one_line_error(vml("import", str(bundle), check=False))  # no terminal to ask at: the way to fetch it
    assert f"'vml base fetch guest:1' ({published.url}/catalog.json)" in offered
    assert vml("base", "list", "--json").json() == []

    vml("base", "catalog", "add", "guest", published.url + "/catalog.json", "--auto-fetch", "--replace")
    imported = vml("import", str(bundle))
    assert "base guest:1 was missing: fetched from" in imported.stderr
    vml("checkout", entry, "--to", str(tmp_path / "out"))
    assert (tmp_path / "out" / "home" / "results.txt").read_text() == "mass 125.1 GeV\n"
    vml.fsck_clean()


@pytest.mark.parametrize("url, stored_as", [
    ("disk.qcow2", "disk.qcow2"),
    ("https://mirror.example.org/cernvm/5.1/cernvm%2B5.1.qcow2?token=x", "cernvm+5.1.qcow2"),
    ("..%2F..%2Fbashrc", "image"),  # a name that would leave the download directory: the file's role instead
    ("images/.hidden", "image"),
    ("images/", "image"),
])
def test_a_downloaded_file_keeps_a_safe_name(url: str, stored_as: str):
    from vml.catalog import parse_catalog

    document = {"vml-catalog": 1, "name": "cernvm", "versions": {"5.1": {"image": {"url": url, "digest": "sha256:" + "a" * 64}}}}
    parsed = parse_catalog(document, "https://example.org/cernvm/catalog.json", "cernvm")
    assert parsed.version(None).image.file_name == stored_as


def test_a_catalogs_version_never_names_a_path_outside(vml: Vml, published: FilesServer, tmp_path: Path):
    """A hostile catalog's version is checked as a base version (git's ref rules, no '/')
    before it names the download directory."""
    vml("init")
    document = json.loads((published.root / "catalog.json").read_text())
    document["versions"] = {"../../../escape": document["versions"]["1"]}
    document["latest"] = "../../../escape"
    (published.root / "catalog.json").write_text(json.dumps(document))
    vml("base", "catalog", "add", "guest", published.url + "/catalog.json")
    failed = vml("base", "fetch", "guest", check=False)
    assert "is not a valid base version" in one_line_error(failed)
    assert not list(tmp_path.rglob("escape")) and not list((tmp_path / ".vml").rglob("disk.qcow2*"))
    assert [path for path, _range in published.requests if path != "/catalog.json"] == []
    vml.fsck_clean()

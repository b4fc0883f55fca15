"""Catalogs of base images (seed 004: "automatically download the VM from the CernVM
website when requested or needed").

A catalog is a small JSON file, over HTTP(S) or on a file system (file://, a CVMFS path),
naming the versions of one base and, for each, the URL and digest of its image and of the
kernel and initrd that boot it directly:

    {"vml-catalog": 1, "name": "cernvm", "latest": "5.1",
     "versions": {"5.1": {"image": {"url": "cernvm-5.1.qcow2", "digest": "sha256:…", "size": 733000000},
                          "kernel": {"url": "vmlinuz-5.1", "digest": "sha256:…"},
                          "initrd": {"url": "initrd-5.1.img", "digest": "sha256:…"},
                          "cmdline": "root=/dev/vda rw console=ttyS0", "published": "2026-11-23"}}}

URLs may be relative to the catalog's own. Digests are 'sha256:HEX' or 'blake3:HEX'.
`fetch_file` downloads one file into a directory, going on from what an interrupted
download left there, and hands it over only once its digest matches.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from vml.errors import CorruptObject, UsageError
from vml.objects.hashing import DIGEST_LENGTHS, file_digest_as

FORMAT = 1
CATALOG_LIMIT = 4 * 1024 * 1024  # a catalog of thousands of versions is still far smaller
ROLES = ("image", "kernel", "initrd")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True, slots=True)
class CatalogFile:
    role: str  # image, kernel or initrd
    url: str  # absolute
    digest: str  # ALGORITHM:HEX
    size: int | None

    @property
    def file_name(self) -> str:
        """The name the file is stored under: the last part of its URL's path."""
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rpartition("/")[2])
        return name if _FILE_NAME.match(name) else self.role


@dataclass(frozen=True, slots=True)
class CatalogVersion:
    version: str
    files: tuple[CatalogFile, ...]  # the image first
    cmdline: str | None
    published: str | None

    @property
    def image(self) -> CatalogFile:
        return self.files[0]

    @property
    def size(self) -> int | None:
        sizes = [found.size for found in self.files]
        return None if None in sizes else sum(size for size in sizes if size is not None)


@dataclass(frozen=True, slots=True)
class Catalog:
    name: str
    url: str
    versions: tuple[CatalogVersion, ...]  # as the catalog lists them
    latest: str | None

    def version(self, version: str | None) -> CatalogVersion:
        """A version by name; None: the one the catalog calls latest, else its last."""
        if not self.versions:
            raise UsageError(f"catalog {self.url} lists no version of {self.name}")
        wanted = version or self.latest or self.versions[-1].version
        for found in self.versions:
            if found.version == wanted:
                return found
        listed = ", ".join(found.version for found in self.versions)
        raise UsageError(f"catalog {self.url} has no version {wanted!r} of {self.name} (it lists {listed})")


def check_url(url: str) -> str:
    """An http(s):// or file:// URL, or an absolute path (made a file:// URL)."""
    if url.startswith("/"):
        return "file://" + urllib.request.pathname2url(url)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname or parts.scheme == "file" and parts.path:
        if parts.username or parts.password:
            raise UsageError(f"{url}: no user or password in a catalog's URL (catalogs are public)")
        return url
    raise UsageError(f"{url}: a catalog is at an http(s):// or file:// URL, or an absolute path")


def read_catalog(url: str, name: str) -> Catalog:
    """The catalog at `url`, checked whole; it must be the catalog of base `name`."""
    url = check_url(url)
    text = _read_small(url)
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"{url}: not a catalog (not JSON: {error})") from None
    return parse_catalog(document, url, name)


def parse_catalog(document: object, url: str, name: str) -> Catalog:
    def bad(why: str) -> UsageError:
        return UsageError(f"{url}: not a vml catalog: {why}")

    if not isinstance(document, dict) or document.get("vml-catalog") != FORMAT:
        raise bad(f'no "vml-catalog": {FORMAT} at its top')
    if document.get("name") != name:
        raise UsageError(f"{url} is the catalog of base {document.get('name')!r}, not of {name!r}")
    versions = document.get("versions")
    if not isinstance(versions, dict):
        raise bad('"versions" is not an object of versions')
    latest = document.get("latest")
    if latest is not None and latest not in versions:
        raise bad(f'"latest" names {latest!r}, which it does not list')
    parsed = []
    for version, fields in versions.items():
        if not isinstance(fields, dict) or not isinstance(fields.get("image"), dict):
            raise bad(f'version {version!r} names no "image"')
        files = tuple(_catalog_file(fields[role], role, url, version, bad) for role in ROLES if role in fields)
        if "initrd" in fields and "kernel" not in fields:
            raise bad(f"version {version!r} has an initrd and no kernel")
        for key in ("cmdline", "published"):
            if not isinstance(fields.get(key, ""), str):
                raise bad(f'version {version!r}: "{key}" is not text')
        parsed.append(CatalogVersion(version, files, fields.get("cmdline"), fields.get("published")))
    return Catalog(name, url, tuple(parsed), latest)


def _catalog_file(fields: object, role: str, catalog_url: str, version: str, bad: Callable[[str], UsageError]) -> CatalogFile:
    if not isinstance(fields, dict) or not isinstance(fields.get("url"), str) or not isinstance(fields.get("digest"), str):
        raise bad(f'version {version!r}: its {role} needs a "url" and a "digest"')
    algorithm, _, hexits = fields["digest"].partition(":")
    if DIGEST_LENGTHS.get(algorithm) != len(hexits) or not _HEX.match(hexits):
        raise bad(f"version {version!r}: its {role}'s digest {fields['digest']!r} is not sha256:HEX or blake3:HEX (64 hex digits)")
    size = fields.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise bad(f"version {version!r}: its {role}'s size is not a number of bytes")
    url = urllib.parse.urljoin(catalog_url, fields["url"])
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https", "file"):
        raise bad(f"version {version!r}: its {role} is at {url}, not an http(s):// or file:// URL")
    if scheme == "file" and not catalog_url.startswith("file:"):  # a catalog on the web names no file of this machine
        raise bad(f"version {version!r}: its {role} is a file of this machine ({url}), and the catalog is not")
    return CatalogFile(role, url, fields["digest"], size)


def _read_small(url: str) -> bytes:
    if url.startswith("file:"):
        path = _local_path(url)
        try:
            with open(path, "rb") as catalog_file:
                text = catalog_file.read(CATALOG_LIMIT + 1)
        except OSError as error:
            raise UsageError(f"{url}: cannot read it ({error.strerror})") from None
        if len(text) > CATALOG_LIMIT:
            raise UsageError(f"{url}: larger than {CATALOG_LIMIT:,} bytes, not a catalog")
        return text
    from vml.transport.http import read_public  # (httpx loads only for catalogs on the web)

    return read_public(url, CATALOG_LIMIT)


def _local_path(url: str) -> str:
    return urllib.request.url2pathname(urllib.parse.urlsplit(url).path)


def fetch_file(wanted: CatalogFile, final: str, progress: Callable[[int, int], None] | None = None) -> str:
    """`wanted` as the file `final`, downloaded (or copied) into FINAL.part, going on from
    what an interrupted run left there, and renamed once whole; returned once its digest
    matches. A file that does not match is deleted (the next run starts it again) and is
    one line of error."""
    part = final + ".part"
    if not os.path.exists(final):
        if wanted.url.startswith("file:"):
            _copy_resuming(_local_path(wanted.url), part, progress)
        else:
            from vml.transport.http import download_public

            download_public(wanted.url, part, size=wanted.size, progress=progress)
        os.rename(part, final)
    algorithm = wanted.digest.partition(":")[0]
    found = file_digest_as(final, algorithm)
    if found != wanted.digest:
        os.unlink(final)
        raise CorruptObject(f"{wanted.url}: the downloaded {wanted.role} has digest {found[:23]}…, the catalog says "
                            f"{wanted.digest[:23]}…: not used, and deleted")
    if wanted.size is not None and os.path.getsize(final) != wanted.size:  # (only a broken catalog gets here)
        os.unlink(final)
        raise CorruptObject(f"{wanted.url}: the {wanted.role} matches its digest but not the catalog's size")
    return final


def _copy_resuming(source: str, target: str, progress: Callable[[int, int], None] | None) -> None:
    try:
        with open(source, "rb") as reader, open(target, "ab") as sink:
            total = os.fstat(reader.fileno()).st_size
            if sink.tell() > total:
                sink.truncate(0)
            reader.seek(sink.tell())
            while piece := reader.read(4 * 1024 * 1024):
                sink.write(piece)
                if progress is not None:
                    progress(sink.tell(), total)
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file (named by the catalog)") from None


def remove_downloads(directory: str) -> None:
    """A fetch's download directory, and its parents up to `downloads` once they are empty."""
    shutil.rmtree(directory, ignore_errors=True)
    for parent in (os.path.dirname(directory), os.path.dirname(os.path.dirname(directory))):
        try:
            os.rmdir(parent)
        except OSError:  # not empty: another base's downloads
            break

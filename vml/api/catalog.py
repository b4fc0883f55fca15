"""vml base catalog add / list / show / remove, and vml base fetch: base images downloaded
from the catalog that publishes them (vml/catalog.py), checked, and stored as bases."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from vml.api.bases import BaseInfo, BootFiles, base_add, base_list
from vml.catalog import Catalog, CatalogFile, check_url, fetch_file, read_catalog, remove_downloads
from vml.config import CatalogConfig, catalog, catalogs, delete_catalog, write_catalog
from vml.errors import UsageError
from vml.refs.bases import BaseName, base_name
from vml.repo import Repository


@dataclass(frozen=True, slots=True)
class CatalogVersionInfo:
    version: str
    published: str | None
    bytes: int | None  # the image, kernel and initrd together, when the catalog gives sizes
    digest: str  # the image's
    here: bool  # the repository holds this version as a base


@dataclass(frozen=True, slots=True)
class CatalogInfo:
    name: str
    url: str
    auto_fetch: bool
    latest: str | None = None
    versions: list[CatalogVersionInfo] | None = None  # None: the catalog was not read (list)


@dataclass(frozen=True, slots=True)
class BaseFetchResult:
    base: BaseInfo
    catalog_url: str
    files: list[str]  # the URLs fetched
    downloaded_bytes: int  # by this run
    resumed_bytes: int  # what an interrupted run had downloaded already
    seconds: float
    already_here: bool = False


@dataclass(slots=True)
class FetchProgress:
    """What `vml base fetch` reports as it goes: files done, bytes of all its files."""

    files: int = 0
    bytes: int = 0
    total: int = 0


def catalog_add(repo: Repository, name: str, url: str, *, auto_fetch: bool = False, replace: bool = False) -> CatalogInfo:
    """Name the catalog that publishes base NAME; it is read (and must be NAME's) first."""
    base_name(repo.git, name, "x")
    url = check_url(url)
    existing = catalog(repo.git, name)
    if existing is not None and not replace:
        raise UsageError(f"base {name} has a catalog already ({existing.url}): --replace to change it")
    found = read_catalog(url, name)
    write_catalog(repo.git, CatalogConfig(name, url, auto_fetch))
    return _info(repo, CatalogConfig(name, url, auto_fetch), found)


def catalog_list(repo: Repository) -> list[CatalogInfo]:
    """The catalogs named here (none is read: this works offline)."""
    return [CatalogInfo(found.name, found.url, found.auto_fetch) for found in catalogs(repo.git)]


def catalog_show(repo: Repository, name: str) -> CatalogInfo:
    """A catalog, read now: its versions, and which of them the repository holds."""
    config = _catalog_of(repo, name)
    return _info(repo, config, read_catalog(config.url, name))


def catalog_remove(repo: Repository, name: str) -> CatalogInfo:
    config = _catalog_of(repo, name)
    delete_catalog(repo.git, name)
    return CatalogInfo(config.name, config.url, config.auto_fetch)


def _catalog_of(repo: Repository, name: str) -> CatalogConfig:
    config = catalog(repo.git, name)
    if config is None:
        known = ", ".join(found.name for found in catalogs(repo.git)) or "none"
        raise UsageError(f"no catalog for base {name!r} (catalogs: {known}); add one with 'vml base catalog add {name} URL'")
    return config


def _info(repo: Repository, config: CatalogConfig, found: Catalog) -> CatalogInfo:
    here = {(info.name, info.version) for info in base_list(repo)}
    versions = [CatalogVersionInfo(version.version, version.published, version.size, version.image.digest, (found.name, version.version) in here)
                for version in found.versions]
    return CatalogInfo(config.name, config.url, config.auto_fetch, found.latest, versions)


def base_fetch(repo: Repository, spec: str, *, progress: Callable[[object], None] | None = None) -> BaseFetchResult:
    """Download base NAME:VERSION (NAME alone: the catalog's latest) from NAME's catalog,
    check each file's digest, and store it as a base (vml base add). An interrupted fetch
    goes on where it stopped when run again; a repository that holds the base already
    downloads nothing."""
    started = time.monotonic()
    name, _colon, version = spec.partition(":")
    base_name(repo.git, name, version or "x")
    config = _catalog_of(repo, name)
    published = read_catalog(config.url, name).version(version or None)
    base = base_name(repo.git, name, published.version)  # (a catalog's version names a directory here: checked first)
    held = _held(repo, base)
    if held is not None:
        _check_same(held, published.image, base)
        return BaseFetchResult(held, config.url, [], 0, 0, round(time.monotonic() - started, 2), already_here=True)
    directory = os.path.join(repo.vml_dir, "downloads", name, published.version)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "fetch.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second fetch of the same version waits, then finds it here
        held = _held(repo, base)
        if held is not None:
            return BaseFetchResult(held, config.url, [], 0, 0, round(time.monotonic() - started, 2), already_here=True)
        paths = _file_paths(published.files, directory)
        resumed = sum(_size(path) + _size(path + ".part") for path in paths.values())
        counts = FetchProgress(total=published.size or 0)
        fetched: dict[str, str] = {}
        for position, wanted in enumerate(published.files):
            before = counts.bytes

            def report(done: int, _total: int, before: int = before) -> None:
                counts.bytes = before + done
                if progress is not None:
                    progress(counts)

            fetched[wanted.role] = fetch_file(wanted, paths[wanted.role], report)
            counts.bytes, counts.files = before + _size(fetched[wanted.role]), position + 1
        downloaded = max(0, counts.bytes - resumed)
        boot = BootFiles(fetched.get("kernel"), fetched.get("initrd"), published.cmdline if "kernel" in fetched else None)
        info = base_add(repo, name, published.version, image=fetched["image"], boot=boot)
    remove_downloads(directory)  # (stored now: what a later fetch would go on from is in the store)
    return BaseFetchResult(info, config.url, [wanted.url for wanted in published.files], downloaded, resumed, round(time.monotonic() - started, 2))


def _held(repo: Repository, base: BaseName) -> BaseInfo | None:
    return next((info for info in base_list(repo) if (info.name, info.version) == (base.name, base.version)), None)


def _check_same(held: BaseInfo, image: CatalogFile, base: BaseName) -> None:
    """A base already here must be the one the catalog names (comparable when both digests are BLAKE3)."""
    if image.digest.startswith("blake3:") and held.digest.startswith("blake3:") and image.digest != held.digest:
        raise UsageError(f"base {base} here has digest {held.digest[:23]}…, its catalog names {image.digest[:23]}…: not the same "
                         f"image (bases are immutable: the catalog changed a published version)")


def _file_paths(files: tuple[CatalogFile, ...], directory: str) -> dict[str, str]:
    """Where each file goes: its URL's name, or ROLE-NAME where two would share one."""
    names = [wanted.file_name for wanted in files]
    return {wanted.role: os.path.join(directory, name if names.count(name) == 1 else f"{wanted.role}-{name}")
            for wanted, name in zip(files, names, strict=True)}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0

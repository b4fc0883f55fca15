"""vml base add / list, and what a checkout checks of the base an entry sits on."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import vml
from vml.api._common import Progress, entry_info, opened_area
from vml.areas.capture import capture_files, capture_tree
from vml.areas.statcache import StatCache
from vml.config import AreaConfig, catalog
from vml.entry import ENTRY_FILE, BaseRef, EntryInfo, base_entry
from vml.errors import BaseMissing, UsageError
from vml.objects.hashing import file_digest
from vml.refs.bases import BaseName, base_name, list_bases, parse_base
from vml.repo import Repository


@dataclass(frozen=True, slots=True)
class BaseInfo:
    name: str
    version: str
    digest: str
    entry: str
    source: str  # image, dir or the kind of the area it was taken from
    location: str
    files: int
    logical_bytes: int
    added_bytes: int


def area_base(repo: Repository, config: AreaConfig) -> BaseRef | None:
    text = config.settings.get("base")
    if not text:
        return None
    _entry, info = base_entry(repo.git, parse_base(repo.git, text))
    return info.base


def _base_info(entry: str, info: EntryInfo) -> BaseInfo:
    base = info.required_base()
    return BaseInfo(base.name, base.version, base.digest, entry, info.area_kind, info.location,
                    info.files, info.logical_bytes, info.added_bytes)


@dataclass(frozen=True, slots=True)
class BootFiles:
    """What boots a disk image directly (no bootloader): kernel and initrd files, command line."""

    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None


def base_add(repo: Repository, name: str, version: str, *, image: str | None = None, directory: str | None = None,
             area: str | None = None, boot: BootFiles = BootFiles(), progress: Progress = None) -> BaseInfo:
    """Store a base image (a disk image file, a directory, or an area's current files) on its own ref."""
    if sum(source is not None for source in (image, directory, area)) != 1:
        raise UsageError("give exactly one of --image FILE, --dir DIR and --area AREA")
    if image is None and boot != BootFiles():
        raise UsageError("--kernel, --initrd and --cmdline boot an --image")
    if boot.initrd and not boot.kernel:
        raise UsageError("--initrd goes with --kernel")
    base = base_name(repo.git, name, version)
    existing = repo.git.ref_target(base.ref)
    if existing is not None:
        raise UsageError(f"base {base} exists already (at {existing[:12]}); bases are immutable: use a new version")
    with repo.shared_lock():
        store = repo.store
        added_before = store.bytes_added
        try:
            if image is not None:
                source, location, image_name = "image", os.path.abspath(image), os.path.basename(image)
                if not os.path.isfile(location):
                    raise UsageError(f"{image} is not a file")
                files = [(image_name, location)]
                for path in (boot.kernel, boot.initrd):
                    if path is not None:
                        if not os.path.isfile(path):
                            raise UsageError(f"{path} is not a file")
                        files.append((os.path.basename(path), os.path.abspath(path)))
                if len({file_name for file_name, _path in files}) != len(files):
                    raise UsageError("the image, kernel and initrd need different file names")
                root_id, totals = capture_files([(os.fsencode(n), os.fsencode(p)) for n, p in files], store)
                digest = file_digest(location)
            elif directory is not None:
                source, location, image_name = "dir", os.path.abspath(directory), None
                if not os.path.isdir(location):
                    raise UsageError(f"{directory} is not a directory")
                captured = capture_tree(os.fsencode(location), store, StatCache(), progress=progress)
                root_id, totals, digest = captured.root_id, captured.totals, f"tree:{captured.root_id.hex()}"
            else:
                assert area is not None  # exactly one source was given
                config = repo.area(area)
                source, location, image_name = config.kind, config.location, None
                with opened_area(repo, config) as working_area:
                    captured = working_area.capture(store, StatCache(), dry_run=False, progress=progress)
                root_id, totals, digest = captured.root_id, captured.totals, f"tree:{captured.root_id.hex()}"
            store.flush()
        except BaseException:
            store.abandon()
            raise
        info = EntryInfo(
            manifest=root_id.hex(), area=area or "", area_kind=source, location=location, host=socket.gethostname(),
            capture_method="base-" + source, vml_version=vml.__version__, nodes=totals.nodes, files=totals.files,
            logical_bytes=totals.bytes, added_bytes=store.bytes_added - added_before, kind="base",
            base=BaseRef(name, version, digest), image=image_name,
            boot={k: v for k, v in (("kernel", boot.kernel and os.path.basename(boot.kernel)),
                                    ("initrd", boot.initrd and os.path.basename(boot.initrd)), ("cmdline", boot.cmdline)) if v} or None,
        )
        entry = repo.git.create_commit({ENTRY_FILE: info.to_toml()}, f"base {name} {version}", [])
        repo.git.update_ref(base.ref, entry, None, f"base add: {base}")
    return _base_info(entry, info)


def base_list(repo: Repository) -> list[BaseInfo]:
    return [_base_info(entry, entry_info(repo, entry)) for _base, entry in list_bases(repo.git)]


def check_base(repo: Repository, info: EntryInfo, config: AreaConfig | None) -> list[str]:
    """Warnings for a checkout of an entry saved on a base; an error if the repository lacks that base."""
    if info.base is None:
        return []
    base = BaseName(info.base.name, info.base.version)
    entry = repo.git.ref_target(base.ref)
    if entry is None:
        raise missing_base(repo, base, f"the entry sits on base {base} ({info.base.digest[:19]}…)")
    held = entry_info(repo, entry).required_base()
    if held.digest != info.base.digest:
        raise UsageError(f"base {info.base} here has digest {held.digest[:19]}…, the entry was saved on {info.base.digest[:19]}…: not the same base")
    on_base = area_base(repo, config) if config is not None else None
    if on_base is not None and (on_base.name, on_base.version) != (info.base.name, info.base.version):
        return [f"the entry was saved on base {info.base}, the area is on base {on_base}: files from the base may differ"]
    return []


def missing_base(repo: Repository, base: BaseName, what: str) -> BaseMissing:
    """The error for `what` ("the entry sits on base X") when the repository lacks base X:
    how to get it, from its catalog if one is named (the command line then offers to fetch)."""
    lacking = f"{what}, which this repository lacks"
    published = catalog(repo.git, base.name)
    if published is None:
        return BaseMissing(f"{lacking}: add it with 'vml base add {base.name} {base.version} --image FILE', fetch it from a "
                           f"remote that has it, or name its catalog: 'vml base catalog add {base.name} URL'", str(base), what)
    return BaseMissing(f"{lacking}: fetch it from its catalog with 'vml base fetch {base}' ({published.url}), or let vml do "
                       f"that when needed: 'vml base catalog add {base.name} {published.url} --auto-fetch --replace'",
                       str(base), what, published.url, published.auto_fetch)

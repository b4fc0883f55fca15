"""vml commit: an area's files (and with --memory a running domain's memory) saved as an entry."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass
from typing import Any

import vml
from vml.api._common import Progress, opened_area
from vml.api.bases import area_base
from vml.areas.kinds import as_vm, is_vm
from vml.areas.protocol import Notice
from vml.areas.statcache import StatCache
from vml.config import area_presets
from vml.entry import ENTRY_FILE, EntryInfo, entry_root
from vml.environment import VARIABLES, dotfiles
from vml.errors import ConcurrentUpdate, UsageError, VmlError
from vml.objects.walk import listing_loader
from vml.pathnames import quote_path
from vml.refs.heads import advance, read_head
from vml.repo import Repository


@dataclass(frozen=True, slots=True)
class CommitResult:
    entry: str
    created: bool  # False: nothing changed since the area's entry
    parent: str | None
    area: str
    branch: str | None
    files: int
    logical_bytes: int
    files_read: int
    bytes_read: int
    added_bytes: int
    skipped: list[str]
    changed_while_reading: list[str]


def commit(repo: Repository, message: str, *, area: str | None = None, allow_empty: bool = False, memory: bool = False,
           progress: Progress = None, notice: Notice = None) -> CommitResult:
    """Save the area as a new entry. With `memory`, a running libvirt domain's memory and
    disks are saved too (the domain is paused for the save and resumed)."""
    if not message.strip():
        raise UsageError("an entry needs a message: give -m MESSAGE")
    config = repo.choose_area(area)
    if memory and not is_vm(config):
        raise UsageError(f"--memory saves a running domain's memory: area {config.name} is a {config.kind} area, not libvirt")
    with opened_area(repo, config, notice) as working_area, repo.shared_lock(), repo.area_lock(config.name):
        head = read_head(repo.git, config.name)
        store = repo.store
        cache = StatCache.load(repo.stat_cache_path(config.name))
        added_before = store.bytes_added
        saved_memory = None
        try:
            captured = working_area.capture(store, cache, dry_run=False, progress=progress)
            extra_files = working_area.entry_files()
            if memory:
                saved_memory = as_vm(working_area).save_memory(store, repo.temp_dir())
            store.flush()  # packs, then their index: durable before any commit names them
            if VARIABLES in extra_files:
                extra_files.update(dotfiles(store, listing_loader(store), captured.root_id))
        except OSError as error:
            store.abandon()
            if error.errno != errno.ENOSPC:
                raise
            kept = store.unindexed_bytes()  # (what its reader processes finished too, reported or not)
            raise VmlError("the disk of the repository is full: nothing was recorded"
                           + (f"; the {kept:,} bytes of packs stored already are reused by the next one, or freed by "
                              f"'vml gc'" if kept else "")) from None
        except BaseException:
            store.abandon()
            raise
        added = store.bytes_added - added_before
        skipped = [f"{quote_path(path)} ({reason})" for path, reason in captured.skipped]
        unstable = [quote_path(path) for path in captured.changed_while_reading]
        common: dict[str, Any] = dict(
            parent=head.entry,
            area=config.name,
            branch=head.branch,
            files=captured.totals.files,
            logical_bytes=captured.totals.bytes,
            files_read=captured.progress.files_read,
            bytes_read=captured.progress.bytes_read,
            added_bytes=added,
            skipped=skipped,
            changed_while_reading=unstable,
        )
        if (head.entry is not None and not allow_empty and saved_memory is None and entry_root(repo.git, head.entry) == captured.root_id
                and all(repo.git.read_file(head.entry, path) == data for path, data in extra_files.items())):
            captured.cache.save(repo.stat_cache_path(config.name))
            return CommitResult(entry=head.entry, created=False, **common)
        info = EntryInfo(
            manifest=captured.root_id.hex(),
            area=config.name,
            area_kind=config.kind,
            location=config.location,
            host=socket.gethostname(),
            capture_method=working_area.capture_method,
            vml_version=vml.__version__,
            nodes=captured.totals.nodes,
            files=captured.totals.files,
            logical_bytes=captured.totals.bytes,
            added_bytes=added,
            skipped=skipped,
            changed_while_reading=unstable,
            base=area_base(repo, config),
            memory=saved_memory[0].hex() if saved_memory else None,
            memory_disks=saved_memory[1] if saved_memory else [],
            rules=(list(working_area.rules.include), list(working_area.rules.exclude)),
            presets=area_presets(config),
        )
        parents = [head.entry] if head.entry else []
        entry = repo.git.create_commit({ENTRY_FILE: info.to_toml(), **extra_files}, message, parents)
        summary = message.strip().splitlines()[0]
        try:
            advance(repo.git, head, entry, f"commit{'' if parents else ' (initial)'}: {summary}")
        except ConcurrentUpdate as error:
            raise VmlError(f"entry {entry} was saved but not recorded on its branch ({error}); "
                           f"recover it with 'vml checkout {entry[:12]}'") from None
        captured.cache.save(repo.stat_cache_path(config.name))
        return CommitResult(entry=entry, created=True, **common)

"""What the command families share: opening an area with its rules, resolving what users
type into entries, an area's current files hashed but not stored, paths as users give them."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

from vml.areas.capture import CaptureResult
from vml.areas.kinds import default_rules, open_area
from vml.areas.protocol import AreaConfig, Notice, WorkingArea
from vml.areas.rules import Rules, load_rules
from vml.areas.statcache import StatCache
from vml.entry import EntryInfo, read_entry
from vml.errors import UnknownArea, UsageError
from vml.objects.manifest import Listing
from vml.objects.walk import listing_loader
from vml.refs import names
from vml.refs.heads import AreaHead, read_head
from vml.repo import Repository

Progress = Callable[[object], None] | None


def area_rules(repo: Repository, config: AreaConfig) -> Rules:
    return load_rules(repo.rules_path(config.name), default_rules(config.kind))


@contextlib.contextmanager
def opened_area(repo: Repository, config: AreaConfig, notice: Notice = None) -> Iterator[WorkingArea]:
    working_area = open_area(config, area_rules(repo, config))
    working_area.notice = notice
    try:
        yield working_area
    finally:
        working_area.close()


def resolve_entry(repo: Repository, spec: str, area: str | None = None) -> str:
    """The entry id `spec` names (see docs/HISTORY.md); HEAD and @ mean the area's HEAD."""

    def area_head() -> AreaHead | None:
        try:
            config = repo.choose_area(area)
        except UnknownArea:
            if area is None and not repo.areas():
                return None  # a repository without areas: its own HEAD
            raise
        return read_head(repo.git, config.name)

    return names.resolve(repo.git, spec, area_head)


def entry_info(repo: Repository, entry: str) -> EntryInfo:
    return read_entry(repo.git, entry)


def temp_dir(repo: Repository) -> str:
    """Beside the store, on its filesystem: memory and disk images are large."""
    path = os.path.join(repo.vml_dir, "tmp")
    os.makedirs(path, exist_ok=True)
    return path


def scan_area(repo: Repository, working_area: WorkingArea, cache: StatCache | None = None,
              expected: Callable[[bytes], object] | None = None) -> tuple[CaptureResult, Callable[..., Listing]]:
    """The area's current files, hashed but not stored: the capture and a loader for its listings."""
    if cache is None:
        cache = StatCache.load(repo.stat_cache_path(working_area.config.name))
    current = working_area.capture(repo.store, cache, dry_run=True, expected=expected)
    return current, listing_loader(repo.store, current.listings)


def parse_paths(paths: tuple[str, ...] | list[str]) -> list[bytes]:
    """Paths as users type them (relative to the area's top, '/' allowed in front) as the
    '/'-separated relative bytes manifests use; b"" for the whole tree."""
    parsed = []
    for text in paths:
        parts = [p for p in os.fsencode(text).split(b"/") if p not in (b"", b".")]
        if b".." in parts:
            raise UsageError(f"path {text!r} goes up with '..'; give paths from the area's top")
        parsed.append(b"/".join(parts))
    return parsed


def first_line(message: str) -> str:
    return (message.strip().splitlines() or [""])[0]

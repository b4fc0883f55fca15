"""What the command families share: opening an area with its rules, resolving what users
type into entries (and `entry_info`, the public read of one), an area's current files
hashed but not stored."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from vml.entry import EntryInfo, read_entry
from vml.errors import UnknownArea
from vml.objects.manifest import Listing
from vml.objects.walk import listing_loader
from vml.refs import names
from vml.refs.heads import AreaHead, read_head
from vml.repo import Repository

if TYPE_CHECKING:  # (areas load when a command opens one: log, diff and show need none)
    from vml.areas.capture import CaptureResult
    from vml.areas.protocol import AreaConfig, Notice, WorkingArea
    from vml.areas.rules import Rules
    from vml.areas.statcache import StatCache

Progress = Callable[[object], None] | None


def area_rules(repo: Repository, config: AreaConfig) -> Rules:
    """The area's include and exclude rules, with its rule presets (vml/areas/presets.py);
    a libvirt area's shared folders are host data, never the guest's files: excluded
    (vml/api/shares.py)."""
    from vml.areas.kinds import default_rules
    from vml.areas.rules import Rules, literal_pattern, load_rules
    from vml.config import area_presets, shared_paths

    rules = load_rules(repo.rules_path(config.name), default_rules(config.kind))
    root = config.settings.get("root", "/").rstrip("/") + "/"
    if area_presets(config):
        from vml.areas.presets import parse_preset, with_presets

        rules = with_presets(rules, [parse_preset(text) for text in area_presets(config)])
    shared = [literal_pattern(os.fsencode(path[len(root):])) for path in shared_paths(config) if path.startswith(root)]
    missing = tuple(pattern for pattern in shared if pattern not in rules.exclude)
    return Rules(rules.include, rules.exclude + missing) if missing else rules


@contextlib.contextmanager
def opened_area(repo: Repository, config: AreaConfig, notice: Notice = None) -> Iterator[WorkingArea]:
    from vml.areas.kinds import open_area
    from vml.areas.rules import without_ephemeral

    working_area = open_area(config, without_ephemeral(area_rules(repo, config)))
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


def scan_area(repo: Repository, working_area: WorkingArea, cache: StatCache | None = None,
              expected: Callable[[bytes], object] | None = None) -> tuple[CaptureResult, Callable[..., Listing]]:
    """The area's current files, hashed but not stored: the capture and a loader for its listings."""
    from vml.areas.statcache import StatCache

    if cache is None:
        cache = StatCache.load(repo.stat_cache_path(working_area.config.name))
    current = working_area.capture(repo.store, cache, dry_run=True, expected=expected)
    return current, listing_loader(repo.store, current.listings)

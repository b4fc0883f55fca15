"""The protocol every working area implements, whatever reaches its files."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Protocol

from vml.areas.capture import CaptureProgress, CaptureResult
from vml.areas.restore import RestoreProgress
from vml.areas.rules import Rules
from vml.areas.statcache import StatCache
from vml.errors import UsageError
from vml.objects.manifest import Listing
from vml.objects.store import ChunkStore

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_area_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name or name.endswith(".lock"):
        raise UsageError(f"invalid area name {name!r}: use letters, digits, '.', '_' and '-'")
    return name


@dataclass(frozen=True, slots=True)
class AreaConfig:
    name: str
    kind: str  # dir, ssh or libvirt
    location: str  # for people: a path, or ssh://user@host:port/root
    settings: dict[str, str] = field(default_factory=dict)  # per kind: host, port, user, identity, root, uri, domain


class WorkingArea(Protocol):
    config: AreaConfig
    rules: Rules  # what the area saves
    capture_method: str

    def has_files(self) -> bool:
        """False for a directory area whose directory is not there yet (a first checkout makes it)."""
        ...

    def close(self) -> None: ...

    def entry_files(self) -> dict[str, bytes]:
        """Small files the entry's git tree keeps beside entry.toml (vm/domain.xml, env/...)."""
        ...

    def apply_entry_files(self, files: dict[str, bytes]) -> list[str]:
        """Put those files' state back (define the domain...); notes for the user."""
        ...

    def capture(
        self,
        store: ChunkStore,
        cache: StatCache,
        *,
        dry_run: bool,
        progress: Callable[[CaptureProgress], None] | None,
        expected: Callable[[bytes], object] | None = None,
    ) -> CaptureResult:
        """The area's files into `store` (or only hashed, `dry_run`). `expected` (relative
        path -> node) describes what a checkout just wrote: an area may trust it instead of
        reading those files back."""
        ...

    def restore(
        self,
        store: ChunkStore,
        load_listing: Callable[..., Listing],
        root_id: bytes,
        current_root_id: bytes | None,
        progress: Callable[[RestoreProgress], None] | None,
        entry_rules: object | None = None,
    ) -> RestoreProgress:
        """Make the area hold `root_id`; `current_root_id` is what it holds now. Nothing
        outside the area's rules, nor outside `entry_rules` (those the entry was saved
        under), is deleted."""
        ...

    def read_file(self, path: bytes, limit: int) -> bytes:
        """The current bytes of the regular file at `path` (relative), at most `limit` of them."""
        ...

"""The protocol every working area implements, whatever reaches its files."""

from __future__ import annotations

from typing import Callable, Protocol

from vml.areas.capture import CaptureProgress, CaptureResult
from vml.areas.restore import RestoreProgress
from vml.areas.rules import Rules
from vml.areas.statcache import StatCache
from vml.config import AreaConfig, check_area_name  # noqa: F401  (re-exported: the areas' own name for them)
from vml.objects.manifest import Listing
from vml.objects.store import ChunkStore

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

"""The `dir` working area: a plain directory (a container root, a mounted guest disk, a copy)."""

from __future__ import annotations

import os
from collections.abc import Callable

from vml.areas.capture import CaptureProgress, CaptureResult, capture_tree
from vml.areas.protocol import AreaConfig
from vml.areas.restore import Restore, RestoreProgress
from vml.areas.rules import Rules
from vml.areas.statcache import StatCache
from vml.errors import AreaError
from vml.objects.manifest import Listing
from vml.objects.store import ChunkStore


class DirectoryArea:
    capture_method = "dir-scan"
    notice = None  # a directory never waits

    def __init__(self, config: AreaConfig, rules: Rules):
        self.config = config
        self.rules = rules
        self.root = os.fsencode(config.location)

    def check_connection(self) -> None:
        """Nothing to log in to: the directory is read where it is."""

    def entry_files(self) -> dict[str, bytes]:
        return {}

    def apply_entry_files(self, files: dict[str, bytes]) -> list[str]:
        return []

    def has_files(self) -> bool:
        return os.path.isdir(self.root)

    def close(self) -> None:
        pass

    def _check(self) -> None:
        if not os.path.isdir(self.root):
            raise AreaError(f"area {self.config.name}: directory {self.config.location} does not exist")

    def capture(
        self,
        store: ChunkStore,
        cache: StatCache,
        *,
        dry_run: bool = False,
        progress: Callable[[CaptureProgress], None] | None = None,
        expected=None,  # local files are cheap to read back: always read
    ) -> CaptureResult:
        self._check()
        return capture_tree(self.root, store, cache, dry_run=dry_run, rules=self.rules, progress=progress)

    def restore(
        self,
        store: ChunkStore,
        load_listing: Callable[..., Listing],
        root_id: bytes,
        current_root_id: bytes | None,
        progress: Callable[[RestoreProgress], None] | None = None,
        entry_rules: Rules | None = None,
    ) -> RestoreProgress:
        restore = Restore(store, load_listing, rules=self.rules, entry_rules=entry_rules, progress=progress)
        return restore.run(root_id, self.root, current_root_id)

    def read_file(self, path: bytes, limit: int) -> bytes:
        fd = os.open(os.path.join(self.root, path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as current:
            return current.read(limit)


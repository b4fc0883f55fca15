"""The protocols the porcelain is written against: WorkingArea, which every area implements
whatever reaches its files, and VmArea with the Domain it drives, for areas that are virtual
machines. vml/areas/kinds.py says which an area is."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from vml.areas.capture import CaptureProgress, CaptureResult
from vml.areas.restore import RestoreProgress
from vml.areas.rules import Rules
from vml.areas.statcache import StatCache
from vml.config import AreaConfig as AreaConfig  # re-exported: the areas' own names for them
from vml.objects.manifest import Listing
from vml.objects.store import ChunkStore

if TYPE_CHECKING:
    from vml.areas.libvirt.definition import Share

Notice = Callable[[str], None] | None  # hears what a long wait (a guest booting) waits for


class WorkingArea(Protocol):
    config: AreaConfig
    rules: Rules  # what the area saves
    capture_method: str
    notice: Notice  # set by the porcelain before a call that may wait

    def check_connection(self) -> None:
        """Reach the area's files once (an ssh login), so that a bad setting fails now."""
        ...

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
        progress: Callable[[CaptureProgress], None] | None = None,
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


class Domain(Protocol):
    """A libvirt domain as the porcelain drives it (vml/areas/libvirt)."""

    name: str
    uri: str

    def exists(self) -> bool: ...

    def state(self) -> str: ...

    def info(self) -> object: ...

    def start(self) -> None: ...

    def stop(self, force: bool = False) -> None: ...

    def suspend(self) -> None: ...

    def resume(self) -> None: ...

    def delete(self) -> list[str]: ...

    def definition(self) -> bytes: ...

    def live_definition(self) -> bytes: ...

    def define(self, xml: bytes) -> None: ...


class VmArea(WorkingArea, Protocol):
    """A working area that is a virtual machine: its files are reached through `files` (an
    ssh area into its guest, None without SSH settings); the machine itself through `domain`."""

    domain: Domain
    files: WorkingArea | None

    def forwarded_port(self) -> int | None:
        """The host port the domain's definition forwards to the guest's sshd, if any."""
        ...

    def free_forwarded_port(self) -> int | None:
        """Move the forwarded port if another program took it; the new port, or None."""
        ...

    def wait_for_guest(self, seconds: float | None = None) -> None:
        """Until the guest answers on SSH."""
        ...

    def save_memory(self, store: ChunkStore, temp_dir: str) -> tuple[bytes, list[str]]:
        """Pause the running domain, store its memory and disks, resume it: the tree's root
        id and where each saved disk lives."""
        ...

    def resume(self, store: ChunkStore, memory_root: bytes, disks: list[str], definition: bytes | None, temp_dir: str,
               progress: Callable[[RestoreProgress], None] | None = None) -> RestoreProgress:
        """Put back the disks, the definition and the memory an entry saved."""
        ...

    def mount_shares(self, shares: list[Share]) -> list[str]:
        """Mount shared folders in the running guest; a line for each that could not be."""
        ...

    def flush_disk(self) -> None:
        """Have the running guest write what it caches to its disk."""
        ...

    def power_off_inside(self) -> None:
        """Have the running guest power itself off."""
        ...

    def unmount_share(self, share: Share) -> str | None:
        """Unmount a shared folder in the running guest; why not, if it could not be."""
        ...

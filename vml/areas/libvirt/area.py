"""The `libvirt` working area: a domain's lifecycle, its definition in entries, its memory with its disks; files over SSH."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import shutil
import tempfile
import uuid
from collections.abc import Callable

from vml import durable
from vml.areas.capture import CaptureProgress, CaptureResult, capture_files
from vml.areas.libvirt.definition import Share, Sizing, definitions_differ, forwarded_port, shared_folders, with_forwarded_port
from vml.areas.libvirt.driver import Domain
from vml.areas.libvirt.host import free_port, port_taken, seconds_from_environment
from vml.areas.restore import Restore, RestoreProgress
from vml.areas.statcache import StatCache
from vml.durable import write_atomically
from vml.entry import DOMAIN_FILE
from vml.errors import AreaError, CorruptObject, UsageError
from vml.objects.ids import ObjectId
from vml.objects.manifest import Listing
from vml.objects.store import ChunkStore
from vml.objects.walk import listing_loader

MEMORY_FILE = b"memory.save"  # in an entry's memory tree, beside disk0-NAME, disk1-NAME...


class LibvirtArea:
    """A domain whose guest's files are reached over SSH (`files`), if the area has SSH settings."""

    capture_method = "libvirt+ssh-find-tar"

    def __init__(self, config, rules, files):
        self.config = config
        self.rules = rules
        self.domain = Domain(config.settings["uri"], config.settings["domain"])
        self.files = files
        self._reached = False
        self.notice: Callable[[str], None] | None = None  # hears what a long wait waits for

    def has_files(self) -> bool:
        return True

    def check_connection(self) -> None:
        """A login to the guest's sshd, as given (the domain need not exist or run)."""
        if self.files is None:
            self._files()  # the error that says how to give the area SSH settings
        self.files.check_connection()

    def _files(self):
        """The guest's files over SSH, once its sshd answers (a guest that just started
        is waited for, up to VML_SSH_WAIT seconds, 300 by default)."""
        if self.files is None:
            raise UsageError(
                f"area {self.config.name}: vml reaches a guest's files over SSH and this area has no SSH settings; "
                f"'vml area remove {self.config.name}' and add it again with --ssh user@host[:port]"
            )
        if not self._reached:
            if self.config.settings.get("knownhosts"):
                # The guest's sshd is behind the domain's own forwarded port (the definition
                # says which, whatever a command cut short left in the settings): it answers
                # only while the domain runs, and some time after it starts.
                port = self.forwarded_port()
                if port is not None and port != self.files.target.port:
                    self.files.target = dataclasses.replace(self.files.target, port=port)
                self.wait_for_guest()
            else:
                self._check_defined()
            self._reached = True
        return self.files

    def forwarded_port(self) -> int | None:
        """The loopback port of the guest's sshd, for a VM vml made, as its definition says."""
        if not self.config.settings.get("knownhosts") or not self.domain.exists():
            return None
        return forwarded_port(self.domain.definition())

    def free_forwarded_port(self) -> int | None:
        """Before a start: if another program took the domain's forwarded SSH port since it
        was chosen, forward a free one instead (QEMU would fail to start). Returns the new
        port, None if it did not change. The guest's known host key moves with it."""
        if not self.config.settings.get("knownhosts") or not self.domain.exists() or self.domain.state() != "shut off":
            return None
        definition = self.domain.definition()
        port = forwarded_port(definition)
        if port is None or not port_taken(port):
            return None
        new_port = free_port()
        self.domain.define(with_forwarded_port(definition, new_port))
        self.files.target = dataclasses.replace(self.files.target, port=new_port)
        known_hosts = self.config.settings["knownhosts"]
        if os.path.exists(known_hosts):
            with open(known_hosts) as old:
                lines = old.read().replace(f"[127.0.0.1]:{port} ", f"[127.0.0.1]:{new_port} ")
            write_atomically(known_hosts, lines.encode())
        return new_port

    def _check_defined(self) -> None:
        if not self.domain.exists():
            raise AreaError(f"area {self.config.name}: domain {self.domain.name} does not exist at {self.domain.uri}; "
                            f"make it from an entry with 'vml checkout ENTRY --new-vm -a {self.config.name}'")

    def wait_for_guest(self, seconds: float | None = None) -> None:
        self._check_defined()
        state = self.domain.state()
        if state != "running":
            action = "resume" if state == "paused" else "start"
            raise AreaError(f"area {self.config.name}: domain {self.domain.name} is {state}; vml reaches the guest's "
                            f"files over SSH: {action} it with 'vml vm {action} -a {self.config.name}'")
        if seconds is None:
            seconds = seconds_from_environment("VML_SSH_WAIT", 300)
        self.files.wait_until_reachable(seconds, self._not_booting, self.notice)
        self._reached = True

    def _not_booting(self) -> str | None:
        state = self.domain.state()
        if state == "running":
            return None
        console = self.config.settings.get("console")
        tail = ""
        with contextlib.suppress(OSError, TypeError):
            with open(console, "rb") as log:
                log.seek(max(0, os.path.getsize(console) - 400))
                lines = log.read().decode(errors="replace").strip().splitlines()
            tail = f"; its console ({console}) ends: {lines[-1].strip()!r}" if lines else ""
        return f"domain {self.domain.name} is {state}, its guest will not answer on SSH{tail}"

    def close(self) -> None:
        if self.files is not None:
            self.files.close()

    def capture(self, store: ChunkStore, cache: StatCache, *, dry_run: bool = False,
                progress: Callable[[CaptureProgress], None] | None = None, expected=None) -> CaptureResult:
        return self._files().capture(store, cache, dry_run=dry_run, progress=progress, expected=expected)

    def restore(self, store: ChunkStore, load_listing: Callable[..., Listing], root_id: bytes, current_root_id: bytes | None,
                progress: Callable[[RestoreProgress], None] | None = None, entry_rules=None) -> RestoreProgress:
        return self._files().restore(store, load_listing, root_id, current_root_id, progress, entry_rules=entry_rules)

    def read_file(self, path: bytes, limit: int) -> bytes:
        return self._files().read_file(path, limit)

    def entry_files(self) -> dict[str, bytes]:
        files = {DOMAIN_FILE: self.domain.definition()}
        if self.files is not None and self.domain.state() == "running":
            files.update(self._files().entry_files())
        return files

    def apply_entry_files(self, files: dict[str, bytes]) -> list[str]:
        """Give the domain the memory size and vCPU count the entry had (a running domain
        takes them at its next start), and its guest its environment. The rest of a saved
        definition (disk paths, forwarded port, uuid) belongs to the host it was saved on."""
        notes = self._files().apply_entry_files(files) if self.files is not None else []
        wanted = files.get(DOMAIN_FILE)
        current = self.domain.definition()
        if wanted is None or not definitions_differ(wanted, current):
            return notes
        if shared_folders(wanted) != shared_folders(current):
            # Host folders are the host's, like its disks: said, not changed.
            entry_has = ", ".join(f"{host} at {guest}" for host, guest, _ro in shared_folders(wanted)) or "none"
            notes.append(f"the entry's domain shared {entry_has}; this one's shares stay as they are (vml share add/remove)")
        if Sizing.of(wanted) == Sizing.of(current):
            return notes
        refused = self.domain.foreign(wanted)
        if refused is not None:
            return notes + [f"domain {self.domain.name} was not redefined: {refused}"]
        try:
            self.domain.define(Sizing.of(wanted).apply(current))
        except AreaError as error:  # the files are back already: say so, leave the domain as it is
            return notes + [f"domain {self.domain.name} keeps its memory size and vCPUs: {error}"]
        if self.domain.state() != "shut off":
            notes.append(f"domain {self.domain.name} was redefined as the entry had it; the change applies at its next start")
        return notes

    # -- shared folders (vml/api/shares.py)

    def mount_shares(self, shares: list[Share]) -> list[str]:
        """Mount each shared folder at its guest path in the running guest, over SSH (one
        already mounted stays); a line for each that could not be."""
        notes = []
        for share in shares:
            if share.guest is None:
                continue
            where, tag = shlex.quote(share.guest), shlex.quote(share.tag)
            options = "trans=virtio,version=9p2000.L,msize=262144" + (",ro" if share.read_only else "")
            # The mount point vml makes is no change of the guest's: its parent keeps its mtime.
            status, errors = self._files().run_command(
                f"mountpoint -q {where} 2>/dev/null || {{ {_KEEPING_PARENT_MTIME.format(path=where, change=f'mkdir -p {where}')} "
                f"&& mount -t 9p -o {options} {tag} {where}; }}",
                f"mounting {share.guest}")
            if status != 0:
                notes.append(f"{share.host} was not mounted at {share.guest} in the guest: {_last_line(errors, status)}")
        return notes

    def flush_disk(self) -> None:
        """Have the guest write what it caches to its disk (`sync`): the disk is then whole
        even if the domain is powered off next."""
        status, errors = self._files().run_command("sync", "flushing the guest's disk")
        if status != 0:
            raise AreaError(f"domain {self.domain.name}: the guest could not flush its disk: {_last_line(errors, status)}")

    def power_off_inside(self) -> None:
        """Have the guest's own init power it off, a second after this returns: not every
        guest hears ACPI's power button (a minimal Debian has nothing that handles it)."""
        status, errors = self._files().run_command("nohup sh -c 'sleep 1; systemctl poweroff || poweroff' >/dev/null 2>&1 &",
                                                   "powering the guest off")
        if status != 0:
            raise AreaError(f"domain {self.domain.name}: the guest could not be told to power off: {_last_line(errors, status)}")

    def unmount_share(self, share: Share) -> str | None:
        """Unmount a shared folder in the running guest; why not, if it could not be."""
        if share.guest is None:
            return None
        where = shlex.quote(share.guest)
        # Unmounted, and the mount point gone if it is empty (vml made it: see mount_shares).
        status, errors = self._files().run_command(
            f"{{ ! mountpoint -q {where} 2>/dev/null || umount {where}; }} && "
            f"{{ ! [ -d {where} ] || [ -n \"$(ls -A {where})\" ] || {_KEEPING_PARENT_MTIME.format(path=where, change=f'rmdir {where}')}; }}",
            f"unmounting {share.guest}")
        return None if status == 0 else f"{share.guest} is still mounted in the guest: {_last_line(errors, status)}"

    # -- memory

    def save_memory(self, store: ChunkStore, temp_dir: str) -> tuple[ObjectId, list[str]]:
        """The domain's memory and the disks it is only valid with, as one tree in the store;
        the domain runs again afterwards. Returns the tree's id and the disks' paths in order."""
        disks = self.domain.disk_files()
        if self.domain.state() == "running" and shared_folders(self.domain.live_definition()) != shared_folders(self.domain.definition()):
            raise UsageError(f"domain {self.domain.name} runs with other shared folders than its definition has (one was added or "
                             f"removed since it started): its memory could not be restored; restart it first "
                             f"(vml vm stop -a {self.config.name} && vml vm start --wait -a {self.config.name})")
        missing = [path for path in disks if not os.path.isfile(path)]
        if missing:
            raise AreaError(f"domain {self.domain.name} uses disks vml cannot read here ({', '.join(missing)}): its memory would be useless without them")
        with tempfile.TemporaryDirectory(dir=temp_dir) as work:
            image = os.path.join(work, os.fsdecode(MEMORY_FILE))
            self.domain.save_memory(image)  # the domain stops here, its disks quiet
            try:
                files = [(MEMORY_FILE, os.fsencode(image))]
                files += [(b"disk%d-%s" % (n, os.fsencode(os.path.basename(path))), os.fsencode(path)) for n, path in enumerate(disks)]
                root_id, _totals = capture_files(files, store)
            finally:
                self._run_again(image, temp_dir)
        return root_id, disks

    def _run_again(self, image: str, temp_dir: str) -> None:
        try:
            self.domain.restore_memory(image)
        except AreaError as error:
            kept = os.path.join(temp_dir, f"memory-{self.domain.name}-{uuid.uuid4().hex[:8]}.save")
            durable.rename(image, kept)  # the only copy of the guest's running state: never deleted
            raise AreaError(f"{error}; its saved memory is kept in {kept} (virsh restore it)") from None

    def resume(self, store: ChunkStore, memory_root: bytes, disks: list[str], definition: bytes | None, temp_dir: str,
               progress=None) -> RestoreProgress:
        """Put back the disks, the definition and the memory an entry saved: the domain runs on
        from where it was. Only this domain's own disks are ever written."""
        if not self.domain.exists():
            raise AreaError(f"domain {self.domain.name} does not exist: --resume restores into the area's own domain")
        own = self.domain.disk_files()
        if sorted(disks) != sorted(own):
            raise UsageError(f"the entry's memory belongs with disks {', '.join(disks)}, domain {self.domain.name} has "
                             f"{', '.join(own) or 'none'}: vml writes only the domain's own disks")
        if definition is not None:
            refused = self.domain.foreign(definition)
            if refused is not None:
                raise UsageError(f"cannot resume into domain {self.domain.name}: {refused}")
        with tempfile.TemporaryDirectory(dir=temp_dir) as work:
            saved = os.path.join(work, "saved")
            counts = Restore(store, listing_loader(store), progress=progress).run(memory_root, os.fsencode(saved))
            names = os.listdir(saved)
            staged = []
            for number, path in enumerate(disks):  # beside each disk first, so the swap is renames only
                found = [name for name in names if name.startswith(f"disk{number}-")]
                if len(found) != 1:
                    raise CorruptObject(f"the entry's memory tree lacks disk {number} ({path})")
                staging = f"{path}.vml-resume-{uuid.uuid4().hex[:8]}"
                shutil.move(os.path.join(saved, found[0]), staging)
                staged.append((staging, path))
            try:
                if self.domain.state() not in ("shut off", "crashed"):
                    self.domain.stop(force=True)
                for staging, path in staged:
                    durable.fsync_file(staging)
                    durable.rename(staging, path)
            finally:
                for staging, _path in staged:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(staging)
            if definition is not None:  # the entry's memory size and vCPUs, which the image needs
                current = self.domain.definition()
                sized = Sizing.of(definition).apply(current)
                if sized != current:
                    self.domain.define(sized)
            self.domain.restore_memory(os.path.join(saved, os.fsdecode(MEMORY_FILE)))
        return counts


# `change` (making or removing `path`) with the mtime of the nearest existing directory above it kept.
_KEEPING_PARENT_MTIME = ('{{ a=$(dirname {path}); while [ ! -d "$a" ]; do a=$(dirname "$a"); done; t=$(stat -c %y "$a"); '
                         '{change} && touch -d "$t" "$a"; }}')


def _last_line(errors: str, status: int) -> str:
    return errors.splitlines()[-1] if errors else f"exit status {status}"

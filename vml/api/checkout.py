"""vml checkout and vml switch: an entry's files into an area (or a new directory), the
area's HEAD moved; --resume puts a saved domain back, --new-vm makes one first."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from dataclasses import dataclass, field

from vml.api._common import Progress, entry_info, opened_area, resolve_entry, scan_area
from vml.api._trust import check_entry
from vml.api.bases import check_base
from vml.api.shares import ShareResult, mount_shares
from vml.api.vm import make_vm
from vml.areas.kinds import as_vm, is_vm
from vml.areas.protocol import Notice, WorkingArea
from vml.areas.restore import Restore, RestoreProgress, remove_partial
from vml.areas.rules import Rules, literal_pattern
from vml.areas.statcache import StatCache
from vml.config import AreaConfig, shared_paths
from vml.entry import DOMAIN_FILE, ENTRY_FILE, EntryInfo, entry_files, entry_root
from vml.errors import AreaError, CorruptObject, LocalChanges, UsageError, VmlError
from vml.objects.diff import DELETED, diff_roots
from vml.objects.ids import ObjectId
from vml.objects.manifest import KIND_DIR
from vml.objects.walk import listing_loader, node_at
from vml.pathnames import quote_path
from vml.refs.branches import check_name, create_ref
from vml.refs.heads import AreaHead, advance, attach, branch_exists, check_branch_free, detach, read_head
from vml.refs.namespace import BRANCH_PREFIX
from vml.repo import Repository
from vml.scrub.report import restore_notice


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    entry: str
    target: str
    area: str | None
    branch: str | None
    counts: RestoreProgress
    not_reproduced: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    restore_notice: list[str] = field(default_factory=list)  # a public entry's: what it could not bring back, what to do


def checkout(repo: Repository, spec: str, *, area: str | None = None, to: str | None = None, force: bool = False,
             resume: bool = False, new_vm: bool = False, verify: bool = False, allowed: str | None = None, progress: Progress = None,
             notice: Notice = None) -> CheckoutResult:
    if to is None:
        repo.choose_area(area)  # which area, first: its error comes before any about the entry
    check_entry(repo, resolve_entry(repo, spec, area if to is None else None), verify, allowed)
    try:
        result = _checkout(repo, spec, area=area, to=to, force=force, resume=resume, new_vm=new_vm, progress=progress, notice=notice)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        if to is not None:
            raise VmlError(f"the disk of {os.path.abspath(to)} is full: nothing of the entry was left there") from None
        raise VmlError(f"the disk of area {repo.choose_area(area).name} is full: it holds part of entry {spec} and its HEAD "
                       f"has not moved; free some space and check out again") from None
    return dataclasses.replace(result, restore_notice=restore_notice(entry_info(repo, result.entry).scrub)) if result.entry else result


def _checkout(repo: Repository, spec: str, *, area: str | None, to: str | None, force: bool, resume: bool, new_vm: bool,
              progress: Progress, notice: Notice) -> CheckoutResult:
    if to is not None:
        if area is not None or resume or new_vm:
            raise UsageError("--to DIR restores files into a directory: it goes with none of -a AREA, --resume and --new-vm")
        return _checkout_to(repo, spec, to, progress)
    if resume and new_vm:
        raise UsageError("--resume puts a saved domain back, --new-vm makes a new one: give one of them")
    branch = spec if branch_exists(repo.git, spec) else None
    if resume:
        return _resume(repo, repo.choose_area(area), spec, branch, force=force, progress=progress)
    if new_vm:
        return _new_vm(repo, repo.choose_area(area), spec, branch, progress=progress, notice=notice)
    return checkout_area(repo, repo.choose_area(area), spec, branch, force=force, progress=progress, notice=notice)


def _new_vm(repo: Repository, config: AreaConfig, spec: str, branch: str | None, *, progress: Progress,
            notice: Notice = None) -> CheckoutResult:
    """Make the area's domain anew from an entry (see vm.make_vm), then put the entry's
    files and environment into its guest as any checkout does."""
    made = make_vm(repo, config, spec, branch)
    config = made.config
    # Through its own forwarded port vml reaches the new guest and nothing else: it holds
    # nothing unsaved. A guest reached with --ssh is whatever answers there: the usual check.
    fresh = bool(config.settings.get("knownhosts"))
    try:
        result = checkout_area(repo, config, spec, branch, force=fresh, progress=progress, notice=notice)
    except VmlError as error:
        failure = AreaError(f"{error} (domain {made.domain} was made and started; once that is mended, put the entry's "
                            f"files in with 'vml checkout {spec} -a {config.name}{'' if fresh else ' --force'}')")
        failure.exit_code = error.exit_code  # what went wrong decides, not that a domain was made first
        raise failure from None
    shared = []
    if shared_paths(config):
        with opened_area(repo, config, notice) as opened:
            shared = [_shared_line(done) for done in mount_shares(config, as_vm(opened))]
    return dataclasses.replace(result, warnings=[f"domain {made.domain} was made from base {made.base} and the entry, and started"]
                               + shared + made.notes + result.warnings)


def _shared_line(done: ShareResult) -> str:
    share = done.share
    if done.action == "mounted":
        return f"host folder {share.host} is shared at {share.guest} in the guest{' (read-only)' if share.read_only else ''}"
    return "; ".join(done.notes)


def _entry_rules(info: EntryInfo) -> Rules | None:
    """The rules an entry was saved under: a checkout deletes only what they covered (an
    entry of /home alone says nothing about /etc), and nothing a public entry left out."""
    if info.rules is None:
        return None
    # What a public entry left out is unknown, not absent: a checkout keeps the area's own
    # (its host keys, its authorized_keys, its user's Wi-Fi password).
    left_out = tuple(literal_pattern(path) for path in info.left_out())
    try:
        return Rules(tuple(info.rules[0]), tuple(info.rules[1]) + left_out)
    except UsageError as error:
        raise CorruptObject(f"damaged {ENTRY_FILE}: {error}") from None


def move_head(repo: Repository, config: AreaConfig, head: AreaHead, entry_id: str, spec: str, branch: str | None) -> None:
    message = f"checkout: moving to {spec}"
    if branch is not None:
        attach(repo.git, config.name, branch, message)
    elif head.branch is not None and head.entry == entry_id:
        pass  # restoring the area's own entry (e.g. to drop changes) keeps it on its branch
    else:
        detach(repo.git, config.name, entry_id, message)


def _resume(repo: Repository, config: AreaConfig, spec: str, branch: str | None, *, force: bool, progress: Progress) -> CheckoutResult:
    """Put a domain back exactly as an entry saved it with --memory: its disks, its
    definition and its memory; it runs again from where it was."""
    if not is_vm(config):
        raise UsageError(f"--resume restores a domain's memory: area {config.name} is a {config.kind} area, not libvirt")
    with opened_area(repo, config) as opened, repo.shared_lock(), repo.area_lock(config.name):
        working_area = as_vm(opened)
        head = read_head(repo.git, config.name)
        entry_id = resolve_entry(repo, BRANCH_PREFIX + branch if branch else spec, config.name)
        info = entry_info(repo, entry_id)
        if info.memory is None:
            raise UsageError(f"entry {entry_id[:12]} carries no memory (save one with 'vml commit --memory' on a running domain)")
        warnings = check_base(repo, info, config)
        domain = working_area.domain
        if domain.exists() and domain.state() not in ("shut off", "crashed") and not force:
            raise LocalChanges(f"domain {domain.name} is {domain.state()}: its current state would be lost; stop it (vml vm stop) or use --force", [])
        if branch is not None:
            check_branch_free(repo.git, config.name, branch)
        counts = working_area.resume(repo.store, ObjectId.parse(info.memory), info.memory_disks,
                                     repo.git.read_file(entry_id, DOMAIN_FILE), repo.temp_dir(), progress)
        move_head(repo, config, head, entry_id, spec, branch)
        # The guest's files are the saved disk's now: the stat cache no longer describes them.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(repo.stat_cache_path(config.name))
        head_after = read_head(repo.git, config.name)
        return CheckoutResult(entry_id, config.location, config.name, head_after.branch, counts, [],
                              warnings + [f"domain {domain.name} resumed from the entry's memory"])


def checkout_area(repo: Repository, config: AreaConfig, spec: str, branch: str | None, *, force: bool, progress: Progress,
                  fast_forward: str | None = None, notice: Notice = None) -> CheckoutResult:
    """Make the area's files those of entry `spec` and move its HEAD: onto `branch` if given
    (spec then names that branch), else detached at the entry. With `fast_forward` (an
    entry id), the area's own branch moves to that entry once its files are there."""
    with opened_area(repo, config, notice) as working_area, repo.shared_lock(), repo.area_lock(config.name):
        head = read_head(repo.git, config.name)
        if fast_forward is not None:
            entry_id = fast_forward
            if head.entry is not None and head.entry != entry_id and not repo.git.is_ancestor(head.entry, entry_id):
                raise UsageError(f"{head.branch} moved to {head.entry[:12]} meanwhile and is no longer behind {spec}; pull again")
        else:
            entry_id = resolve_entry(repo, BRANCH_PREFIX + branch if branch else spec, config.name)
        target_info = entry_info(repo, entry_id)
        warnings = check_base(repo, target_info, config)
        entry_rules = _entry_rules(target_info)
        target_root = entry_root(repo.git, entry_id)
        store = repo.store
        current = None
        load = listing_loader(store)
        if working_area.has_files():
            current, load = scan_area(repo, working_area)
            base_root = entry_root(repo.git, head.entry) if head.entry else None
            changed = list(diff_roots(load, base_root, current.root_id)) if current.root_id != base_root else []
            # Files deleted from the area come back, and the top's own mtime is rewritten:
            # neither loses anything, so only additions and changes stop a checkout.
            at_risk = [c for c in changed if c.status != DELETED and c.path != b"."]
            if at_risk and not force:
                paths = [quote_path(c.path) for c in at_risk]
                raise LocalChanges(
                    f"area {config.name} has changes not saved in an entry ({len(paths)}: {', '.join(paths[:5])}"
                    f"{', …' if len(paths) > 5 else ''}); commit them or use --force",
                    paths,
                )
        if branch is not None:
            check_branch_free(repo.git, config.name, branch)  # before the area's files change
        counts = working_area.restore(store, load, target_root, current.root_id if current else None, progress, entry_rules=entry_rules)
        warnings += working_area.apply_entry_files(entry_files(repo.git, entry_id))
        if fast_forward is not None:
            advance(repo.git, head, entry_id, f"pull: fast-forward to {spec}")
        else:
            move_head(repo, config, head, entry_id, spec, branch)
        # Capture again (hash only) to rebuild the stat cache and to see what was not reproduced.
        target_load = listing_loader(store, memo=4096)
        after, load_after = scan_area(repo, working_area, current.cache if current else StatCache(),
                                      expected=lambda path: node_at(target_load, target_root, path))
        after.cache.save(repo.stat_cache_path(config.name))
        not_reproduced = []
        if after.root_id != target_root:
            not_reproduced = [f"{quote_path(c.path)} ({c.status})" for c in diff_roots(load_after, target_root, after.root_id)
                              if entry_rules is None or c.status != "A" or entry_rules.admits(c.path, c.new is not None and c.new.kind == KIND_DIR)]
        head_after = read_head(repo.git, config.name)
        return CheckoutResult(entry_id, config.location, config.name, head_after.branch, counts, not_reproduced, warnings)


def write_entry(repo: Repository, working_area: WorkingArea, entry_id: str, progress: Progress) -> list[str]:
    """Make an area's files those of an entry, whatever they are now, and move no HEAD: a
    guest made for the entry elsewhere (vml deploy). Returns the warnings of its entry files."""
    current, load = scan_area(repo, working_area)
    working_area.restore(repo.store, load, entry_root(repo.git, entry_id), current.root_id, progress,
                         entry_rules=_entry_rules(entry_info(repo, entry_id)))
    return working_area.apply_entry_files(entry_files(repo.git, entry_id))


def switch(repo: Repository, branch: str, *, area: str | None = None, create: bool = False, force: bool = False, progress: Progress = None) -> CheckoutResult:
    """Put the area on `branch`: a new one at its current entry (create), or an existing one
    whose tip is checked out."""
    config = repo.choose_area(area)
    if not create:
        if not branch_exists(repo.git, branch):
            raise UsageError(f"no branch named {branch!r} (create it with 'vml switch -c {branch}')")
        return checkout_area(repo, config, branch, branch, force=force, progress=progress)
    with repo.shared_lock(), repo.area_lock(config.name):
        head = read_head(repo.git, config.name)
        if head.entry is not None:
            create_ref(repo.git, "branch", branch, head.entry, f"branch: created from {head.branch or head.entry[:12]}")
        else:
            check_name(repo.git, "branch", branch)
            if branch_exists(repo.git, branch):
                raise UsageError(f"a branch named {branch!r} exists already")
        attach(repo.git, config.name, branch, f"switch: moving to new branch {branch}")
        return CheckoutResult(head.entry or "", config.location, config.name, branch, RestoreProgress())


def _checkout_to(repo: Repository, spec: str, to: str, progress: Progress) -> CheckoutResult:
    target = os.path.abspath(to)
    if os.path.lexists(target) and (not os.path.isdir(target) or os.path.islink(target) or os.listdir(target)):
        raise UsageError(f"{target} exists and is not an empty directory")
    with repo.shared_lock():
        entry_id = resolve_entry(repo, spec)
        warnings = check_base(repo, entry_info(repo, entry_id), None)
        root_id = entry_root(repo.git, entry_id)
        restore = Restore(repo.store, listing_loader(repo.store), progress=progress)
        existed = os.path.lexists(target)
        try:
            counts = restore.run(root_id, os.fsencode(target))
        except BaseException:
            # The directory was empty or absent: what a failed restore left there is no one's.
            remove_partial(target, keep_top=existed)
            raise
    return CheckoutResult(entry_id, target, None, None, counts, [f"{quote_path(p)} ({why})" for p, why in counts.not_restored], warnings)



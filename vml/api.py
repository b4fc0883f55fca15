"""One function per vml command. Each returns data; none prints (see render.py)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Callable

import vml
from vml.areas.base import AreaConfig, check_area_name
from vml.areas.capture import CaptureResult
from vml.areas.directory import open_area
from vml.areas.restore import Restore, RestoreProgress
from vml.areas.statcache import StatCache
from vml.entry import ENTRY_FILE, EntryInfo, display_path
from vml.errors import AreaError, ConcurrentUpdate, CorruptObject, LocalChanges, UnknownEntry, UsageError, VmlError
from vml.objects.diff import diff_roots
from vml.objects.fsck import TreeChecker, check_packs
from vml.objects.gc import GcStats, collect
from vml.objects.ids import ObjectId
from vml.objects.manifest import KIND_DIR, KIND_FILE, KIND_NAMES, KIND_SYMLINK
from vml.objects.walk import listing_loader, root_node, walk_nodes
from vml.refs.git import Commit
from vml.refs.heads import AREA_PREFIX, BRANCH_PREFIX, advance, areas_on_branch, attach, branch_exists, check_branch_free, detach, read_head
from vml.repo import Repository

Progress = Callable[[object], None] | None


# -- init and areas


@dataclass(frozen=True, slots=True)
class InitResult:
    path: str
    bare: bool


def init(path: str = ".", *, bare: bool = False) -> InitResult:
    repo = Repository.init(path, bare=bare)
    return InitResult(repo.path, bare)


@dataclass(frozen=True, slots=True)
class AreaInfo:
    name: str
    kind: str
    location: str
    branch: str | None
    entry: str | None


def area_add(repo: Repository, name: str, *, directory: str, branch: str | None = None) -> AreaInfo:
    check_area_name(name)
    location = os.path.abspath(directory)
    if os.path.exists(location) and not os.path.isdir(location):
        raise AreaError(f"{location} is not a directory")
    if branch is None:
        branch = "main" if not areas_on_branch(repo.git, "main") else name
    config = AreaConfig(name, "dir", location)
    repo.add_area(config)
    attach(repo.git, name, branch, f"area add: {name}")
    return area_info(repo, config)


def area_info(repo: Repository, config: AreaConfig) -> AreaInfo:
    head = read_head(repo.git, config.name)
    return AreaInfo(config.name, config.kind, config.location, head.branch, head.entry)


def area_list(repo: Repository) -> list[AreaInfo]:
    return [area_info(repo, config) for config in repo.areas()]


# -- resolving what users type


def resolve_entry(repo: Repository, spec: str, area: str | None = None) -> str:
    """An entry id for `spec`; HEAD and @ mean the area's HEAD when an area can be chosen."""
    if spec == "@" or spec.startswith(("HEAD", "@{", "@~", "@^")):
        rest = spec[4:] if spec.startswith("HEAD") else spec[1:]
        try:
            config = repo.choose_area(area)
        except AreaError:
            config = None
        if config is not None:
            head = read_head(repo.git, config.name)
            if head.entry is None:
                raise UnknownEntry(f"area {config.name} has no entry yet")
            try:
                return repo.git.resolve(AREA_PREFIX + config.name + rest)
            except UnknownEntry:
                raise UnknownEntry(f"no entry matches {spec!r} in area {config.name}") from None
    return repo.git.resolve(spec)


def entry_info(repo: Repository, entry: str) -> EntryInfo:
    data = repo.git.read_file(entry, ENTRY_FILE)
    if data is None:
        raise UnknownEntry(f"{entry[:12]} is a git commit but not a vml entry (no {ENTRY_FILE})")
    return EntryInfo.from_toml(data)


def _root_of(repo: Repository, entry: str) -> ObjectId:
    return ObjectId.parse(entry_info(repo, entry).manifest)


# -- commit


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


def commit(repo: Repository, message: str, *, area: str | None = None, allow_empty: bool = False, progress: Progress = None) -> CommitResult:
    if not message.strip():
        raise UsageError("an entry needs a message: give -m MESSAGE")
    config = repo.choose_area(area)
    working_area = open_area(config)
    with repo.shared_lock(), repo.area_lock(config.name):
        head = read_head(repo.git, config.name)
        store = repo.store
        cache = StatCache.load(repo.stat_cache_path(config.name))
        added_before = store.bytes_added
        try:
            captured = working_area.capture(store, cache, dry_run=False, progress=progress)
            store.flush()  # packs, then their index: durable before any commit names them
        except BaseException:
            store.abandon()
            raise
        added = store.bytes_added - added_before
        skipped = [f"{display_path(path)} ({reason})" for path, reason in captured.skipped]
        unstable = [display_path(path) for path in captured.changed_while_reading]
        common = dict(
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
        if head.entry is not None and not allow_empty and _root_of(repo, head.entry) == captured.root_id:
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
        )
        parents = [head.entry] if head.entry else []
        entry = repo.git.create_commit({ENTRY_FILE: info.to_toml()}, message, parents)
        summary = message.strip().splitlines()[0]
        try:
            advance(repo.git, head, entry, f"commit{'' if parents else ' (initial)'}: {summary}")
        except ConcurrentUpdate as error:
            raise VmlError(f"entry {entry} was saved but not recorded on its branch ({error}); "
                           f"recover it with 'vml checkout {entry[:12]}'") from None
        captured.cache.save(repo.stat_cache_path(config.name))
        return CommitResult(entry=entry, created=True, **common)


# -- log and show


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: str
    parents: tuple[str, ...]
    message: str
    author: str
    email: str
    time: int
    offset: int
    decorations: list[str]
    area: str | None
    files: int | None
    logical_bytes: int | None
    added_bytes: int | None


def _decorations(repo: Repository) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for ref in repo.git.ref_names():
        target = repo.git.ref_target(ref)
        if target is None:
            continue
        if ref.startswith(AREA_PREFIX):
            area = ref[len(AREA_PREFIX) :]
            symbolic = repo.git.symbolic_target(ref)
            label = f"{area} -> {symbolic[len(BRANCH_PREFIX):]}" if symbolic else f"{area} (detached)"
            labels.setdefault(target, []).insert(0, label)
        elif ref.startswith(BRANCH_PREFIX):
            branch = ref[len(BRANCH_PREFIX) :]
            if not areas_on_branch(repo.git, branch):  # else "area -> branch" says it
                labels.setdefault(target, []).append(branch)
        elif ref.startswith("refs/tags/"):
            labels.setdefault(target, []).append("tag: " + ref[len("refs/tags/") :])
    return labels


def _all_starts(repo: Repository) -> list[str]:
    starts = []
    for ref in repo.git.ref_names():
        target = repo.git.ref_target(ref)
        if target is not None and target not in starts:
            starts.append(target)
    return starts


def log(repo: Repository, *, area: str | None = None, all_refs: bool = False, starts: list[str] | None = None, limit: int | None = None) -> list[LogEntry]:
    if starts is None:
        config = None
        if not all_refs:
            try:
                config = repo.choose_area(area)
            except AreaError:
                if area is not None:
                    raise
        if config is not None:
            entry = read_head(repo.git, config.name).entry
            starts = [entry] if entry else []
        else:
            starts = _all_starts(repo)
    labels = _decorations(repo)
    entries = []
    for commit_id in repo.git.walk(starts):
        if limit is not None and len(entries) >= limit:
            break
        entries.append(_log_entry(repo, repo.git.commit(commit_id), labels.get(commit_id, [])))
    return entries


def _log_entry(repo: Repository, raw: Commit, decorations: list[str]) -> LogEntry:
    try:
        info = entry_info(repo, raw.id)
    except (UnknownEntry, CorruptObject):
        info = None
    return LogEntry(
        id=raw.id,
        parents=raw.parents,
        message=raw.message,
        author=raw.author,
        email=raw.email,
        time=raw.time,
        offset=raw.offset,
        decorations=decorations,
        area=info.area if info else None,
        files=info.files if info else None,
        logical_bytes=info.logical_bytes if info else None,
        added_bytes=info.added_bytes if info else None,
    )


@dataclass(frozen=True, slots=True)
class ShowResult:
    entry: LogEntry
    info: EntryInfo
    stored_bytes: int  # compressed size of every distinct blob the entry needs
    directories: int
    symlinks: int
    other: int


def show(repo: Repository, spec: str, *, area: str | None = None) -> ShowResult:
    entry_id = resolve_entry(repo, spec, area)
    info = entry_info(repo, entry_id)
    store = repo.store
    load = listing_loader(store)
    root_id = ObjectId.parse(info.manifest)
    blobs = {root_id}
    counts = {KIND_DIR: 0, KIND_SYMLINK: 0, KIND_FILE: 0}
    other = 0
    for _path, node in walk_nodes(load, root_id):
        if node.kind in counts:
            counts[node.kind] += 1
        else:
            other += 1
        if node.kind == KIND_DIR:
            blobs.add(node.tree)
        blobs.update(node.chunk_ids())
    stored = sum(store.stored_size(blob) for blob in blobs if blob in store)
    raw = repo.git.commit(entry_id)
    return ShowResult(_log_entry(repo, raw, _decorations(repo).get(entry_id, [])), info, stored, counts[KIND_DIR], counts[KIND_SYMLINK], other)


# -- checkout


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    entry: str
    target: str
    area: str | None
    branch: str | None
    counts: RestoreProgress
    not_reproduced: list[str] = field(default_factory=list)


def _scan_area(repo: Repository, working_area, cache: StatCache | None = None) -> tuple[CaptureResult, Callable]:
    """The area's current files, hashed but not stored: the capture and a loader for its listings."""
    if cache is None:
        cache = StatCache.load(repo.stat_cache_path(working_area.config.name))
    current = working_area.capture(repo.store, cache, dry_run=True)
    return current, listing_loader(repo.store, current.listings)


def checkout(repo: Repository, spec: str, *, area: str | None = None, to: str | None = None, force: bool = False, progress: Progress = None) -> CheckoutResult:
    if to is not None:
        if area is not None:
            raise UsageError("give either -a AREA or --to DIR, not both")
        return _checkout_to(repo, spec, to, progress)
    config = repo.choose_area(area)
    working_area = open_area(config)
    with repo.shared_lock(), repo.area_lock(config.name):
        entry_id = resolve_entry(repo, spec, config.name)
        target_root = _root_of(repo, entry_id)
        head = read_head(repo.git, config.name)
        store = repo.store
        current = None
        load = listing_loader(store)
        if os.path.isdir(config.location):
            current, load = _scan_area(repo, working_area)
            base_root = _root_of(repo, head.entry) if head.entry else None
            changed = list(diff_roots(load, base_root, current.root_id)) if current.root_id != base_root else []
            if changed and not force:
                paths = [display_path(c.path) for c in changed]
                raise LocalChanges(
                    f"area {config.name} has changes not saved in an entry ({len(paths)}: {', '.join(paths[:5])}"
                    f"{', …' if len(paths) > 5 else ''}); commit them or use --force",
                    paths,
                )
        branch = spec if branch_exists(repo.git, spec) else None
        if branch is not None:
            check_branch_free(repo.git, config.name, branch)  # before the area's files change
        counts = working_area.restore(store, load, target_root, current.root_id if current else None, progress)
        message = f"checkout: moving to {spec}"
        if branch is not None:
            attach(repo.git, config.name, branch, message)
        elif head.branch is not None and head.entry == entry_id:
            pass  # restoring the area's own entry (e.g. to drop changes) keeps it on its branch
        else:
            detach(repo.git, config.name, entry_id, message)
        # Capture again (hash only) to rebuild the stat cache and to see what was not reproduced.
        after, load_after = _scan_area(repo, working_area, current.cache if current else StatCache())
        after.cache.save(repo.stat_cache_path(config.name))
        not_reproduced = []
        if after.root_id != target_root:
            not_reproduced = [f"{display_path(c.path)} ({c.status})" for c in diff_roots(load_after, target_root, after.root_id)]
        head_after = read_head(repo.git, config.name)
        return CheckoutResult(entry_id, config.location, config.name, head_after.branch, counts, not_reproduced)


def _checkout_to(repo: Repository, spec: str, to: str, progress: Progress) -> CheckoutResult:
    target = os.path.abspath(to)
    if os.path.lexists(target) and (not os.path.isdir(target) or os.path.islink(target) or os.listdir(target)):
        raise UsageError(f"{target} exists and is not an empty directory")
    with repo.shared_lock():
        entry_id = resolve_entry(repo, spec)
        root_id = _root_of(repo, entry_id)
        restore = Restore(repo.store, listing_loader(repo.store), progress=progress)
        counts = restore.run(root_id, os.fsencode(target))
    return CheckoutResult(entry_id, target, None, None, counts, [f"{display_path(p)} ({why})" for p, why in counts.not_restored])


# -- diff


@dataclass(frozen=True, slots=True)
class DiffEntry:
    path: str
    status: str  # A added, D deleted, M content or type changed, T metadata only
    old: dict | None
    new: dict | None


def _node_summary(node) -> dict | None:
    if node is None:
        return None
    return {
        "kind": KIND_NAMES[node.kind],
        "mode": f"{node.mode:04o}",
        "uid": node.uid,
        "gid": node.gid,
        "size": node.size,
        "mtime_ns": node.mtime_ns,
        "xattrs": sorted(name.decode("utf-8", "backslashreplace") for name, _value in node.xattrs),
    }


def diff(repo: Repository, old: str, new: str | None = None, *, area: str | None = None) -> list[DiffEntry]:
    """Changes from entry `old` to entry `new`, or to the area's current files."""
    store = repo.store
    old_root = _root_of(repo, resolve_entry(repo, old, area))
    if new is not None:
        new_root = _root_of(repo, resolve_entry(repo, new, area))
        load = listing_loader(store)
    else:
        with repo.shared_lock():
            current, load = _scan_area(repo, open_area(repo.choose_area(area)))
        new_root = current.root_id
    return [
        DiffEntry(display_path(c.path), c.status, _node_summary(c.old), _node_summary(c.new))
        for c in diff_roots(load, old_root, new_root)
    ]


# -- fsck and gc


def reachable_entries(repo: Repository) -> list[str]:
    """Every entry reachable from a ref or from any reflog line."""
    starts = _all_starts(repo)
    for name in repo.git.reflog_names():
        for line in repo.git.reflog(name):
            for commit_id in (line.old, line.new):
                if commit_id != "0" * 40 and commit_id not in starts and repo.git.has_object(commit_id):
                    starts.append(commit_id)
    return list(repo.git.walk(starts))


@dataclass(frozen=True, slots=True)
class DamagedEntry:
    entry: str
    message: str
    paths: list[tuple[str, str]]  # (path, reason)


@dataclass(frozen=True, slots=True)
class FsckReport:
    entries: int
    packs: int
    blobs: int
    bytes: int
    damaged: list[DamagedEntry]
    problems: list[str]
    warnings: list[str]  # defects that lost nothing (a damaged index whose packs were read directly)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems


def fsck(repo: Repository, *, progress: Callable[[int, int], None] | None = None) -> FsckReport:
    with repo.shared_lock():
        store = repo.store
        packs = check_packs(store, progress)
        checker = TreeChecker(store, listing_loader(store), packs.damaged_blobs)
        damaged = []
        problems = list(packs.problems)
        entries = reachable_entries(repo)
        for entry_id in entries:
            message = (repo.git.commit(entry_id).message.strip().splitlines() or [""])[0]
            try:
                root_id = _root_of(repo, entry_id)
            except (UnknownEntry, CorruptObject, UsageError) as error:
                damaged.append(DamagedEntry(entry_id, message, [("/", str(error))]))
                continue
            found = checker.check_root(root_id)
            if found:
                damaged.append(DamagedEntry(entry_id, message, [(display_path(p), why) for p, why in found]))
        return FsckReport(len(entries), packs.packs, packs.blobs, packs.bytes, damaged, problems, packs.warnings)


def gc(repo: Repository, *, progress: Callable[[int, int], None] | None = None) -> GcStats:
    with repo.exclusive_lock():
        store = repo.store
        load = listing_loader(store)
        live: set[bytes] = set()
        seen: set[bytes] = set()
        for entry_id in reachable_entries(repo):
            root_id = _root_of(repo, entry_id)
            live.add(root_id)
            try:
                for _path, node in walk_nodes(load, root_id, seen=seen):
                    if node.kind == KIND_DIR:
                        live.add(node.tree)
                    elif node.chunks:
                        live.update(node.chunk_ids())
                live.add(root_node(load, root_id).tree)
            except CorruptObject as error:
                raise VmlError(f"entry {entry_id[:12]} is damaged ({error}); gc stops so nothing it may need is removed — run 'vml fsck'") from None
        stats = collect(store, live, progress)
        repo.close()
        return stats

"""vml log, vml show and ENTRY:PATH: history newest first, one entry in full, one file of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from vml.api._common import entry_info, resolve_entry
from vml.entry import EntryInfo, entry_root
from vml.errors import CorruptObject, UnknownArea, UnknownEntry, UsageError
from vml.history import ref_tips, touching
from vml.objects.ids import ObjectId
from vml.objects.manifest import KIND_DIR, KIND_FILE, KIND_NAMES, Listing
from vml.objects.walk import listing_counts, listing_loader, node_at, read_content, root_node, tree_counts, walk_nodes
from vml.pathnames import parse_paths
from vml.refs.branches import decorations
from vml.refs.git import Commit
from vml.refs.heads import read_head
from vml.repo import Repository


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


def log(
    repo: Repository,
    *,
    area: str | None = None,
    all_refs: bool = False,
    starts: list[str] | None = None,
    limit: int | None = None,
    paths: tuple[str, ...] | list[str] = (),
) -> list[LogEntry]:
    """Entries newest first, from the area's HEAD (or `starts`, or every ref). With `paths`,
    only entries in which one of them changed against every parent, with parents rewritten
    to the nearest such entries (git's history simplification)."""
    if starts is None:
        config = None
        if not all_refs:
            try:
                config = repo.choose_area(area)
            except UnknownArea:
                if area is not None:
                    raise
        if config is not None:
            entry = read_head(repo.git, config.name).entry
            starts = [entry] if entry else []
        else:
            starts = ref_tips(repo.git)
    labels = decorations(repo.git)
    commits: Iterable[str] = repo.git.walk(starts)
    parents_of: dict[str, tuple[str, ...]] = {}
    if paths:
        commits, parents_of = touching(repo.git, repo.store, list(commits), parse_paths(paths))
    entries: list[LogEntry] = []
    for commit_id in commits:
        if limit is not None and len(entries) >= limit:
            break
        found = log_entry(repo, repo.git.commit(commit_id), labels.get(commit_id, []))
        if commit_id in parents_of:
            found = dataclasses.replace(found, parents=parents_of[commit_id])
        entries.append(found)
    return entries


def log_entry(repo: Repository, raw: Commit, decorations: list[str]) -> LogEntry:
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
    presets: list[PresetShown] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PresetShown:
    """A rule preset an entry was saved with, and what it brought in."""

    preset: str  # NAME or NAME=PATH
    what: str  # "the CVMFS cache"
    path: str
    files: int | None  # the regular files the entry holds below the path (None: the path is not in it)


def show_file(repo: Repository, spec: str, *, area: str | None = None) -> bytes:
    """ENTRY:PATH, as git shows it: a file of the entry's git tree (entry.toml, env/variables,
    vm/domain.xml...) or, failing that, a regular file of its saved file tree."""
    entry_spec, _, path = spec.partition(":")
    entry_id = resolve_entry(repo, entry_spec or "HEAD", area)
    path = path.strip("/")
    if path and ".." not in path.split("/"):
        data = repo.git.read_file(entry_id, path)
        if data is not None:
            return data
    wanted = parse_paths([path])[0]
    node = node_at(listing_loader(repo.store), entry_root(repo.git, entry_id), wanted) if wanted else None
    if node is None:
        raise UsageError(f"{path or '(nothing)'} is not in entry {entry_id[:12]}")
    if node.kind != KIND_FILE:
        raise UsageError(f"{path} is a {KIND_NAMES[node.kind]} in entry {entry_id[:12]}, not a file")
    return read_content(repo.store, node)


def show(repo: Repository, spec: str, *, area: str | None = None) -> ShowResult:
    entry_id = resolve_entry(repo, spec, area)
    info = entry_info(repo, entry_id)
    store = repo.store
    load = listing_loader(store)
    root_id = ObjectId.parse(info.manifest)
    _files, directories, symlinks, other = tree_counts(load, root_id)
    top = root_node(load, root_id).tree
    blobs: set[bytes] = {root_id} | ({top} if top is not None else set())
    for _path, node in walk_nodes(load, root_id, seen=set()):  # each distinct listing once
        if node.kind == KIND_DIR and node.tree is not None:
            blobs.add(node.tree)
        blobs.update(node.chunk_ids())
    stored = sum(store.stored_size(blob) for blob in blobs if blob in store)
    raw = repo.git.commit(entry_id)
    return ShowResult(log_entry(repo, raw, decorations(repo.git).get(entry_id, [])), info, stored, directories, symlinks, other,
                      [_preset_shown(load, root_id, text) for text in info.presets])


def _preset_shown(load: Callable[..., Listing], root_id: ObjectId, text: str) -> PresetShown:
    from vml.areas.presets import parse_preset

    try:
        used = parse_preset(text)
    except UsageError:  # a preset of a later vml
        return PresetShown(text, text, "", None)
    node = node_at(load, root_id, used.path.lstrip("/").encode())  # (a preset's path is below the area's top)
    files = listing_counts(load, node.tree)[0] if node is not None and node.kind == KIND_DIR and node.tree is not None else None
    return PresetShown(text, used.what, used.path, files)

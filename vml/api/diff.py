"""vml diff and vml status: what changed between entries, or since an area's entry, file by
file, with the domain definition and the environment after the files."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vml.api._common import opened_area, resolve_entry, scan_area
from vml.areas.fsmeta import flag_letters
from vml.entry import DOMAIN_FILE, entry_files, entry_root, read_entry
from vml.environment import COMPARED as ENV_COMPARED
from vml.environment import diff_environment
from vml.objects.diff import PROPERTIES, Change, diff_paths, diff_roots
from vml.objects.manifest import KIND_FILE, KIND_NAMES, Listing, Node
from vml.objects.store import ChunkStore
from vml.objects.walk import listing_loader, read_content
from vml.pathnames import lossless_text, parse_paths, path_bytes, quote_path
from vml.refs.heads import read_head
from vml.repo import Repository

if TYPE_CHECKING:  # (areas load only for a diff that reads one: two entries need none)
    from vml.areas.protocol import Notice, WorkingArea

PATCH_LIMIT = 8 * 1024 * 1024  # bytes per side beyond which no text diff is attempted


@dataclass(frozen=True, slots=True)
class DiffEntry:
    path: str  # the path's bytes as text, losslessly: bytes that are not UTF-8 are lone surrogates (os.fsencode undoes it)
    status: str  # git's A added, D deleted, M content changed, T type changed; P properties only (vml's own)
    changes: list[str]  # what changed: content, type, links, mode, owner, mtime, xattrs, flags
    old: dict[str, object] | None
    new: dict[str, object] | None
    patch: str | None = None  # a unified diff of the content, when asked for
    path_bytes: str | None = None  # base64 of the path when it is not valid UTF-8 (then `path` alone is not portable)


def _node_summary(node: Node | None) -> dict[str, object] | None:
    if node is None:
        return None
    return {
        "kind": KIND_NAMES[node.kind],
        "mode": f"{node.mode:04o}",
        "uid": node.uid,
        "gid": node.gid,
        "user": node.user,
        "group": node.group,
        "size": node.size,
        "mtime_ns": node.mtime_ns,
        "xattrs": sorted(lossless_text(name) for name, _value in node.xattrs),
        "target": lossless_text(node.target) if node.target is not None else None,
        "flags": flag_letters(node.flags),
    }


def diff(
    repo: Repository,
    old: str,
    new: str | None = None,
    *,
    area: str | None = None,
    paths: tuple[str, ...] | list[str] = (),
    patch: bool | None = False,
) -> list[DiffEntry]:
    """Changes from entry `old` to entry `new`, or to the area's current files. `patch`:
    True adds a unified diff to every changed regular file; None does so only when one
    path was given and it is a file."""
    store = repo.store
    wanted = parse_paths(paths) or [b""]
    old_id = resolve_entry(repo, old, area)
    old_root = entry_root(repo.git, old_id)
    old_files = entry_files(repo.git, old_id) if not paths else {}
    if new is not None:
        new_id = resolve_entry(repo, new, area)
        result = _diff_result(store, listing_loader(store), old_root, entry_root(repo.git, new_id), wanted, None, patch)
        return result + (env_diff(old_files, entry_files(repo.git, new_id)) if not paths else [])
    with opened_area(repo, repo.choose_area(area)) as working_area:
        with repo.shared_lock():
            current, load = scan_area(repo, working_area)
        result = _diff_result(store, load, old_root, current.root_id, wanted, working_area, patch)
        return result + (env_diff(old_files, working_area.entry_files()) if not paths else [])


def _diff_result(store: ChunkStore, load: Callable[..., Listing], old_root: bytes | None, new_root: bytes | None, wanted: list[bytes],
                 working_area: WorkingArea | None, patch: bool | None) -> list[DiffEntry]:
    changes = list(diff_paths(load, old_root, new_root, wanted))
    if patch is None:  # a single file asked for by name: show its content
        patch = len(wanted) == 1 and any(c.path == wanted[0] and KIND_FILE in (_kind(c.old), _kind(c.new)) for c in changes)
    return [diff_entry(c, store, working_area if patch else None, patch) for c in changes]


def _kind(node: Node | None) -> int | None:
    return node.kind if node is not None else None


def diff_entry(change: Change, store: ChunkStore | None, working_area: WorkingArea | None, patch: bool) -> DiffEntry:
    text = _patch(change, store, working_area) if patch else None
    return DiffEntry(lossless_text(change.path), change.status, list(change.parts), _node_summary(change.old),
                     _node_summary(change.new), text, path_bytes(change.path))


def _patch(change: Change, store: ChunkStore | None, working_area: WorkingArea | None) -> str | None:
    """A unified diff of a regular file's content, as git prints it; None if no file content changed."""
    assert store is not None  # a patch is asked for with the store it reads
    old_file = change.old if change.old is not None and change.old.kind == KIND_FILE else None
    new_file = change.new if change.new is not None and change.new.kind == KIND_FILE else None
    if change.status == PROPERTIES or (old_file is None and new_file is None):
        return None
    if max(old_file.size if old_file else 0, new_file.size if new_file else 0) > PATCH_LIMIT:
        return f"{quote_path(change.path)}: larger than {PATCH_LIMIT // (1024 * 1024)} MiB, no text diff\n"
    old_data = read_content(store, old_file) if old_file else b""
    if new_file is None:
        new_data = b""
    elif working_area is not None:
        new_data = working_area.read_file(change.path, PATCH_LIMIT + 1)
    else:
        new_data = read_content(store, new_file)
    try:
        if b"\0" in old_data or b"\0" in new_data:
            raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL byte")
        old_lines = old_data.decode().splitlines(keepends=True)
        new_lines = new_data.decode().splitlines(keepends=True)
    except UnicodeDecodeError:
        return f"Binary files {quote_path(b'a/' + change.path)} and {quote_path(b'b/' + change.path)} differ\n"
    lines = []
    from_name = quote_path(b"a/" + change.path) if old_file else "/dev/null"  # as git names them, quoted as a whole
    to_name = quote_path(b"b/" + change.path) if new_file else "/dev/null"
    for line in difflib.unified_diff(old_lines, new_lines, from_name, to_name):
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)


def env_diff(old: dict[str, bytes], new: dict[str, bytes]) -> list[DiffEntry]:
    """Changes of the domain definition and the environment, as diff entries after the files'."""
    changes = []
    if DOMAIN_FILE in new and (DOMAIN_FILE not in old or _definitions_differ(old[DOMAIN_FILE], new[DOMAIN_FILE])):
        changes.append(DiffEntry(DOMAIN_FILE, "M" if DOMAIN_FILE in old else "A", ["definition"], None, None))
    old_env = {path: data for path, data in old.items() if path in ENV_COMPARED}
    new_env = {path: data for path, data in new.items() if path in ENV_COMPARED}
    for change in diff_environment(old_env, new_env):
        changes.append(DiffEntry(change.path, change.status, ["environment"],
                                 None if change.old is None else {"value": change.old},
                                 None if change.new is None else {"value": change.new}))
    return changes


def _definitions_differ(old: bytes, new: bytes) -> bool:
    from vml.areas.kinds import definitions_differ  # (the areas load only for a VM's entries)

    return definitions_differ(old, new)


@dataclass(frozen=True, slots=True)
class StatusResult:
    area: str
    kind: str
    location: str
    branch: str | None
    entry: str | None
    summary: str | None  # first line of the entry's message
    clean: bool
    changes: list[DiffEntry]
    vm: str | None = None  # a libvirt area's domain state: running, paused, shut off...


def status(repo: Repository, *, area: str | None = None, notice: Notice = None) -> StatusResult:
    """The area's HEAD and what changed since its entry (files are read only where the stat cache can't vouch)."""
    from vml.areas.kinds import as_vm, is_vm

    config = repo.choose_area(area)
    with opened_area(repo, config, notice) as working_area, repo.shared_lock():
        head = read_head(repo.git, config.name)
        current, load = scan_area(repo, working_area)
        base_root = entry_root(repo.git, head.entry) if head.entry else None
        left_out = set(read_entry(repo.git, head.entry).left_out()) if head.entry else set()
        changes = [diff_entry(c, None, None, False) for c in diff_roots(load, base_root, current.root_id)
                   if not (c.status == "A" and c.path in left_out)]  # what a public entry left out is the area's own
        vm = as_vm(working_area).domain.state() if is_vm(config) else None
        if head.entry is not None:
            changes += env_diff(entry_files(repo.git, head.entry), working_area.entry_files())
    summary = repo.git.commit(head.entry).summary if head.entry else None
    return StatusResult(config.name, config.kind, config.location, head.branch, head.entry, summary, not changes, changes, vm)

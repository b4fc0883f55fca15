"""Walks that need both the history (git commits) and the entries' file trees: what every
ref and reflog line reaches, the blobs they need (gc's mark phase), and the entries in
which given paths changed (`log -- PATH`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from vml.entry import entry_root, read_entry
from vml.errors import CorruptObject, VmlError
from vml.objects.ids import ObjectId
from vml.objects.manifest import KIND_DIR
from vml.objects.store import ChunkStore
from vml.objects.walk import listing_loader, missing_blobs, node_at, root_node, walk_nodes
from vml.refs.git import GitDag
from vml.refs.reflogs import protected_entry


def ref_tips(git: GitDag) -> list[str]:
    """The entries refs name, each once."""
    starts = []
    for ref in git.ref_names():
        target = git.ref_target(ref)
        if target is not None and target not in starts:
            starts.append(target)
    return starts


def touching(git: GitDag, store: ChunkStore, commits: list[str], paths: list[bytes]) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """The commits in which a path changed, and for each its nearest such ancestors."""
    load = listing_loader(store, memo=4096)
    states: dict[str, tuple] = {}

    def state(commit_id: str) -> tuple:
        if commit_id not in states:
            root_id = entry_root(git, commit_id)
            states[commit_id] = tuple(node_at(load, root_id, path) for path in paths)
        return states[commit_id]

    shown: set[str] = set()
    nearest: dict[str, tuple[str, ...]] = {}  # for every commit: its nearest shown ancestors
    parents_of: dict[str, tuple[str, ...]] = {}
    for commit_id in reversed(commits):  # parents first
        parents = [p for p in git.commit(commit_id).parents if git.has_object(p)]
        mine = state(commit_id)
        if parents:
            touched = all(state(p) != mine for p in parents)
        else:
            touched = any(node is not None for node in mine)
        stand_ins: list[str] = []
        for parent in parents:
            for ancestor in ((parent,) if parent in shown else nearest.get(parent, ())):
                if ancestor not in stand_ins:
                    stand_ins.append(ancestor)
        if touched:
            shown.add(commit_id)
            parents_of[commit_id] = tuple(stand_ins)
        else:
            nearest[commit_id] = tuple(stand_ins)
    return [c for c in commits if c in shown], parents_of


def reachable_entries(git: GitDag, *, reflogs: bool = True) -> list[str]:
    """Every entry reachable from a ref, and (with `reflogs`) from the entry each reflog line protects."""
    starts = ref_tips(git)
    for name in git.reflog_names() if reflogs else ():
        for line in git.reflog(name):
            commit_id = protected_entry(line)
            if commit_id is not None and commit_id not in starts and git.has_object(commit_id):
                starts.append(commit_id)
    return list(git.walk(starts))


def live_blobs(git: GitDag, store: ChunkStore, entries: list[str]) -> set[bytes]:
    """Every chunk and listing the entries need: what gc keeps. A store that reads from a
    source (a bucket) first brings the listings it lacks, a level of directories at a time."""
    roots: dict[str, list[ObjectId]] = {}
    for entry_id in entries:
        with _stops_gc(f"entry {entry_id[:12]} is damaged"):
            roots[entry_id] = read_entry(git, entry_id).manifests()
    if store.source is not None:
        with _stops_gc("the entries' listings cannot be read"):  # (a listing kept alone may lack its subtree: all are walked)
            missing_blobs(store.get_many, [root for each in roots.values() for root in each], lambda _blob_id: False)
    load = listing_loader(store)
    live: set[bytes] = set()
    seen: set[bytes] = set()
    for entry_id, entry_roots in roots.items():
        with _stops_gc(f"entry {entry_id[:12]} is damaged"):
            for root_id in entry_roots:
                live.add(root_id)
                live.add(root_node(load, root_id).tree)
                for _path, node in walk_nodes(load, root_id, seen=seen):
                    if node.kind == KIND_DIR:
                        live.add(node.tree)
                    elif node.chunks:
                        live.update(node.chunk_ids())
    return live


@contextlib.contextmanager
def _stops_gc(what: str) -> Iterator[None]:
    """Damage found while marking: gc stops before it removes anything."""
    try:
        yield
    except CorruptObject as error:
        raise VmlError(f"{what} ({error}); gc stops so nothing it may need is removed — run 'vml fsck'") from None

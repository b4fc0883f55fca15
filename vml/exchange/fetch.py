"""Receiving entries from a remote: find the commits this repository lacks, then the blobs
it lacks, and store them in the order that keeps it valid at every step: blobs (verified),
git objects, refs. Nothing is written before it has been checked against its id."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from vml.entry import ENTRY_FILE, EntryInfo, same_base_image
from vml.errors import CorruptObject
from vml.exchange import TransferProgress
from vml.exchange.remote import RemoteBlob, RemoteRepository
from vml.objects.ids import ObjectId
from vml.objects.pack import TYPE_TREE, open_blob
from vml.objects.store import ChunkStore
from vml.objects.walk import missing_blobs
from vml.refs.bases import BaseName
from vml.refs.git import GitDag
from vml.refs.namespace import BASE_PREFIX, BRANCH_PREFIX, PUBLIC_PREFIX, TAG_PREFIX, short_name, tracking_ref
from vml.refs.updates import FAST_FORWARD, NEW, REJECTED, RefChange, classify
from vml.transport.base import MissingFile

READ_BATCH = 8 * 1024 * 1024  # bytes of blobs asked for in one round of requests


@dataclass(frozen=True, slots=True)
class ReceiveStats:
    blobs: int
    bytes: int  # stored (compressed) bytes of the blobs received


@dataclass(frozen=True, slots=True)
class GitObject:
    id: str
    type_name: str
    content: bytes


def parse_commit(content: bytes) -> tuple[str, list[str]]:
    """(tree id, parent ids) from a commit's header lines."""
    tree, parents = None, []
    for line in content.split(b"\n\n", 1)[0].split(b"\n"):
        key, _, value = line.partition(b" ")
        if key == b"tree":
            tree = value.decode("ascii")
        elif key == b"parent":
            parents.append(value.decode("ascii"))
    if tree is None:
        raise CorruptObject("a received commit names no tree")
    return tree, parents


def parse_tree(content: bytes) -> list[tuple[bool, str, str]]:
    """(is a tree, name, id) of each item of a git tree object."""
    items, position = [], 0
    while position < len(content):
        space = content.index(b" ", position)
        nul = content.index(b"\0", space)
        mode = content[position:space]
        raw_id = content[nul + 1 : nul + 21]
        if len(raw_id) != 20:
            raise CorruptObject("a received git tree is truncated")
        items.append((mode == b"40000", content[space + 1 : nul].decode("utf-8", "replace"), raw_id.hex()))
        position = nul + 21
    return items


def remote_entry_info(remote: RemoteRepository, commit_id: str) -> EntryInfo:
    """The entry.toml of one commit on the remote (to check a base's digest, say)."""
    type_name, content = remote.read_object(commit_id)
    if type_name != "commit":
        raise CorruptObject(f"{commit_id[:12]} on {remote.location} is a {type_name}, not an entry")
    type_name, tree = remote.read_object(parse_commit(content)[0])
    entry_file = next((item_id for is_tree, name, item_id in parse_tree(tree) if not is_tree and name == ENTRY_FILE), None)
    if type_name != "tree" or entry_file is None:
        raise CorruptObject(f"{commit_id[:12]} on {remote.location} is not a vml entry (no {ENTRY_FILE})")
    return EntryInfo.from_toml(remote.read_object(entry_file)[1])


def read_history(git: GitDag, remote: RemoteRepository, tips: list[str]) -> tuple[list[GitObject], dict[str, list[ObjectId]]]:
    """The git objects of every commit reachable from `tips` that this repository lacks
    (older commits first, each after its trees), and the manifest root of each new commit."""
    objects: list[GitObject] = []
    roots: dict[str, list[ObjectId]] = {}
    order: list[str] = []
    commits: dict[str, GitObject] = {}
    stack = [tip for tip in tips if not git.has_object(tip)]
    while stack:
        commit_id = stack.pop()
        if commit_id in commits or git.has_object(commit_id):
            continue
        type_name, content = remote.read_object(commit_id)
        if type_name != "commit":
            raise CorruptObject(f"{commit_id[:12]} on {remote.location} is a {type_name}, not an entry")
        commits[commit_id] = GitObject(commit_id, type_name, content)
        order.append(commit_id)
        stack.extend(parse_commit(content)[1])
    for commit_id in reversed(order):
        tree_objects = _tree_objects(remote, parse_commit(commits[commit_id].content)[0])
        top = parse_tree(tree_objects[0].content) if tree_objects[0].type_name == "tree" else []
        entry_file = next((item_id for is_tree, name, item_id in top if not is_tree and name == ENTRY_FILE), None)
        contents = {o.id: o.content for o in tree_objects}
        if entry_file not in contents:
            raise CorruptObject(f"{commit_id[:12]} on {remote.location} is not a vml entry (no {ENTRY_FILE})")
        roots[commit_id] = EntryInfo.from_toml(contents[entry_file]).manifests()
        objects.extend(tree_objects)
    # Children before parents in `order`; objects go in with parents first.
    objects.extend(commits[c] for c in _parents_first(commits, order))
    return objects, roots


def _parents_first(commits: dict[str, GitObject], order: list[str]) -> list[str]:
    placed: set[str] = set()
    result: list[str] = []
    for start in reversed(order):
        stack = [start]
        while stack:
            commit_id = stack[-1]
            if commit_id in placed:
                stack.pop()
                continue
            waiting = [p for p in parse_commit(commits[commit_id].content)[1] if p in commits and p not in placed]
            if waiting:
                stack.extend(waiting)
            else:
                placed.add(commit_id)
                result.append(commit_id)
                stack.pop()
    return result


def _tree_objects(remote: RemoteRepository, tree_id: str) -> list[GitObject]:
    """A tree and everything in it, the top tree first (a few small objects per entry)."""
    found, stack, seen = [], [tree_id], set()
    while stack:
        object_id_hex = stack.pop()
        if object_id_hex in seen:
            continue
        seen.add(object_id_hex)
        type_name, content = remote.read_object(object_id_hex)
        found.append(GitObject(object_id_hex, type_name, content))
        if type_name == "tree":
            stack.extend(item_id for _is_tree, _name, item_id in parse_tree(content))
    return found


def verified(blob_id: bytes, where: RemoteBlob, payload: bytes) -> bytes:
    """The raw bytes of a received blob; CorruptObject unless they hash to its id."""
    try:
        return open_blob(blob_id, where.flag, payload, where.raw_length)
    except CorruptObject:
        raise CorruptObject(f"object {blob_id.hex()[:16]} arrived damaged (hash mismatch); nothing was recorded") from None


def receive_blobs(store: ChunkStore, remote: RemoteRepository, roots: list[ObjectId],
                  progress: Callable[[TransferProgress], None] | None = None) -> ReceiveStats:
    """Fetch every blob of `roots` the local store lacks; data chunks first, in the remote's
    pack order with reads grouped, then listings children first; flush once at the end."""
    where = remote.blobs()

    def locate(blob_id: bytes) -> RemoteBlob:
        found = where.get(blob_id)
        if found is None:
            raise CorruptObject(f"{remote.location} lacks object {blob_id.hex()[:16]} (run 'vml fsck' there)")
        return found

    def load_raw(blob_ids: list[bytes]) -> list[bytes]:
        wanted = [(blob_id, locate(blob_id)) for blob_id in blob_ids]
        return [verified(blob_id, found, payload) for (blob_id, found), payload in zip(wanted, remote.read_blobs(wanted))]

    listings, chunks = missing_blobs(load_raw, roots, store.__contains__)
    listing_bytes = sum(locate(listing_id).length for listing_id, _data in listings)
    located = sorted(((chunk_id, locate(chunk_id)) for chunk_id in chunks), key=lambda item: (item[1].pack, item[1].offset))
    total = sum(found.length for _chunk_id, found in located)
    done = 0
    try:
        for batch, payloads in _read_ahead(remote, _batches(located)):
            for (chunk_id, found), payload in zip(batch, payloads):
                verified(chunk_id, found, payload)
                store.add(ObjectId(chunk_id), found.blob_type, found.flag, payload, found.raw_length)
                done += found.length
            if progress is not None:
                progress(TransferProgress(done, total))
        for listing_id, data in listings:
            if store.put(data, TYPE_TREE) != listing_id:
                raise CorruptObject(f"listing {listing_id.hex()[:16]} changed while being fetched")
        store.flush()
    except BaseException:
        store.abandon()
        raise
    return ReceiveStats(len(chunks) + len(listings), total + listing_bytes)


def fetch_entries(git: GitDag, store: ChunkStore, remote: RemoteRepository, tips: list[str],
                  progress: Callable[[TransferProgress], None] | None = None) -> tuple[dict[str, list[ObjectId]], ReceiveStats]:
    """Bring what `tips` reach that this repository lacks, in the order that keeps it valid:
    blobs (verified), then git objects; the caller moves refs. (commit -> its trees, stats.)
    A gc of the remote may rewrite a pack after its index files were read: they are then
    read again, once."""
    objects, roots = read_history(git, remote, tips)
    wanted = [root for entry_roots in roots.values() for root in entry_roots]
    try:
        stats = receive_blobs(store, remote, wanted, progress)
    except MissingFile:
        remote.forget_blobs()
        stats = receive_blobs(store, remote, wanted, progress)
    for git_object in objects:  # blobs first, then git objects: a commit never lacks its data
        git.write_raw(git_object.type_name, git_object.content, git_object.id)
    return roots, stats


def _read_ahead(remote: RemoteRepository, batches: Iterator[list[tuple[bytes, RemoteBlob]]]
                ) -> Iterator[tuple[list[tuple[bytes, RemoteBlob]], list[bytes]]]:
    """Each batch with its payloads, the next ones already being read where the transport
    takes several requests at once (object storage): the network and the checking overlap."""
    depth = remote.transport.parallel_writes - 1
    if depth < 1:
        for batch in batches:
            yield batch, remote.read_blobs(batch)
        return
    with ThreadPoolExecutor(depth, thread_name_prefix="vml-fetch") as pool:
        pending: collections.deque = collections.deque()
        try:
            for batch in batches:
                pending.append((batch, pool.submit(remote.read_blobs, batch)))
                if len(pending) > depth:
                    ready, future = pending.popleft()
                    yield ready, future.result()
            while pending:
                ready, future = pending.popleft()
                yield ready, future.result()
        finally:
            for _batch, future in pending:
                future.cancel()


def _batches(located: list[tuple[bytes, RemoteBlob]]) -> Iterator[list[tuple[bytes, RemoteBlob]]]:
    batch: list[tuple[bytes, RemoteBlob]] = []
    size = 0
    for item in located:
        if batch and size + item[1].length > READ_BATCH:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item[1].length
    if batch:
        yield batch


def update_tracking(git: GitDag, remote_name: str, remote_refs: dict[str, str]) -> list[RefChange]:
    """After a fetch: the remote's branches become remote-tracking branches NAME/BRANCH
    (mirrors: they follow the remote wherever it went); its tags and bases are added, never
    moved (vml/refs/updates.py: a tag moves only when forced, and a fetch never forces); its
    public entries' lineages are added or fast-forwarded;
    a base of the same name that is another image is kept and reported."""
    changes = []
    for ref, target in remote_refs.items():
        if not git.is_valid_ref_name(ref):
            changes.append(RefChange(ref, None, target, REJECTED, "not a valid ref name; ignored"))
        elif ref.startswith(BRANCH_PREFIX):
            local_ref = tracking_ref(remote_name, ref[len(BRANCH_PREFIX):])
            old = git.ref_target(local_ref)
            if old != target:
                git.ensure_reflog(local_ref)
                git.set_direct(local_ref, target, f"fetch: {'new' if old is None else 'update'} from {remote_name}")
                changes.append(RefChange(f"{remote_name}/{ref[len(BRANCH_PREFIX):]}", old, target, "new" if old is None else "updated"))
        elif ref.startswith(BASE_PREFIX):
            old = git.ref_target(ref)
            if old is None:
                git.set_direct(ref, target, f"fetch: base from {remote_name}")
                changes.append(RefChange(f"base {BaseName.of_ref(ref)}", None, target, "new base"))
            elif not same_base_image(git, old, target):
                changes.append(RefChange(f"base {BaseName.of_ref(ref)}", old, target, REJECTED,
                                         "a local base of that name and version is another image; kept"))
        elif ref.startswith(PUBLIC_PREFIX):  # a public lineage is shared by name: new or fast-forward, never rewound
            old = git.ref_target(ref)
            status = classify(git, old, target)
            if status in (NEW, FAST_FORWARD):
                git.ensure_reflog(ref)
                git.set_direct(ref, target, f"fetch: public entry from {remote_name}")
                changes.append(RefChange(short_name(ref), old, target, status))
            elif status == REJECTED:
                changes.append(RefChange(short_name(ref), old, target, REJECTED, "the local public lineage has entries the remote's lacks; kept"))
        elif ref.startswith(TAG_PREFIX):
            old = git.ref_target(ref)
            status = classify(git, old, target, tag=True)
            if status == NEW:
                git.set_direct(ref, target, f"fetch: tag from {remote_name}")
                changes.append(RefChange(short_name(ref), None, target, "new tag"))
            elif status == REJECTED:
                changes.append(RefChange(short_name(ref), old, target, REJECTED, "a local tag of that name names another entry; kept"))
    return changes

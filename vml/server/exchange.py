"""The server's side of push and fetch: one store for every user, answers only from what the
caller may read.

Deduplication must not leak (an "existence oracle"): a user who guesses a colleague's file
must learn nothing by pushing it or by asking for it. So the server never says which blobs
it holds. A fetch sends a transfer (a bundle, vml/exchange/bundle.py) of what the caller's
wanted refs reach beyond the commits the caller says it has and may read; a push is a bundle
the server checks as strictly as a stranger's: every commit, tree and blob its entries need
is in it, or reachable from the commits it says it builds on, which the pusher must be able
to read. Whatever else the store holds is never consulted, so the answers are the same
whether it holds a colleague's copy or not. It is stored once all the same (the store skips
what it has).

Transfers and uploads are files under vml/transfers and vml/uploads, so a dropped download
or upload resumes where it stopped (app.py serves ranges and appends at offsets).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vml.entry import read_entry
from vml.errors import ConcurrentUpdate, CorruptObject, UsageError, VmlError
from vml.exchange.bundle import TRANSFER, ArrivingBundle, BundleInfo, Readable, read_bundle, write_bundle
from vml.exchange.push import manifest_lists, rejection
from vml.objects.ids import ObjectId
from vml.objects.store import ChunkStore
from vml.refs.git import GitDag
from vml.refs.namespace import BASE_PREFIX, PUBLIC_PREFIX, REFS_PREFIX, TAG_PREFIX
from vml.refs.updates import FAST_FORWARD, MOVES, NEW, REJECTED, UP_TO_DATE, classify
from vml.repo import Repository
from vml.server.access import APPEND, CARRIED, NAMESPACES, READ, WRITE, may, namespace_prefix, reads_public, stored_ref
from vml.server.accounts import Caller

if TYPE_CHECKING:
    from vml.server.bucket import BucketStore

TRANSFER_LIFE = 3600.0  # seconds a finished transfer stays to be resumed
UPLOAD_LIFE = 24 * 3600.0
MAX_HAVES = 256
MAX_UPDATES = 1024
HISTORIES = 32  # sets of readable commits remembered (one per set of readable ref tips)
MAX_ARRIVING = 64  # uploads checked while they arrive; more wait to be checked whole


class Forbidden(VmlError):
    """The caller may not do this (HTTP 403); says nothing about what exists."""


class NotFound(VmlError):
    """No such thing the caller may see (HTTP 404)."""


class Moved(VmlError):
    """The refs moved since the caller listed them (HTTP 409): list them again."""


@dataclass(frozen=True, slots=True)
class Transfer:
    id: str
    path: str
    size: int
    commits: int


@dataclass(frozen=True, slots=True)
class Upload:
    id: str
    path: str
    namespace: str
    user: str


class ServerRepository:
    def __init__(self, path: str, *, anonymous_public: bool = False, store: str | None = None):
        """`store`: an s3:// bucket that holds the repository, `path` then being this
        process's replica of it (vml/server/bucket.py); default: the repository is `path`."""
        self.repo = Repository(path)  # its locks: gc takes the exclusive one
        self.path = self.repo.path
        self.bucket: BucketStore | None = None
        if store is not None:
            from vml.server.bucket import BucketStore  # boto3: only for a store in a bucket

            self.bucket = BucketStore(self.repo, store)
        self.anonymous_public = anonymous_public
        self.transfers_dir = os.path.join(self.repo.vml_dir, "transfers")
        self.uploads_dir = os.path.join(self.repo.vml_dir, "uploads")
        for directory in (self.transfers_dir, self.uploads_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._local = threading.local()
        # Uploads being checked while they arrive: upload id -> (its checker, the one thread it runs on).
        self._arriving: dict[str, tuple[ArrivingBundle, ThreadPoolExecutor]] = {}
        self._arriving_lock = threading.Lock()
        self._history: OrderedDict[frozenset[str], frozenset[str]] = OrderedDict()
        self._history_lock = threading.Lock()
        self._bases: OrderedDict[frozenset[str], frozenset[str]] = OrderedDict()

    def sync(self) -> None:
        """Before a request reads refs: bring what other server processes wrote to the bucket."""
        if self.bucket is not None:
            self.bucket.pull()

    def git(self) -> GitDag:
        """This thread's view of the DAG (a libgit2 repository is used by one thread at a time)."""
        git = getattr(self._local, "git", None)
        if git is None:
            git = self._local.git = GitDag.open(self.path)
        return git

    def open_store(self) -> ChunkStore:
        """The store as it is now: other requests may have added packs since the last one
        (kept in a bucket: a cache of it, which reads what it lacks from there)."""
        if self.bucket is not None:
            return self.bucket.open_store()
        return ChunkStore(os.path.join(self.repo.vml_dir, "store")).open()

    # -- what a caller sees

    def namespace_refs(self, namespace: str) -> dict[str, str]:
        """Every ref the namespace holds, by the name it has inside it (refs/heads/main)."""
        git = self.git()
        prefix = namespace_prefix(namespace)
        found = {}
        for stored in git.ref_names(prefix):
            name = REFS_PREFIX + stored[len(prefix):]
            target = git.ref_target(stored)
            if target is not None and name.startswith(CARRIED):
                found[name] = target
        return found

    def visible_refs(self, namespace: str, caller: Caller) -> dict[str, str]:
        """The namespace's refs `caller` may read: all of them for its members, else its public
        entries and the base images they sit on (a public entry is checked out on its base)."""
        refs = self.namespace_refs(namespace)
        if may(caller, namespace, READ):
            return refs
        if not reads_public(caller, self.anonymous_public):
            return {}
        public = {name: target for name, target in refs.items() if name.startswith(PUBLIC_PREFIX)}
        used = self._bases_used(list(public.values()))
        public.update({name: target for name, target in refs.items() if name.startswith(BASE_PREFIX) and name[len(BASE_PREFIX):] in used})
        return public

    def _bases_used(self, tips: list[str]) -> frozenset[str]:
        """NAME/VERSION of every base the entries of public lineages sit on (remembered)."""
        key = frozenset(tips)
        with self._history_lock:
            used = self._bases.get(key)
        if used is None:
            git = self.git()
            bases = (read_entry(git, commit).base for commit in git.walk(sorted(key)))
            used = frozenset(f"{base.name}/{base.version}" for base in bases if base is not None)
            with self._history_lock:
                self._bases[key] = used
                while len(self._bases) > HISTORIES:
                    self._bases.popitem(last=False)
        return used

    def readable_tips(self, caller: Caller) -> set[str]:
        """The entries of every ref `caller` may read, in every namespace."""
        git = self.git()
        namespaces = {stored.split("/")[2] for stored in git.ref_names(NAMESPACES)}
        return {target for namespace in namespaces for target in self.visible_refs(namespace, caller).values()}

    def reaches(self, caller: Caller) -> Callable[[str], bool]:
        """Whether `caller` may read a commit: it is, or is an ancestor of, a readable ref's."""
        return self.history(self.readable_tips(caller)).__contains__

    def history(self, tips: Iterable[str]) -> frozenset[str]:
        """Every commit reachable from `tips`, remembered for the last sets of tips asked for.
        Asking costs the same for an id nobody has and for one the caller may not read: the
        time an answer takes says nothing either."""
        key = frozenset(tips)
        with self._history_lock:
            found = self._history.get(key)
            if found is not None:
                self._history.move_to_end(key)
                return found
        found = frozenset(self.git().walk(sorted(key)))
        with self._history_lock:
            self._history[key] = found
            while len(self._history) > HISTORIES:
                self._history.popitem(last=False)
        return found

    # -- fetch

    def make_transfer(self, namespace: str, caller: Caller, want: list[str], have: list[str]) -> Transfer:
        """A bundle of what the wanted entries (tips of refs `caller` sees in `namespace`)
        reach beyond the commits in `have` that `caller` may read; anything else in `have`
        is ignored, as if this server had never heard of it."""
        visible = self.visible_refs(namespace, caller)
        if not want:
            raise UsageError("a fetch must want at least one entry")
        if not set(want) <= set(visible.values()):
            raise Moved("the refs moved since they were listed: list them again")
        git = self.git()
        readable = self.reaches(caller)
        requires = [c for c in dict.fromkeys(have[:MAX_HAVES]) if readable(c) and any(c == w or git.is_ancestor(c, w) for w in want)]
        self._expire(self.transfers_dir, TRANSFER_LIFE)
        transfer_id = secrets.token_hex(16)
        path = os.path.join(self.transfers_dir, transfer_id + ".bundle")
        refs = {name: target for name, target in visible.items() if target in want}
        with self.repo.shared_lock():
            store = self.open_store()
            try:
                info = write_bundle(git, store, path, entry=want[0], ref=None, kind=TRANSFER, requires=requires,
                                    tmp_dir=store.tmp_dir, refs=refs)
            finally:
                store.close()
        _write_owner(path, caller, namespace)
        return Transfer(transfer_id, path, info.bytes, len(info.commits))

    def transfer(self, transfer_id: str, caller: Caller) -> Transfer:
        path = os.path.join(self.transfers_dir, _checked_id(transfer_id) + ".bundle")
        owner = _read_owner(path) if os.path.exists(path) else {}
        if not owner or owner.get("user") != caller.user:
            raise NotFound("no such transfer (they are kept an hour)")
        return Transfer(transfer_id, path, os.path.getsize(path), 0)

    @staticmethod
    def forget_transfer(transfer: Transfer) -> None:
        for path in (transfer.path, transfer.path + ".owner"):
            if os.path.exists(path):
                os.unlink(path)

    # -- push

    def start_upload(self, namespace: str, caller: Caller) -> Upload:
        if caller.anonymous or not may(caller, namespace, APPEND):
            raise Forbidden(f"you may not add entries to {namespace}")
        self._expire(self.uploads_dir, UPLOAD_LIFE)
        upload_id = secrets.token_hex(16)
        path = os.path.join(self.uploads_dir, upload_id + ".part")
        with open(path, "xb"):
            pass
        _write_owner(path, caller, namespace)
        return Upload(upload_id, path, namespace, caller.user or "")

    def upload(self, upload_id: str, caller: Caller) -> Upload:
        path = os.path.join(self.uploads_dir, _checked_id(upload_id) + ".part")
        owner = _read_owner(path) if os.path.exists(path) else {}
        if not owner or owner.get("user") != caller.user or caller.anonymous:
            raise NotFound("no such upload (they are kept a day)")
        if not may(caller, owner["namespace"], APPEND):
            raise Forbidden(f"you may not add entries to {owner['namespace']}")
        return Upload(upload_id, path, owner["namespace"], owner["user"])

    def arrived(self, upload: Upload, size: int) -> None:
        """More of an upload is in (`size` bytes): check the packs now whole, beside the
        upload, so that apply has little left to check. At most MAX_ARRIVING at once."""
        with self._arriving_lock:
            if upload.id not in self._arriving:
                for upload_id in [u for u in self._arriving if not os.path.exists(os.path.join(self.uploads_dir, u + ".part"))]:
                    self._arriving.pop(upload_id)[1].shutdown(wait=False, cancel_futures=True)  # abandoned, expired
                if len(self._arriving) >= MAX_ARRIVING:
                    return
                self._arriving[upload.id] = (ArrivingBundle(upload.path, stage=upload.path[: -len(".part")]),
                                             ThreadPoolExecutor(1, thread_name_prefix="vml-arriving"))
            checker, worker = self._arriving[upload.id]
            worker.submit(checker.advance, size)

    def _arrived(self, upload: Upload) -> ArrivingBundle:
        """What was checked (and staged) of an upload as it arrived; nothing if it was not."""
        with self._arriving_lock:
            item = self._arriving.pop(upload.id, None)
        if item is None:
            return ArrivingBundle(upload.path)
        checker, worker = item
        worker.shutdown(wait=True)
        return checker

    def apply(self, upload: Upload, caller: Caller, updates: list[dict]) -> list[dict]:
        """Check the uploaded bundle strictly, store it if any update may go, then move each
        ref by compare-and-swap. Each update: ref, old (None: new), new, force."""
        parsed = [_parse_update(u) for u in updates[: MAX_UPDATES + 1]]
        if not parsed or len(parsed) > MAX_UPDATES:
            raise UsageError(f"a push moves 1 to {MAX_UPDATES} refs")
        git = self.git()
        readable = self.reaches(caller)
        arrived = self._arrived(upload)
        try:  # one apply per upload: a second one (a retry racing the first) finds it gone
            os.rename(upload.path, upload.path + ".applying")
        except FileNotFoundError:
            raise NotFound("no such upload (it was applied, or it expired)") from None
        os.rename(upload.path + ".owner", upload.path + ".applying.owner")
        upload = dataclasses.replace(upload, path=upload.path + ".applying")
        with self.repo.shared_lock():
            store = self.open_store()
            try:
                return self._apply(git, store, upload, caller, parsed, readable, arrived)
            finally:
                store.close()
                for path in (upload.path, upload.path + ".owner", *(staged for staged, _pack_id in arrived.staged.values())):
                    if os.path.exists(path):  # (a staged pack the store took is gone: renamed into it)
                        os.unlink(path)

    def _apply(self, git: GitDag, store: ChunkStore, upload: Upload, caller: Caller, updates: list[tuple[str, str | None, str, bool]],
               readable: Callable[[str], bool], arrived: ArrivingBundle) -> list[dict]:
        requires: list[str] = []

        def require(commit: str) -> bool:
            ok = readable(commit)
            if ok:
                requires.append(commit)
            return ok

        def builds_on() -> list[list[ObjectId]]:  # what the commits it builds on reach, and nothing else
            return manifest_lists(git, list(dict.fromkeys(requires)))

        never: Callable[[object], bool] = lambda _object_id: False  # noqa: E731 - every tree of a new entry comes in the bundle
        try:
            info, store_all = read_bundle(git, store, upload.path, Readable(require, never, never, strict=True, builds_on=builds_on),
                                          arrived.checked, arrived.staged)
        except CorruptObject as error:
            raise UsageError(f"the push was refused: {error}") from None
        if info.kind != TRANSFER:
            raise UsageError("the upload is not a push (a transfer bundle)")
        listed = set(info.commits)
        results = []
        for ref, old, new, force in updates:
            if new not in listed and not readable(new):
                results.append(_result(ref, old, new, REJECTED, "the push does not hold this entry"))
                continue
            current = git.ref_target(stored_ref(upload.namespace, ref))
            if current != old:
                results.append(_result(ref, old, new, REJECTED, f"it moved to {current[:12] if current else 'nothing'} meanwhile; fetch and try again"))
                continue
            tag = ref.startswith(TAG_PREFIX)  # the new commits are still in the bundle, not the store: it says what descends
            status = classify(git, old, new, tag=tag, force=force, descends=functools.partial(_descends, git, info, new))
            needed = APPEND if status in (NEW, FAST_FORWARD, UP_TO_DATE) else WRITE
            if status == REJECTED:
                results.append(_result(ref, old, new, REJECTED, rejection(tag)))
            elif not may(caller, upload.namespace, needed):
                results.append(_result(ref, old, new, REJECTED, f"{_why_not(caller, upload.namespace)}: a {status} update needs write access"))
            else:
                results.append(_result(ref, old, new, status, ""))
        moving = [r for r in results if r["status"] in MOVES]
        if not moving:
            return results
        store_all(trusted=True)  # blobs, then git objects; refs only after (the upload is the server's own file)
        if self.bucket is not None:  # the bucket is the repository: what it lacks goes there before any ref moves
            store.flush()
            self.bucket.publish(git, store, info.commits)
        for result in moving:
            if result["ref"].startswith(PUBLIC_PREFIX):
                private = _first_private(git, result["new"])
                if private is not None:
                    result.update(status=REJECTED, reason=f"entry {private[:12]} is not a public entry: a public lineage holds only "
                                                          f"entries vml publish made (every user could read it)")
                    continue
            stored = stored_ref(upload.namespace, result["ref"])
            try:
                self._move(git, stored, result["new"], result["old"], f"push by {caller.user}: {result['status']}")
            except ConcurrentUpdate:
                result.update(status=REJECTED, reason="another push moved it meanwhile; fetch and try again")
        return results

    def _move(self, git: GitDag, stored: str, new: str, old: str | None, message: str) -> None:
        """Compare-and-swap a ref: in the bucket first when there is one (where server
        processes race), then here."""
        git.ensure_reflog(stored)
        if self.bucket is None:
            git.update_ref(stored, new, old, message)
            return
        with self.bucket.lock:
            self.bucket.swap(stored, new, old)
            git.set_direct(stored, new, message)

    # -- housekeeping

    @staticmethod
    def _expire(directory: str, life: float) -> None:
        cutoff = time.time() - life
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            try:
                if os.stat(path).st_mtime < cutoff:
                    os.unlink(path)
            except FileNotFoundError:
                pass


def _why_not(caller: Caller, namespace: str) -> str:
    """Whose limit stops a rewrite: the token's mode, or the user's role in the namespace."""
    if may(dataclasses.replace(caller, limit=WRITE), namespace, WRITE):
        return "this token may only add entries (append-only)"
    if may(caller, namespace, APPEND):
        return f"your role in {namespace} is append: you may only add entries"
    return "you may not write here"


def _first_private(git: GitDag, tip: str) -> str | None:
    """The first entry of `tip`'s history that is not a public entry (no scrub report)."""
    return next((commit for commit in git.walk([tip]) if read_entry(git, commit).scrub is None), None)


def _descends(git: GitDag, info: BundleInfo, new: str, old: str) -> bool:
    """Whether `new` descends from `old`, through the bundle's commits, then the store's."""
    stack, seen = [new], set()
    while stack:
        commit = stack.pop()
        if commit == old:
            return True
        if commit in seen:
            continue
        seen.add(commit)
        if commit in info.parents:
            stack.extend(info.parents[commit])
        elif git.has_object(commit) and git.has_object(old) and git.is_ancestor(old, commit):
            return True  # (not False when not: another parent of a merge may still lead to it)
    return False


def _parse_update(update: object) -> tuple[str, str | None, str, bool]:
    if not isinstance(update, dict):
        raise UsageError("each update is an object: ref, old, new, force")
    ref, old, new, force = update.get("ref"), update.get("old"), update.get("new"), bool(update.get("force", False))
    if not (isinstance(ref, str) and ref.startswith(CARRIED) and GitDag.is_valid_ref_name(ref) and len(ref) < 512):
        raise UsageError(f"a push may move branches, tags, public entries and base images, not {str(ref)[:80]!r}")
    if not isinstance(new, str) or not _is_hex(new) or (old is not None and not (isinstance(old, str) and _is_hex(old))):
        raise UsageError("old and new are entry ids (40 hex digits; old may be null)")
    return ref, old, new, force


def _result(ref: str, old: str | None, new: str, status: str, reason: str) -> dict:
    return {"ref": ref, "old": old, "new": new, "status": status, "reason": reason}


def _is_hex(value: object) -> bool:
    return isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value)


def _checked_id(value: str) -> str:
    if len(value) != 32 or not all(c in "0123456789abcdef" for c in value):
        raise NotFound("no such transfer or upload")
    return value


def _write_owner(path: str, caller: Caller, namespace: str) -> None:
    with open(path + ".owner", "w") as sink:
        json.dump({"user": caller.user, "namespace": namespace}, sink)


def _read_owner(path: str) -> dict:
    try:
        with open(path + ".owner") as source:
            return json.load(source)
    except (FileNotFoundError, ValueError):
        return {}


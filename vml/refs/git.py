"""The git repository that holds the DAG of entries; the only module that imports pygit2."""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pygit2

from vml.durable import write_atomically
from vml.errors import ConcurrentUpdate, CorruptObject, UnknownEntry, VmlError
from vml.refs.namespace import REFS_PREFIX
from vml.signing import Signer, create_signed_commit, verify_commit

ZERO = "0" * 40
_TYPE_NAMES = {
    pygit2.enums.ObjectType.COMMIT: "commit",
    pygit2.enums.ObjectType.TREE: "tree",
    pygit2.enums.ObjectType.BLOB: "blob",
    pygit2.enums.ObjectType.TAG: "tag",
}
_TYPE_CODES = {name: code for code, name in _TYPE_NAMES.items()}


@dataclass(frozen=True, slots=True)
class Commit:
    id: str
    parents: tuple[str, ...]
    message: str
    author: str
    email: str
    time: int  # seconds since the epoch
    offset: int  # minutes east of UTC

    @property
    def summary(self) -> str:
        """The message's first line, as git's --oneline shows it."""
        return (self.message.strip().splitlines() or [""])[0]


@dataclass(frozen=True, slots=True)
class ReflogLine:
    old: str
    new: str
    message: str
    time: int
    raw: str  # the line as stored, for rewriting the log when lines expire

    def with_old(self, old: str) -> ReflogLine:
        """The same line recording another previous value (git's `reflog expire --rewrite`)."""
        return ReflogLine(old, self.new, self.message, self.time, old + self.raw[len(self.old) :])


class GitDag:
    def __init__(self, repo: pygit2.Repository):
        self._repo = repo
        self.path = repo.path.rstrip("/")

    @classmethod
    def init(cls, path: str) -> GitDag:
        repo = pygit2.init_repository(path, bare=True, initial_head="main")
        config = repo.config
        config["gc.auto"] = 0  # vml owns this repository; no background git gc
        config["core.logAllRefUpdates"] = "true"
        return cls(repo)

    @classmethod
    def open(cls, path: str) -> GitDag:
        try:
            return cls(pygit2.Repository(path))
        except pygit2.GitError as error:
            raise VmlError(f"cannot open the git repository at {path}: {error}") from None

    # -- configuration (vml's own sections in the git config file)

    def config_get(self, key: str) -> str | None:
        try:
            return self._repo.config[key]
        except KeyError:
            return None

    def config_set(self, key: str, value: str) -> None:
        self._repo.config[key] = value

    def config_delete(self, key: str) -> None:
        try:
            del self._repo.config[key]
        except KeyError:
            pass

    def config_items(self, prefix: str) -> Iterator[tuple[str, str]]:
        for entry in self._repo.config:
            if entry.name.startswith(prefix):
                yield entry.name, entry.value

    # -- objects

    def signature(self) -> pygit2.Signature:
        # Like GIT_AUTHOR_NAME, the environment overrides the git configuration.
        name = os.environ.get("VML_AUTHOR_NAME") or self.config_get("user.name") or getpass.getuser()
        email = os.environ.get("VML_AUTHOR_EMAIL") or self.config_get("user.email") or f"{getpass.getuser()}@{socket.gethostname()}"
        return pygit2.Signature(name, email)

    def create_commit(self, files: dict[str, bytes], message: str, parents: list[str], *, sign_with: str | None = None) -> str:
        """Write a commit whose tree holds `files` (paths with '/' make subtrees); no ref
        moves. With `sign_with` (an SSH key), signed as git's gpg.format=ssh signs."""
        tree_id = self._write_tree(files)
        signature = self.signature()
        if sign_with is not None:
            return create_signed_commit(self._repo, tree_id, message, signature, signature, parents, sign_with)
        commit_id = self._repo.create_commit(
            None, signature, signature, message, tree_id, [pygit2.Oid(hex=p) for p in parents]
        )
        return str(commit_id)

    def recommit(self, commit_id: str, parents: list[str]) -> str:
        """The same entry (tree, message, author) on other parents, as git rebase records it."""
        raw = self._repo[commit_id]
        new_id = self._repo.create_commit(
            None, raw.author, self.signature(), raw.message, raw.tree_id, [pygit2.Oid(hex=p) for p in parents]
        )
        return str(new_id)

    def _write_tree(self, files: dict[str, bytes]) -> pygit2.Oid:
        builder = self._repo.TreeBuilder()
        subdirs: dict[str, dict[str, bytes]] = {}
        for path, data in sorted(files.items()):
            head, _, rest = path.partition("/")
            if rest:
                subdirs.setdefault(head, {})[rest] = data
            else:
                builder.insert(head, self._repo.create_blob(data), pygit2.GIT_FILEMODE_BLOB)
        for name, content in subdirs.items():
            builder.insert(name, self._write_tree(content), pygit2.GIT_FILEMODE_TREE)
        return builder.write()

    def commit(self, commit_id: str) -> Commit:
        try:
            raw = self._repo[commit_id]
        except (KeyError, ValueError):
            raise UnknownEntry(f"no entry {commit_id}") from None
        if not isinstance(raw, pygit2.Commit):
            raise UnknownEntry(f"{commit_id} is not an entry")
        return Commit(
            id=str(raw.id),
            parents=tuple(str(p) for p in raw.parent_ids),
            message=raw.message,
            author=raw.author.name,
            email=raw.author.email,
            time=raw.commit_time,
            offset=raw.commit_time_offset,
        )

    def verify_signature(self, commit_id: str, allowed_signers: str) -> Signer:
        """Who signed the entry, by the allowed-signers file; BadSignature if no one it trusts did."""
        return verify_commit(self._repo, commit_id, allowed_signers)

    def tree_id(self, commit_id: str) -> str:
        return str(self._repo[commit_id].tree_id)

    def read_file(self, commit_id: str, path: str) -> bytes | None:
        tree = self._repo[commit_id].peel(pygit2.Tree)
        try:
            entry = tree[path]
        except KeyError:
            return None
        return self._repo[entry.id].data

    def has_object(self, object_id: str) -> bool:
        return object_id in self._repo

    def commits_with_prefix(self, prefix: str) -> list[str]:
        """Every commit whose id starts with the lower-case hex `prefix`."""
        if len(prefix) == 40:
            return [prefix] if self._is_commit(prefix) else []
        return sorted(str(oid) for oid in self._repo.odb if str(oid).startswith(prefix) and self._is_commit(str(oid)))

    def _is_commit(self, object_id: str) -> bool:
        try:
            object_type, _size = self._repo.odb.read_header(object_id)
        except (KeyError, ValueError):
            return False
        return object_type == pygit2.enums.ObjectType.COMMIT

    def objects_of(self, commit_ids: list[str]) -> set[str]:
        """The commits and every tree and blob they hold: what the git side of gc keeps."""
        found: set[str] = set()
        stack = []
        for commit_id in commit_ids:
            found.add(commit_id)
            stack.append(self._repo[commit_id].tree_id)
        while stack:
            oid = stack.pop()
            if str(oid) in found:
                continue
            found.add(str(oid))
            raw = self._repo[oid]
            if isinstance(raw, pygit2.Tree):
                stack.extend(item.id for item in raw)
        return found

    def read_raw(self, object_id: str) -> tuple[str, bytes]:
        """(type name, content) of any git object, as git hashes it: for sending it elsewhere."""
        object_type, data = self._repo.odb.read(object_id)
        return _TYPE_NAMES[object_type], data

    def write_raw(self, type_name: str, data: bytes, expected: str) -> None:
        """Store an object received from elsewhere; it must hash to the id it was sent as."""
        written = str(self._repo.odb.write(_TYPE_CODES[type_name], data))
        if written != expected:
            raise CorruptObject(f"git object {expected[:12]} arrived damaged (it hashes to {written[:12]})")

    def tree_objects(self, commit_id: str) -> list[str]:
        """The trees and blobs of one commit (without the commit itself)."""
        return sorted(self.objects_of([commit_id]) - {commit_id})

    def commits_between(self, starts: list[str], hide: list[str]) -> list[str]:
        """Commits reachable from `starts` but not from `hide`, parents before children."""
        if not starts:
            return []
        walker = self._repo.walk(pygit2.Oid(hex=starts[0]), pygit2.GIT_SORT_TOPOLOGICAL | pygit2.GIT_SORT_REVERSE)
        for other in starts[1:]:
            walker.push(pygit2.Oid(hex=other))
        for hidden in hide:
            if self.has_object(hidden):
                walker.hide(pygit2.Oid(hex=hidden))
        return [str(raw.id) for raw in walker]

    def prune_loose_objects(self, keep: set[str]) -> tuple[int, int]:
        """Delete loose objects not in `keep` (the caller holds the repository exclusively).
        Returns (objects, bytes) removed. Packed git objects are left alone."""
        removed = freed = 0
        objects = os.path.join(self.path, "objects")
        for fan in os.listdir(objects):
            if len(fan) != 2:
                continue
            for rest in os.listdir(os.path.join(objects, fan)):
                if fan + rest in keep:
                    continue
                path = os.path.join(objects, fan, rest)
                freed += os.path.getsize(path)
                os.unlink(path)
                removed += 1
        return removed, freed

    def resolve(self, spec: str) -> str:
        """A commit id for what a git user would type: ids, abbreviations, refs, ~, ^, @{n}."""
        try:
            found = self._repo.revparse_single(spec)
        except (KeyError, ValueError, pygit2.GitError) as error:
            if "ambiguous" in str(error):
                raise UnknownEntry(f"{spec!r} is ambiguous: give more digits") from None
            raise UnknownEntry(f"no entry matches {spec!r}") from None
        try:
            return str(found.peel(pygit2.Commit).id)
        except (pygit2.GitError, ValueError):
            raise UnknownEntry(f"{spec!r} is not an entry") from None

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """True if `ancestor` is reachable from `descendant` through parents (not itself)."""
        return self._repo.descendant_of(pygit2.Oid(hex=descendant), pygit2.Oid(hex=ancestor))

    def walk(self, starts: list[str], *, first_parent: bool = False) -> Iterator[str]:
        """Commit ids reachable from `starts`, newest first, children before parents."""
        if not starts:
            return
        walker = self._repo.walk(pygit2.Oid(hex=starts[0]), pygit2.GIT_SORT_TOPOLOGICAL | pygit2.GIT_SORT_TIME)
        for other in starts[1:]:
            walker.push(pygit2.Oid(hex=other))
        if first_parent:
            walker.simplify_first_parent()
        for raw in walker:
            yield str(raw.id)

    def git_fsck(self) -> tuple[list[str], list[str]]:
        """What git's own `fsck --full --strict` finds (objects, connectivity, refs and
        reflogs): (damage, warnings). Damage is what makes git fail; warnings are what it
        only mentions, such as a temporary object file a killed write left (gc removes it)."""
        if shutil.which("git") is None:
            return [], ["git is not installed, so git's own check of the repository did not run"]
        done = subprocess.run(
            ["git", f"--git-dir={self.path}", "fsck", "--full", "--strict", "--no-dangling", "--no-progress"],
            capture_output=True, text=True, errors="replace", env={**os.environ, "LC_ALL": "C"},
        )
        # Notices ("HEAD points to an unborn branch" in a new repository) are no damage.
        found = [f"git fsck: {line.strip()}" for line in (done.stdout + done.stderr).splitlines()
                 if line.strip() and not line.startswith("notice:")]
        if done.returncode == 0:
            return [], found
        return found or [f"git fsck exited with status {done.returncode}"], []

    # -- references

    def ref_target(self, name: str) -> str | None:
        """The commit a ref resolves to, or None for a missing or unborn ref."""
        try:
            ref = self._repo.references[name]
        except (KeyError, ValueError):  # missing, or not a valid ref name at all
            return None
        try:
            return str(ref.resolve().target)
        except (KeyError, pygit2.GitError):
            return None

    def symbolic_target(self, name: str) -> str | None:
        """For a symbolic ref, the ref it points at; None if direct or missing."""
        try:
            ref = self._repo.references[name]
        except (KeyError, ValueError):
            return None
        if ref.type == pygit2.enums.ReferenceType.SYMBOLIC:
            return ref.target
        return None

    @staticmethod
    def is_valid_ref_name(name: str) -> bool:
        return pygit2.reference_is_valid_name(name)

    def ref_names(self, prefix: str = REFS_PREFIX) -> list[str]:
        return sorted(n for n in self._repo.references if n.startswith(prefix))

    def update_ref(self, name: str, new: str, expected: str | None, message: str) -> None:
        """Compare-and-swap a direct ref: it moves only if it still points at `expected`."""

        def swap() -> None:
            current = self.ref_target(name)
            if current != expected:
                raise ConcurrentUpdate(f"{name} moved to {current} while vml was working")
            if expected is None:
                self._repo.create_reference_direct(name, pygit2.Oid(hex=new), False, message=message)
            else:
                ref = self._repo.references[name]
                if ref.type == pygit2.enums.ReferenceType.SYMBOLIC:
                    ref = ref.resolve()
                ref.set_target(pygit2.Oid(hex=new), message)

        try:
            self._change_ref(name, swap)
        except (pygit2.GitError, ValueError) as error:
            # libgit2 checks the old value under the ref's lock file: somebody else won.
            raise ConcurrentUpdate(f"{name} changed while vml was updating it: {error}") from None

    def set_symbolic(self, name: str, target: str) -> None:
        self._change_ref(name, lambda: self._repo.create_reference_symbolic(name, target, True))

    def set_direct(self, name: str, commit_id: str, message: str) -> None:
        self._change_ref(name, lambda: self._repo.create_reference_direct(name, pygit2.Oid(hex=commit_id), True, message=message))

    def delete_ref(self, name: str) -> None:
        with contextlib.suppress(KeyError):
            self._change_ref(name, lambda: self._repo.references.delete(name))

    def _change_ref(self, name: str, change: Callable[[], object]) -> None:
        """Every ref vml changes, it changes holding the repository's refs lock. libgit2 writes
        a ref through the lock file NAME.lock, which it holds for the moment of the write; so a
        NAME.lock found while vml holds the refs lock was left by a process killed mid-write
        (kill -9, power loss), and is removed, as git would ask a user to."""
        with self._refs_lock():
            try:
                change()
                return
            except (pygit2.GitError, OSError):  # libgit2 reports a taken lock file as an OSError
                left = os.path.join(self.path, name + ".lock")
                if not os.path.exists(left):
                    raise
                os.unlink(left)
            change()

    @contextlib.contextmanager
    def _refs_lock(self) -> Iterator[None]:
        locks = os.path.join(self.path, "vml", "locks")  # a vml repository's; a plain one's own directory
        fd = os.open(os.path.join(locks if os.path.isdir(locks) else self.path, "refs.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- reflogs

    def reflog_path(self, name: str) -> str:
        return os.path.join(self.path, "logs", name)

    def has_reflog(self, name: str) -> bool:
        return os.path.isfile(self.reflog_path(name))

    def ensure_reflog(self, name: str) -> None:
        """Create an empty reflog so libgit2 logs updates of a ref outside refs/heads."""
        path = self.reflog_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))

    def append_reflog(self, name: str, old: str | None, new: str, message: str) -> None:
        """Append a git-format reflog line (libgit2 writes none for symbolic refs)."""
        signature = self.signature()
        offset = -time.timezone if not time.localtime().tm_isdst else -time.altzone
        sign = "+" if offset >= 0 else "-"
        zone = f"{sign}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
        line = f"{old or ZERO} {new} {signature.name} <{signature.email}> {int(time.time())} {zone}\t{message.splitlines()[0] if message else ''}\n"
        path = self.reflog_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def reflog(self, name: str) -> list[ReflogLine]:
        """Reflog lines of a ref, newest first."""
        try:
            with open(self.reflog_path(name), "rb") as log_file:
                raw_lines = log_file.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return []
        lines = []
        for raw in reversed(raw_lines):
            head, _, message = raw.partition("\t")
            fields = head.split(" ")
            if len(fields) < 4:
                continue
            try:
                when = int(fields[-2])
            except ValueError:
                when = 0
            lines.append(ReflogLine(fields[0], fields[1], message, when, raw))
        return lines

    def write_reflog(self, name: str, lines: list[ReflogLine]) -> None:
        """Replace a ref's log with `lines` (newest first, as reflog() gives them), atomically."""
        path = self.reflog_path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, (f"{line.raw}\n".encode() for line in reversed(lines)))

    def delete_reflog(self, name: str) -> None:
        try:
            os.unlink(self.reflog_path(name))
        except FileNotFoundError:
            pass

    def reflog_names(self) -> list[str]:
        root = os.path.join(self.path, "logs")
        names = []
        for dirpath, _dirs, files in os.walk(root):
            for file_name in files:
                names.append(os.path.relpath(os.path.join(dirpath, file_name), root))
        return sorted(names)

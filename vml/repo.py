"""A vml repository: a bare git repository (the DAG) with vml's chunk store inside it.

Layout of `.vml/`: git's own files (HEAD, config, objects/, refs/, logs/) and `vml/` with
`format`, `store/{packs,index,tmp}`, `areas/NAME/statcache` and `locks/`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from vml.config import AreaConfig, area_names, delete_area, read_area, set_area_setting, write_area, write_repository_settings
from vml.durable import write_atomically
from vml.errors import NotARepository, UnknownArea, UsageError, VmlError
from vml.objects.store import ChunkStore
from vml.refs.git import GitDag
from vml.refs.namespace import AREA_PREFIX

if TYPE_CHECKING:
    from vml.server.bucket import BucketStore

FORMAT_LINE = "vml repository format 1\n"
DEFAULT_DIR = ".vml"
SERVER_STORE_KEY = "vml.serverStore"  # the bucket a server's repository lives in (vml serve --store)


class Repository:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.vml_dir = os.path.join(self.path, "vml")
        self.git = GitDag.open(self.path)
        self._store: ChunkStore | None = None
        self._bucket: BucketStore | None = None  # a server's bucket (vml/server/bucket.py), which the store reads through

    # -- finding and making repositories

    @classmethod
    def init(cls, path: str, *, bare: bool = False) -> Repository:
        target = os.path.abspath(path if bare else os.path.join(path, DEFAULT_DIR))
        if os.path.exists(os.path.join(target, "vml", "format")):
            raise UsageError(f"{target} is already a vml repository")
        if os.path.exists(target) and os.listdir(target):
            raise UsageError(f"{target} exists and is not empty")
        GitDag.init(target)
        vml_dir = os.path.join(target, "vml")
        ChunkStore.create(os.path.join(vml_dir, "store"))
        os.makedirs(os.path.join(vml_dir, "areas"), exist_ok=True)
        os.makedirs(os.path.join(vml_dir, "locks"), exist_ok=True)
        write_atomically(os.path.join(vml_dir, "format"), FORMAT_LINE.encode())  # the mark of a repository: whole or absent
        repo = cls(target)
        write_repository_settings(repo.git, bare=bare)
        return repo

    @classmethod
    def discover(cls, explicit: str | None = None, start: str | None = None) -> Repository:
        """`--repo`, then $VML_REPO, then `.vml` upward from the current directory, like git."""
        candidate = explicit or os.environ.get("VML_REPO")
        if candidate:
            for path in (candidate, os.path.join(candidate, DEFAULT_DIR)):
                if cls._is_repository(path):
                    return cls(path)
            raise NotARepository(f"{candidate} is not a vml repository (run 'vml init')")
        here = os.path.abspath(start or os.getcwd())
        while True:
            path = os.path.join(here, DEFAULT_DIR)
            if cls._is_repository(path):
                return cls(path)
            parent = os.path.dirname(here)
            if parent == here:
                raise NotARepository("not in a vml repository (or any parent): run 'vml init' or give --repo")
            here = parent

    @staticmethod
    def _is_repository(path: str) -> bool:
        try:
            with open(os.path.join(path, "vml", "format")) as format_file:
                first = format_file.readline()
        except OSError:
            return False
        if first != FORMAT_LINE:
            raise VmlError(f"{path} has an unsupported vml format ({first.strip()!r}); upgrade vml")
        return True

    # -- the store

    @property
    def store(self) -> ChunkStore:
        """The chunk store; a server's replica of a bucket (vml serve --store) reads what
        it lacks from the bucket."""
        if self._store is None:
            url = self.git.config_get(SERVER_STORE_KEY)
            if url is not None and self._bucket is None:
                from vml.server.bucket import BucketStore  # boto3: only for a store in a bucket

                self._bucket = BucketStore(self, url)
            self._store = ChunkStore(os.path.join(self.vml_dir, "store"), self._bucket and self._bucket.source).open()
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._bucket is not None:
            self._bucket.close()
            self._bucket = None

    # -- locks: commits and checkouts share the repository; gc needs it alone

    @contextlib.contextmanager
    def _flock(self, name: str, mode: int) -> Iterator[None]:
        path = os.path.join(self.vml_dir, "locks", name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def shared_lock(self) -> contextlib.AbstractContextManager[None]:
        return self._flock("repository.lock", fcntl.LOCK_SH)

    def exclusive_lock(self) -> contextlib.AbstractContextManager[None]:
        return self._flock("repository.lock", fcntl.LOCK_EX)

    def deployments_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held while the record of deployed domains (api/deploy.py) is read and changed."""
        return self._flock("deployments.lock", fcntl.LOCK_EX)

    def area_lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self._flock(f"area-{name}.lock", fcntl.LOCK_EX)

    # -- areas (kept in the git config file: vml/config.py)

    def areas(self) -> list[AreaConfig]:
        return [read_area(self.git, name) for name in area_names(self.git)]

    def area(self, name: str) -> AreaConfig:
        return read_area(self.git, name)

    def choose_area(self, name: str | None) -> AreaConfig:
        if name is not None:
            return self.area(name)
        areas = self.areas()
        if len(areas) == 1:
            return areas[0]
        if not areas:
            raise UnknownArea("this repository has no working area: add one with 'vml area add NAME --dir PATH'")
        raise UnknownArea(f"several areas ({', '.join(a.name for a in areas)}): choose one with -a")

    def add_area(self, config: AreaConfig) -> None:
        write_area(self.git, config)

    def set_area_setting(self, name: str, key: str, value: str) -> AreaConfig:
        """Change one setting of an existing area (a new VM's forwarded port); returns the area."""
        return set_area_setting(self.git, name, key, value)

    def remove_area(self, name: str) -> None:
        delete_area(self.git, name)

    def area_ref(self, name: str) -> str:
        return AREA_PREFIX + name

    def temp_dir(self) -> str:
        """Beside the store, on its filesystem: memory and disk images are large."""
        path = os.path.join(self.vml_dir, "tmp")
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def remote_index_cache(self) -> str:
        """Index files read from remotes (a cache: each is named by its content's hash)."""
        return os.path.join(self.vml_dir, "cache", "remote-index")

    def area_state_dir(self, name: str) -> str:
        return os.path.join(self.vml_dir, "areas", name)

    def stat_cache_path(self, name: str) -> str:
        return os.path.join(self.area_state_dir(name), "statcache")

    def rules_path(self, name: str) -> str:
        return os.path.join(self.area_state_dir(name), "rules")

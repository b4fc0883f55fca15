"""A server's repository kept in object storage (`vml serve REPO --store s3://BUCKET/PREFIX`).

The bucket is the repository: its refs (every namespace's), packs, index files and git
objects, in the layout of any s3:// remote, so several server processes (on one host or
many) serve one bucket behind one URL. REPO is this process's replica, a cache the
existing server code reads: before a request, `pull` brings what other processes wrote
(one listing when nothing changed: refs are compared by ETag); a push is stored in the
replica, then `publish` sends what the bucket lacks and `swap` moves each ref in the bucket
by a conditional write, the one place where two servers can race. Only when the bucket's
ref moved does the replica's. Nothing needs a lock: a crashed server leaves at most
packs no ref reaches, which `vml serve gc` condemns and removes like any other (see
vml/exchange/remote_gc.py).

The replica holds every git object (a few hundred bytes an entry) but only the blobs it
has used: its store reads what it lacks from the bucket (`RemoteSource`), keeps a blob
read on its own (a listing, a file shown on the web), and streams a fetch's blobs from
the bucket into the transfer without keeping them. A push's blobs stay until `trim` (run
by `vml serve gc`) drops the data chunks the bucket holds; listings stay. So a server's
disk holds its listings, uploads in flight and what it read since the last gc, not the
repository.
"""

from __future__ import annotations

import os
import threading

from vml.errors import UsageError
from vml.exchange.fetch import fetch_entries
from vml.exchange.push import manifests_of, send_objects
from vml.exchange.remote import RemoteRepository, RemoteSource, init_remote
from vml.objects.gc import GcStats, collect
from vml.objects.pack import TYPE_DATA
from vml.objects.store import BLOB_TYPE, ChunkStore
from vml.refs.git import GitDag
from vml.refs.namespace import REFS_PREFIX
from vml.repo import Repository
from vml.transport.base import open_transport, parse_url
from vml.transport.s3 import S3Transport

NAMESPACES = "refs/namespaces/"


class BucketStore:
    def __init__(self, repo: Repository, url: str):
        location = parse_url(url)
        if location.scheme != "s3":
            raise UsageError(f"--store {url}: a server's store is a bucket, s3://BUCKET/PREFIX")
        self.url = url
        self.replica = repo
        self.transport = S3Transport(location)
        self.remote = RemoteRepository(self.transport, repo.remote_index_cache)
        self.source = RemoteSource(self.remote)
        self._tags: dict[str, tuple[str, str]] = {}  # ref -> (ETag, target) as last read
        self.lock = threading.Lock()  # held by a pull, and by a push while its refs move (bucket, then replica)
        self._generation = 0  # pulls done: a request waits for one that started after it arrived

    @staticmethod
    def create(url: str) -> bool:
        """Make the repository in the bucket unless it is there; whether it was made."""
        transport = open_transport(url)
        try:
            if transport.exists("vml/format"):
                return False
            init_remote(transport)
            return True
        finally:
            transport.close()

    # -- from the bucket

    def pull(self) -> None:
        """Bring the replica up to the bucket: new git objects and blobs, then every
        namespace's refs as the bucket has them. Requests arriving during a pull wait for
        the next one, so none answers from refs older than its own arrival."""
        wanted = self._generation + 1
        with self.lock:
            if self._generation > wanted:
                return  # a pull that started after this request arrived has finished
            self._pull()
            self._generation += 1

    def _pull(self) -> None:
        refs = self.bucket_refs()
        with self.replica.shared_lock():
            git = self.bring(refs)
            for name, target in refs.items():
                if name.startswith(NAMESPACES) and git.ref_target(name) != target:
                    git.set_direct(name, target, "from the bucket")
            for name in git.ref_names(NAMESPACES):
                if name not in refs:
                    git.delete_ref(name)

    def bring(self, refs: dict[str, str]) -> GitDag:
        """The git objects of the entries `refs` reach that the replica lacks, once the
        bucket's index files name their blobs (which stay in the bucket)."""
        git = GitDag.open(self.replica.path)
        missing = sorted({target for target in refs.values() if not git.has_object(target)})
        if not missing:
            return git
        store = self.open_store()
        try:
            self.remote.forget_blobs()  # other processes add packs
            fetch_entries(git, store, self.remote, missing)  # (every blob is the source's: none is copied)
        finally:
            store.close()
        return git

    def open_store(self) -> ChunkStore:
        """The replica's store as it is now (packs other threads and processes added
        included), reading what it lacks from the bucket."""
        return ChunkStore(os.path.join(self.replica.vml_dir, "store"), source=self.source).open()

    def trim(self) -> GcStats:
        """Drop from the replica the data chunks the bucket holds (as its index files say
        now); listings and manifests stay, and anything the bucket lacks. Under the
        replica's exclusive lock: no request of a running server is reading it."""
        self.remote.forget_blobs()
        with self.replica.exclusive_lock():
            store = self.open_store()
            try:
                keep = {blob_id for blob_id, location in store.items()
                        if location[BLOB_TYPE] != TYPE_DATA or self.source.locate(blob_id) is None}
                return collect(store, keep)
            finally:
                store.close()

    def bucket_refs(self) -> dict[str, str]:
        """Every ref in the bucket: one listing, and a read of each that changed since."""
        refs = {}
        for name, tag in self.transport.list_tree_tagged("refs").items():
            known = self._tags.get(name)
            if known is None or known[0] != tag:
                found = self.transport.read_tagged(name)
                if found is None:
                    continue
                known = self._tags[name] = (found[1], found[0].decode("ascii", "replace").strip())
            refs[name] = known[1]
        return refs

    # -- to the bucket

    def publish(self, git: GitDag, store: ChunkStore, commits: list[str]) -> None:
        """Send what the bucket lacks of these entries: blobs in packs, one index, git objects."""
        self.remote.forget_blobs()  # other servers add packs
        send_objects(git, store, self.remote, commits, manifests_of(git, commits), store.tmp_dir, None)

    def swap(self, name: str, new: str, old: str | None) -> None:
        """Move a ref in the bucket if it is still at `old`; ConcurrentUpdate if not."""
        if not name.startswith(REFS_PREFIX):
            raise ValueError(name)
        self.remote.update_ref(name, new, old)
        self._tags.pop(name, None)

    def close(self) -> None:
        self.transport.close()

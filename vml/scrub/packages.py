"""Files that are exactly what a package published: dpkg's md5sums and conffile sums, and
pip's RECORD, all read from the tree itself. A file whose bytes match its package's sum
holds nothing of the user's (it is on every mirror), so a finding in it is the package's
own example or test key, kept as it is: an ssh binary carries the string `-----BEGIN
OPENSSH PRIVATE KEY-----`, a man page shows `ftp://user:password@host`."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

from vml.objects.manifest import KIND_DIR, KIND_FILE, Listing
from vml.objects.store import ChunkStore
from vml.objects.walk import node_at, read_content

DPKG_INFO = b"var/lib/dpkg/info"
DPKG_STATUS = b"var/lib/dpkg/status"
SUMS_LIMIT = 64 << 20


class PackageFiles:
    def __init__(self, load: Callable[..., Listing], store: ChunkStore, root_id: bytes):
        self.load = load
        self.store = store
        self.root_id = root_id
        self._md5: dict[bytes, bytes] | None = None  # path -> md5 hex, from dpkg
        self._records: dict[bytes, dict[bytes, bytes]] = {}  # a site-packages directory -> its files' sha256 (RECORD)

    def pristine(self, path: bytes, data: bytes) -> bool:
        """Whether `data` at `path` is byte for byte what a package installed there."""
        if self._md5 is None:
            self._md5 = self._dpkg_sums()
        expected = self._md5.get(path)
        if expected is not None:
            return hashlib.md5(data, usedforsecurity=False).hexdigest().encode() == expected
        for marker in (b"/site-packages/", b"/dist-packages/"):
            top, found, rest = path.partition(marker)
            if found:
                recorded = self._record(top + marker.rstrip(b"/")).get(rest)
                return recorded is not None and base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=") == recorded
        return False

    def _read(self, path: bytes) -> bytes | None:
        node = node_at(self.load, self.root_id, path)
        if node is None or node.kind != KIND_FILE or node.size > SUMS_LIMIT:
            return None
        return read_content(self.store, node)

    def _dpkg_sums(self) -> dict[bytes, bytes]:
        sums: dict[bytes, bytes] = {}
        info = node_at(self.load, self.root_id, DPKG_INFO)
        if info is not None and info.kind == KIND_DIR:
            for node in self.load(info.tree).nodes:
                if node.kind == KIND_FILE and node.name.endswith(b".md5sums") and node.size <= SUMS_LIMIT:
                    for line in read_content(self.store, node).splitlines():
                        digest, _, path = line.partition(b"  ")
                        if len(digest) == 32 and path:
                            sums[path.lstrip(b"/")] = digest
        for line in (self._read(DPKG_STATUS) or b"").splitlines():  # " /etc/ssl/openssl.cnf fe19..." under Conffiles:
            fields = line.split()
            if line.startswith(b" /") and len(fields) >= 2 and len(fields[1]) == 32:
                sums.setdefault(fields[0].lstrip(b"/"), fields[1])
        return sums

    def _record(self, site: bytes) -> dict[bytes, bytes]:
        if site not in self._records:
            recorded: dict[bytes, bytes] = {}
            directory = node_at(self.load, self.root_id, site)
            if directory is not None and directory.kind == KIND_DIR:
                for node in self.load(directory.tree).nodes:
                    if node.kind == KIND_DIR and node.name.endswith(b".dist-info"):
                        for line in (self._read(site + b"/" + node.name + b"/RECORD") or b"").splitlines():
                            name, _, rest = line.partition(b",")
                            digest = rest.partition(b",")[0]
                            if digest.startswith(b"sha256="):
                                recorded[name] = digest[len(b"sha256="):]
            self._records[site] = recorded
        return self._records[site]

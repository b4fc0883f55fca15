"""The callers of a test `vml serve` (tests/support/server.py) as the security tests play them:
the real CLI run with a token (or none, and no saved credentials either), raw HTTP requests
that httpx would tidy up, a bundle built by hand, and what the server holds afterwards."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from vml.exchange.bundle import TRANSFER, write_bundle
from vml.objects.ids import ObjectId
from vml.refs.git import GitDag
from vml.repo import Repository


@dataclass
class Cli:
    """The vml command line run as one caller: VML_TOKEN (empty: none) and a config
    directory with no credentials file, so nothing but `token` is ever sent."""

    token: str | None
    config_home: Path
    extra_env: dict[str, str] = field(default_factory=dict)  # SSL_CERT_FILE, say

    @property
    def env(self) -> dict[str, str]:
        return {"VML_TOKEN": self.token or "", "XDG_CONFIG_HOME": str(self.config_home), **self.extra_env}

    def __call__(self, cwd: Path, *args: str, check: bool = True):
        from conftest import Vml

        cwd.mkdir(parents=True, exist_ok=True)
        return Vml(cwd)(*args, check=check, env=self.env)


def server_refs(repo: Path) -> dict[str, str]:
    """Every ref of the server's repository and its target, read from disk now."""
    git = GitDag.open(str(repo))
    return {name: git.ref_target(name) for name in git.ref_names("refs/")}


def has_object(repo: Path, object_id: str) -> bool:
    return GitDag.open(str(repo)).has_object(object_id)


def push_bundle(client_repo: Path, entry: str, target: Path, *, requires: list[str] = (), base_roots: list[ObjectId] = ()) -> Path:
    """A transfer bundle of `entry` built as `vml push` builds one; `base_roots` are trees
    whose chunks are left out, as if the receiver had them."""
    repo = Repository(str(client_repo))
    try:
        write_bundle(repo.git, repo.store, str(target), entry=entry, ref=None, kind=TRANSFER, requires=list(requires),
                     tmp_dir=repo.store.tmp_dir, base_roots=list(base_roots))
    finally:
        repo.close()
    return target


def raw_request(url: str, request: bytes, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `request` as it is (no path normalisation) on a new connection; the status and body."""
    host, port = url.split("://", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as connection:
        connection.sendall(request)
        response = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            piece = connection.recv(65536)
            if not piece:
                break
            response += piece
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body

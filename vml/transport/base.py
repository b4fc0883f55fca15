"""The one protocol every transport implements, and the choice of transport for a URL.

A transport sees a repository as files under a root, named by relative '/'-paths. push and
fetch (vml/exchange) speak only this protocol, so an HTTP server or object storage can be
added as one more implementation.
"""

from __future__ import annotations

import builtins
import collections
import ipaddress
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Protocol

from vml.errors import TransportError, UsageError  # TransportError: re-exported for the transports


class MissingFile(TransportError):
    pass


@dataclass(frozen=True, slots=True)
class Location:
    """A parsed remote URL: scheme 'file' (a path), 'ssh' (user, host, port, path), 's3'
    (host: the bucket, path: the prefix), or 'http' and 'https' (a vml server: host, port,
    path ending in the namespace)."""

    scheme: str
    path: str
    host: str | None = None
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.scheme == "file":
            return self.path
        if self.scheme == "memory":
            return f"memory://{self.path}"
        who = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.scheme}://{who}{host}{port}{self.path}"

    @property
    def is_server(self) -> bool:
        """A vml server (vml serve), spoken to by vml/exchange/smart.py, not through files."""
        return self.scheme in ("http", "https")


def parse_url(url: str) -> Location:
    """A local path, file:///path, ssh://[user@]host[:port]/path, s3://bucket/prefix or a
    vml server's http(s)://host[:port]/namespace."""
    if "://" not in url:
        return Location("file", os.path.abspath(url))
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UsageError(f"{url}: a file:// URL names a path on this machine (file:///path)")
        return Location("file", urllib.parse.unquote(parts.path))
    if parts.scheme == "memory":  # tests: a repository in this process's memory
        return Location("memory", parts.netloc + parts.path)
    if parts.scheme == "ssh":
        port = _port(url, parts, "ssh://[user@]host[:port]/path")
        path = urllib.parse.unquote(parts.path) or "."
        user = urllib.parse.unquote(parts.username) if parts.username else None
        return Location("ssh", path, parts.hostname, user, port)
    if parts.scheme == "s3":
        return _s3_location(url, parts)
    if parts.scheme in ("http", "https"):
        port = _port(url, parts, f"{parts.scheme}://HOST[:PORT]/NAMESPACE")
        if parts.username or parts.password:
            raise UsageError(f"{url}: no user or password in a server URL: log in with 'vml login {parts.scheme}://{parts.hostname}'")
        return Location(parts.scheme, parts.path.rstrip("/"), parts.hostname, None, port)
    raise UsageError(f"{url}: unsupported URL scheme {parts.scheme!r} (use a path, file://, ssh://, s3:// or http(s):// for a vml server)")


def _s3_location(url: str, parts: urllib.parse.SplitResult) -> Location:
    """s3://BUCKET/PREFIX: the endpoint and credentials come from the AWS configuration."""
    bucket = parts.netloc
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket) or parts.query or parts.fragment:
        raise UsageError(f"{url}: not s3://BUCKET/PREFIX (a bucket name is 3-63 lowercase letters, digits, '.' and '-'; "
                         f"the endpoint comes from AWS_ENDPOINT_URL or the AWS profile)")
    prefix = urllib.parse.unquote(parts.path).strip("/")
    if prefix:
        check_relative(prefix)
    return Location("s3", "/" + prefix if prefix else "", bucket)


def _port(url: str, parts: urllib.parse.SplitResult, form: str) -> int | None:
    """The port of a URL that must name a host; a one-line error for what does not."""
    if not parts.hostname:
        raise UsageError(f"{url}: no host ({form})")
    try:
        return parts.port
    except ValueError:
        raise UsageError(f"{url}: the port is not a number") from None


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine (tokens may cross plain HTTP only to it)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_relative(path: str) -> str:
    """A path inside the transport's root: no absolute paths, no '..', no empty parts."""
    if path.startswith("/") or any(part in ("", ".", "..") for part in path.split("/")):
        raise TransportError(f"refusing a path outside the repository: {path!r}")
    return path


class Transport(Protocol):
    """Files of one repository. Writes are atomic: a reader sees a whole file or none."""

    location: Location
    bytes_sent: int
    bytes_received: int
    requests: collections.Counter[str]  # requests by operation, counted where they cost (object storage)
    parallel_writes: int  # how many uploads may run at once (object storage: several)
    renames: bool  # False for object storage: refs move by conditional writes (S3Transport.write_if)

    def read(self, path: str) -> bytes:
        """The whole file; MissingFile if it does not exist."""

    def read_ranges(self, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """(offset, length) pieces of one file, requested together; TransportError if short."""

    def size(self, path: str) -> int: ...

    def exists(self, path: str) -> bool: ...

    def list(self, path: str) -> list[str]:
        """Names in a directory, sorted; [] if it does not exist."""

    def list_tree(self, path: str) -> builtins.list[str]:  # (`list` here is the method above)
        """Every file below a directory, as paths from the root, sorted; [] if it does not exist."""

    def write(self, path: str, data: bytes) -> None:
        """Create or replace a file atomically (temp file, rename), making parent directories."""

    def write_from(self, path: str, local_path: str, progress=None) -> None:
        """Upload a local file atomically; `progress(n)` after each piece of n bytes."""

    def create_exclusive(self, path: str, data: bytes) -> bool:
        """Create a file only if it is absent (a lock); False if it exists."""

    def rename(self, source: str, target: str) -> None:
        """Rename, replacing `target` atomically."""

    def remove(self, path: str) -> None: ...

    def close(self) -> None: ...


def open_transport(url: str, *, accept_new_host_key: bool = False) -> Transport:
    location = parse_url(url)
    if location.scheme == "file":
        from vml.transport.local import LocalTransport

        return LocalTransport(location)
    if location.scheme == "memory":
        from vml.transport.memory import MemoryTransport

        return MemoryTransport(location)
    if location.is_server:
        raise UsageError(f"{url} is a vml server: it is not reached as files")
    if location.scheme == "s3":
        from vml.transport.s3 import S3Transport  # boto3 is loaded only for s3:// URLs

        return S3Transport(location)
    from vml.transport.sftp import SftpTransport  # paramiko is loaded only for ssh:// URLs

    return SftpTransport(location, accept_new_host_key=accept_new_host_key)

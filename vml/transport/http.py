"""A vml server reached over HTTP(S): httpx's one home.

The URL names a namespace: http://host:8080/alice is namespace alice on the server at
http://host:8080 (a server under a path works too: https://host/vml/alice). A token goes in
the Authorization header only, and never over plain HTTP except to this machine. Downloads
and uploads resume where a dropped connection left them.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from vml import __version__
from vml.credentials import token_for_url
from vml.errors import TransportError, UsageError, VmlError
from vml.transport.base import is_loopback

PIECE = 16 * 1024 * 1024  # bytes per upload request: each is a point to resume from
RETRIES = 5
TIMEOUT = httpx.Timeout(30.0, read=600.0)  # a server may take a while to check a large push


class NotAllowed(UsageError):
    """The server refused (401, 403): a token or a role is missing."""


class RefsMoved(UsageError):
    """409: the refs moved since they were listed (a push landed meanwhile)."""


@dataclass(frozen=True, slots=True)
class ServerUrl:
    server: str  # scheme://host[:port][/path]: the key for tokens
    namespace: str

    @classmethod
    def parse(cls, url: str) -> ServerUrl:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{url}: not an http(s)://HOST[:PORT]/NAMESPACE URL")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise UsageError(f"{url}: no user, password, query or fragment in a server URL (log in with 'vml login')")
        path = parts.path.rstrip("/")
        base, _, namespace = path.rpartition("/")
        return cls(f"{parts.scheme}://{parts.netloc}{base}", namespace)

    def __str__(self) -> str:
        return f"{self.server}/{self.namespace}" if self.namespace else self.server


def check_token_channel(server: str) -> None:
    parts = urllib.parse.urlsplit(server)
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        raise UsageError(f"refusing to send a token to {parts.hostname} over plain HTTP: use https:// (tokens are never sent in the clear, "
                         f"except to this machine)")


class HttpRemote:
    def __init__(self, url: str, *, token: str | None = None):
        self.url = ServerUrl.parse(url) if "://" in url else None
        if self.url is None:
            raise UsageError(f"{url}: not an http(s) URL")
        self.location = str(self.url)
        self.token = token if token is not None else token_for_url(url)
        if self.token:
            check_token_channel(self.url.server)
        headers = {"User-Agent": f"vml/{__version__}"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._client = httpx.Client(base_url=self.url.server, headers=headers, timeout=TIMEOUT, follow_redirects=False)
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        self._client.close()

    # -- requests

    def _request(self, method: str, path: str, *, retries: int = RETRIES, **kwargs) -> httpx.Response:
        """One request, repeated after a dropped connection when that is safe (`retries`)."""
        for attempt in range(retries):
            try:
                response = self._client.request(method, path, **kwargs)
                break
            except httpx.TransportError as error:
                if attempt == retries - 1 or _certificate_refused(error):
                    raise TransportError(f"{self.location}: {_reason(error)}") from None
                time.sleep(0.2 * 2**attempt)
        return self._checked(response)

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code < 400:
            return response
        try:
            message = response.json().get("error") or response.reason_phrase
        except ValueError:
            message = response.reason_phrase or f"HTTP {response.status_code}"
        where = self.location
        if response.status_code == 401:
            raise NotAllowed(f"{where}: {message}" if self.token else f"{where}: log in first: vml login {self.url.server if self.url else where}")
        if response.status_code == 403:
            raise NotAllowed(f"{where}: {message}" + ("" if self.token else f" (log in: vml login {self.url.server if self.url else where})"))
        if response.status_code == 409:
            raise RefsMoved(f"{where}: {message}")
        if response.status_code in (400, 404, 413):
            raise UsageError(f"{where}: {message}")
        raise TransportError(f"{where}: the server failed (HTTP {response.status_code}: {message})")

    def _ns(self, rest: str) -> str:
        assert self.url is not None
        if not self.url.namespace:
            raise UsageError(f"{self.location}: name a namespace, e.g. {self.url.server}/YOURNAME")
        return f"/api/v1/ns/{urllib.parse.quote(self.url.namespace, safe='')}/{rest}"

    # -- the protocol

    def whoami(self) -> dict:
        return self._request("GET", "/api/v1/whoami").json()

    def refs(self) -> tuple[dict[str, str], str | None]:
        body = self._request("GET", self._ns("refs")).json()
        return dict(body.get("refs", {})), body.get("head")

    def fetch(self, want: list[str], have: list[str], target: str, progress: Callable[[int, int], None] | None = None) -> int:
        """Ask for a transfer of `want` beyond `have`, download it to `target`; its size."""
        body = self._request("POST", self._ns("fetch"), json={"want": want, "have": have}).json()
        transfer, size = body["transfer"], int(body["size"])
        self.download(f"/api/v1/transfers/{transfer}", target, size, progress)
        try:
            self._client.delete(f"/api/v1/transfers/{transfer}")
        except httpx.TransportError:
            pass  # the server drops it after an hour anyway
        return size

    def download(self, path: str, target: str, size: int | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        """GET `path` on the server into `target`, resuming with Range after a dropped
        connection; `size`, when known, is checked."""
        with open(target, "wb") as sink:
            for attempt in range(RETRIES):
                done = sink.tell()
                if size is not None and done == size:
                    break
                headers = {"Range": f"bytes={done}-"} if done else {}
                try:
                    with self._client.stream("GET", path, headers=headers) as response:
                        self._checked_stream(response)
                        if done and response.status_code != 206:
                            sink.seek(0)
                            sink.truncate()
                        if size is None and response.status_code == 200 and "content-length" in response.headers:
                            size = int(response.headers["content-length"])
                        for piece in response.iter_bytes(1024 * 1024):
                            sink.write(piece)
                            self.bytes_received += len(piece)
                            if progress is not None:
                                progress(sink.tell(), size or 0)
                    if size is None:
                        break
                except httpx.TransportError as error:
                    if attempt == RETRIES - 1:
                        raise TransportError(f"{self.location}: the download broke off ({_reason(error)})") from None
                    time.sleep(0.2 * 2**attempt)
            if size is not None and sink.tell() != size:
                raise TransportError(f"{self.location}: the download is {sink.tell()} bytes, not {size}")
            return sink.tell()

    def _checked_stream(self, response: httpx.Response) -> None:
        if response.status_code >= 400:
            response.read()
            self._checked(response)

    def push(self, bundle: str, updates: list[dict], progress: Callable[[int, int], None] | None = None, *, growing=None) -> list[dict]:
        """Upload a transfer bundle in pieces (resuming after a drop), then ask for the updates.
        `growing` (vml/exchange/smart.py GrowingFile): the bundle is still being written;
        each piece is sent as soon as it is there."""
        upload = self._request("POST", self._ns("uploads")).json()["upload"]
        path = f"/api/v1/uploads/{upload}"
        offset = 0
        failures = 0
        with open(bundle, "rb") as source:
            while True:
                size, finished = growing.wait_for(offset + PIECE) if growing is not None else (os.path.getsize(bundle), True)
                if offset >= size and finished:
                    break
                source.seek(offset)
                piece = source.read(min(PIECE, size - offset))
                try:
                    response = self._client.patch(path, content=piece, headers={"Upload-Offset": str(offset)})
                    if response.status_code == 409 and "upload-offset" in response.headers:
                        offset = int(response.headers["upload-offset"])  # it has more (or less) than we thought
                        continue
                    self._checked(response)
                except httpx.TransportError as error:
                    failures += 1
                    if failures >= RETRIES:
                        raise TransportError(f"{self.location}: the upload broke off ({_reason(error)})") from None
                    time.sleep(0.2 * 2**failures)
                    offset = int(self._request("HEAD", path).headers.get("upload-offset", "0"))
                    continue
                offset = int(response.headers.get("upload-offset", offset + len(piece)))
                self.bytes_sent += len(piece)
                if progress is not None:
                    progress(offset, size)
        # Not repeated: had the refs moved before the connection dropped, a second try would
        # find the upload gone; a new push then finds the refs where this one left them.
        return list(self._request("POST", f"{path}/apply", retries=1, json={"updates": updates}).json()["refs"])


def download_url(url: str, target: str) -> int:
    """A file the server offers (an entry's bundle, say) into `target`, with the token kept
    for the server whose address begins the URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{url}: not an http(s) URL")
    remote = HttpRemote(f"{parts.scheme}://{parts.netloc}/", token=token_for_url(url))
    try:
        return remote.download(parts.path + (f"?{parts.query}" if parts.query else ""), target)
    finally:
        remote.close()


def _public_client() -> httpx.Client:
    """A client for public files (a catalog, an image): no token goes to them, and
    redirects are followed (mirrors and CDNs answer with them)."""
    return httpx.Client(headers={"User-Agent": f"vml/{__version__}"}, timeout=TIMEOUT, follow_redirects=True)


def _public_failure(url: str, response: httpx.Response) -> VmlError:
    if response.status_code in (401, 403, 404, 410):
        return UsageError(f"{url}: {response.reason_phrase or 'refused'} (HTTP {response.status_code})")
    return TransportError(f"{url}: the server failed (HTTP {response.status_code} {response.reason_phrase})")


def read_public(url: str, limit: int) -> bytes:
    """A small public file (a catalog), whole; refused when it is larger than `limit`."""
    with _public_client() as client:
        for attempt in range(RETRIES):
            try:
                with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise _public_failure(url, response)
                    body = bytearray()
                    for piece in response.iter_bytes():
                        body += piece
                        if len(body) > limit:
                            raise UsageError(f"{url}: larger than {limit:,} bytes, not a catalog")
                    return bytes(body)
            except httpx.TransportError as error:
                if attempt == RETRIES - 1 or _certificate_refused(error):
                    raise TransportError(f"{url}: {_reason(error)}") from None
                time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def download_public(url: str, target: str, *, size: int | None = None, progress: Callable[[int, int], None] | None = None) -> int:
    """A public file into `target`, continuing what an earlier, interrupted download left in
    it (a Range request; a server that ignores Range sends it all again); the target's size.
    A dropped connection is resumed here up to RETRIES times. The caller checks the digest."""
    with _public_client() as client, open(target, "ab") as sink:
        failures = 0
        while True:
            try:
                if _download_rest(client, url, sink, size, progress):
                    return sink.tell()
                reason = f"the server sent {sink.tell():,} of {size:,} bytes" if size is not None else "the server answered another range"
            except httpx.TransportError as error:
                if _certificate_refused(error):
                    raise TransportError(f"{url}: {_reason(error)}") from None
                reason = _reason(error)
            failures += 1
            if failures >= RETRIES:
                raise TransportError(f"{url}: the download broke off after {sink.tell():,} bytes ({reason}); "
                                     f"run the command again to go on from there")
            time.sleep(0.2 * 2**failures)


def _download_rest(client: httpx.Client, url: str, sink, size: int | None, progress: Callable[[int, int], None] | None) -> bool:
    """One request for what `sink` lacks; whether the file is whole now (as far as `size`
    tells: without one, a response that ended cleanly)."""
    done = sink.tell()
    if size is not None and done > size:  # not the file the catalog names: start again
        sink.truncate(0)
        done = 0
    if size is not None and done == size:
        return True
    with client.stream("GET", url, headers={"Range": f"bytes={done}-"} if done else {}) as response:
        if response.status_code == 416 and done:  # the server has nothing past what we hold
            if size is None:
                return True
            sink.truncate(0)  # ... yet less than the catalog says: what we hold is another file
            return False
        if response.status_code not in (200, 206):
            raise _public_failure(url, response)
        if response.status_code == 206 and not response.headers.get("content-range", "").startswith(f"bytes {done}-"):
            sink.truncate(0)  # another piece than the one asked for: ask for the whole file
            return False
        if response.status_code == 200:
            sink.truncate(0)  # the whole file, from its first byte
        total = size or _whole_size(response, sink.tell())
        for piece in response.iter_bytes():  # as it arrives: a drop loses none of what came
            sink.write(piece)
            if progress is not None:
                progress(sink.tell(), total)
        sink.flush()
    return size is None or sink.tell() >= size


def _whole_size(response: httpx.Response, start: int) -> int:
    """The file's whole size as the response tells it (0: unknown)."""
    whole = response.headers.get("content-range", "").rpartition("/")[2]
    if whole.isdigit():
        return int(whole)
    length = response.headers.get("content-length", "")
    return start + int(length) if length.isdigit() else 0


def _certificate_refused(error: httpx.TransportError) -> bool:
    """A TLS certificate this client does not trust: asking again will not change that."""
    return isinstance(error, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(error)


def _reason(error: httpx.TransportError) -> str:
    text = str(error) or type(error).__name__
    if _certificate_refused(error):
        return f"the server's certificate is not trusted ({text}); give its CA with SSL_CERT_FILE=FILE"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect ({text})"
    return text

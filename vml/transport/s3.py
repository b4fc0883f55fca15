"""A repository as objects in an S3 bucket: `s3://BUCKET/PREFIX` (boto3's one home).

Configured the way AWS tools are: credentials, region and endpoint from `AWS_*` variables
(`AWS_ENDPOINT_URL`, `AWS_PROFILE`, ...) and `~/.aws/config`; a custom endpoint (Ceph RGW,
SeaweedFS, MinIO) is addressed path-style unless the profile's `s3.addressing_style` says
otherwise. Any S3 server that honours `If-None-Match: *` and `If-Match` on PUT serves:
object storage has no rename and no lock, so a ref moves by a conditional PUT (see
`write_if`) and nothing else depends on an order of writes that a crash could break.

Every HTTP request is counted by operation (`requests`), for the figures push and fetch
report: object storage charges by the request.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from vml.transport.base import Location, MissingFile, TransportError, check_relative

PARALLEL = 8  # requests in flight for ranged reads and ref reads
JOIN_GAP = 256 * 1024  # ranges of one object closer than this are fetched in one GET
UPLOADS = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=16 << 20, max_concurrency=4)
MISSING = ("NoSuchKey", "404", "NotFound")
REFUSED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "AuthorizationHeaderMalformed")
PRECONDITION = ("PreconditionFailed", "412")
CONFLICT = ("ConditionalRequestConflict", "409", "OperationAborted")  # another conditional write in flight: try again


class S3Transport:
    renames = False  # no rename: refs move by conditional writes (write_if)
    parallel_writes = 4  # packs uploaded at once

    def __init__(self, location: Location):
        self.location = location
        self.bucket = location.host or ""
        self.prefix = location.path.strip("/")
        self.bytes_sent = 0
        self.bytes_received = 0
        self.requests: collections.Counter[str] = collections.Counter()
        self._client = _client()
        self._client.meta.events.register("before-send.s3.*", self._count)
        self._pool = ThreadPoolExecutor(PARALLEL, thread_name_prefix="vml-s3")

    def _count(self, event_name: str = "", **_kwargs) -> None:
        self.requests[event_name.rsplit(".", 1)[-1]] += 1

    def _key(self, path: str) -> str:
        check_relative(path)
        return f"{self.prefix}/{path}" if self.prefix else path

    @contextlib.contextmanager
    def _errors(self, path: str) -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as error:
            raise self._client_error(path, error) from None
        except botocore.exceptions.NoCredentialsError:
            raise TransportError(f"{self.location}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                 f"or AWS_PROFILE)") from None
        except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectionClosedError,
                botocore.exceptions.ReadTimeoutError) as error:
            raise TransportError(f"{self.location}: cannot reach the S3 endpoint ({error})") from None
        except botocore.exceptions.BotoCoreError as error:
            raise TransportError(f"{self.location}: {error}") from None

    def _client_error(self, path: str, error: botocore.exceptions.ClientError) -> TransportError:
        code = _code(error)
        if code == "NoSuchBucket":
            return TransportError(f"{self.location}: the bucket {self.bucket!r} does not exist (make it first, e.g. 'aws s3 mb s3://{self.bucket}')")
        if code in MISSING:
            return MissingFile(f"{self.location}: {path} does not exist")
        if code in REFUSED:
            return TransportError(f"{self.location}: access denied ({code}): check the S3 credentials and the bucket's policy")
        message = error.response.get("Error", {}).get("Message") or code
        return TransportError(f"{self.location}: {path}: {message}")

    # -- reading

    def read(self, path: str) -> bytes:
        with self._errors(path):
            data = self._client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()
        self.bytes_received += len(data)
        return data

    def read_tagged(self, path: str) -> tuple[bytes, str] | None:
        """The content and ETag of an object, None if it is absent (for `write_if`)."""
        try:
            with self._errors(path):
                answer = self._client.get_object(Bucket=self.bucket, Key=self._key(path))
                data = answer["Body"].read()
        except MissingFile:
            return None
        self.bytes_received += len(data)
        return data, answer["ETag"]

    def read_ranges(self, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Ranges close together are read in one GET; the GETs run in parallel."""
        key = self._key(path)
        spans = _join(ranges)

        def get(span: tuple[int, int]) -> bytes:
            start, end = span
            with self._errors(path):
                answer = self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")
                return answer["Body"].read()

        bodies = list(self._pool.map(get, spans))
        pieces = []
        for offset, length in ranges:
            for (start, end), body in zip(spans, bodies):
                if start <= offset and offset + length <= end:
                    piece = body[offset - start : offset - start + length]
                    break
            if len(piece) != length:
                raise TransportError(f"{self.location}: {path} is shorter than its index says (truncated?)")
            pieces.append(piece)
        self.bytes_received += sum(len(body) for body in bodies)
        return pieces

    def size(self, path: str) -> int:
        with self._errors(path):
            return self._client.head_object(Bucket=self.bucket, Key=self._key(path))["ContentLength"]

    def exists(self, path: str) -> bool:
        try:
            self.size(path)
        except MissingFile:
            return False
        return True

    def list(self, path: str) -> list[str]:
        """One request per 1,000 names (a delimited listing)."""
        prefix = self._key(path) + "/"
        names = []
        for page in self._pages(path, Prefix=prefix, Delimiter="/"):
            names.extend(item["Prefix"][len(prefix) : -1] for item in page.get("CommonPrefixes", []))
            names.extend(item["Key"][len(prefix) :] for item in page.get("Contents", []))
        return sorted(names)

    def list_tree(self, path: str) -> list[str]:
        """One request per 1,000 objects, however deep the tree."""
        return sorted(name for name, _modified in self.list_tree_dated(path)[0])

    def list_tree_dated(self, path: str) -> tuple[list[tuple[str, float]], float]:
        """Every object below a directory with its last-modified time, and the storage's
        own time now (seconds since the epoch, both by the storage's clock)."""
        items, now = self._list_items(path)
        return [(name, item["LastModified"].timestamp()) for name, item in items], now

    def list_tree_tagged(self, path: str) -> dict[str, str]:
        """Every object below a directory and its ETag: what changed, without reading it."""
        return {name: item["ETag"] for name, item in self._list_items(path)[0]}

    def _list_items(self, path: str) -> tuple[list[tuple[str, dict]], float]:
        prefix = self._key(path) + "/"
        strip = len(self._key(path)) - len(path)
        found, now = [], time.time()
        for page in self._pages(path, Prefix=prefix):
            found.extend((item["Key"][strip:], item) for item in page.get("Contents", []))
            date = page.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
            if date:
                now = email.utils.parsedate_to_datetime(date).timestamp()
        return found, now

    def _pages(self, path: str, **arguments) -> Iterator[dict]:
        with self._errors(path):
            yield from self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, **arguments)

    # -- writing

    def read_to(self, path: str, local_path: str) -> None:
        """Download an object into a local file (a bundle: in parallel ranges when large)."""
        with self._errors(path):
            self._client.download_file(self.bucket, self._key(path), local_path, Config=UPLOADS)
        self.bytes_received += os.path.getsize(local_path)

    def write(self, path: str, data: bytes) -> None:
        with self._errors(path):
            self._client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data)
        self.bytes_sent += len(data)

    def write_from(self, path: str, local_path: str, progress=None) -> None:
        """One PUT up to 64 MiB (a pack), a multipart upload above (a bundle)."""

        def moved(count: int) -> None:
            self.bytes_sent += count
            if progress is not None:
                progress(count)

        with self._errors(path):
            self._client.upload_file(local_path, self.bucket, self._key(path), Config=UPLOADS, Callback=moved)

    def create_exclusive(self, path: str, data: bytes) -> bool:
        return self.write_if(path, data, None)

    def write_if(self, path: str, data: bytes, tag: str | None) -> bool:
        """Write only if the object still has ETag `tag` (None: only if it is absent);
        False if another writer got there first. The server decides, atomically."""
        # The ETag bare, without its quotes: Ceph RGW 16 compares If-Match with the stored
        # ETag unquoted, so the quoted form never matches there; AWS and SeaweedFS take both.
        condition = {"IfNoneMatch": "*"} if tag is None else {"IfMatch": tag.strip('"')}
        for attempt in range(20):
            with self._errors(path):
                try:
                    self._client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data, **condition)
                except botocore.exceptions.ClientError as error:
                    code = _code(error)
                    if code in PRECONDITION or (tag is not None and code in MISSING):
                        return False
                    if code not in CONFLICT:
                        raise
                    time.sleep(0.05 * (attempt + 1))
                    continue
            self.bytes_sent += len(data)
            return True
        raise TransportError(f"{self.location}: {path}: conditional writes kept conflicting")

    def rename(self, source: str, target: str) -> None:
        raise TransportError(f"{self.location}: object storage has no rename ({source})")

    def remove(self, path: str) -> None:
        with self._errors(path):
            self._client.delete_object(Bucket=self.bucket, Key=self._key(path))

    def remove_many(self, paths: list[str]) -> None:
        """Up to 1,000 objects per request."""
        for start in range(0, len(paths), 1000):
            batch = paths[start : start + 1000]
            with self._errors(batch[0]):
                answer = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(path)} for path in batch], "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise TransportError(f"{self.location}: cannot delete {first.get('Key')}: {first.get('Message') or first.get('Code')}")

    def close(self) -> None:
        self._pool.shutdown()


def _client():
    """An S3 client as the AWS tools would make it, path-style for a custom endpoint."""
    session = boto3.session.Session()
    style = (session._session.get_scoped_config().get("s3") or {}).get("addressing_style")
    custom = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or session._session.get_config_variable("endpoint_url")
    config = botocore.config.Config(
        s3={"addressing_style": style or ("path" if custom else "auto")},
        retries={"mode": "standard", "max_attempts": 5},
        request_checksum_calculation="when_required",  # S3-compatible servers differ on the newer checksum headers
        response_checksum_validation="when_required",  # every object vml reads is checked against its own id
        max_pool_connections=PARALLEL * 2,
        connect_timeout=10, read_timeout=60,
    )
    return session.client("s3", config=config)


def _code(error: botocore.exceptions.ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", "")) or str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _join(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(start, end) spans covering the ranges, neighbours closer than JOIN_GAP joined."""
    spans: list[list[int]] = []
    for offset, length in sorted(ranges):
        if spans and offset <= spans[-1][1] + JOIN_GAP:
            spans[-1][1] = max(spans[-1][1], offset + length)
        else:
            spans.append([offset, offset + length])
    return [(start, end) for start, end in spans]


def object_transport(url: str) -> tuple[S3Transport, str]:
    """The bucket of an s3://BUCKET/KEY URL naming one object (a bundle), and the key."""
    from vml.transport.base import parse_url

    location = parse_url(url)
    key = location.path.strip("/")
    if location.scheme != "s3" or not key:
        raise TransportError(f"{url}: not s3://BUCKET/KEY")
    return S3Transport(Location("s3", "", location.host)), key

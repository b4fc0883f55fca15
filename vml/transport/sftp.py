"""A repository on another machine, reached over SFTP (connections: see vml/ssh.py).

Any ordinary sshd serves: vml needs nothing installed on the other side.
"""

from __future__ import annotations

import collections
import errno
import posixpath
import stat

from vml.durable import temp_name
from vml.ssh import SSH_ERRORS, SSHException, connect, openssh_sftp
from vml.transport.base import Location, MissingFile, TransportError, check_relative

PIECE = 1024 * 1024


class SftpTransport:
    renames = True
    parallel_writes = 1

    def __init__(self, location: Location, *, accept_new_host_key: bool = False):
        self.location = location
        self.bytes_sent = 0
        self.bytes_received = 0
        self.requests: collections.Counter[str] = collections.Counter()  # counted by object storage only
        # paramiko logs in first: its errors are one line, and it learns a new host key when
        # asked to; the files then go through OpenSSH's connection where it logs in too.
        self._client = connect(location.host or "", port=location.port, user=location.user, accept_new_host_key=accept_new_host_key)
        fast = openssh_sftp(location.host or "", port=location.port, user=location.user)
        try:
            self._sftp = fast if fast is not None else self._client.open_sftp()
        except SSH_ERRORS as error:
            self._client.close()
            raise TransportError(f"{location}: cannot start SFTP ({error or type(error).__name__})") from None
        if fast is not None:
            self._client.close()
        self._made: set[str] = set()  # directories known to exist: one stat each, not one per write
        root = location.path
        self.root = root[3:] if root.startswith("/~/") else root  # ssh://host/~/repo: relative to home

    def _path(self, path: str) -> str:
        return posixpath.join(self.root, check_relative(path))

    def _error(self, path: str, error: Exception) -> TransportError:
        if isinstance(error, FileNotFoundError) or getattr(error, "errno", None) == errno.ENOENT:
            return MissingFile(f"{self.location}: {path} does not exist")
        if isinstance(error, (EOFError, SSHException, ConnectionError)):
            return TransportError(f"{self.location}: the connection dropped ({error or type(error).__name__})")
        return TransportError(f"{self.location}: {path}: {getattr(error, 'strerror', None) or error}")

    def read(self, path: str) -> bytes:
        try:
            with self._sftp.open(self._path(path), "rb") as source:
                source.prefetch()
                data = source.read()
        except SSH_ERRORS as error:
            raise self._error(path, error) from None
        self.bytes_received += len(data)
        return data

    def read_ranges(self, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        try:
            with self._sftp.open(self._path(path), "rb") as source:
                pieces = list(source.readv(ranges))
        except SSH_ERRORS as error:
            raise self._error(path, error) from None
        for piece, (_offset, length) in zip(pieces, ranges):
            if len(piece) != length:
                raise TransportError(f"{self.location}: {path} is shorter than its index says (truncated?)")
            self.bytes_received += length
        return pieces

    def size(self, path: str) -> int:
        try:
            return self._sftp.stat(self._path(path)).st_size
        except SSH_ERRORS as error:
            raise self._error(path, error) from None

    def exists(self, path: str) -> bool:
        try:
            self._sftp.stat(self._path(path))
        except FileNotFoundError:
            return False
        except SSH_ERRORS as error:
            raise self._error(path, error) from None
        return True

    def list(self, path: str) -> list[str]:
        try:
            return sorted(self._sftp.listdir(self._path(path)))
        except FileNotFoundError:
            return []
        except SSH_ERRORS as error:
            raise self._error(path, error) from None

    def list_tree(self, path: str) -> list[str]:
        found = []
        try:
            items = self._sftp.listdir_attr(self._path(path))
        except FileNotFoundError:
            return []
        except SSH_ERRORS as error:
            raise self._error(path, error) from None
        for item in items:
            child = f"{path}/{item.filename}"
            if stat.S_ISDIR(item.st_mode or 0):
                found.extend(self.list_tree(child))
            else:
                found.append(child)
        return sorted(found)

    def _makedirs(self, directory: str) -> None:
        if directory in self._made:
            return
        missing = []
        while directory not in ("", "/", "."):
            try:
                if stat.S_ISDIR(self._sftp.stat(directory).st_mode):
                    break
            except FileNotFoundError:
                missing.append(directory)
                directory = posixpath.dirname(directory)
                continue
            raise TransportError(f"{self.location}: {directory} is not a directory")
        for path in reversed(missing):
            try:
                self._sftp.mkdir(path)
            except OSError:
                if not self._exists_absolute(path):  # made by another writer meanwhile is fine
                    raise
        self._made.add(directory)

    def _exists_absolute(self, path: str) -> bool:
        try:
            self._sftp.stat(path)
        except FileNotFoundError:
            return False
        return True

    def write(self, path: str, data: bytes) -> None:
        self._write_atomically(path, [data])

    def write_from(self, path: str, local_path: str, progress=None) -> None:
        with open(local_path, "rb") as source:
            self._write_atomically(path, iter(lambda: source.read(PIECE), b""), progress)

    def _write_atomically(self, path: str, pieces, progress=None) -> None:
        # SFTP has no fsync: the file is whole when renamed, durable when the server's disk
        # says so. A crash of the server between the two is the one case this cannot cover.
        target = self._path(path)
        temp = temp_name(target)
        try:
            self._makedirs(posixpath.dirname(target))
            with self._sftp.open(temp, "wxb") as sink:
                sink.set_pipelined(True)
                for piece in pieces:
                    sink.write(piece)
                    self.bytes_sent += len(piece)
                    if progress is not None:
                        progress(len(piece))
            self._sftp.posix_rename(temp, target)
        except SSH_ERRORS as error:
            self._remove_quietly(temp)
            raise self._error(path, error) from None
        except BaseException:
            self._remove_quietly(temp)
            raise

    def _remove_quietly(self, absolute: str) -> None:
        try:
            self._sftp.remove(absolute)
        except SSH_ERRORS:
            pass  # the connection is gone: the temp file stays, and gc removes it

    def create_exclusive(self, path: str, data: bytes) -> bool:
        target = self._path(path)
        try:
            self._makedirs(posixpath.dirname(target))
            with self._sftp.open(target, "wxb") as sink:
                sink.write(data)
        except OSError as error:
            if self.exists(path):
                return False
            raise self._error(path, error) from None
        except (EOFError, SSHException) as error:
            raise self._error(path, error) from None
        self.bytes_sent += len(data)
        return True

    def rename(self, source: str, target: str) -> None:
        try:
            self._sftp.posix_rename(self._path(source), self._path(target))
        except SSH_ERRORS as error:
            raise self._error(source, error) from None

    def remove(self, path: str) -> None:
        try:
            self._sftp.remove(self._path(path))
        except FileNotFoundError:
            pass
        except SSH_ERRORS as error:
            raise self._error(path, error) from None

    def close(self) -> None:
        self._sftp.close()
        self._client.close()

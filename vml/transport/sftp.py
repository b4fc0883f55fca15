"""A repository on another machine, reached over SFTP with paramiko (the one module that imports it).

Any ordinary sshd serves: vml needs nothing installed on the other side. Connection
settings follow OpenSSH's client: ~/.ssh/config (HostName, User, Port, IdentityFile,
UserKnownHostsFile), the SSH agent, the default key files and known_hosts. An unknown host
key is refused unless the caller explicitly accepts new keys (then it is remembered).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import uuid

import paramiko

from vml.transport.base import Location, MissingFile, TransportError, check_relative

PIECE = 1024 * 1024
CONNECT_TIMEOUT = 20


class _RememberNewKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: str):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key) -> None:
        # paramiko names a host on another port "[host]:port", as known_hosts does.
        os.makedirs(os.path.dirname(self.known_hosts), mode=0o700, exist_ok=True)
        with open(self.known_hosts, "a") as known:
            known.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


def _ssh_config(host: str) -> dict:
    path = os.path.expanduser("~/.ssh/config")
    if not os.path.exists(path):
        return {}
    try:
        return paramiko.SSHConfig.from_path(path).lookup(host)
    except (OSError, paramiko.SSHException) as error:
        raise TransportError(f"cannot read {path}: {error}") from None


class SftpTransport:
    def __init__(self, location: Location, *, accept_new_host_key: bool = False):
        self.location = location
        self.bytes_sent = 0
        self.bytes_received = 0
        settings = _ssh_config(location.host or "")
        hostname = settings.get("hostname", location.host)
        port = location.port or int(settings.get("port", 22))
        user = location.user or settings.get("user") or os.environ.get("USER") or "root"
        where = f"{hostname}:{port}"
        known_hosts = [os.path.expanduser(p) for p in settings.get("userknownhostsfile", "~/.ssh/known_hosts").split()]
        self._client = paramiko.SSHClient()
        for path in known_hosts:
            if os.path.exists(path):
                try:
                    self._client.load_host_keys(path)
                except (OSError, paramiko.SSHException) as error:
                    raise TransportError(f"cannot read {path}: {error}") from None
        policy = _RememberNewKey(known_hosts[0]) if accept_new_host_key else paramiko.RejectPolicy()
        self._client.set_missing_host_key_policy(policy)
        keys = [os.path.expanduser(p) for p in settings.get("identityfile", [])]
        try:
            self._client.connect(
                hostname,
                port=port,
                username=user,
                key_filename=[k for k in keys if os.path.exists(k)] or None,
                allow_agent=True,
                look_for_keys=True,
                timeout=CONNECT_TIMEOUT,
                banner_timeout=CONNECT_TIMEOUT,
                auth_timeout=CONNECT_TIMEOUT,
            )
            self._sftp = self._client.open_sftp()
        except paramiko.BadHostKeyException:
            self._client.close()
            raise TransportError(
                f"the host key of {where} differs from the one in {known_hosts[0]}: "
                f"someone may be intercepting the connection; check it before removing the old key"
            ) from None
        except paramiko.AuthenticationException:
            self._client.close()
            raise TransportError(f"{user}@{where} refused every key (agent, {', '.join(keys) or '~/.ssh/id_*'})") from None
        except paramiko.SSHException as error:
            self._client.close()
            if "No authentication methods available" in str(error):
                raise TransportError(
                    f"no key to log in to {user}@{where} with: no SSH agent, no ~/.ssh/id_* and no IdentityFile in ~/.ssh/config"
                ) from None
            if "not found in known_hosts" in str(error):
                raise TransportError(
                    f"the host key of {where} is unknown (not in {known_hosts[0]}); if you trust it, "
                    f"run again with --accept-new-host-key or add it with ssh-keyscan"
                ) from None
            raise TransportError(f"ssh to {where}: {error}") from None
        except (OSError, EOFError) as error:
            self._client.close()
            raise TransportError(f"cannot connect to {where}: {getattr(error, 'strerror', None) or error or 'connection closed'}") from None
        self._made: set[str] = set()  # directories known to exist: one stat each, not one per write
        root = location.path
        self.root = root[3:] if root.startswith("/~/") else root  # ssh://host/~/repo: relative to home

    def _path(self, path: str) -> str:
        return posixpath.join(self.root, check_relative(path))

    def _error(self, path: str, error: Exception) -> TransportError:
        if isinstance(error, FileNotFoundError) or getattr(error, "errno", None) == errno.ENOENT:
            return MissingFile(f"{self.location}: {path} does not exist")
        if isinstance(error, (EOFError, paramiko.SSHException)):
            return TransportError(f"{self.location}: the connection dropped ({error or type(error).__name__})")
        return TransportError(f"{self.location}: {path}: {getattr(error, 'strerror', None) or error}")

    def read(self, path: str) -> bytes:
        try:
            with self._sftp.open(self._path(path), "rb") as source:
                source.prefetch()
                data = source.read()
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self._error(path, error) from None
        self.bytes_received += len(data)
        return data

    def read_ranges(self, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        try:
            with self._sftp.open(self._path(path), "rb") as source:
                pieces = list(source.readv(ranges))
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self._error(path, error) from None
        for piece, (_offset, length) in zip(pieces, ranges):
            if len(piece) != length:
                raise TransportError(f"{self.location}: {path} is shorter than its index says (truncated?)")
            self.bytes_received += length
        return pieces

    def size(self, path: str) -> int:
        try:
            return self._sftp.stat(self._path(path)).st_size
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self._error(path, error) from None

    def exists(self, path: str) -> bool:
        try:
            self._sftp.stat(self._path(path))
        except FileNotFoundError:
            return False
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self._error(path, error) from None
        return True

    def list(self, path: str) -> list[str]:
        try:
            return sorted(self._sftp.listdir(self._path(path)))
        except FileNotFoundError:
            return []
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self._error(path, error) from None

    def list_tree(self, path: str) -> list[str]:
        found = []
        try:
            items = self._sftp.listdir_attr(self._path(path))
        except FileNotFoundError:
            return []
        except (OSError, EOFError, paramiko.SSHException) as error:
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
        temp = f"{target}.{uuid.uuid4().hex}.tmp"
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
        except (OSError, EOFError, paramiko.SSHException) as error:
            self._remove_quietly(temp)
            raise self._error(path, error) from None
        except BaseException:
            self._remove_quietly(temp)
            raise

    def _remove_quietly(self, absolute: str) -> None:
        try:
            self._sftp.remove(absolute)
        except (OSError, EOFError, paramiko.SSHException):
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
        except (EOFError, paramiko.SSHException) as error:
            raise self._error(path, error) from None
        self.bytes_sent += len(data)
        return True

    def rename(self, source: str, target: str) -> None:
        try:
            self._sftp.posix_rename(self._path(source), self._path(target))
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self._error(source, error) from None

    def remove(self, path: str) -> None:
        try:
            self._sftp.remove(self._path(path))
        except FileNotFoundError:
            pass
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise self._error(path, error) from None

    def close(self) -> None:
        self._client.close()

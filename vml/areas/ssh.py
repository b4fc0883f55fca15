"""The `ssh` working area: a live guest (or any machine) reached over SSH.

The guest needs only sshd, a POSIX shell, GNU find and GNU tar. A capture asks for a
metadata listing (find -printf), then for one tar stream of what the stat cache cannot
vouch for; a restore sends the paths to delete and one tar stream of what changed.
Every command runs under `sh -c` below the area's root (`--root`, default /).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import secrets
import shlex
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vml.areas.capture import FIND_FORMAT, CaptureProgress, CaptureResult, GuestCapture, GuestListing, ListingParser, parse_names
from vml.areas.capture.guest import PARALLEL_WORK, stream_readers
from vml.areas.restore import RestoreProgress, plan_restore, write_tar
from vml.areas.rules import Rules
from vml.areas.statcache import StatCache
from vml.environment import HISTORY, PROFILE_SCRIPT, VARIABLES, decode_variables, encode_variables, parse_env_output, profile_script
from vml.errors import AreaError, TransportError, UsageError
from vml.objects.manifest import Listing, Node
from vml.objects.store import ChunkStore
from vml.ssh import CONNECT_TIMEOUT, SSH_ERRORS, UnknownHostKey, Unreachable, connect, openssh_command
from vml.workers import FILE_COST

if TYPE_CHECKING:
    from vml.areas.capture.processes import StreamReaders

_NO_ROOT = 97
_NO_TOOL = 98
_TOOLS_CHECK = (
    f'case "$(tar --version 2>/dev/null)" in *"GNU tar"*) ;; *) echo "GNU tar" >&2; exit {_NO_TOOL};; esac; '
    f'case "$(find --version 2>/dev/null)" in *"GNU findutils"*) ;; *) echo "GNU find" >&2; exit {_NO_TOOL};; esac; '
)
_TAR_ARGS = "--format=posix --xattrs --xattrs-include='*'"
# A capture's: the paths on stdin. Its output is written 10 KiB at a time (-b 20, GNU tar's
# default, whatever TAR_OPTIONS says): capture/guest.py's marks count on it. Without the
# access and change times (vml keeps neither, and the listing gives the change time) a member
# whose mtime is whole seconds has no pax header: the base tree's stream is 64 MB smaller,
# and its headers took a quarter less time to read.
_AES_CHECK = "grep -q -w aes /proc/cpuinfo 2>/dev/null"  # status 0: AES instructions, 1: none, 2: no /proc/cpuinfo
_TAR_BODY = f"tar -c -f - -b 20 {_TAR_ARGS} --pax-option=delete=atime,delete=ctime --sparse --no-recursion --null --no-unquote -T -"
_TAR_PROBLEM = re.compile(rb"^tar: (\./.*?|\.): (.*)$")
PIECE = 1024 * 1024
# The channel's receive window: paramiko asks the guest for more after each tenth of it, a
# packet sent and encrypted in Python each time (2 MiB, the default: every 200 KiB).
WINDOW = 16 * 1024 * 1024
MAX_PACKET = 256 * 1024
KEEPALIVE_SECONDS = 15
HISTORY_LIMIT = 16 << 20  # the most of a shell history an entry keeps
BULK_BYTES = 64 * 1024 * 1024  # a stream this large goes through the OpenSSH client (see _bulk_command)
_SSH_FAILED = 255  # the OpenSSH client's own failure (a connection that could not be made, or dropped)
# What a bulk command prints first (_bulk_command): it has logged in and its shell runs. Waiting
# for the tar's first bytes instead, a first commit's second stream got its paths only once
# the first stream's tar had sent a record: 0.1-0.4 s with both cores idle.
_LOGGED_IN = b"+"
WAIT_TRY_SECONDS = 10


class _ChannelReader(io.RawIOBase):
    """A channel's output as a raw stream under io.BufferedReader (C): paramiko's own file
    copies what it holds on at every read (a 10 KiB read of tar's from a 1 MiB buffer moved
    the rest), which was most of the reading thread's time in a guest's tar stream."""

    def __init__(self, channel):
        self.channel = channel

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.channel.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        pieces = []
        while data := self.channel.recv(PIECE):
            pieces.append(data)
        return b"".join(pieces)

    def exit_status(self) -> int:
        """The command's exit status; -1 if the connection ended without one."""
        return self.channel.recv_exit_status()


class _ProcessReader(io.RawIOBase):
    """The OpenSSH client's output (its stdout, read in C without the GIL), with its exit
    status as a channel's: ssh's own failure (255) is a connection that ended without one."""

    def __init__(self, process: subprocess.Popen):
        self.process = process

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self.process.stdout.readinto(buffer)

    def fileno(self) -> int:
        """The pipe ssh writes to: a capture's reader process may read it (capture/guest.py: handoff)."""
        return self.process.stdout.fileno()

    def exit_status(self) -> int:
        status = self.process.wait()
        return -1 if _client_failed(status) else status


def _client_failed(status: int | None) -> bool:
    """Whether the OpenSSH client's exit status is its own failure (255: no connection, or it
    dropped) or its death by a signal, rather than the command's status."""
    return status is not None and (status == _SSH_FAILED or status < 0)


def _start_with_stderr(threads: list[threading.Thread], stderr) -> Callable[[], bytes]:
    """Starts `threads` and one more (appended) that reads `stderr` to its end; returns what
    waits for that one and gives what it read."""
    errors: list[bytes] = []
    threads.append(threading.Thread(target=lambda: errors.append(stderr.read()), name="vml-ssh-stderr", daemon=True))
    for thread in threads:
        thread.start()

    def read_stderr() -> bytes:
        threads[-1].join()
        return errors[0] if errors else b""

    return read_stderr


class _ClientUnusable(Exception):
    """The OpenSSH client could not run a command that paramiko's connection can: paramiko carries it."""


class GuestUnreachable(AreaError):
    """Nothing answers on the guest's SSH port (yet)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SshTarget:
    host: str
    port: int | None
    user: str | None
    identity: str | None
    root: str
    known_hosts: str | None = None  # the area's own known_hosts file instead of ~/.ssh/known_hosts

    @classmethod
    def parse(cls, spec: str, *, identity: str | None = None, root: str = "/") -> SshTarget:
        """`user@host[:port]`, as `vml area add --ssh` takes it."""
        match = re.fullmatch(r"(?:([^@\s/]+)@)?(\[[0-9a-fA-F:]+\]|[^@:\s/]+)(?::(\d{1,5}))?", spec)
        if not match:
            raise UsageError(f"invalid ssh target {spec!r}: expected user@host or user@host:port")
        user, host, port = match.groups()
        if not root.startswith("/"):
            raise UsageError(f"--root must be an absolute path on the guest, not {root!r}")
        return cls(host.strip("[]"), int(port) if port else None, user, identity, root)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        root = "" if self.root == "/" else self.root
        return f"ssh://{user}{self.host}{port}{root or '/'}"


class SshArea:
    capture_method = "ssh-find-tar"
    notice = None  # a guest reached as it is: nothing is waited for (a libvirt area waits for its boot)

    def __init__(self, config, target: SshTarget, rules: Rules, *, accept_new_host_key: bool = False):
        self.config = config
        self.target = target
        self.rules = rules
        self.accept_new_host_key = accept_new_host_key
        self._client = None
        self._openssh_unusable = False
        self._early_tars: list[subprocess.Popen] = []  # a first capture's tars, started while its listing is read (`_listing`)
        self._aes: bool | None = None  # whether the guest's CPU has AES instructions (see `_has_aes`)
        self._pending_entry_files: tuple[threading.Thread, dict] | None = None

    def entry_files(self) -> dict[str, bytes]:
        """env/variables and env/history of the SSH user, from a login shell on the guest
        (read beside the capture that came before, if one did: see `capture`)."""
        pending, self._pending_entry_files = self._pending_entry_files, None
        if pending is None:
            return self._read_entry_files()
        thread, outcome = pending
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["files"]

    def _read_entry_files(self) -> dict[str, bytes]:
        """One command: the user's home, a login shell's environment, then the history below
        the area's root, each after a marker of its own (a nonce: no file holds it)."""
        marker = f"--vml-{secrets.token_hex(8)}--"
        body = (f"printf '%s\\n' \"$HOME\"; h=\"${{HOME#/}}\"; unset LC_ALL; "
                f"\"${{SHELL:-/bin/sh}}\" -l -c 'printf \"\\n{marker}env\\n\"; env -0 2>/dev/null || env' 2>/dev/null; "
                f"printf '\\n{marker}history\\n'; if [ -n \"${{h%%/}}\" ]; then head -c {HISTORY_LIMIT} -- \"./${{h%%/}}/.bash_history\" 2>/dev/null; fi")
        data, _errors, _status = self._run(body, "reading the environment")
        _home, _, rest = data.partition(b"\n")
        _motd, env_marker, rest = rest.partition(f"\n{marker}env\n".encode())
        env_output, _, history = rest.partition(f"\n{marker}history\n".encode())
        files = {VARIABLES: encode_variables(parse_env_output(env_output))} if env_marker else {}
        if history:
            files[HISTORY] = history
        return files

    def apply_entry_files(self, files: dict[str, bytes]) -> list[str]:
        """The entry's variables as a profile script every login shell sources. Its
        directory keeps its metadata (mtime): the script is derived, not a change."""
        if VARIABLES not in files:
            return []
        directory = None
        with self._open_tar([[PROFILE_SCRIPT.rpartition("/")[0].encode()]]) as (stdout, problems):
            with tarfile.open(fileobj=stdout, mode="r|") as archive:
                directory = next((member for member in archive if member.isdir()), None)
            problems()
        if directory is None:
            return ["the guest has no /etc/profile.d: the entry's environment variables were not re-applied (see env/variables)"]
        script = profile_script(decode_variables(files[VARIABLES]))
        info = tarfile.TarInfo("./" + PROFILE_SCRIPT)
        info.size, info.mode = len(script), 0o644

        def feed(sink):
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as archive:
                archive.addfile(info, io.BytesIO(script))
                archive.addfile(directory)  # after the script: tar sets the directory's times last

        _output, errors, status = self._run(f"tar -x -f - {_TAR_ARGS} --numeric-owner", "writing the environment", feed)
        if status != 0:
            return [f"could not write /{PROFILE_SCRIPT} on the guest: {errors.decode(errors='replace').strip()[:200]}"]
        return []

    def has_files(self) -> bool:
        return True

    def check_connection(self) -> None:
        """Log in once (with accept_new_host_key, the guest's key is remembered)."""
        self._connection()
        self.close()

    # -- the connection

    def wait_until_reachable(self, seconds: float, still_booting: Callable[[], str | None],
                             waiting: Callable[[str], None] | None = None) -> None:
        """Log in, retrying while nothing answers (a guest that is booting), for up to
        `seconds`; `still_booting` says why waiting is pointless (the domain stopped);
        `waiting` hears once that the first try found nobody."""
        deadline = time.monotonic() + seconds
        told = waiting is None
        while True:
            try:
                # Short tries: a forwarded port accepts while the guest is still booting, and
                # then the banner never comes on that connection.
                self._connection(timeout=min(WAIT_TRY_SECONDS, max(1.0, deadline - time.monotonic())))
                return
            except GuestUnreachable as error:
                stopped = still_booting()
                if stopped is not None:
                    raise AreaError(f"area {self.config.name}: {stopped}") from None
                if time.monotonic() >= deadline:
                    raise AreaError(f"area {self.config.name}: the guest never answered on SSH within {seconds:.0f} s "
                                    f"({error.reason}); set VML_SSH_WAIT=SECONDS to wait longer") from None
                if not told:
                    waiting(f"waiting for the guest's sshd at {self.target.host}:{self.target.port} (up to {seconds:.0f} s)")
                    told = True
                time.sleep(1.0)

    def _connection(self, timeout: float = CONNECT_TIMEOUT):
        if self._client is None:
            try:
                self._client = connect(
                    self.target.host,
                    port=self.target.port,
                    user=self.target.user,
                    identity=self.target.identity,
                    accept_new_host_key=self.accept_new_host_key,
                    timeout=timeout,
                    known_hosts_file=self.target.known_hosts,
                )
            except Unreachable as error:
                raise GuestUnreachable(f"area {self.config.name}: {error}", str(error)) from None
            except UnknownHostKey as error:
                if self.target.known_hosts is not None:  # the area's own file, for a VM vml made
                    raise AreaError(f"area {self.config.name}: the host key of {error.where} is not in {error.known_hosts}; "
                                    f"if this is the area's VM, delete that file and vml learns the key at the next login") from None
                raise AreaError(
                    f"area {self.config.name}: the host key of {error.where} is unknown (not in {error.known_hosts}); if you "
                    f"trust it, add it with ssh-keyscan, or 'vml area remove {self.config.name}' and add it again with --accept-new-host-key"
                ) from None
            except TransportError as error:
                raise AreaError(f"area {self.config.name}: {error}") from None
            # A guest that vanishes (paused, network gone) is noticed, not waited for forever.
            self._client.get_transport().set_keepalive(KEEPALIVE_SECONDS)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _script(self, body: str) -> str:
        root = shlex.quote(self.target.root)
        # LC_ALL=C: vml reads the guest tools' messages (a full disk, a vanished file).
        return f"sh -c {shlex.quote(f'export LC_ALL=C; cd -- {root} 2>/dev/null || exit {_NO_ROOT}; {_TOOLS_CHECK}{body}')}"

    @contextlib.contextmanager
    def _command(self, body: str, feed: Callable[[object], None] | None = None) -> Iterator[tuple[object, Callable[[], bytes]]]:
        """Run `body` on the guest; yields (stdout file, stderr reader). `feed` writes stdin
        and stderr is drained on threads of their own: the channel's window is shared, so a
        guest that writes much to one stream must never wait for us to read the other."""
        try:
            channel = self._connection().get_transport().open_session(window_size=WINDOW, max_packet_size=MAX_PACKET)
            channel.exec_command(self._script(body))
        except SSH_ERRORS as error:
            self.close()
            raise AreaError(f"area {self.config.name}: the connection to the guest dropped ({error or type(error).__name__})") from None
        failure: list[BaseException] = []
        threads = []
        if feed is not None:
            def run_feed():
                try:
                    sink = channel.makefile("wb", PIECE)
                    feed(sink)
                    sink.flush()
                    channel.shutdown_write()
                except BaseException as error:  # reported by the reader's side
                    failure.append(error)
                    channel.close()
            threads.append(threading.Thread(target=run_feed, name="vml-ssh-feed", daemon=True))
        else:
            channel.shutdown_write()
        read_stderr = _start_with_stderr(threads, channel.makefile_stderr("rb"))
        stdout = io.BufferedReader(_ChannelReader(channel), PIECE)
        try:
            yield stdout, read_stderr
            for thread in threads:
                thread.join()
            if failure:
                raise failure[0]
        except SSH_ERRORS as error:
            self.close()
            raise AreaError(f"area {self.config.name}: the connection to the guest dropped ({error or type(error).__name__})") from None
        except tarfile.TarError as error:
            # A stream cut short reads as a damaged archive: say which it was.
            if not channel.get_transport().is_active() or channel.closed:
                self.close()
                raise AreaError(f"area {self.config.name}: the connection to the guest dropped during the transfer") from None
            raise AreaError(f"area {self.config.name}: the guest's tar sent a damaged stream ({error})") from None
        finally:
            channel.close()

    @contextlib.contextmanager
    def _bulk_command(self, body: str, feed: Callable[[object], None]) -> Iterator[tuple[io.BufferedReader, Callable[[], bytes]]]:
        """`_command` for a bulk stream, through the OpenSSH client where it can log in as
        paramiko did: it decrypts in C in a process of its own, where paramiko decrypts packet
        by packet in Python beside the reader (a third of a capture's reading thread). Raises
        _ClientUnusable when ssh itself failed before the command sent anything (a key only
        the agent paramiko used holds, a setting OpenSSH refuses), and from then on this area
        uses paramiko alone. VML_SSH_CLIENT=paramiko always uses paramiko, =openssh the
        OpenSSH client for every stream however small."""
        process = None
        if body == _TAR_BODY and self._early_tars:  # a capture's tar, logged in already if it was started early (_listing)
            process = self._early_tars.pop(0)
        if process is None:
            process = self._start_bulk(body)
        if process is None:
            raise _ClientUnusable("not used")

        def run_feed():
            try:
                with io.BufferedWriter(process.stdin, PIECE) as sink:
                    feed(sink)
            except OSError:
                pass  # the command ended before it read everything: its status says why

        threads: list[threading.Thread] = []
        read_stderr = _start_with_stderr(threads, process.stderr)
        stdout = io.BufferedReader(_ProcessReader(process), PIECE)
        try:
            logged_in = stdout.read(len(_LOGGED_IN))
            if not logged_in and process.wait() == _SSH_FAILED:
                self._openssh_unusable = True
                raise _ClientUnusable(read_stderr().decode(errors="replace").strip())
            if logged_in and logged_in != _LOGGED_IN:
                raise AreaError(f"area {self.config.name}: the guest's shell printed {logged_in + stdout.read1(40)!r} before vml's command")
            # The paths only now: those of a client that could not log in are paramiko's to
            # send (a stream's runs are given once: capture/guest.py, _Feed).
            threads.insert(0, threading.Thread(target=run_feed, name="vml-ssh-feed", daemon=True))
            threads[0].start()
            yield stdout, read_stderr
            for thread in threads:
                thread.join()
        except tarfile.TarError as error:
            if getattr(error, "descriptor", None) not in (None, process.stdout.fileno()):
                raise  # another stream's, read apart with this one (capture/guest.py: _fetch_streams)
            # A stream cut short reads as a damaged archive: say which it was.
            try:
                status = process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                status = None
            if _client_failed(status):
                raise AreaError(f"area {self.config.name}: the connection to the guest dropped during the transfer") from None
            raise AreaError(f"area {self.config.name}: the guest's tar sent a damaged stream ({error})") from None
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            for thread in threads:  # (both end once ssh has: its pipes are closed)
                thread.join(timeout=10)
            for pipe in (process.stdout, process.stderr):
                pipe.close()

    def _start_bulk(self, body: str) -> subprocess.Popen | None:
        """The OpenSSH client running `body` (logging in meanwhile), or None where it is not
        used (see _bulk_command)."""
        if self._openssh_unusable or os.environ.get("VML_SSH_CLIENT") == "paramiko":
            return None
        self._connection()  # paramiko first: it checks the host key (learning it if asked to) and says what failed
        argv = openssh_command(self.target.host, port=self.target.port, user=self.target.user, identity=self.target.identity,
                               known_hosts_file=self.target.known_hosts, aes=self._has_aes())
        if argv is None:
            return None
        process = subprocess.Popen(
            [*argv, self._script(f"printf {_LOGGED_IN.decode()}; {body}")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
        )
        with contextlib.suppress(OSError):  # a larger pipe: fewer switches between ssh and vml (Linux; best effort)
            fcntl.fcntl(process.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIECE)
        return process

    def _start_early_tar(self) -> None:
        process = self._start_bulk(_TAR_BODY)
        if process is not None:
            self._early_tars.append(process)

    def _drop_early_tars(self) -> None:
        """End the tars started for a capture that did not use them."""
        processes, self._early_tars = self._early_tars, []
        for process in processes:
            process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout, process.stderr):
                pipe.close()

    def _has_aes(self) -> bool:
        """Whether the guest's CPU has AES instructions (asked once, by the listing if there
        was one; unknown counts as yes): which cipher its bulk streams are encrypted with
        (vml/ssh.py: openssh_command)."""
        if self._aes is None:
            try:
                _stdin, stdout, _stderr = self._connection().exec_command(_AES_CHECK)
                self._aes = stdout.channel.recv_exit_status() != 1  # 1: read, and no AES (2: no /proc/cpuinfo)
            except SSH_ERRORS:
                self._aes = True
        return self._aes

    def run_command(self, body: str, what: str) -> tuple[int, str]:
        """A shell command on the guest (in the area's root): its exit status and stderr."""
        _output, errors, status = self._run(body, what)
        return status, errors.decode(errors="replace").strip()

    def _run(self, body: str, what: str, feed: Callable[[object], None] | None = None) -> tuple[bytes, bytes, int]:
        """Run `body` to its end: (stdout, stderr, exit status), the status checked for
        vml's own failures (no root, a missing tool, a dropped connection)."""
        with self._command(body, feed) as (stdout, stderr):
            output = stdout.read()
            errors = stderr()
            status = stdout.raw.exit_status()
        self._check_status(status, errors, what)
        return output, errors, status

    def _check_status(self, channel_status: int, stderr: bytes, what: str) -> None:
        if channel_status == _NO_ROOT:
            raise AreaError(f"area {self.config.name}: {self.target.root} does not exist on the guest")
        if channel_status == _NO_TOOL:
            tool = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["a tool"]
            raise AreaError(f"area {self.config.name}: the guest lacks {tool[0]}, which vml needs (install it in the guest)")
        if channel_status == -1:
            raise AreaError(f"area {self.config.name}: the connection to the guest dropped during {what}")

    # -- capture

    def _listing_body(self) -> str:
        """The guest's clock, whether its CPU has AES instructions (the status of a grep,
        see `_has_aes`: a round trip of its own took 0.12 s of a first commit's listing),
        then find's listing."""
        fmt = shlex.quote(FIND_FORMAT)
        prunes = self._prunes()
        roots = self.rules.walk_roots() if not self.rules.everything else None
        head = f"date +%s; {_AES_CHECK}; echo $?; "
        if roots is None or "" in roots:
            return f"{head}find . {prunes}-printf {fmt}"
        roots = [r for r in roots if not any(r.startswith(o + "/") for o in roots)]
        above = sorted({"/".join(r.split("/")[:i]) for r in roots for i in range(len(r.split("/")))})

        def existing(paths):
            quoted = " ".join(shlex.quote("./" + p if p else ".") for p in paths)
            return f'set --; for p in {quoted}; do if [ -e "$p" ] || [ -h "$p" ]; then set -- "$@" "$p"; fi; done; '
        return (
            f"{head}{existing(above)}find \"$@\" -maxdepth 0 -printf {fmt}; "
            f'{existing(roots)}if [ $# -gt 0 ]; then find "$@" {prunes}-printf {fmt}; fi'
        )

    def _prunes(self) -> str:
        """Excluded directories the guest's find need not even enter (the rest is filtered here)."""
        if any(p.startswith("!") for p in self.rules.exclude):
            return ""
        literal = [p.rstrip("/") for p in self.rules.exclude if p.startswith("/") and not re.search(r"[*?\[\\]", p)]
        if not literal:
            return ""
        tests = " -o ".join(f"-path {shlex.quote('.' + p)}" for p in literal)
        return f"\\( {tests} \\) -prune -o "

    def _listing(self, *, early_tar: bool = False, streams: StreamReaders | None = None) -> tuple[GuestListing, int]:
        """The guest's paths, parsed as find prints them (ListingParser), and its clock.
        `early_tar`: every file will cross (a first capture): once the listing names enough
        bytes for the OpenSSH client (_open_tar), the tar that sends them logs in, while the
        listing goes on, and waits for the paths on its stdin (the login and the listing took
        0.4 s and 1.2 s, one after the other, of a guest's 10 s first commit); once it names
        enough for a stream a reader process (capture/guest.py: PARALLEL_WORK), the other
        streams' tars log in too and `streams`' processes start (0.35 s and 0.3 s more)."""
        parser = ListingParser()
        early_from = 0 if os.environ.get("VML_SSH_CLIENT") == "openssh" else BULK_BYTES
        parallel = early_tar and streams is not None and streams.count > 1
        with self._command(self._listing_body()) as (stdout, stderr):
            now = stdout.readline()
            aes = stdout.readline().strip()
            if self._aes is None and aes.isdigit():
                self._aes = aes != b"1"
            while piece := stdout.read1(PIECE):
                parser.feed(piece)
                if early_tar and parser.file_bytes >= early_from:
                    early_tar = False
                    self._start_early_tar()
                if parallel and parser.file_bytes + FILE_COST * len(parser.paths) >= PARALLEL_WORK:
                    assert streams is not None
                    parallel = early_tar = False  # (a tar for each stream: no other after them)
                    streams.prepare()
                    for _stream in range(streams.count - len(self._early_tars)):
                        self._start_early_tar()
            errors = stderr()
            status = stdout.raw.exit_status()
        self._check_status(status, errors, "the listing")
        if not now.strip().isdigit():
            raise AreaError(f"area {self.config.name}: the guest's 'date +%s' printed {now[:40]!r}, not a time")
        self._listing_problems = [
            line.decode(errors="replace") for line in errors.splitlines() if line.startswith(b"find: ")
        ]
        return parser.close(), (int(now) + 1) * 1_000_000_000  # the next second: its clock ticks in seconds here

    def _owner_names(self, uids: set[int], gids: set[int]) -> tuple[dict[int, str], dict[int, str]]:
        """The guest's names of these owners and groups, as its find's %u and %g would print
        them (getpwuid and getgrgid, through getent; the files where getent is missing)."""
        def lookup(database: str, numbers: set[int]) -> str:
            keys = " ".join(str(number) for number in sorted(numbers))
            return f"echo ={database}; if [ -n {shlex.quote(keys)} ]; then getent {database} {keys} || true; fi; "

        body = (f"if command -v getent >/dev/null 2>&1; then {lookup('passwd', uids)}{lookup('group', gids)}"
                f"else echo =passwd; cat /etc/passwd; echo =group; cat /etc/group; fi")
        output, _errors, _status = self._run(body, "the owners' names")
        _before, _, rest = output.partition(b"=passwd\n")
        passwd, _, group = rest.partition(b"=group\n")
        return parse_names(passwd), parse_names(group)

    @contextlib.contextmanager
    def _open_tar(self, runs: Iterable[list[bytes]], size: int = 0, *, reader: bool = False):
        """The guest's tar stream of the paths in `runs` (each run sent as it comes), about
        `size` bytes: through the OpenSSH client from BULK_BYTES on (its login costs a few
        tenths of a second: an unchanged re-commit would pay it twice), or for a reader
        process (`reader`: its pipe can be handed over), else through paramiko's connection."""
        def feed(sink):
            for paths in runs:
                names = b"".join(b"./" + p + b"\0" if p else b".\0" for p in paths)
                for start in range(0, len(names), PIECE):
                    sink.write(names[start : start + PIECE])
                sink.flush()

        with contextlib.ExitStack() as streams:
            try:
                if not reader and size < BULK_BYTES and os.environ.get("VML_SSH_CLIENT") != "openssh":
                    raise _ClientUnusable("a small stream")
                stdout, stderr = streams.enter_context(self._bulk_command(_TAR_BODY, feed))
            except _ClientUnusable:
                stdout, stderr = streams.enter_context(self._command(_TAR_BODY, feed))

            def problems():
                errors = stderr()
                status = stdout.raw.exit_status()
                self._check_status(status, errors, "the transfer")
                found = []
                for line in errors.splitlines():
                    match = _TAR_PROBLEM.match(line)
                    if match:
                        path, message = match.groups()
                        found.append((b"" if path == b"." else path[2:], message.decode(errors="replace")))
                if status not in (0, 1) and not found:
                    raise AreaError(f"area {self.config.name}: tar failed on the guest: {errors.decode(errors='replace').strip()[:300]}")
                return found

            yield stdout, problems

    def capture(
        self,
        store: ChunkStore,
        cache: StatCache,
        *,
        dry_run: bool = False,
        progress: Callable[[CaptureProgress], None] | None = None,
        expected: Callable[[bytes], Node | None] | None = None,
    ) -> CaptureResult:
        """The guest's files; `expected` (path -> node) names what a checkout just wrote.
        The entry's environment files are read meanwhile, on a channel of their own (a
        commit, a status and a diff ask for them next: a few round trips to the guest)."""
        streams = stream_readers(store, dry_run)
        try:
            listing, now = self._listing(early_tar=not cache.dirs and expected is None, streams=streams)
            self._start_entry_files()
            capture = GuestCapture(listing, now, self._open_tar, store, cache, rules=self.rules, dry_run=dry_run,
                                   expected=expected, progress=progress, owner_names=self._owner_names, streams=streams,
                                   head_start=len(self._early_tars) >= streams.count)
            result = capture.run()
        except FileNotFoundError as error:
            raise AreaError(f"area {self.config.name}: {error}") from None
        finally:
            self._drop_early_tars()  # (unused: the files the capture asked for were fewer than the listing named)
            streams.close(kill=True)  # (the capture has closed them, unless it never ran)
        for line in self._listing_problems:
            path = line.split("'")[1] if line.count("'") >= 2 else line
            result.skipped.append((path.removeprefix("./").encode(), line.rsplit(": ", 1)[-1]))
        return result

    def _start_entry_files(self) -> None:
        outcome: dict = {}

        def read() -> None:
            try:
                outcome["files"] = self._read_entry_files()
            except BaseException as error:  # raised where they are asked for
                outcome["error"] = error

        thread = threading.Thread(target=read, name="vml-ssh-env", daemon=True)
        thread.start()
        self._pending_entry_files = (thread, outcome)

    # -- restore

    def restore(
        self,
        store: ChunkStore,
        load_listing: Callable[..., Listing],
        root_id: bytes,
        current_root_id: bytes | None,
        progress: Callable[[RestoreProgress], None] | None = None,
        entry_rules: Rules | None = None,
    ) -> RestoreProgress:
        counts = RestoreProgress()
        plan = plan_restore(load_listing, root_id, current_root_id, entry_rules)
        if plan.deletions:
            self._delete(plan.deletions)
            counts.removed += len(plan.deletions)
        if plan.members:
            body = f"tar -x -f - {_TAR_ARGS} --numeric-owner --same-permissions --delay-directory-restore"

            def feed(sink):
                write_tar(plan, store, sink, counts)
                if progress is not None:
                    progress(counts)

            _output, errors, status = self._run(body, "the checkout", feed)
            if status != 0:
                first = errors.decode(errors="replace").strip().splitlines()[:1] or [f"exit status {status}"]
                if b"No space left" in errors or b"Wrote only" in errors:  # GNU tar's words for a full disk
                    raise AreaError(f"area {self.config.name}: the guest's disk is full ({first[0]}); the checkout stopped part way: "
                                    f"free space on the guest and check out again")
                raise AreaError(f"area {self.config.name}: tar on the guest could not write the files: {first[0]}")
        return counts

    def _delete(self, paths: list[bytes]) -> None:
        names = b"".join(b"./" + p + b"\0" for p in paths if p)

        def feed(sink):
            sink.write(names)

        _output, errors, status = self._run("xargs -0 -r rm -rf --", "the deletions", feed)
        if status != 0:
            raise AreaError(f"area {self.config.name}: could not delete on the guest: {errors.decode(errors='replace').strip()[:300]}")

    def read_file(self, path: bytes, limit: int) -> bytes:
        with self._open_tar([[path]]) as (stdout, problems):
            with tarfile.open(fileobj=stdout, mode="r|") as archive:
                for member in archive:
                    if member.isfile():
                        return archive.extractfile(member).read(limit)
            problems()
        return b""


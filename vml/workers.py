"""Worker processes of a command, fed over Unix sockets: how a commit reads and a checkout
writes many files on every core.

Threads of one Python process take turns at the interpreter: a commit's reading threads and
a checkout's writing threads spent a third of their time waiting for it, and kept about 1.5
of two cores busy. A worker here is a Python process of its own (`main` below) that makes
its handler from a setup the command sends first (`factory(setup)`, named "module:function"),
then answers each request with what the handler returns or the error it raised. A request
may carry open descriptors (SCM_RIGHTS: the directories a checkout writes into), closed in
the worker once its handler is done with them.

Wire format, both ways: a 4-byte big-endian length, then a pickle; a request's header also
gives the number of descriptors sent with it. Only the command talks to its workers, over a
socket pair made for them, and each side unpickles only what the other sent.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, Generic, Protocol, TypeVar

from vml.errors import UsageError, VmlError

_LENGTH = struct.Struct("!I")
_REQUEST = struct.Struct("!II")  # payload length, descriptors sent with it
MAX_DESCRIPTORS = 253  # SCM_RIGHTS's limit (SCM_MAX_FD)
SETTING = "VML_WORKER_PROCESSES"
# Work is given to the worker with the least waiting, counted in bytes with this much for each
# file (what a file costs beyond its data, about 50 µs here): counted in files, a writer given
# a 200 MB file was given more batches behind it while the other one ran dry.
FILE_COST = 32 * 1024

Handler = Callable[[Any, list[int]], Any]


def wanted(cores: int | None = None) -> int:
    """How many worker processes a large commit or checkout uses: VML_WORKER_PROCESSES if set
    (0: none, threads only), else one a core, and none on a single core."""
    setting = os.environ.get(SETTING, "").strip()
    if not setting:
        cores = cores if cores is not None else os.cpu_count() or 1
        return cores if cores > 1 else 0
    try:
        count = int(setting)
        if not 0 <= count <= 64:
            raise ValueError
    except ValueError:
        raise UsageError(f"{SETTING} must be a number of processes from 0 to 64, not {setting!r}") from None
    return count


class _Closable(Protocol):
    def close(self, *, kill: bool = False) -> None: ...


P = TypeVar("P", bound=_Closable)


class Takeover(Generic[P]):
    """Worker processes that take a command's work over from its threads once those have been
    given `after` files, or sooner for work too large for a thread: started then, with
    `start(count)`, and never for a small command (starting them, a Python each, costs more
    than it takes). `count` 0: threads only."""

    def __init__(self, count: int, after: int, start: Callable[[int], P]):
        self._count, self._after, self._start = count, after, start
        self._given = 0  # files given to the threads
        self.processes: P | None = None

    def take(self, files: int, *, large: bool = False) -> P | None:
        """The processes to give `files` more files to, or None: they go to the threads.
        `large`: work that would hold a thread (and the GIL between its calls) long: the
        processes start for it if they have not."""
        if self.processes is None and self._count and (large or self._given >= self._after):
            self.processes = self._start(self._count)
        if self.processes is None:
            self._given += files
        return self.processes

    def close(self, *, kill: bool) -> None:
        """Ends the processes, if started; `kill`: at once (the command failed)."""
        if self.processes is not None:
            self.processes.close(kill=kill)
            self.processes = None


class Workers:
    """`count` worker processes, each running the handler `factory(setup)` makes. `submit`
    gives the request to the one with the least work waiting (by the `weight` of each) and
    a Future of its answer; `close` ends them all."""

    def __init__(self, factory: str, setup: Any, count: int, *, role: str = "worker process"):
        self.role = role
        self._workers: list[_Worker] = []
        try:
            for number in range(count):
                self._workers.append(_Worker(factory, setup, number, role))
        except BaseException:
            self.close(kill=True)
            raise

    def submit(self, request: Any, *, descriptors: Sequence[int] = (), weight: int = 1, to: int | None = None) -> Future:
        """`to`: the number of the worker (`least_busy`), else the least busy one."""
        worker = self._workers[self.least_busy() if to is None else to]
        return worker.submit(request, descriptors, weight)

    def least_busy(self) -> int:
        """The number of the worker with the least work waiting (the first of equals)."""
        return min(range(len(self._workers)), key=lambda number: self._workers[number].waiting)

    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def each(self, request: Any) -> list[Future]:
        """The same request to every worker, answered after all it was given before."""
        return [worker.submit(request, (), 0) for worker in self._workers]

    def close(self, *, kill: bool = False) -> None:
        for worker in self._workers:  # all told first: they end at once, not one after another
            worker.end(kill=kill)
        for worker in self._workers:
            worker.close()
        self._workers = []


class _Worker:
    def __init__(self, factory: str, setup: Any, number: int, role: str):
        self.role = role
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                # -P: not the current directory first on its path (a `vml` folder there is not
                # this vml), which is the one this process runs, first on PYTHONPATH.
                [sys.executable, "-P", "-c", "from vml.workers import main; main()", str(theirs.fileno()), factory, str(os.getpid())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,  # why it ended, if it says: read once it has
                env=_environment(),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.waiting = 0  # the weight of the requests sent and not answered
        self._pending: deque[tuple[Future, int]] = deque()
        self._ended = False  # its answers are all in: nothing more may be sent
        self._said = ""  # the last line it wrote to stderr
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_answers, name=f"vml-worker-{number}", daemon=True)
        self._reader.start()
        try:
            _send(ours, pickle.dumps(setup, pickle.HIGHEST_PROTOCOL))
        except OSError:
            self.close(kill=True)
            raise VmlError(self._ended_reason()) from None

    def submit(self, request: Any, descriptors: Sequence[int], weight: int) -> Future:
        if len(descriptors) > MAX_DESCRIPTORS:
            raise ValueError(f"a request may carry at most {MAX_DESCRIPTORS} descriptors")
        future: Future = Future()
        with self._lock:
            if self._ended:
                raise VmlError(self._ended_reason())
            self._pending.append((future, weight))
            self.waiting += weight
        payload = pickle.dumps(request, pickle.HIGHEST_PROTOCOL)
        try:
            header = _REQUEST.pack(len(payload), len(descriptors))
            sent = socket.send_fds(self.sock, [header], list(descriptors))  # they travel with its first byte
            self.sock.sendall(header[sent:] + payload)
        except OSError:
            self._reader.join()  # it has seen the end and knows how it came
            raise VmlError(self._ended_reason()) from None
        return future

    def _read_answers(self) -> None:
        try:
            while True:
                answer = _receive(self.sock)
                if answer is None:
                    break
                value, error = pickle.loads(answer)
                with self._lock:
                    future, weight = self._pending.popleft()
                    self.waiting -= weight
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)
        except Exception:  # a broken socket or answer: this worker is done for
            if self.process.poll() is None:
                self.process.kill()
        assert self.process.stderr is not None
        said = self.process.stderr.read().decode(errors="replace").strip().splitlines()
        self.process.wait()
        with self._lock:
            self._said = said[-1] if said else ""
            self._ended = True
            pending, self._pending = list(self._pending), deque()
        for future, _weight in pending:
            future.set_exception(VmlError(self._ended_reason()))

    def _ended_reason(self) -> str:
        code = self.process.returncode
        how = f"was killed (signal {-code})" if code is not None and code < 0 else f"ended (exit {code})"
        return f"a {self.role} {how} before it had done all it was given" + (f": {self._said}" if self._said else "")

    def end(self, *, kill: bool = False) -> None:
        """Tell it to end (`kill`: at once) without waiting for it to."""
        if kill and self.process.poll() is None:
            self.process.kill()
        try:
            self.sock.shutdown(socket.SHUT_WR)  # the worker ends once it has answered what it has
        except OSError:
            pass

    def close(self, *, kill: bool = False) -> None:
        self.end(kill=kill)
        self._reader.join()  # (it waits for the process)
        self.sock.close()
        if self.process.stderr is not None:
            self.process.stderr.close()


def then(answered: Future, step: Callable[[Any], Any]) -> Future:
    """A Future of `step(answer)`, run on the thread the answer comes in on, as soon as it does
    (an answer's error, or the step's, is the new Future's)."""
    done: Future = Future()

    def run(answer: Future) -> None:
        try:
            done.set_result(step(answer.result()))
        except BaseException as error:
            done.set_exception(error)

    answered.add_done_callback(run)
    return done


def _environment() -> dict[str, str]:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": here + (os.pathsep + paths if paths else "")}


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def _receive(sock: socket.socket) -> bytearray | None:
    """The next message, or None at the end of the stream."""
    head = _exactly(sock, _LENGTH.size)
    if head is None:
        return None
    (length,) = _LENGTH.unpack(head)
    data = _exactly(sock, length)
    if data is None:
        raise EOFError("a message cut short")
    return data


def _exactly(sock: socket.socket, size: int, start: bytes = b"") -> bytearray | None:
    """`size` bytes (the first of them `start`), received into one buffer (no copies: a
    message may be megabytes), or None if the stream ends before the first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = len(start)
    view[:done] = start
    while done < size:
        got = sock.recv_into(view[done:])
        if not got:
            if done:
                raise EOFError("a message cut short")
            return None
        done += got
    return buffer


def _receive_request(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    data, descriptors, _flags, _address = socket.recv_fds(sock, _REQUEST.size, MAX_DESCRIPTORS)
    if not data:
        for fd in descriptors:
            os.close(fd)
        return None
    try:
        head = _exactly(sock, _REQUEST.size, data)
        assert head is not None
        length, count = _REQUEST.unpack(head)
        if count != len(descriptors):
            raise EOFError(f"a request names {count} descriptors and came with {len(descriptors)}")
        payload = _exactly(sock, length)
        if payload is None:
            raise EOFError("a request cut short")
    except BaseException:
        for fd in descriptors:
            os.close(fd)
        raise
    return payload, descriptors


def serve(sock: socket.socket, factory: str) -> None:
    """A worker: make the handler, then answer each request until the command closes its end."""
    setup = _receive(sock)
    if setup is None:
        return
    module, _, function = factory.partition(":")
    handler: Handler = getattr(importlib.import_module(module), function)(pickle.loads(setup))
    while True:
        request = _receive_request(sock)
        if request is None:
            return
        payload, descriptors = request
        value: Any = None
        error: BaseException | None = None
        try:
            value = handler(pickle.loads(payload), descriptors)
        except Exception as caught:  # the command raises it
            error = caught
        finally:
            for fd in descriptors:
                os.close(fd)
        _send(sock, pickle.dumps((value, _portable(error)), pickle.HIGHEST_PROTOCOL))


def _portable(error: BaseException | None) -> BaseException | None:
    """The error as the command can unpickle it: itself, or its message."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error, pickle.HIGHEST_PROTOCOL))
        return error
    except Exception:
        return VmlError(str(error))


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _die_with_the_command(command: int) -> None:
    """Be killed when the command's process dies (Linux: PR_SET_PDEATHSIG), not go on with
    what it was given: a killed commit's reader went on writing packs into the store while
    the next command (a gc) measured it. (The command makes its workers on its main thread,
    whose end, not the process's, is what the kernel watches.)"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: it ends at its next request, as it always did
    if os.getppid() != command:  # gone before prctl
        os._exit(1)


def main() -> None:
    # Interrupts go to the command, which ends its workers (they see the socket close).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_the_command(int(sys.argv[3]))
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock, sys.argv[2])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command is gone
    except Exception as error:  # the command says a worker ended, and this why
        print(error, file=sys.stderr)
        sys.exit(1)
    finally:
        sock.close()
    # Answered all it was given (a reader's packs are durable before it answers `finish`):
    # gone at once, without Python's teardown, which the command waits for (finalization
    # collects and frees every object, gc.disable() or not: 0.3 CPU-seconds a reader at the
    # end of the runtimes tree's commit).
    sys.stderr.flush()
    os._exit(0)

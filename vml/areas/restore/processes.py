"""Writer processes of a restore: files written in processes of their own, each with the GIL
to itself.

A restore of many small files spends most of its time per file (open, write, metadata, a
blob read and checked) in Python, and threads of one process take turns at the interpreter:
two writer threads kept about 1.4 of two cores busy. Here each writer is a Python process
(`main` below) that opens the same store read-only and is given
batches of files over a Unix socket, with the descriptors of the directories they go in
(SCM_RIGHTS): it writes relative to them exactly as a thread would (files.py), and answers
each batch with what it wrote or the error that stopped it.

Wire format, both ways: a 4-byte big-endian length, then a pickle. A batch carries the number
of descriptors sent with its length. Only the restoring process talks to its writers, over a
socket pair made for them, and a writer unpickles what that process sent it.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from vml.areas.restore.files import Birth, FileWriter
from vml.errors import VmlError
from vml.objects.manifest import KIND_FILE, Node
from vml.objects.store import ChunkStore

_LENGTH = struct.Struct("!I")
_BATCH_HEADER = struct.Struct("!II")  # payload length, descriptors sent with it
MAX_DESCRIPTORS = 253  # SCM_RIGHTS's limit (SCM_MAX_FD)
# A batch goes to the writer with the least work waiting, counted in bytes with this much for
# each file (what a file costs beyond its data, about 50 µs here): counted in files, a writer
# given a 200 MB file was given more batches behind it while the other one ran dry.
FILE_COST = 32 * 1024

Item = tuple[int, Node, bytes, bytes]  # directory descriptor, node, name to write it as, path from the top
Done = tuple[int, int, list[tuple[bytes, str]]]  # files written, their bytes, what could not be kept


class WriterProcesses:
    """`count` writer processes for the store at `store_root`. `submit` hands one a batch and
    gives a Future of its `Done`; `on_done` is called with it (on a reader thread) before the
    Future completes. `close` ends them all."""

    def __init__(self, store_root: str, birth: Birth, count: int, on_done: Callable[[Done], None]):
        self._on_done = on_done
        self._writers: list[_Writer] = []
        try:
            for number in range(count):
                self._writers.append(_Writer(store_root, birth, number, on_done))
        except BaseException:
            self.close()
            raise

    def submit(self, batch: list[Item]) -> Future:
        writer = min(self._writers, key=lambda w: w.waiting)  # (the first of equals)
        return writer.submit(batch)

    def close(self, *, kill: bool = False) -> None:
        for writer in self._writers:
            writer.close(kill=kill)
        self._writers = []


class _Writer:
    def __init__(self, store_root: str, birth: Birth, number: int, on_done: Callable[[Done], None]):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.process = subprocess.Popen(
                # -P: not the current directory first on its path (a `vml` folder there is not
                # this vml), which is the one this process runs, first on PYTHONPATH.
                [sys.executable, "-P", "-c", "from vml.areas.restore.processes import main; main()", str(theirs.fileno())],
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
        self.number = number
        self.waiting = 0  # the work sent and not answered (see FILE_COST)
        self._pending: deque[tuple[Future, int]] = deque()
        self._ended = False  # its answers are all in: nothing more may be sent
        self._said = ""  # the last line it wrote to stderr
        self._lock = threading.Lock()
        self._on_done = on_done
        self._reader = threading.Thread(target=self._read_answers, name=f"vml-writer-{number}", daemon=True)
        self._reader.start()
        try:
            _send(ours, pickle.dumps((store_root, birth), pickle.HIGHEST_PROTOCOL))
        except OSError:
            self.close(kill=True)
            raise VmlError(self._ended_reason()) from None

    def submit(self, batch: list[Item]) -> Future:
        descriptors: list[int] = []
        places: dict[int, int] = {}
        items = []
        work = 0
        for dir_fd, node, name, rel in batch:
            work += node.size + FILE_COST
            place = places.get(dir_fd)
            if place is None:
                place = places[dir_fd] = len(descriptors)
                descriptors.append(dir_fd)
            # A node's fields, not the node: pickle writes a tuple of numbers and bytes in C,
            # a dataclass through Python (it was a sixth of the restoring process's time).
            items.append((place, node.name, node.mode, node.uid, node.gid, node.mtime_ns, node.size, node.xattrs, node.chunks, node.extents,
                          name, rel))
        if len(descriptors) > MAX_DESCRIPTORS:
            raise ValueError(f"a batch may name at most {MAX_DESCRIPTORS} directories")
        future: Future = Future()
        with self._lock:
            if self._ended:
                raise VmlError(self._ended_reason())
            self._pending.append((future, work))
            self.waiting += work
        payload = pickle.dumps(items, pickle.HIGHEST_PROTOCOL)
        try:
            _send(self.sock, payload, descriptors)
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
                done, error = pickle.loads(answer)
                with self._lock:
                    future, work = self._pending.popleft()
                    self.waiting -= work
                self._on_done(done)
                if error is None:
                    future.set_result(done)
                else:
                    future.set_exception(error)
        except Exception:  # a broken socket or answer: this writer is done for
            if self.process.poll() is None:
                self.process.kill()
        assert self.process.stderr is not None
        said = self.process.stderr.read().decode(errors="replace").strip().splitlines()
        self.process.wait()
        with self._lock:
            self._said = said[-1] if said else ""
            self._ended = True
            pending, self._pending = list(self._pending), deque()
        for future, _work in pending:
            future.set_exception(VmlError(self._ended_reason()))

    def _ended_reason(self) -> str:
        code = self.process.returncode
        how = f"was killed (signal {-code})" if code is not None and code < 0 else f"ended (exit {code})"
        return f"a writer process of the restore {how} before it had written all it was given" + (f": {self._said}" if self._said else "")

    def close(self, *, kill: bool = False) -> None:
        if kill and self.process.poll() is None:
            self.process.kill()
        try:
            self.sock.shutdown(socket.SHUT_WR)  # the writer ends once it has answered what it has
        except OSError:
            pass
        self._reader.join()  # (it waits for the process)
        self.sock.close()
        if self.process.stderr is not None:
            self.process.stderr.close()


def _environment() -> dict[str, str]:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    paths = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": here + (os.pathsep + paths if paths else "")}


def _send(sock: socket.socket, payload: bytes, descriptors: list[int] | None = None) -> None:
    if descriptors is None:
        sock.sendall(_LENGTH.pack(len(payload)) + payload)
        return
    header = _BATCH_HEADER.pack(len(payload), len(descriptors))
    sent = socket.send_fds(sock, [header], descriptors)  # the descriptors travel with its first byte
    sock.sendall(header[sent:] + payload)


def _receive(sock: socket.socket) -> bytes | None:
    """The next message from the restoring process's writer, or None at its end."""
    head = _exactly(sock, _LENGTH.size)
    if head is None:
        return None
    (length,) = _LENGTH.unpack(head)
    data = _exactly(sock, length)
    if data is None:
        raise EOFError("a message cut short")
    return data


def _exactly(sock: socket.socket, size: int, start: bytes = b"") -> bytes | None:
    buffer = bytearray(start)
    while len(buffer) < size:
        got = sock.recv(size - len(buffer))
        if not got:
            if buffer:
                raise EOFError("a message cut short")
            return None
        buffer += got
    return bytes(buffer)


def _receive_batch(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    data, descriptors, _flags, _address = socket.recv_fds(sock, _BATCH_HEADER.size, MAX_DESCRIPTORS)
    if not data:
        for fd in descriptors:
            os.close(fd)
        return None
    try:
        head = _exactly(sock, _BATCH_HEADER.size, data)
        assert head is not None
        length, count = _BATCH_HEADER.unpack(head)
        if count != len(descriptors):
            raise EOFError(f"a batch names {count} directories and came with {len(descriptors)}")
        payload = _exactly(sock, length)
        if payload is None:
            raise EOFError("a batch cut short")
    except BaseException:
        for fd in descriptors:
            os.close(fd)
        raise
    return payload, descriptors


def serve(sock: socket.socket) -> None:
    """A writer process: write each batch the restoring process sends, answer with what was
    written or the error that stopped it (the batch's later files are not written)."""
    setup = _receive(sock)
    if setup is None:
        return
    store_root, birth = pickle.loads(setup)
    store = ChunkStore(store_root).open()
    not_restored: list[tuple[bytes, str]] = []
    files = FileWriter(store, birth, not_restored)
    while True:
        batch = _receive_batch(sock)
        if batch is None:
            return
        payload, descriptors = batch
        written = written_bytes = 0
        error: BaseException | None = None
        try:
            for place, node_name, mode, uid, gid, mtime_ns, size, xattrs, chunks, extents, name, rel in pickle.loads(payload):
                node = Node(node_name, KIND_FILE, mode, uid, gid, None, None, mtime_ns, size, xattrs, chunks=chunks, extents=extents)
                files.write_file(descriptors[place], node, name, rel)
                written += 1
                written_bytes += size
        except Exception as caught:  # the restoring process raises it
            error = caught
        finally:
            for fd in descriptors:
                os.close(fd)
        done: Done = (written, written_bytes, not_restored[:])
        not_restored.clear()
        _send(sock, pickle.dumps((done, _portable(error)), pickle.HIGHEST_PROTOCOL))


def _portable(error: BaseException | None) -> BaseException | None:
    """The error as the restoring process can unpickle it: itself, or its message."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error, pickle.HIGHEST_PROTOCOL))
        return error
    except Exception:
        return VmlError(str(error))


def main() -> None:
    # Interrupts go to the restoring process, which ends its writers (they see the socket close).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the restoring process is gone
    except Exception as error:  # the restoring process says a writer ended, and this why
        print(error, file=sys.stderr)
        sys.exit(1)
    finally:
        sock.close()


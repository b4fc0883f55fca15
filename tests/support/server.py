"""A real `vml serve` on 127.0.0.1 for tests: its own repository, a free port, a log file,
and a deadline after which it stops by itself (like the test sshd)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from support.sshd import free_port, wait_listening

LIFETIME = "3600"  # seconds: the server's own deadline


@dataclass
class VmlServer:
    url: str  # http://127.0.0.1:PORT
    repo: Path
    log: Path
    process: subprocess.Popen
    tokens: dict[str, str] = field(default_factory=dict)  # user -> their write token

    def ns(self, namespace: str) -> str:
        return f"{self.url}/{namespace}"

    def accounts(self):
        from vml.server.accounts import Accounts  # the server's own database, the same code the CLI runs

        return Accounts(str(self.repo))

    def add_user(self, name: str, *, admin: bool = False) -> str:
        """A user and a write token for them; the token."""
        accounts = self.accounts()
        accounts.add_user(name, admin=admin)
        token = self.tokens[name] = accounts.add_token(name).secret
        return token

    def token(self, user: str, mode: str = "write", expires: float | None = None) -> str:
        return self.accounts().add_token(user, mode=mode, expires=expires).secret

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(base: Path, *extra: str, repo: Path | None = None, scheme: str = "http", env: dict | None = None) -> VmlServer:
    """`vml serve REPO --listen 127.0.0.1:PORT` as its own process (a new bare repository in
    `base` unless `repo` is given); returns once it answers."""
    base.mkdir(parents=True, exist_ok=True)
    if repo is None:
        repo = base / "server.vml"
        subprocess.run([sys.executable, "-m", "vml", "init", "--bare", str(repo)], check=True, capture_output=True)
    port = free_port()
    log = base / "server.log"
    process = subprocess.Popen(
        [shutil.which("timeout") or "timeout", LIFETIME, sys.executable, "-m", "vml", "serve", str(repo), "--listen", f"127.0.0.1:{port}", *extra],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    wait_listening(process, port, log, "vml serve", 30)
    return VmlServer(f"{scheme}://127.0.0.1:{port}", repo, log, process)


class CuttingProxy:
    """A TCP proxy in front of a server that cuts its first connection once that many bytes
    went one way (`upstream`: client to server, else server to client): a dropped connection
    in the middle of an upload or a download, on demand."""

    def __init__(self, port: int, *, cut_after: int, upstream: bool):
        import threading

        self.target = port
        self.cut_after = cut_after
        self.upstream = upstream
        self.cuts = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            state = {"moved": 0, "cut": False}
            for source, sink, counted in ((client, server, self.upstream), (server, client, not self.upstream)):
                self._threads.Thread(target=self._pump, args=(source, sink, counted, state, client, server), daemon=True).start()

    def _pump(self, source, sink, counted, state, client, server) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if counted and self.cuts == 0 and state["moved"] + len(data) > self.cut_after:
                    sink.sendall(data[: self.cut_after - state["moved"]])
                    self.cuts += 1
                    state["cut"] = True
                    break
                if counted:
                    state["moved"] += len(data)
                sink.sendall(data)
        except OSError:
            pass
        hang_up(client, server)
        client.close()
        server.close()

    def close(self) -> None:
        self.listener.close()


class Balancer:
    """One URL in front of several servers: each new connection goes to the next server
    that accepts it (round robin; a dead one is skipped), as a TCP load balancer does. A
    client's requests on one connection stay with one server."""

    def __init__(self, ports: list[int]):
        import threading

        self.targets = ports
        self.turn = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._threads = threading
        threading.Thread(target=self._accept, daemon=True).start()

    def _backend(self) -> socket.socket | None:
        for _ in range(len(self.targets)):
            port = self.targets[self.turn % len(self.targets)]
            self.turn += 1
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                continue
        return None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = self._backend()
            if server is None:
                client.close()
                continue
            server.settimeout(None)
            for source, sink in ((client, server), (server, client)):
                self._threads.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        hang_up(source, sink)

    def close(self) -> None:
        self.listener.close()


def hang_up(*ends: socket.socket) -> None:
    """Shut both ways of each connection (the pump of the other direction then ends too)."""
    for end in ends:
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

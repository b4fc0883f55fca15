"""A real OpenSSH sshd on 127.0.0.1 for the tests: its own config, host key and authorized
key in a temp directory, and a client home whose ~/.ssh/config names it `testhost`.

sshd runs under `timeout`, so it stops by itself even if the test run is killed.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
LIFETIME = "3600"  # seconds: the server's own deadline


@dataclass
class SshServer:
    port: int
    home: Path  # HOME for the client: .ssh/config, known_hosts, the key
    host_key_line: str

    @property
    def env(self) -> dict:
        return {"HOME": str(self.home), "SSH_AUTH_SOCK": ""}

    def url(self, path: Path | str, host: str = "testhost") -> str:
        return f"ssh://{host}{path}"

    @property
    def known_hosts(self) -> Path:
        return self.home / ".ssh" / "known_hosts"

    def forget_host_key(self) -> None:
        self.known_hosts.write_text("")

    def trust_host_key(self) -> None:
        self.known_hosts.write_text(self.host_key_line)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text()


def start_sshd(base: Path, extra_config: str = "") -> tuple[subprocess.Popen, SshServer]:
    if not os.path.exists(SSHD):
        raise RuntimeError(f"{SSHD} is missing: run ./scripts/setup (it installs openssh-server)")
    server_dir, home = base / "server", base / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    server_dir.mkdir()
    host_public = _keygen(server_dir / "host_key")
    client_public = _keygen(home / ".ssh" / "test_key")
    (server_dir / "authorized_keys").write_text(client_public)
    port = free_port()
    config = server_dir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {server_dir / 'host_key'}\n"
        f"AuthorizedKeysFile {server_dir / 'authorized_keys'}\nPidFile {server_dir / 'sshd.pid'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nLogLevel ERROR\n"
        "MaxStartups 100\nMaxSessions 100\n" + extra_config
    )
    user = getpass.getuser()
    (home / ".ssh" / "config").write_text(
        f"Host testhost\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n"
        f"  IdentityFile {home / '.ssh' / 'test_key'}\n  UserKnownHostsFile {home / '.ssh' / 'known_hosts'}\n"
    )
    host_key_line = f"[127.0.0.1]:{port} {host_public}"
    (home / ".ssh" / "known_hosts").write_text(host_key_line)
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    process = subprocess.Popen(
        [shutil.which("timeout") or "timeout", LIFETIME, SSHD, "-D", "-e", "-f", str(config)],
        stdout=subprocess.DEVNULL, stderr=open(server_dir / "sshd.log", "wb"),
    )
    wait_listening(process, port, server_dir / "sshd.log", "sshd", 15)
    return process, SshServer(port, home, host_key_line)


def wait_listening(process: subprocess.Popen, port: int, log: Path, what: str, seconds: float) -> None:
    """Return once a server process accepts connections on 127.0.0.1:`port`; kill it and
    raise with its log if it exits or is not listening within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"{what} did not start: {log.read_text()}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def running_sshd(base: Path, extra_config: str = ""):
    """A fresh sshd in `base` (emptied first) for the length of a `with` block."""
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    process, server = start_sshd(base, extra_config)
    try:
        yield server
    finally:
        process.terminate()
        process.wait(timeout=10)

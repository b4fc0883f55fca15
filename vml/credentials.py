"""Tokens for vml servers, kept for the client: ~/.config/vml/credentials.toml, mode 0600.

Keyed by the server's address (scheme, host, port and path before the namespace); the
variable VML_TOKEN, when set, is used for every server instead (scripts, CI).
"""

from __future__ import annotations

import os
import tomllib

import tomli_w

from vml.durable import write_atomically
from vml.errors import UsageError

ENVIRONMENT = "VML_TOKEN"


def credentials_path() -> str:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "vml", "credentials.toml")


def _read() -> dict[str, dict[str, str]]:
    path = credentials_path()
    try:
        with open(path, "rb") as source:
            if os.fstat(source.fileno()).st_mode & 0o077:
                raise UsageError(f"{path} is readable by others: chmod 600 {path} (it holds tokens)")
            data = tomllib.load(source)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path} is damaged ({error}): remove it and log in again") from None
    servers = data.get("servers", {})
    return {url: entry for url, entry in servers.items() if isinstance(entry, dict) and isinstance(entry.get("token"), str)}


def token_for_url(url: str) -> str | None:
    """The token of the server whose address is the longest beginning of `url`."""
    if os.environ.get(ENVIRONMENT):
        return os.environ[ENVIRONMENT]
    servers = _read()
    matching = [server for server in servers if url == server or url.startswith(server.rstrip("/") + "/")]
    return servers[max(matching, key=len)]["token"] if matching else None


def store_token(server: str, token: str, user: str) -> str:
    servers = _read()
    servers[server] = {"token": token, "user": user}
    return _write(servers)


def forget_token(server: str) -> bool:
    servers = _read()
    if servers.pop(server, None) is None:
        return False
    _write(servers)
    return True


def _write(servers: dict[str, dict[str, str]]) -> str:
    path = credentials_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    write_atomically(path, tomli_w.dumps({"servers": servers}).encode(), mode=0o600)
    return path

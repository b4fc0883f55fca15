"""Starting the server: uvicorn's one home."""

from __future__ import annotations

import uvicorn

from vml.errors import UsageError
from vml.server.app import Server, build_app
from vml.transport.base import is_loopback


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {listen}: give HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(path: str, listen: str, *, cert: str | None = None, key: str | None = None, anonymous_public: bool = False,
          access_log: bool = True, ready=None, store: str | None = None, accounts: str | None = None) -> None:
    """Serve the repository at `path` until interrupted. Without TLS it listens on loopback
    only: tokens must not cross a network in the clear."""
    host, port = parse_listen(listen)
    if (cert is None) != (key is None):
        raise UsageError("--cert and --key go together")
    if cert is None and not is_loopback(host):
        raise UsageError(f"refusing to serve {host} over plain HTTP: tokens would cross the network in the clear; "
                         f"give --cert and --key, or listen on 127.0.0.1 behind a TLS proxy")
    server = Server(path, anonymous_public=anonymous_public, store=store, accounts=accounts)
    app = build_app(server)
    config = uvicorn.Config(app, host=host, port=port, ssl_certfile=cert, ssl_keyfile=key, access_log=access_log,
                            log_level="info", timeout_keep_alive=15, server_header=False, lifespan="off")
    if ready is not None:
        ready(f"{'https' if cert else 'http'}://{host if ':' not in host else f'[{host}]'}:{port}")
    uvicorn.Server(config).run()

"""A real HTTP file server on 127.0.0.1 for tests (a catalog and its images): GET and HEAD
of the files under a directory, with Range requests as web servers answer them (206 and
Content-Range; 416 past the end), each request logged. Faults to inject: `cut_after`
closes the connection after that many bytes of a body (once per listed path), `rate`
limits the bytes per second sent. It runs on a thread of the test process, which stops
it when the test ends (a daemon thread: with the process at the latest)."""

from __future__ import annotations

import http.server
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FilesServer:
    root: Path
    url: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before the connection drops (once)
    rate: int | None = None  # bytes a second, for every body
    ignore_range: bool = False  # answer every GET with the whole file, as a server without Range support does
    _httpd: http.server.ThreadingHTTPServer | None = None

    def start(self) -> FilesServer:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                server.requests.append((path, self.headers.get("Range")))
                local = server.root / path.lstrip("/")
                if ".." in path.split("/") or not local.is_file():
                    self.send_error(404)
                    return
                size = local.stat().st_size
                start, end = 0, size - 1
                wanted = None if server.ignore_range else re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
                if wanted:
                    start = int(wanted.group(1))
                    end = min(int(wanted.group(2)), size - 1) if wanted.group(2) else size - 1
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(206 if wanted else 200)
                if wanted:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if body:
                    self._send(local, path, start, end - start + 1)

            def _send(self, local: Path, path: str, start: int, length: int) -> None:
                cut = server.cut_after.pop(path, None)
                with open(local, "rb") as source:
                    source.seek(start)
                    sent = 0
                    while sent < length:
                        piece = source.read(min(64 * 1024, length - sent))
                        if cut is not None and sent + len(piece) > cut:
                            self.wfile.write(piece[: cut - sent])
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(2)
                            return
                        self.wfile.write(piece)
                        sent += len(piece)
                        if server.rate:
                            time.sleep(len(piece) / server.rate)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="files-server").start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def ranges(self, path: str) -> list[str | None]:
        return [wanted for asked, wanted in self.requests if asked == path]

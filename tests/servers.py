"""Real servers for tests, on loopback, port 0: an HTTP server that honours Range requests.

The server serves files from a directory and lets a test shape it: add latency per request,
count requests (and the most in flight at once), stall requests until released, or fail some.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class RangeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.latency = 0.0  # seconds added to every GET
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.in_flight = 0
        self.max_in_flight = 0
        self.stall = False  # when set, GETs wait for `released` (and announce themselves in `stalled`)
        self.stalled = threading.Event()
        self.released = threading.Event()
        self.fail_next = 0  # answer this many GETs with 503 (a transient error)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.max_in_flight = 0


class _Handler(BaseHTTPRequestHandler):
    server: RangeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _file(self) -> Path | None:
        path = (self.server.root / self.path.lstrip("/").split("?")[0]).resolve()
        if self.server.root.resolve() not in path.parents or not path.is_file():
            return None
        return path

    def do_HEAD(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.requests.append((self.path, self.headers.get("Range")))
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            fail = server.fail_next > 0
            if fail:
                server.fail_next -= 1
        try:
            if server.stall:
                server.stalled.set()
                server.released.wait()
            if server.latency:
                time.sleep(server.latency)  # the simulated network, not test synchronization
            if fail:
                self.send_error(503, "try again")
                return
            self._send_range()
        finally:
            with server.lock:
                server.in_flight -= 1

    def _send_range(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        size = path.stat().st_size
        header = self.headers.get("Range")
        start, end = 0, size - 1
        if header:
            match = _RANGE.match(header.strip())
            if not match:
                self.send_error(416)
                return
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last) if last else size - 1, size - 1)
            else:
                start, end = max(0, size - int(last)), size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        length = end - start + 1
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left:
                block = f.read(min(left, 1 << 20))
                if not block:
                    break
                self.wfile.write(block)
                left -= len(block)


@contextmanager
def range_server(root: Path) -> Iterator[RangeServer]:
    """Serve ``root`` over HTTP on 127.0.0.1 (port 0) for the duration of the block."""
    server = RangeServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()
        thread.join()


__all__ = ["RangeServer", "range_server", "os"]

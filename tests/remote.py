"""Real storage servers for remote tests and benchmarks, each in its own process, on loopback, port 0.

* ``http``: :class:`tests.servers.RangeServer` (HTTP with Range support) serving a directory;
* ``s3``: moto's standalone S3 server behind a small HTTP proxy.

Both take the same knobs, set over HTTP at ``/_control``: latency added to every request, the
next N requests answered 503 (transient) or cut off (the connection closed without an answer),
every request answered with some status (permanent), and counters of requests and of the most
requests in flight at once.

Why another process: a thread that touches an unloaded page of a lazy array blocks in the kernel
*holding its GIL* (``a[i]``). A server thread in the same interpreter could then never answer the
monitor's request for that page: the test would hang. (``python -m tests.remote http DIR`` or
``python -m tests.remote s3`` runs one by hand; it prints ``READY <port>`` and stops when stdin
closes, so a server never outlives the test process that started it.)
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
S3_REGION = "us-east-1"

# -- the client side: start a server process and turn its knobs ------------------------------------


class ServerProcess:
    """A server running in a child process; :meth:`stop` (or the context manager) always ends it."""

    def __init__(self, kind: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.remote", kind, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env, text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the {kind} server did not start (it said {line!r})")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def control(self, **knobs: Any) -> dict[str, Any]:
        """Set knobs (``latency``, ``fail_next``, ``drop_next``, ``fail_status``, ``reset=1``); return the state.

        The state holds ``requests`` (``[method, path, range]`` each, in arrival order per method),
        ``max_in_flight`` and ``in_flight``.
        """
        query = urllib.parse.urlencode(knobs)
        with urllib.request.urlopen(f"{self.url}/_control?{query}", timeout=30) as response:
            return json.loads(response.read())

    def reset(self) -> None:
        self.control(latency=0, fail_next=0, drop_next=0, fail_status=0, reset=1)

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()  # the server's signal to stop
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None and not stream.closed:
                stream.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class HttpStore:
    """A directory served over HTTP: files written to ``dir`` are at ``url + "/" + name``."""

    server: ServerProcess
    dir: Path
    url: str

    def put(self, name: str, array: Any, **save_options: Any) -> str:
        """Save ``array`` as ``name`` in the directory (lazymem.save); return its URL."""
        import lazymem

        lazymem.save(str(self.dir / name), array, **save_options)
        return f"{self.url}/{name}"


class S3Server(ServerProcess):
    """moto's S3 server behind a proxy that adds latency and failures; ``storage_options`` for s3fs."""

    def __init__(self) -> None:
        super().__init__("s3")
        self.storage_options: dict[str, Any] = {
            "key": "testing",
            "secret": "testing",
            "anon": False,
            "client_kwargs": {"endpoint_url": self.url, "region_name": S3_REGION},
            # moto forgets everything between tests: never answer from a listing made before.
            "use_listings_cache": False,
        }

    def reset(self) -> None:
        """Forget every bucket and object (moto's reset), and the knobs and counters."""
        super().reset()  # first: a failure knob left on would fail the reset itself
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=30):
            pass
        self.control(reset=1)

    def make_bucket(self, name: str) -> None:
        import s3fs

        # Not fs.mkdir: it sends a LocationConstraint, which us-east-1 refuses.
        s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options).call_s3("create_bucket", Bucket=name)


# -- the server side -------------------------------------------------------------------------------


class _Knobs:
    """What ``/_control`` sets, shared by both servers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency = 0.0
        self.fail_next = 0
        self.drop_next = 0
        self.fail_status = 0
        self.records: list[tuple[str, str, str | None]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def apply(self, query: str) -> dict[str, Any]:
        params = dict(urllib.parse.parse_qsl(query))
        with self.lock:
            if params.get("reset"):
                self.records.clear()
                self.max_in_flight = 0
            self.latency = float(params.get("latency", self.latency))
            self.fail_next = int(params.get("fail_next", self.fail_next))
            self.drop_next = int(params.get("drop_next", self.drop_next))
            self.fail_status = int(params.get("fail_status", self.fail_status))
            return self.state()

    def state(self) -> dict[str, Any]:
        return {"requests": [list(r) for r in self.records], "max_in_flight": self.max_in_flight,
                "in_flight": self.in_flight, "latency": self.latency}

    def begin(self, method: str, path: str, byte_range: str | None) -> int:
        """Count a request; return the status to fail it with (0: serve it, -1: hang up)."""
        with self.lock:
            self.records.append((method, path, byte_range))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.drop_next > 0:
                self.drop_next -= 1
                return -1
            if self.fail_next > 0:
                self.fail_next -= 1
                return 503
            return self.fail_status

    def end(self) -> None:
        """The request stops counting as in flight *before* its answer is sent: a client cannot have
        received an answer (and sent its next request) while the request still counts here, so the
        count never exceeds what the client really had outstanding."""
        with self.lock:
            self.in_flight -= 1


def _hang_up(handler: BaseHTTPRequestHandler) -> None:
    """Close the connection without an answer (the client sees a disconnect or a reset)."""
    handler.close_connection = True
    try:
        handler.connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _send_control(handler: BaseHTTPRequestHandler, knobs: _Knobs) -> None:
    body = json.dumps(knobs.apply(urllib.parse.urlsplit(handler.path).query)).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _serve_http(root: str) -> ThreadingHTTPServer:
    from tests.servers import RangeServer, _Handler

    knobs = _Knobs()

    class Handler(_Handler):
        """RangeServer's handler, counting HEADs too, with the shared knobs."""

        def do_HEAD(self) -> None:
            self._shaped("HEAD", super().do_HEAD)

        def do_GET(self) -> None:
            if self.path.startswith("/_control"):
                _send_control(self, knobs)
                return
            self._shaped("GET", self._send_range)

        def _shaped(self, method: str, serve: Any) -> None:
            status = knobs.begin(method, self.path, self.headers.get("Range"))
            try:
                if knobs.latency:
                    time.sleep(knobs.latency)  # the simulated network, not test synchronization
            finally:
                knobs.end()  # before answering: see _Knobs.end
            if status < 0:
                _hang_up(self)
            elif status:
                self.send_error(status)
            else:
                serve()

    server = RangeServer(Path(root))
    server.RequestHandlerClass = Handler
    return server


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
               "proxy-authorization", "proxy-authenticate", "content-length"}
_S3_ERROR = "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
_S3_CODES = {500: "InternalError", 503: "ServiceUnavailable", 403: "AccessDenied", 404: "NoSuchKey"}


def _serve_s3_proxy(upstream_port: int) -> ThreadingHTTPServer:
    knobs = _Knobs()
    local = threading.local()

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _forward(self) -> None:
            if self.path.startswith("/_control"):
                _send_control(self, knobs)
                return
            body = self._body()
            status = knobs.begin(self.command, self.path, self.headers.get("Range"))
            try:
                if knobs.latency:
                    time.sleep(knobs.latency)  # the simulated network, not test synchronization
                reply = None if status else self._upstream(body)
                payload = b"" if reply is None else reply.read()
            finally:
                knobs.end()  # before answering: see _Knobs.end
            if status < 0:
                _hang_up(self)
            elif status:
                self._send(status, [("Content-Type", "application/xml")], _S3_ERROR.format(
                    code=_S3_CODES.get(status, "InternalError"), message="injected by the test proxy").encode())
            else:
                assert reply is not None
                self._send(reply.status, [(k, v) for k, v in reply.getheaders() if k.lower() not in _HOP_BY_HOP],
                           payload, reply.getheader("Content-Length"))

        def _upstream(self, body: bytes) -> http.client.HTTPResponse:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            for attempt in range(2):  # a kept-alive connection the upstream closed: reconnect once
                connection = getattr(local, "connection", None)
                if connection is None:
                    connection = local.connection = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    return connection.getresponse()
                except (http.client.HTTPException, OSError):
                    connection.close()
                    local.connection = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes, length: str | None = None) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            # A HEAD's Content-Length is the object's size, not that of the (empty) body.
            self.send_header("Content-Length", length if self.command == "HEAD" and length else str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    server.daemon_threads = True
    return server


def main(argv: list[str]) -> None:
    moto = None
    if argv[0] == "http":
        server = _serve_http(argv[1])
    elif argv[0] == "s3":
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        server = _serve_s3_proxy(moto.get_host_and_port()[1])
    else:
        raise SystemExit(f"usage: python -m tests.remote http DIR | s3 (not {argv[0]!r})")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        sys.stdin.read()  # until the test process closes our stdin (or dies)
    finally:
        server.shutdown()
        server.server_close()
        if moto is not None:
            moto.stop()


if __name__ == "__main__":
    main(sys.argv[1:])

"""How the app talks to its monitor process.

One ``SOCK_SEQPACKET`` control socket per app carries nothing but file descriptors: each request
sends a fresh ``SOCK_STREAM`` socket (plus any fds the request needs, such as a userfaultfd or a
memfd) with ``SCM_RIGHTS``. The request and its reply then travel as length-prefixed pickles on
that private socket. A private socket per request means concurrent requests from several app
threads never interleave, a slow request (prefetch) blocks nobody else, and payloads of any size
(a frame table of a 1 TiB array) fit. Both ends are one user's processes started from one
program, so pickle is no trust boundary here.

When the app dies, the kernel closes its end of the control socket and the monitor sees EOF:
that is how the monitor knows to exit without ever being orphaned.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

MAX_FDS = 16
_LENGTH = struct.Struct("<Q")


def send_obj(sock: socket.socket, obj: Any) -> None:
    send_blob(sock, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def send_blob(sock: socket.socket, data: bytes | bytearray) -> None:
    # Two sends, not one of `header + data`: that concatenation would copy a frame table's megabytes
    # (fresh memory costs ~1 ms per MiB on these VMs).
    sock.sendall(_LENGTH.pack(len(data)))
    sock.sendall(data)


def _recv_exactly(sock: socket.socket, n: int) -> bytearray:
    # Straight into one buffer: receiving parts and joining them copies everything once more.
    buffer = bytearray(n)
    view = memoryview(buffer)
    done = 0
    while done < n:
        count = sock.recv_into(view[done:], n - done)
        if not count:
            raise EOFError("the other end closed the connection")
        done += count
    return buffer


def recv_blob(sock: socket.socket) -> bytearray:
    """One length-prefixed message, still pickled (to keep or forward as it is)."""
    (length,) = _LENGTH.unpack(_recv_exactly(sock, _LENGTH.size))
    return _recv_exactly(sock, length)


def recv_obj(sock: socket.socket) -> Any:
    return pickle.loads(recv_blob(sock))


def send_request_fds(control: socket.socket, conn: socket.socket, fds: tuple[int, ...] = ()) -> None:
    """Hand ``conn`` (and ``fds``) to the monitor; the request itself follows on ``conn``."""
    socket.send_fds(control, [b"R"], [conn.fileno(), *fds])


def recv_request_fds(control: socket.socket) -> list[int] | None:
    """Receive one request's fds; ``None`` once the app has gone (EOF)."""
    msg, fds, _flags, _addr = socket.recv_fds(control, 16, MAX_FDS + 1)
    if not msg and not fds:
        return None
    return list(fds)

"""How the app talks to its monitor process.

One ``SOCK_SEQPACKET`` control socket per app carries nothing but file descriptors: each request
sends a fresh ``SOCK_STREAM`` socket (plus any fds the request needs, such as a userfaultfd or a
memfd) with ``SCM_RIGHTS``. The request and its reply then travel as messages on that private
socket. A private socket per request means concurrent requests from several app threads never
interleave, a slow request (prefetch) blocks nobody else, and payloads of any size (a frame table
of a 1 TiB array) fit. Both ends are one user's processes started from one program, so pickle is
no trust boundary here.

A message is a pickle (protocol 5) whose big buffers (numpy arrays: a 1 TiB array's frame table
is 2 MiB) travel out of band, in one memfd passed with ``SCM_RIGHTS``. Fresh memory costs ~1 ms
per MiB on these VMs and pickling megabytes in band costs as much again (the pickle grows and
copies its buffer): out of band, the bytes are written once, into the memfd, and the receiver
maps it read-only, so its arrays are read-only views of the sender's pages, never copied. The
monitor forwards the same memfd to the supervisor's journal: no megabytes travel a second time.

Wire, on a stream socket: a fixed header ``<QI`` (pickle length, number of out-of-band buffers)
carrying the memfd, if any; then one ``<Q`` length per buffer; then the pickle. Buffer ``i`` lies
in the memfd at the sum of the earlier lengths, each rounded up to ``ALIGN``.

When the app dies, the kernel closes its end of the control socket and the monitor sees EOF:
that is how the monitor knows to exit without ever being orphaned.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import socket
import struct
import weakref
from collections.abc import Iterable
from typing import Any

from ..kernel import userfaultfd as uffd

MAX_FDS = 16
IN_BAND_LIMIT = 64 * 1024  # smaller buffers stay in the pickle: a memfd costs more than copying them
ALIGN = 64  # offset of each buffer in the memfd: numpy arrays over it stay aligned
_HEADER = struct.Struct("<QI")
_SIZE = struct.Struct("<Q")
_MAX_BUFFERS = 1 << 16  # a sanity bound on a header, not a limit anyone should meet


class Message:
    """One pickled object as it travels: the pickle, and the memfd holding its big buffers.

    A message owns its memfd (``fd``, ``None`` without out-of-band buffers) until ``close``. It can
    be loaded (``load``), or kept and sent on as it is, which is what the monitor and the
    supervisor do with a register request for the journal.
    """

    def __init__(self, data: bytes | bytearray, sizes: tuple[int, ...] = (), fd: int | None = None) -> None:
        self.data = data
        self.sizes = sizes
        self.fd = fd

    @classmethod
    def pack(cls, obj: Any) -> Message:
        spill = _Spill()
        try:
            data = pickle.dumps(obj, protocol=5, buffer_callback=spill.take)
        except BaseException:
            spill.close()
            raise
        return cls(data, tuple(spill.sizes), spill.fd)

    def load(self) -> Any:
        """Unpickle; out-of-band buffers become read-only views of one mapping of the memfd (which
        lives as long as any of them does; the fd itself may be closed right after)."""
        if not self.sizes:
            return pickle.loads(self.data)
        if self.fd is None:
            raise ValueError("this message's memfd is closed")
        offsets = _offsets(self.sizes)
        end = offsets[-1] + self.sizes[-1]
        # A memfd shorter than announced would give SIGBUS on access (a sender died writing it).
        if os.fstat(self.fd).st_size < end:
            raise EOFError("a message's memfd is shorter than its buffers")
        view = _map_read_only(self.fd, end)
        return pickle.loads(self.data, buffers=[view[o:o + n] for o, n in zip(offsets, self.sizes)])

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __enter__(self) -> Message:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Spill:
    """The memfd of a message being packed: each buffer goes at the next offset ``_offsets`` gives."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.sizes: list[int] = []
        self.end = 0

    def _place(self, size: int) -> tuple[int, int]:
        if self.fd is None:
            self.fd = os.memfd_create("lazymem-message", os.MFD_CLOEXEC)
        offset = self.end
        self.sizes.append(size)
        self.end = _aligned(offset + size)
        return self.fd, offset

    def take(self, buffer: pickle.PickleBuffer) -> bool:
        """``buffer_callback``: False sends ``buffer`` out of band, written here. Only contiguous
        buffers can go (a frame table pickles its seek table's entries, contiguous as read)."""
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: only the pickle can take it
            return True
        if raw.nbytes < IN_BAND_LIMIT:
            return True
        fd, offset = self._place(raw.nbytes)
        _write_at(fd, raw, offset)
        return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _map_read_only(fd: int, length: int) -> memoryview:
    """The memfd, mapped read-only, unmapped once no view of it is left. Not ``mmap.mmap``: it
    keeps a dup of the fd for as long as the mapping lives, one more open fd per array."""
    address = uffd.map_shared(fd, length)
    raw = (ctypes.c_char * length).from_address(address)
    # Not at exit: threads still running then (the monitor's) may read through these views.
    weakref.finalize(raw, uffd.unmap, address, length).atexit = False
    return memoryview(raw).cast("B").toreadonly()


def _write_at(fd: int, data: memoryview, offset: int) -> None:
    done = 0
    while done < data.nbytes:
        done += os.pwrite(fd, data[done:], offset + done)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def _offsets(sizes: Iterable[int]) -> list[int]:
    offsets, at = [], 0
    for size in sizes:
        offsets.append(at)
        at = _aligned(at + size)
    return offsets


def send_message(sock: socket.socket, message: Message) -> None:
    header = _HEADER.pack(len(message.data), len(message.sizes))
    if message.fd is None:
        sock.sendall(header)
    else:
        # On a stream socket the fd rides with these bytes; the receiver collects it with them.
        sent = socket.send_fds(sock, [header], [message.fd])
        if sent < len(header):
            sock.sendall(header[sent:])
    if message.sizes:
        sock.sendall(struct.pack(f"<{len(message.sizes)}Q", *message.sizes))
    # Apart, not appended to the header: that concatenation would copy the pickle once more.
    sock.sendall(message.data)


def recv_message(sock: socket.socket) -> Message:
    """One message, still pickled; the caller owns it (``close`` it, or use ``with``)."""
    header = bytearray()
    fds: list[int] = []
    try:
        while len(header) < _HEADER.size:
            part, got, flags, _addr = socket.recv_fds(sock, _HEADER.size - len(header), 1,
                                                      socket.MSG_CMSG_CLOEXEC)
            fds.extend(got)
            if flags & socket.MSG_CTRUNC:
                raise OSError("a message came with more file descriptors than expected")
            if not part:
                raise EOFError("the other end closed the connection")
            header += part
        length, count = _HEADER.unpack(header)
        if count > _MAX_BUFFERS or len(fds) != (1 if count else 0):
            raise OSError(f"a malformed message header ({count} buffers, {len(fds)} fds)")
        sizes = struct.unpack(f"<{count}Q", _recv_exactly(sock, _SIZE.size * count)) if count else ()
        data = _recv_exactly(sock, length)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return Message(data, sizes, fds[0] if fds else None)


def send_obj(sock: socket.socket, obj: Any) -> None:
    with Message.pack(obj) as message:  # our copy of the memfd: the receiver has its own now
        send_message(sock, message)


def recv_obj(sock: socket.socket) -> Any:
    with recv_message(sock) as message:
        return message.load()


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


def send_request_fds(control: socket.socket, conn: socket.socket, fds: tuple[int, ...] = ()) -> None:
    """Hand ``conn`` (and ``fds``) to the monitor; the request itself follows on ``conn``."""
    socket.send_fds(control, [b"R"], [conn.fileno(), *fds])


def recv_request_fds(control: socket.socket) -> list[int] | None:
    """Receive one request's fds; ``None`` once the app has gone (EOF)."""
    msg, fds, _flags, _addr = socket.recv_fds(control, 16, MAX_FDS + 1)
    if not msg and not fds:
        return None
    return list(fds)

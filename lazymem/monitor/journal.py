"""The journal between a worker and its supervisor: what the worker serves, told as it changes.

Both ends import this module and nothing of each other: the worker (``server``) writes records
with :class:`Journal`, the supervisor keeps them and hands a new worker a :class:`Restored`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..kernel import userfaultfd as uffd
from . import protocol

Record = tuple[str, dict[str, Any], tuple[int, ...]]
"""One journal record: its kind, its description, and the fds that travel with it."""


class Journal:
    """The worker's side: tell the supervisor (synchronously, in order) what it now serves."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def fileno(self) -> int:
        return self.sock.fileno()

    def replace(self, sock: socket.socket, snapshot: Callable[[], list[Record]]) -> None:
        """Journal to a new supervisor from now on, starting with ``snapshot()``: everything served.

        Taken under the journal's lock, so that a change made before it is in the snapshot (its
        own record went to the dead supervisor, or comes after the snapshot and is applied twice,
        which ``supervisor._State.apply`` takes), and a change made after it is journaled after it."""
        with self.lock:
            old, self.sock = self.sock, sock
            old.close()
            for kind, spec, fds in snapshot():
                self._send(kind, spec, fds, None)
            self._send("ready", {}, (), None)  # the whole state: a worker may be forked from it

    def record(self, kind: str, spec: dict[str, Any], fds: tuple[int, ...] = (), *,
               request: protocol.Message | None = None) -> None:
        """Journal one change. A region travels with its ``("register", spec)`` request as a
        message: ``request``, the app's own when it has it (its pickle, and the memfd holding its
        big buffers, e.g. a source's index, which the supervisor receives as an fd: a 1 TiB
        array's 2 MiB index is never copied again), else packed here."""
        with self.lock:
            self._send(kind, spec, fds, request)

    def _send(self, kind: str, spec: dict[str, Any], fds: tuple[int, ...], request: protocol.Message | None) -> None:
        packed = None
        if kind == "region":
            # Opaque to the supervisor: unpickling a reader there could start threads (fsspec's
            # event loop) that a forked worker would then inherit broken ("not fork-safe").
            if request is None:
                request = packed = protocol.Message.pack(("register", spec))
            spec = _summary(spec)
        try:
            socket.send_fds(self.sock, [b"J"], list(fds))
            protocol.send_obj(self.sock, (kind, spec))
            if request is not None:
                protocol.send_message(self.sock, request)
        except OSError:
            # The supervisor is gone: the worker's poll loop sees its link hang up and journals
            # everything, this change included, to the one it starts next (``replace``).
            pass
        finally:
            if packed is not None:  # the supervisor has its own copy of the memfd now
                packed.close()


def _summary(spec: dict[str, Any]) -> dict[str, Any]:
    summary = {k: spec[k] for k in ("client", "region_id", "start", "length", "url")}
    return {**summary, "page_size": spec.get("page_size", uffd.PAGE_SIZE)}


@dataclass
class Restored:
    """What a new worker takes over: the supervisor's copies of the fds, and the descriptions."""

    clients: dict[int, tuple[int, int]] = field(default_factory=dict)  # client pid -> (userfaultfd, pidfd)
    # (region memfd, its register request as the app sent it); the worker inherits the request's
    # memfd with the fork, maps it and closes its copy.
    regions: list[tuple[int, protocol.Message]] = field(default_factory=list)



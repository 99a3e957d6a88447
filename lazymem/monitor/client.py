"""The app's side of the monitor: start it once, hand it our userfaultfd, send it requests.

The userfaultfd is created here, in the app, because it is bound to the address space of its
creator. The app keeps its own copy open for as long as the process lives: when the last fd of a
userfaultfd closes, the kernel unregisters its ranges and blocked faults read zeros.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Any

from ..errors import MonitorError
from ..kernel import userfaultfd as uffd
from . import protocol

_FEATURES = uffd.UFFD_FEATURE_MISSING_SHMEM | uffd.UFFD_FEATURE_THREAD_ID | uffd.UFFD_FEATURE_POISON


class MonitorClient:
    """A running monitor process serving this process's userfaultfd."""

    def __init__(self, workers: int | None = None) -> None:
        opened = uffd.open_userfaultfd()
        self.uffd = opened.fd
        self.uffd_how = opened.how
        self.user_mode_only = opened.user_mode_only
        try:
            offered = uffd.api_handshake(self.uffd, _FEATURES)
            if not offered & uffd.UFFD_FEATURE_MISSING_SHMEM:
                raise MonitorError("this kernel cannot serve missing faults on shared memory (needs Linux >= 4.11)")
            self.features = offered
            self._start(workers)
        except BaseException:
            os.close(self.uffd)
            raise
        self.pid = os.getpid()

    def _start(self, workers: int | None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        args = [sys.executable, "-m", "lazymem.monitor", str(theirs.fileno())]
        if workers:
            args.append(str(workers))
        try:
            # A new session: terminal signals (Ctrl-C) meant for the app must not reach it.
            self.process = subprocess.Popen(
                args, pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, start_new_session=True
            )
        except OSError as exc:
            ours.close()
            raise MonitorError(f"cannot start the lazymem monitor process: {exc}") from exc
        finally:
            theirs.close()
        self.control = ours
        self._send_lock = threading.Lock()
        self.uffd_key, _ = self.request("hello", fds=(self.uffd,), pid=os.getpid())

    @property
    def monitor_pid(self) -> int:
        """The pid of the process serving faults now (it changes when a dead monitor is replaced)."""
        return int(self.request("ping"))

    @property
    def supervisor_pid(self) -> int:
        return self.process.pid

    def request(self, op: str, *, fds: tuple[int, ...] = (), **args: Any) -> Any:
        """Send one request and wait for its reply.

        Every request is idempotent, so one cut short by the monitor's death is sent again: the
        supervisor starts a new monitor that answers it.
        """
        for attempt in range(4):
            try:
                return self._request_once(op, fds, args)
            except _Unanswered:
                if attempt == 3 or not self.alive():
                    raise MonitorError(f"the lazymem monitor stopped answering during {op!r}") from None
        raise AssertionError("unreachable")

    def _request_once(self, op: str, fds: tuple[int, ...], args: dict[str, Any]) -> Any:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._send_lock:
                try:
                    protocol.send_request_fds(self.control, theirs, fds)
                except OSError as exc:
                    raise MonitorError(f"the lazymem monitor is gone ({exc})") from exc
            theirs.close()
            try:
                protocol.send_obj(mine, (op, args))
                status, value = protocol.recv_obj(mine)
            except (EOFError, OSError) as exc:
                raise _Unanswered from exc
        finally:
            mine.close()
            theirs.close()
        if status == "error":
            raise value
        return value

    def alive(self) -> bool:
        return self.process.poll() is None


class _Unanswered(Exception):
    """The monitor closed a request's socket without answering (it died meanwhile)."""


_client: MonitorClient | None = None
_client_lock = threading.Lock()


def get_client() -> MonitorClient:
    """The monitor of this process, started on first use."""
    global _client
    with _client_lock:
        if _client is None or _client.pid != os.getpid():
            _client = MonitorClient()
        return _client


def current_client() -> MonitorClient | None:
    """The running client, if any, without starting one."""
    client = _client
    return client if client is not None and client.pid == os.getpid() else None


def _after_fork_in_child() -> None:
    # The child must not talk over the parent's control socket (and must not keep it open, or
    # the monitor would outlive the parent). The child's regions were not inherited
    # (MADV_DONTFORK), so it starts afresh with a monitor of its own when it opens an array.
    global _client, _client_lock
    _client_lock = threading.Lock()
    client, _client = _client, None
    if client is not None:
        for fd in (client.control.fileno(), client.uffd):
            try:
                os.close(fd)
            except OSError:
                pass
        client.control.detach()


os.register_at_fork(after_in_child=_after_fork_in_child)

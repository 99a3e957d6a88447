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
from ..kernel.limits import raise_open_file_limit
from . import protocol

_FEATURES = (uffd.UFFD_FEATURE_MISSING_SHMEM | uffd.UFFD_FEATURE_MINOR_SHMEM | uffd.UFFD_FEATURE_THREAD_ID
             | uffd.UFFD_FEATURE_POISON)


class MonitorClient:
    """A running monitor process serving this process's userfaultfd."""

    def __init__(self, workers: int | None = None) -> None:
        raise_open_file_limit()
        self._new_userfaultfd()
        try:
            self._start(workers)
        except BaseException:
            os.close(self.uffd)
            raise

    def _new_userfaultfd(self) -> None:
        opened = uffd.open_userfaultfd()
        self.uffd = opened.fd
        self.uffd_how = opened.how
        self.user_mode_only = opened.user_mode_only
        self.pid = os.getpid()
        try:
            offered = uffd.api_handshake(self.uffd, _FEATURES)
            if not offered & uffd.UFFD_FEATURE_MISSING_SHMEM:
                raise MonitorError("this kernel cannot serve missing faults on shared memory (needs Linux >= 4.11)")
        except BaseException:
            os.close(self.uffd)
            raise
        self.features = offered
        # Zero-copy installs (decompress into the page cache, UFFDIO_CONTINUE) need MINOR faults on
        # shared memory (Linux >= 5.13). Off by default: measured here, populating shmem pages from
        # user space (MADV_POPULATE_WRITE) cost more system time than UFFDIO_COPY's in-kernel
        # allocate-and-copy (0.33 s against 0.22 s per 256 MiB), so the copy it saves does not pay.
        self.zero_copy = bool(offered & uffd.UFFD_FEATURE_MINOR_SHMEM) and os.environ.get(
            "LAZYMEM_ZERO_COPY", "0") == "1"

    @classmethod
    def for_forked_child(cls, parent: MonitorClient, regions: list[Any]) -> MonitorClient:
        """In a forked child: map the parent's regions again and have the parent's monitor serve them.

        The regions were not inherited (MADV_DONTFORK, so the child can never read them unregistered,
        i.e. as zeros). Mapping each memfd again at the same address makes every ndarray the child
        inherited valid again; chunks the parent installed are in the shared page cache already, and
        chunks installed for the child appear in the parent without a fault.
        """
        self = cls.__new__(cls)
        self._new_userfaultfd()
        self.control = parent.control  # SEQPACKET messages are atomic: parent and child can share it
        self.process = parent.process
        self._send_lock = threading.Lock()
        self._owner_pid = parent._owner_pid
        try:
            for region in regions:
                region.remap_in_child(self)
            self.uffd_key, _ = self.request("hello", fds=(self.uffd,), pid=os.getpid())
            self.request("fork", client=self.uffd_key, parent=parent.uffd_key,
                         region_ids=[region.region_id for region in regions])
        except BaseException:
            os.close(self.uffd)
            raise
        return self

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
        self._owner_pid = os.getpid()  # only the process that started the monitor can wait for it
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
        if os.getpid() == self._owner_pid:
            return self.process.poll() is None
        try:
            os.kill(self.process.pid, 0)
        except ProcessLookupError:
            return False
        return True


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
    """Make the parent's lazy arrays work in a forked child, or leave them unmapped (never zeros)."""
    global _client, _client_lock
    _client_lock = threading.Lock()
    parent, _client = _client, None
    if parent is None:
        return
    from ..region import live_regions

    regions = [region for region in live_regions() if region.client is parent and region.usable]
    try:
        os.close(parent.uffd)  # the parent's userfaultfd serves the parent's address space only
    except OSError:
        pass
    if not regions:
        parent.control.close()  # so the monitor does not outlive the parent because of us
        return
    try:
        _client = MonitorClient.for_forked_child(parent, regions)
    except BaseException as exc:  # noqa: BLE001 - never let a fork fail because of us
        for region in regions:
            region.forget_in_child()
        print(f"lazymem: cannot serve lazy arrays in this forked child ({exc}); touching them will "
              "raise SIGSEGV (they are not mapped here), never give zeros", file=sys.stderr)


os.register_at_fork(after_in_child=_after_fork_in_child)

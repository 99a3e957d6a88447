"""Keep a monitor running for the app, whatever happens to it.

When the monitor dies (SIGKILL, OOM killer, a crash), app threads may be blocked in faults it had
read but not served, possibly holding their GIL, so the app itself can do nothing. Hence the
process the app starts is a small, single-threaded supervisor that forks the real monitor (the
*worker*) and keeps a journal of what it serves: each client's userfaultfd, each region's memfd
and description (the app's register request as it came: its pickle, and the memfd of its big
buffers, see ``protocol``). When the worker dies, the supervisor forks a new one from that journal; the new
worker wakes every registered range (``UFFDIO_WAKE``), so blocked threads retry their access and
fault again, this time to a monitor that answers. Pages the dead worker installed stay installed
(installs are whole pages; the rest of a half-installed unit is skipped with EEXIST).

If workers keep dying, recovery is impossible: the supervisor poisons every registered range so
that waiting threads get SIGBUS with a message on stderr rather than hanging forever.

The two watch each other. When the supervisor dies, the worker sees its end of the journal hang
up and starts a new supervisor (``python -m lazymem.monitor --adopt``) to which it journals its
whole state again; the new supervisor adopts the running worker (it watches it through a pidfd)
and forks a new worker from that journal when it dies. Whether the app has gone is read from the
control socket (it hangs up when the app's last copy of its end closes), not from how a worker
exited: an adopted worker is not the new supervisor's child, whose exit status it cannot read.
If both die at once, the app's own watcher starts a new monitor (see ``client``).
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..kernel import userfaultfd as uffd
from . import protocol
from .journal import Journal, Restored
from .process import hung_up, name_process

Serve = Callable[[socket.socket, Journal, Restored | None, int, int], None]
"""How a forked worker runs (``server.serve``): given to :func:`supervise`, which does not import
the worker's module (that one starts supervisors: it imports this one)."""

MAX_RESTARTS = 10  # within RESTART_WINDOW seconds; past that, give up loudly
RESTART_WINDOW = 60.0


@dataclass
class _Region:
    memfd: int
    summary: dict[str, Any]
    request: protocol.Message  # never loaded here: it holds a reader

    def close(self) -> None:
        os.close(self.memfd)
        self.request.close()


class _State:
    def __init__(self, complete: bool = True) -> None:
        self.clients: dict[int, tuple[int, int]] = {}  # pid -> (userfaultfd, pidfd or -1)
        self.regions: dict[tuple[int, int], _Region] = {}
        # Whether this is all the worker serves. Not until an adopted worker says "ready": a
        # worker forked from half its state would wake readers of arrays it does not know, for ever.
        self.complete = complete

    def apply(self, kind: str, spec: dict[str, Any], fds: list[int],
              request: protocol.Message | None = None) -> None:
        if kind == "ready":
            self.complete = True
        elif kind == "client":
            _close_client(self.clients.pop(spec["pid"], None))
            self.clients[spec["pid"]] = (fds[0], fds[1] if len(fds) > 1 else -1)
        elif kind == "region":
            assert request is not None
            region = _Region(fds[0], spec, request)
            key = (spec["client"], spec["region_id"])
            if key in self.regions:
                region.close()
            else:
                self.regions[key] = region
        elif kind == "close":
            entry = self.regions.pop((spec["client"], spec["region_id"]), None)
            if entry is not None:
                entry.close()
        elif kind == "drop":
            _close_client(self.clients.pop(spec["pid"], None))
            for key in [k for k in self.regions if k[0] == spec["pid"]]:
                self.regions.pop(key).close()

    def restored(self) -> Restored:
        return Restored(dict(self.clients), [(r.memfd, r.request) for r in self.regions.values()])


def _close_client(fds: tuple[int, int] | None) -> None:
    for fd in fds or ():
        if fd >= 0:
            os.close(fd)


def _read_record(link: socket.socket, state: _State) -> bool:
    """Apply one journal record; False at EOF (the worker is gone)."""
    try:
        msg, fds, _flags, _addr = socket.recv_fds(link, 1, protocol.MAX_FDS)
    except OSError:
        return False
    if not msg:
        return False
    request = None
    try:
        kind, spec = protocol.recv_obj(link)
        if kind == "region":
            request = protocol.recv_message(link)
    except (EOFError, OSError):  # the worker died in the middle of a record
        for fd in fds:
            os.close(fd)
        return False
    state.apply(kind, spec, list(fds), request)
    return True


def _follow(pid: int, link: socket.socket, state: _State, *, pidfd: int = -1) -> int | None:
    """Keep the journal until the worker exits; return its wait status. ``pidfd``: an adopted
    worker's, which is not our child: its status is not ours to read (None)."""
    child = pidfd < 0
    if child:
        pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(link, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    try:
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if link.fileno() in ready and _read_record(link, state):
                continue
            if pidfd in ready or link.fileno() in ready:
                while _read_record(link, state):  # drain what it wrote before dying
                    pass
                if not child:
                    return None
                _, status = os.waitpid(pid, 0)
                return status
    finally:
        os.close(pidfd)


def _poison_everything(state: _State) -> None:
    for region in state.regions.values():
        spec = region.summary
        fd, _pidfd = state.clients.get(spec["client"], (-1, -1))
        if fd < 0:
            continue
        try:
            uffd.poison(fd, spec["start"], spec["length"], page=spec["page_size"])
        except OSError as exc:
            print(f"lazymem monitor: cannot poison {spec['url']}: {exc}", file=sys.stderr)


def supervise(control: socket.socket, workers: int, serve: Serve,
              adopt: tuple[int, int, socket.socket] | None = None) -> int:
    """Run workers until the app has gone; return the supervisor's exit code.

    Parameters
    ----------
    control
        The app's control socket; it hangs up when the app has gone.
    workers
        Worker threads each worker process starts with.
    serve
        What a forked worker runs: ``serve(control, journal, restored, workers, supervisor_pid)``.
    adopt
        (pid, pidfd, journal link) of a running worker whose supervisor died; it journals its
        state to us and we take over from there.
    """
    name_process("lazymem-super")
    state = _State(complete=adopt is None)
    deaths: deque[float] = deque()
    supervisor = os.getpid()
    while True:
        if adopt is not None:
            pid, pidfd, link_here = adopt
            adopt = None
        else:
            pidfd = -1
            link_here, link_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            restored = state.restored() if state.clients else None
            pid = os.fork()
            if pid == 0:  # the worker
                link_here.close()
                try:
                    serve(control, Journal(link_there), restored, workers, supervisor)
                except BaseException:  # noqa: BLE001 - report, and let the supervisor restart us
                    traceback.print_exc()
                    os._exit(70)
                os._exit(0)
            link_there.close()
        status = _follow(pid, link_here, state, pidfd=pidfd)
        link_here.close()
        if hung_up(control) or (status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            return 0  # the app has gone and the worker with it
        if not state.complete:
            # The worker that adopted us died before it told us everything: we cannot take over.
            # Exiting closes our end of the control socket; with no monitor process left, the
            # app sees it hang up and starts a new monitor from its own state.
            return 1
        if status is None:
            cause = "killed"
        elif os.WIFSIGNALED(status):
            cause = f"signal {os.WTERMSIG(status)}"
        else:
            cause = f"exit status {os.WEXITSTATUS(status)}"
        now = time.monotonic()
        deaths.append(now)
        while deaths and now - deaths[0] > RESTART_WINDOW:
            deaths.popleft()
        if len(deaths) > MAX_RESTARTS:
            print(f"lazymem monitor: the monitor died {len(deaths)} times in {RESTART_WINDOW:.0f} s "
                  f"(last: {cause}); giving up: poisoning every lazy array, readers get SIGBUS",
                  file=sys.stderr, flush=True)
            _poison_everything(state)
            return 1
        print(f"lazymem monitor: the monitor died ({cause}); starting a new one", file=sys.stderr, flush=True)

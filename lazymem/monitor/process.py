"""Small facts about the monitor's processes, shared by the supervisor and the worker."""

from __future__ import annotations

import select
import socket


def name_process(name: str) -> None:
    """Name this process for ps and top (``comm``, 15 bytes): supervisor, worker and standby
    share one command line (a worker is a fork of its supervisor)."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def hung_up(sock: socket.socket) -> bool:
    """Whether the other end of ``sock`` has closed (every copy of it), without blocking.

    The control socket hangs up when the app and its forked children have gone; a journal link
    when the process at its other end has died."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return any(events & (select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0))

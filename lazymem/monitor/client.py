"""The app's side of the monitor: start it once, hand it our userfaultfd, send it requests.

The userfaultfd is created here, in the app, because it is bound to the address space of its
creator. The app keeps its own copy open for as long as the process lives: when the last fd of a
userfaultfd closes, the kernel unregisters its ranges and blocked faults read zeros.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
from typing import Any

from ..errors import MonitorError
from ..kernel import userfaultfd as uffd
from ..kernel.limits import raise_open_file_limit
from . import protocol
from .live import live_regions

_FEATURES = (uffd.UFFD_FEATURE_MISSING_SHMEM | uffd.UFFD_FEATURE_MINOR_SHMEM | uffd.UFFD_FEATURE_THREAD_ID
             | uffd.UFFD_FEATURE_POISON)


class MonitorClient:
    """A running monitor process serving this process's userfaultfd.

    The app holds everything a monitor needs to start over: its userfaultfd, each region's memfd
    and description. So when every monitor process has died (the supervisor restarts a dead
    worker, the worker a dead supervisor; both at once is for us), it starts a new monitor and
    hands it every live region (``restart``). Two things notice: a request that finds the control
    socket dead, and a daemon thread (``_watch``) blocked in ``poll`` on that socket, which hangs
    up when the last monitor process holding its other end dies. ``poll`` waits without the GIL,
    but what follows needs it: see the README's limits for the one case this cannot repair.
    """

    def __init__(self, workers: int | None = None) -> None:
        raise_open_file_limit()
        self._new_userfaultfd()
        self._init_restarts(workers)
        try:
            self._start()
        except BaseException:
            os.close(self.uffd)
            raise
        self._spawn_standby()
        self._watch()

    def _init_restarts(self, workers: int | None) -> None:
        self.workers = workers
        self.process: subprocess.Popen[bytes] | None = None  # our child, if we started the monitor
        self.generation = 0  # how many times this process replaced a dead monitor
        self.restarted = threading.Condition()
        # Reentrant: a region's finalizer may run (gc) in the thread that is restarting.
        self._restart_lock = threading.RLock()
        self._send_lock = threading.Lock()
        self._changed_r, self._changed_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._standby: tuple[subprocess.Popen[bytes], socket.socket] | None = None

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
        self._init_restarts(parent.workers)
        self.control = parent.control  # SEQPACKET messages are atomic: parent and child can share it
        regions = _copies_last(regions)
        arrays = [region for region in regions if not _is_copy(region)]
        copies = [(region.region_id, region.carrier.region_id, region.address)
                  for region in regions if _is_copy(region)]
        try:
            for region in regions:
                region.remap_in_child(self)
            try:
                self._hello()
                gone = self.request("fork", client=self.uffd_key, parent=parent.uffd_key,
                                    region_ids=[region.region_id for region in arrays], copies=copies)
                for region in regions:  # released by the parent after the fork: garbage here too
                    if region.region_id in (gone or ()):
                        region.forget_in_child()
            except MonitorError:
                if self.generation > 0:
                    pass  # the parent's monitor died under the request: ours has our regions already
                elif self.alive():
                    raise
                else:
                    self.restart()  # the parent's monitor has gone: start our own, hand it our regions
        except BaseException:
            os.close(self.uffd)
            raise
        self._watch()
        return self

    def _start(self) -> None:
        self.control, self.process = self._launch()

    def _launch(self) -> tuple[socket.socket, subprocess.Popen[bytes]]:
        """A new monitor that serves our userfaultfd: its control socket and process."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = self._take_standby(theirs) or self._spawn(theirs.fileno())
        except OSError as exc:
            ours.close()
            raise MonitorError(f"cannot start the lazymem monitor process: {exc}") from exc
        finally:
            theirs.close()
        try:
            self._hello(ours)
        except BaseException:
            ours.close()  # it exits when it sees us hang up
            threading.Thread(target=process.wait, daemon=True).start()
            raise
        return ours, process

    def _spawn(self, fd: int, *flags: str) -> subprocess.Popen[bytes]:
        """``python -m lazymem.monitor [flags] FD [workers]``, inheriting ``fd``."""
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        args = [sys.executable, "-m", "lazymem.monitor", *flags, str(fd)]
        if self.workers:
            args.append(str(self.workers))
        # A new session: terminal signals (Ctrl-C) meant for the app must not reach it.
        return subprocess.Popen(args, pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL, start_new_session=True)

    def _spawn_standby(self) -> None:
        """Start the next monitor ahead of need: a process that has imported everything and holds
        nothing, waiting for a control socket. When every monitor process has died, handing it
        one (``_take_standby``) costs a message instead of a Python start-up (~300 ms here,
        against ~20 ms): readers blocked holding their GIL meanwhile cannot be helped (README,
        limits), so that window should be short. It exits when we do (its socket hangs up)."""
        if os.getpid() != self.pid or self._standby is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._standby = (self._spawn(theirs.fileno(), "--standby"), ours)
        except OSError:  # no standby: a restart starts a monitor from scratch
            ours.close()
        finally:
            theirs.close()

    def _take_standby(self, control_end: socket.socket) -> subprocess.Popen[bytes] | None:
        """Hand ``control_end`` to the standby; it becomes our monitor. None if there is none."""
        standby, self._standby = self._standby, None
        if standby is None:
            return None
        process, sock = standby
        try:
            socket.send_fds(sock, [b"S"], [control_end.fileno()])
        except OSError:  # it was killed: start one from scratch
            threading.Thread(target=process.wait, daemon=True).start()
            return None
        finally:
            sock.close()
        return process

    def _hello(self, control: socket.socket | None = None) -> None:
        # Our pidfd goes along: the monitor can then signal us, and tell that we exited, without
        # ever naming another process that was given our pid after us.
        pidfd = os.pidfd_open(os.getpid())
        try:
            self.uffd_key, _ = self._request_here("hello", fds=(self.uffd, pidfd), control=control,
                                                  pid=os.getpid())
        finally:
            os.close(pidfd)

    @property
    def monitor_pid(self) -> int:
        """The pid of the process serving faults now (it changes when a dead monitor is replaced)."""
        return int(self.request("pids")[1])

    @property
    def supervisor_pid(self) -> int:
        """The pid of the monitor's supervisor now (it changes when a dead one is replaced)."""
        return int(self.request("pids")[0])

    def request(self, op: str, *, fds: tuple[int, ...] = (), **args: Any) -> Any:
        """Send one request and wait for its reply.

        Every request is idempotent, so one cut short by the monitor's death is sent again: to the
        worker the supervisor starts next, or, when every monitor process has gone, to the monitor
        this process starts itself (``restart``).
        """
        for _attempt in range(_ATTEMPTS):
            generation = self.generation
            try:
                return self._request_once(op, fds, args)
            except _Unanswered:
                if not self.alive():
                    self.restart(generation)
        raise MonitorError(f"the lazymem monitor stopped answering during {op!r} ({_ATTEMPTS} attempts); "
                           "see its messages on stderr")

    def _request_here(self, op: str, *, fds: tuple[int, ...] = (), control: socket.socket | None = None,
                      **args: Any) -> Any:
        """``request`` to one monitor (``control``, by default the current one), never starting
        another: used while a new monitor is being started, before other threads may use it."""
        control = control or self.control
        for _attempt in range(_ATTEMPTS):
            try:
                return self._request_once(op, fds, args, control)
            except _Unanswered:
                if _hung_up(control):
                    break
        raise MonitorError(f"the lazymem monitor stopped answering during {op!r} while it was being started")

    def _request_once(self, op: str, fds: tuple[int, ...], args: dict[str, Any],
                      control: socket.socket | None = None) -> Any:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._send_lock:
                try:
                    protocol.send_request_fds(control or self.control, theirs, fds)
                except OSError as exc:  # EPIPE, ECONNRESET: every monitor process has gone
                    raise _Unanswered from exc
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
        """Whether some monitor process still holds the other end of the control socket."""
        return not _hung_up(self.control)

    def restart(self, seen_generation: int | None = None) -> None:
        """Every monitor process has died: start a new monitor and hand it every live region.

        The userfaultfd stays ours (its ranges stay registered, so blocked readers keep waiting,
        never read zeros); each region is registered again with ``restore``: the new monitor keeps
        the complete chunks its memfd holds and wakes the range, so faults the dead monitor read
        but never served are delivered again. ``seen_generation``: the generation in which the
        caller saw the monitor dead; if another thread replaced it meanwhile, nothing is done.
        """
        with self._restart_lock:
            if seen_generation is not None and seen_generation != self.generation:
                return
            if self.alive():
                return
            if os.getpid() != self.pid:
                raise MonitorError("the lazymem monitor of a parent process is gone")
            # The new monitor is published (self.control) only once it serves every region:
            # meanwhile other threads' requests fail on the dead socket and wait for this lock.
            for attempt in range(_RESTART_ATTEMPTS):
                try:
                    control, process = self._launch()
                except Exception as exc:  # noqa: BLE001 - it died too (killed like its predecessor), or never started
                    error: Exception = exc
                else:
                    try:
                        for region in _copies_last(live_regions()):  # a copy is served through its array
                            if region.client is self:
                                region.announce_again(control)
                        break
                    except Exception as exc:  # noqa: BLE001 - it died while taking the regions: try again
                        error = exc
                        control.close()
                        threading.Thread(target=process.wait, daemon=True).start()
                if attempt == _RESTART_ATTEMPTS - 1:
                    raise MonitorError(f"the lazymem monitor died and {_RESTART_ATTEMPTS} new ones could not "
                                       f"take over ({type(error).__name__}: {error})") from error
            old_control, old_process = self.control, self.process
            self.control, self.process = control, process
            old_control.close()
            if old_process is not None:
                # Dying (it closed its end of the control socket), maybe not dead yet: reap it
                # when it is, so that no zombie stays behind.
                threading.Thread(target=old_process.wait, daemon=True).start()
            self._spawn_standby()  # for the next time, before anyone waiting is told we are done
            with self.restarted:
                self.generation += 1
                self.restarted.notify_all()
        try:
            os.write(self._changed_w, b"x")  # the watcher polls the new control socket from now on
        except BlockingIOError:
            pass

    def wait_for_generation(self, generation: int, timeout: float | None = None) -> bool:
        """Block until this process has replaced a dead monitor ``generation`` times in all."""
        with self.restarted:
            return self.restarted.wait_for(lambda: self.generation >= generation, timeout)

    # --- the watcher ------------------------------------------------------------------------------
    def _watch(self) -> None:
        threading.Thread(target=self._watch_loop, name="lazymem-monitor-watcher", daemon=True).start()

    def _watch_loop(self) -> None:
        """Wait (in poll, without the GIL) for the last monitor process to die, then restart it.

        Also reaps the monitor process this process started, when it exits (a supervisor the
        worker replaced), so that no zombie stays behind, and replaces a killed standby."""
        while os.getpid() == self.pid:
            try:
                if not self._watch_once():
                    return
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any surprise
                print(f"lazymem: monitor watcher: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    def _watch_once(self) -> bool:
        """One wait and what follows it; False once there is nothing left to watch."""
        generation, control, process, standby = self.generation, self.control, self.process, self._standby
        poller = select.poll()
        poller.register(self._changed_r, select.POLLIN)  # a restart elsewhere swaps what is watched
        for sock in (control, standby[1] if standby is not None else None):
            fd = sock.fileno() if sock is not None else -1
            if fd >= 0:  # closed meanwhile by a restart on another thread: the pipe says so
                poller.register(fd, 0)  # POLLHUP and POLLERR are always reported
        pidfd = -1
        if process is not None and process.returncode is None:
            try:
                pidfd = os.pidfd_open(process.pid)
                poller.register(pidfd, select.POLLIN)
            except ProcessLookupError:
                process.poll()
        try:
            ready = dict(poller.poll())
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        if self._changed_r in ready:
            try:
                os.read(self._changed_r, 64)
            except BlockingIOError:
                pass
        if pidfd in ready and process is not None:
            process.poll()
        if standby is not None and standby[1].fileno() in ready:
            with self._restart_lock:
                if self._standby is standby:  # killed while waiting: reap it, start another
                    self._standby = None
                    standby[1].close()
                    standby[0].wait()
                    self._spawn_standby()
        if control.fileno() in ready and generation == self.generation:
            try:
                self.restart(generation)
            except MonitorError as exc:
                self._give_up(exc)
                return False
        return True

    def _give_up(self, exc: BaseException) -> None:
        """No monitor can be started: poison every region, so that readers blocked in a fault get
        SIGBUS with this message rather than waiting for ever."""
        print(f"lazymem: {exc}; poisoning every lazy array of this process: readers get SIGBUS",
              file=sys.stderr, flush=True)
        for region in live_regions():
            if region.client is self and region.usable:
                try:
                    uffd.poison(self.uffd, region.address, region.length, page=region.page_size)
                except OSError:
                    pass


_ATTEMPTS = 8
_RESTART_ATTEMPTS = 5


def _is_copy(region: Any) -> bool:
    """A lazy copy (``cow.PrivateView``) rather than an array's region."""
    return getattr(region, "carrier", None) is not None


def _copies_last(regions: list[Any]) -> list[Any]:
    """The monitor serves a lazy copy through its array's region: hand it the arrays first."""
    return sorted(regions, key=_is_copy)


def _hung_up(sock: socket.socket) -> bool:
    if sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock, 0)
    return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _fd, events in poller.poll(0))


class _Unanswered(Exception):
    """The monitor closed a request's socket without answering, or the control socket is dead."""


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
    regions = [region for region in live_regions() if region.client is parent and region.usable]
    for fd in (parent.uffd, parent._changed_r, parent._changed_w):
        try:
            os.close(fd)  # the parent's userfaultfd serves the parent's address space only
        except OSError:
            pass
    if parent._standby is not None:  # the parent's: it must see the parent exit
        parent._standby[1].close()
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

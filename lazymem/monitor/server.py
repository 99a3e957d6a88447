"""The monitor's fault loop and requests: the worker process that serves the app's page faults.

It must be a separate process: an app thread that touches an unloaded page blocks in the kernel
while holding its GIL, so a monitor thread in the same interpreter would never run again.

Threads here:

* the main thread polls the control socket and every client's userfaultfd, turns page faults into
  unit jobs and never blocks on I/O (``Monitor.run``, ``Monitor._on_fault``);
* a pool of workers loads and installs units (``jobs.Scheduler`` runs ``installer.install``:
  fsspec, zstandard and the ``UFFDIO_COPY`` ioctl all release the GIL, so they overlap);
* one short-lived thread per request (register, close, stats, prefetch, evict: ``Monitor._op_*``).

The rest lives beside it, one module per reason to change: ``regions`` (what is served),
``units`` (unit states and their transitions), ``readahead`` (the window policy), ``jobs``
(priorities, queue, workers), ``installer`` (COPY / CONTINUE / ZEROPAGE, early wake, the tripwire
page), ``eviction``, ``failures`` (poisoning), ``journal`` and ``supervisor`` (surviving death).

The monitor knows no format: a region holds a :class:`~lazymem.sources.base.Source` and a grid of
install units, and asks the source to fill a unit (``read_unit``), nothing else. Inside the monitor
a *unit* is what is installed whole; the app's requests and stats still say "chunk" for it (the
wire names are public).
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

from ..errors import HugePagesUnavailableError, MonitorError
from ..kernel import userfaultfd as uffd
from ..kernel.limits import raise_open_file_limit
from ..sources.base import Source
from . import protocol
from .buffers import BufferPool
from .eviction import NoRoom, evict_unit
from .failures import fail, touched_after_close
from .inflight import FetchSlots
from .installer import install, spring
from .jobs import DEMAND, PREFETCH, READAHEAD, Job, Scheduler, new_job
from .journal import Journal, Record, Restored
from .process import hung_up, name_process
from .regions import Client, ServedRegion
from .supervisor import supervise
from .units import ABSENT, FAILED, PENDING, PRESENT


class Monitor:
    """One worker process's state: the clients and regions it serves, and its fault loop.

    Parameters
    ----------
    control
        The app's control socket (requests arrive on it; it hangs up when the app has gone).
    workers
        Worker threads to start with (arrays on network storage add more, see ``max_in_flight``).
    journal
        The link to our supervisor, None without one (tests).
    supervisor_pid
        The supervisor's pid, reported by the ``pids`` request.
    """

    def __init__(self, control: socket.socket, workers: int, journal: Journal | None = None,
                 supervisor_pid: int = 0) -> None:
        self.control = control
        self.journal = journal
        self.supervisor_pid = supervisor_pid
        self.supervisor: subprocess.Popen[bytes] | None = None  # one we started (our child), see _replace_supervisor
        self.supervisor_lock = threading.Lock()
        self.clients: dict[int, Client] = {}  # by client pid, the key the app sends
        self.by_fd: dict[int, Client] = {}  # by userfaultfd, for the poll loop
        self.by_pidfd: dict[int, Client] = {}
        self.groups: dict[tuple[int, int], list[ServedRegion]] = {}
        self.regions: dict[tuple[int, int], ServedRegion] = {}
        self.lock = threading.Lock()  # guards clients, regions and their address maps
        self.buffers = BufferPool()
        self.poller = select.poll()
        self.poller.register(control, select.POLLIN)
        # A pipe lets request threads wake the poll loop when the set of uffds changes.
        self.wakeup_r, self.wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller.register(self.wakeup_r, select.POLLIN)
        if journal is not None:  # it hangs up when the supervisor dies
            self.poller.register(journal.fileno(), select.POLLIN)
        self.base_workers = workers
        self.scheduler = Scheduler(self._run_job)
        self.scheduler.ensure_workers(workers)

    # --- the event loop ---------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            for fd, events in self.poller.poll():
                if fd == self.control.fileno():
                    fds = protocol.recv_request_fds(self.control)
                    if fds is None:
                        return  # the app has gone
                    threading.Thread(target=self._serve_request, args=(fds,), daemon=True).start()
                elif fd == self.wakeup_r:
                    try:
                        os.read(self.wakeup_r, 4096)
                    except BlockingIOError:
                        pass
                elif fd in self.by_pidfd:
                    self._drop_client(self.by_pidfd[fd])
                elif self.journal is not None and fd == self.journal.fileno():
                    if hung_up(self.journal.sock):  # the supervisor died
                        try:
                            self.poller.unregister(fd)  # registered again once a new one listens
                        except KeyError:  # a request (pids) is replacing it already
                            pass
                        threading.Thread(target=self._ensure_supervisor, daemon=True).start()
                else:
                    client = self.by_fd.get(fd)
                    if client is None:
                        continue
                    if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                        self._drop_client(client)
                        continue
                    for message in uffd.read_messages(fd):
                        if isinstance(message, uffd.PageFault):
                            self._on_fault(client, message.address)

    def _ensure_supervisor(self) -> None:
        """If our supervisor died, start a new one that adopts us and journal everything to it.

        Not in the poll loop: starting a process and journaling every array take milliseconds to
        seconds, and faults must go on being served meanwhile."""
        if self.journal is None:
            return
        with self.supervisor_lock:
            if hung_up(self.journal.sock):
                self._replace_supervisor(self.journal)

    def _replace_supervisor(self, journal: Journal) -> None:
        try:
            self.poller.unregister(journal.fileno())
        except KeyError:
            pass
        if self.supervisor is not None:
            self.supervisor.wait()  # reap the one we started before (it is our child)
        here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Our pidfd, not just our pid: if we die before it starts, our pid may name another process.
        me = os.pidfd_open(os.getpid())
        args = [sys.executable, "-m", "lazymem.monitor", str(self.control.fileno()), str(self.base_workers),
                "--adopt", str(os.getpid()), str(me), str(there.fileno())]
        try:
            self.supervisor = subprocess.Popen(args, pass_fds=(self.control.fileno(), me, there.fileno()),
                                               stdin=subprocess.DEVNULL)
        except OSError as exc:  # a worker alone still serves; only its own death is fatal now
            print(f"lazymem monitor: cannot start a new supervisor ({exc})", file=sys.stderr, flush=True)
            here.close()
            return
        finally:
            there.close()
            os.close(me)
        self.supervisor_pid = self.supervisor.pid
        journal.replace(here, self._snapshot)
        self.poller.register(journal.fileno(), select.POLLIN)
        os.write(self.wakeup_w, b"x")

    def _snapshot(self) -> list[Record]:
        """Journal records that rebuild what we serve now: clients first, then their regions."""
        with self.lock:
            records: list[Record] = [
                ("client", {"pid": c.pid}, (c.uffd,) if c.pidfd < 0 else (c.uffd, c.pidfd))
                for c in self.clients.values()]
            for region in self.regions.values():
                records.append(("region", {**region.spec, "group": region.group}, (region.memfd,)))
        return records

    def _on_fault(self, client: Client, address: int) -> None:
        with self.lock:
            region = client.region_at(address)
        if region is None:
            # Not ours (closed while a straggler message was queued): let it retry the access.
            try:
                uffd.wake(client.uffd, address & ~(uffd.PAGE_SIZE - 1), uffd.PAGE_SIZE)
            except OSError:
                pass
            return
        unit, within = divmod(address - region.start, region.unit_bytes)
        installer = region.installer  # itself, or for a lazy copy the array's shared mapping
        if region.sealed or installer.sealed:
            touched_after_close(region, unit)
            return
        with region.lock:
            region.stats.faults += 1
            state = region.units[unit]
            region.resident_set.touched(unit)
            trip = installer.trip
            if trip is not None and trip.unit == unit and within < region.page_size:
                spring(installer, trip)
                if installer is not region:
                    region.wake(unit * region.unit_bytes, region.page_size)
                self._read_ahead(region, unit, sequential=True)
                return
            if state == PRESENT and region.page_present(address - region.start):
                # Either the install raced ahead of this message (the thread was woken already), or
                # the unit is in the page cache but not mapped in this process (a forked child, a
                # new monitor): map it (zero copy) and wake.
                offset, _, span = region.unit_span(unit)
                region.map_present(offset, span)
            elif state == PENDING:
                job = region.jobs[unit]
                if job.region is not region:
                    job.others.add(region)  # a clone's (or a copy's) thread waits for another's install
                if job.fault_at < 0 and job.region is installer:  # same client, same layout
                    job.fault_at = within
                self.scheduler.hurry(job, DEMAND)
            else:
                job = new_job(installer, unit, DEMAND)
                job.fault_at = within
                if installer is not region:
                    job.others.add(region)
                self.scheduler.put(job)
            self._read_ahead(region, unit)

    def _read_ahead(self, region: ServedRegion, unit: int, *, sequential: bool = False) -> None:
        """Queue the units the readahead policy wants loaded after ``unit`` (region.lock held)."""
        new = []
        for ahead in region.readahead.on_fault(unit, sequential=sequential):
            if region.units[ahead] == ABSENT:
                region.stats.readahead_chunks += 1
                job = new_job(region.installer, ahead, READAHEAD)
                new.append(job)
                self.scheduler.put(job)
        # The first new unit of a window of several is the tripwire: when the reader gets there,
        # the rest of the window is still ahead of it while the next one is fetched. Not with zero
        # copy (no page held back from a memfd write) nor across clones (one held page, many readers).
        if len(new) >= 2 and region.installer.trip is None and not region.shared_address and len(
                self.groups.get(region.group, ())) <= 1:
            new[0].trip = True

    # --- workers ----------------------------------------------------------------------------------
    def _run_job(self, job: Job) -> None:
        """Install ``job``'s unit on a worker thread; every outcome reaches its waiters."""
        region = job.region
        try:
            install(job, self.buffers)
        except NoRoom:
            with region.lock:
                if job.priority != READAHEAD:  # a reader faulted on it meanwhile: install it now
                    job.started = False
                    self.scheduler.put(job)
                    return
                region.jobs.pop(job.unit, None)
                region.units.abandoned(job.unit)
                others = list(job.others)
            for other in others:
                other.wake(0, other.length)
            job.done.set()
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the waiters
            fail(job, exc)
        else:
            job.done.set()

    # --- requests ---------------------------------------------------------------------------------
    def _serve_request(self, fds: list[int]) -> None:
        conn = socket.socket(fileno=fds[0])
        extra = fds[1:]
        message = None
        try:
            message = protocol.recv_message(conn)
            op, args = message.load()
            if op == "register":
                args["request"] = message  # journaled as it came: its pickle, and its memfd
            try:
                result: Any = ("ok", getattr(self, "_op_" + op)(*extra, **args))
            except BaseException as exc:  # noqa: BLE001 - errors travel back to the caller
                for fd in extra:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                result = ("error", exc)
            try:
                protocol.send_obj(conn, result)
            except (TypeError, AttributeError, ValueError, pickle.PicklingError):  # unpicklable exception
                protocol.send_obj(conn, ("error", MonitorError(repr(result[1]))))
        except (EOFError, OSError):
            pass
        finally:
            if message is not None:  # its buffers stay mapped as long as the objects using them
                message.close()
            conn.close()

    def _op_ping(self) -> int:
        return os.getpid()

    def _op_pids(self) -> tuple[int, int]:
        """(supervisor, worker): the monitor's processes now (a dead supervisor is replaced first)."""
        self._ensure_supervisor()
        return self.supervisor_pid, os.getpid()

    def _op_hello(self, uffd_fd: int, pidfd: int = -1, *, pid: int) -> tuple[int, int]:
        """Serve a process's userfaultfd; its pid is its key in later requests. Its pidfd, sent
        by the process itself, names that very process for as long as we keep it: a signal sent
        through it can never reach another process that was given the same pid later."""
        self._add_client(uffd_fd, pid, pidfd)
        if self.journal:
            self.journal.record("client", {"pid": pid}, (uffd_fd,) if pidfd < 0 else (uffd_fd, pidfd))
        return pid, os.getpid()

    def _add_client(self, uffd_fd: int, pid: int, pidfd: int = -1) -> None:
        if pidfd < 0:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                pidfd = -1
        with self.lock:
            old = self.clients.pop(pid, None)
            client = self.clients[pid] = self.by_fd[uffd_fd] = Client(uffd_fd, pid, pidfd)
            if pidfd >= 0:
                self.by_pidfd[pidfd] = client
        if old is not None:  # a retried hello (the monitor restarted meanwhile)
            self._drop_client(old)
        self.poller.register(client.uffd, select.POLLIN)
        if pidfd >= 0:
            self.poller.register(pidfd, select.POLLIN)
        os.write(self.wakeup_w, b"x")

    def _op_fork(self, *, client: int, parent: int, region_ids: list[int],
                 copies: list[tuple[int, int, int]] | None = None) -> list[int]:
        """A forked child mapped the parent's memfds at the same addresses and registered them with
        its own userfaultfd: serve them like the parent's, sharing source and installed units.

        Returns the regions the parent no longer has: it released them (their arrays were garbage,
        collected in the parent) between the fork and this request. They are garbage in the child
        too, which unmaps them (a touch is SIGSEGV, never zeros) and keeps the others."""
        self._client(parent)
        gone = []
        for region_id in region_ids:
            with self.lock:  # a close pops the region under this lock, and closes its memfd after
                original = self.regions.get((parent, region_id))
                memfd = os.dup(original.memfd) if original is not None else -1
            if original is None:
                gone.append(region_id)
                continue
            spec = {**original.spec, "client": client, "group": original.group}
            self._add_region(memfd, spec)
            self.regions[(client, region_id)].sealed = original.sealed  # closed before the fork
            if self.journal:
                self.journal.record("region", spec, (memfd,))
        # Lazy copies (inherited mappings, registered again by the child) of the arrays it kept:
        # (copy id, its array's region id, address).
        for copy_id, carrier_id, start in copies or ():
            if (client, carrier_id) in self.regions:
                self._op_copy(client=client, region_id=carrier_id, copy_id=copy_id, start=start)
            else:
                gone.append(copy_id)
        return gone

    def _op_copy(self, *, client: int, region_id: int, copy_id: int, start: int, restore: bool = False) -> None:
        """Serve a lazy copy of the region (see lazymem.cow): the client mapped its memfd again,
        MAP_PRIVATE at ``start``, and registered it with its userfaultfd. ``restore``: handed over
        after a dead monitor (see ``_op_register``); its readers may wait on unanswered faults."""
        with self.lock:
            carrier = self.regions.get((client, region_id))
            known = (client, copy_id) in self.regions  # a retried request (a restart in between)
            memfd = os.dup(carrier.memfd) if carrier is not None and not known else -1
        if known:
            return
        if carrier is None:
            raise MonitorError(f"unknown array {region_id} (a lazy copy of it was asked for)")
        spec = {**carrier.spec, "region_id": copy_id, "start": start, "private_of": region_id,
                "group": carrier.group}
        self._add_region(memfd, spec)
        if self.journal:
            self.journal.record("region", spec, (memfd,))
        if restore:
            self._region(client, copy_id).wake(0, spec["length"])

    def _client(self, key: int) -> Client:
        client = self.clients.get(key)
        if client is None:
            raise MonitorError(f"unknown client {key}")
        return client

    def _op_register(self, memfd: int, *, request: protocol.Message | None = None, restore: bool = False,
                     **spec: Any) -> None:
        """Serve a region; ``restore``: the app hands over a region a dead monitor served (see
        ``client.MonitorClient.restart``), whose complete units are in its memfd already and
        whose readers may wait on faults nobody will answer: wake them, they fault again."""
        self._add_region(memfd, spec, restoring=restore)
        if self.journal:
            self.journal.record("region", spec, (memfd,), request=request)
        if restore:
            self._region(spec["client"], spec["region_id"]).wake(0, spec["length"])

    def _add_region(self, memfd: int, spec: dict[str, Any], *, restoring: bool = False) -> None:
        owner = self._client(spec["client"])
        region = ServedRegion(owner, spec["region_id"], spec["start"], spec["length"], spec["nbytes"],
                              spec["chunk_size"], _source(spec), memfd, spec["url"],  # the wire's name for a unit
                              spec["readahead"], spec=spec, budget=spec.get("max_resident"),
                              page_size=spec.get("page_size", uffd.PAGE_SIZE))
        region.fetches = FetchSlots(_max_in_flight(spec))
        self.scheduler.ensure_workers(self.base_workers + (region.fetches.limit or 0))
        key = (spec["client"], spec["region_id"])
        if key in self.regions:  # a retried register: the first one landed before a restart
            os.close(memfd)
            return
        if spec.get("private_of") is not None:
            carrier = self.regions.get((spec["client"], spec["private_of"]))
            if carrier is None:
                os.close(memfd)
                raise MonitorError(f"unknown array {spec['private_of']} (a lazy copy of it was asked for)")
            region.serve_through(carrier)
        if spec.get("zero_copy"):
            region.map_shared()
        group = tuple(spec.get("group") or key)
        with self.lock:
            members = self.groups.setdefault(group, [])
            if members:
                region.share(members[0])  # a forked child's clone: one memfd, one truth
                restoring = False  # the first member of the group restored the shared state
            members.append(region)
            region.group = group
        if restoring and region.shared_address:
            # A dead predecessor may have left a unit half written in the page cache (zero-copy
            # writes page by page): drop everything; units load again on their next touch.
            uffd.punch_hole(memfd, 0, region.length)
        elif restoring:  # UFFDIO_COPY inserts whole pages: what is in the memfd is complete
            for unit in range(region.nunits):
                if region.unit_complete(unit):
                    region.units.found(unit)
                    region.resident_set.installed(unit, region.unit_span(unit)[2])
        with self.lock:
            owner.add(region)
            self.regions[key] = region

    def wake_everything(self) -> None:
        """Re-deliver faults a dead predecessor read but never served: blocked threads retry."""
        for region in list(self.regions.values()):
            region.wake(0, region.length)

    def _region(self, client: int, region_id: int) -> ServedRegion:
        region = self.regions.get((client, region_id))
        if region is None:
            raise MonitorError(f"unknown array {region_id}")
        return region

    def _op_close(self, *, client: int, region_id: int) -> None:
        """Forget a region; returns only when no install into its addresses can still happen,
        because the app unmaps next and the kernel may reuse those addresses for another array."""
        with self.lock:
            region = self.regions.pop((client, region_id), None)
            if region is None:
                return
            region.client.remove(region)
            members = self.groups.get(region.group, [])
            if region in members:
                members.remove(region)
            last = not members
            if last:
                self.groups.pop(region.group, None)
        with region.lock:
            region.closed = True
            pending = list(region.jobs.values())
        for job in pending:
            job.done.wait()
        region.unmap_shared()
        if last:
            # Free the memory now, not when the supervisor gets to its journal and closes its copy
            # of the memfd: an array opened next may need it. Truncating, not punching: it also
            # gives back the huge pages reserved for units never loaded. No view of the array is
            # left (this is its finalizer's request), so nothing reads past the new end.
            try:
                os.ftruncate(region.memfd, 0)
            except OSError:
                pass
        os.close(region.memfd)
        if self.journal:
            self.journal.record("close", {"client": client, "region_id": region_id})

    def _op_stats(self, *, client: int, region_id: int) -> dict[str, Any]:
        region = self._region(client, region_id)
        self._settle(region)
        with region.lock:
            present = region.units.count(PRESENT)
            stats = dict(region.stats.__dict__)
            resident = present * region.unit_bytes
            last = region.nunits - 1
            if region.units[last] == PRESENT:
                resident -= region.unit_bytes - region.unit_span(last)[1]
        stats["resident_bytes"] = resident
        stats["chunks_present"] = present  # the app's names for units (public)
        stats["chunks_total"] = region.nunits
        stats["chunk_bytes"] = region.unit_bytes
        return stats

    def _op_readahead_extent(self, *, client: int, region_id: int, start: int, stop: int) -> None:
        """The app received a view of bytes ``[start, stop)`` by reference (see
        ``readahead.Readahead.add_extent``). Not journaled: a new monitor reads ahead unclipped."""
        region = self._region(client, region_id)
        with region.lock:
            region.readahead.add_extent(start // region.unit_bytes, (max(stop, start + 1) - 1) // region.unit_bytes)

    @staticmethod
    def _settle(region: ServedRegion) -> None:
        """Wait for installs whose pages are in place already (a reader woken early, or one that
        ran over pages installed ahead of it): what the app asks next (stats, evict) must see
        those units installed, as when their book-keeping came before any page."""
        with region.lock:
            early = [job for job in region.jobs.values() if job.shown]
        for job in early:
            job.done.wait()

    def _op_prefetch(self, *, client: int, region_id: int, chunks: list[int]) -> int:
        """Install the units ``chunks`` (concurrently) and wait; raise the first failure."""
        region = self._region(client, region_id)
        waiting: list[Job] = []
        with region.lock:
            for unit in chunks:
                if not 0 <= unit < region.nunits:
                    raise IndexError(f"chunk {unit} out of range")
                state = region.units[unit]
                if state == PRESENT:
                    trip = region.trip
                    if trip is None or trip.unit != unit or spring(region, trip):
                        continue  # prefetched means all of it: the held-back page too
                    state = region.units[unit]  # the page could not go in: load the unit again
                if state == PENDING:
                    job = region.jobs[unit]
                    self.scheduler.hurry(job, PREFETCH)
                else:
                    job = new_job(region, unit, PREFETCH)
                    self.scheduler.put(job)
                waiting.append(job)
        for job in waiting:
            job.done.wait()
        errors = [job.error for job in waiting if job.error is not None]
        if errors:
            raise errors[0]
        return len(waiting)

    def _op_evict(self, *, client: int, region_id: int, chunks: list[int] | None, seal: bool = False) -> int:
        """Drop present (or poisoned) units ``chunks`` (None: all) by punching holes in the memfd;
        the next touch faults again.

        ``seal`` (``LazyArray.close``): nothing loads into the region any more, a touch is poisoned."""
        region = self._region(client, region_id)
        if seal:
            region.sealed = True  # first: readahead or a prefetch in flight must not load it again
        self._settle(region)
        evicted = unreserved = 0
        with region.lock:
            for unit in region.units.loaded() if chunks is None else chunks:
                if region.units[unit] not in (PRESENT, FAILED):
                    continue
                unreserved += not evict_unit(region, unit)
                evicted += 1
        if unreserved:
            raise HugePagesUnavailableError(
                f"{region.url}: evicted {evicted} chunks, but the huge page pool was taken before {unreserved} "
                "of them could be reserved again: touching those may fail with SIGBUS (prefetch raises) unless "
                "pages are free then. Reserve more (sysctl vm.nr_hugepages)."
            )
        return evicted

    def _drop_client(self, client: Client) -> None:
        """The client process is gone (its userfaultfd hung up): forget it and its regions."""
        with self.lock:
            if self.clients.get(client.pid) is client:
                del self.clients[client.pid]
            self.by_fd.pop(client.uffd, None)
            regions = [key for key, r in self.regions.items() if r.client is client]
        for key in regions:
            self._op_close(client=key[0], region_id=key[1])
        for fd in (client.uffd, client.pidfd):
            if fd < 0:
                continue
            try:
                self.poller.unregister(fd)
            except KeyError:
                pass
            os.close(fd)
        with self.lock:
            self.by_pidfd.pop(client.pidfd, None)
        if self.journal:
            self.journal.record("drop", {"pid": client.pid})


def _source(spec: dict[str, Any]) -> Source:
    """The region's source, as the app sent it (see ``Region.announce``)."""
    source = spec["source"]
    if not isinstance(source, Source):
        raise MonitorError(f"{spec.get('url')}: the app sent a {type(source).__name__}, not a Source")
    return source


def _max_in_flight(spec: dict[str, Any]) -> int | None:
    """The array's ``max_in_flight``: as given to ``open``, else what its source's storage suits."""
    given = spec.get("max_in_flight")
    return int(given) if given else _source(spec).hints.max_in_flight


def serve(control: socket.socket, journal: Journal | None, restored: Restored | None, workers: int,
          supervisor_pid: int = 0) -> None:
    """Run a monitor until the app has gone; rebuild the state a dead predecessor left first."""
    name_process("lazymem-worker")
    monitor = Monitor(control, workers, journal, supervisor_pid)
    if restored is not None:
        for pid, (uffd_fd, pidfd) in restored.clients.items():
            monitor._add_client(uffd_fd, pid, pidfd)
        for memfd, request in restored.regions:
            with request:  # our copy of the supervisor's memfd, inherited: the mapping is enough
                _op, spec = request.load()
            monitor._add_region(memfd, spec, restoring=True)
        monitor.wake_everything()
    monitor.run()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Ctrl-C in the app's terminal must not kill the monitor under a thread blocked in a fault.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if argv[0] == "--standby":  # see client.MonitorClient._spawn_standby
        name_process("lazymem-standby")
        standby = socket.socket(fileno=int(argv[1]))
        _msg, fds, _flags, _addr = socket.recv_fds(standby, 1, 1)
        standby.close()
        if not fds:
            os._exit(0)  # the app has gone without needing us
        argv = [str(fds[0]), *argv[2:]]
    control = socket.socket(fileno=int(argv[0]))
    # Decompression is CPU-bound: one worker per core for local files (measured: 4 workers on 2
    # cores took 2.49 s and 4.16 CPU-s for a 1 GiB scan, 2 workers 2.19 s and 3.63 CPU-s). Arrays
    # on network storage add workers for the requests they keep in flight (max_in_flight).
    workers = int(argv[1]) if len(argv) > 1 and argv[1] != "0" else max(2, os.cpu_count() or 1)
    # A running worker whose supervisor died started us: ``--adopt PID PIDFD LINK_FD``.
    adopt = None
    if len(argv) > 5 and argv[2] == "--adopt":
        adopt = (int(argv[3]), int(argv[4]), socket.socket(fileno=int(argv[5])))
    raise_open_file_limit()
    os._exit(supervise(control, workers, serve, adopt))


if __name__ == "__main__":
    main()

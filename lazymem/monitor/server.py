"""The monitor process: receives page faults and installs whole chunks.

It must be a separate process: an app thread that touches an unloaded page blocks in the kernel
while holding its GIL, so a monitor thread in the same interpreter would never run again.

Threads here:

* the main thread polls the control socket and every client's userfaultfd, turns page faults into
  chunk jobs and never blocks on I/O;
* a pool of workers fetches, decompresses and installs chunks (fsspec, zstandard and the
  ``UFFDIO_COPY`` ioctl all release the GIL, so they overlap);
* one short-lived thread per request (register, close, stats, prefetch, evict).

The monitor knows no format: a region holds a :class:`~lazymem.sources.base.Source` and a grid of
install units, and asks the source to fill a unit (``read_unit``), nothing else.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ClosedArrayError, HugePagesUnavailableError, MonitorError
from ..kernel import userfaultfd as uffd
from ..kernel.limits import raise_open_file_limit
from ..sources.base import Source, UnitGrid, UnitRead
from . import protocol
from .budget import ResidentSet
from .buffers import BufferPool
from .inflight import MAX_WORKERS, FetchSlots
from .journal import Journal, Restored
from .process import hung_up, name_process
from .supervisor import supervise

ABSENT, PENDING, PRESENT, FAILED = 0, 1, 2, 3
DEMAND, PREFETCH, READAHEAD = 0, 1, 2  # job priorities, most urgent first
FIRST_PIECE = 256 << 10
"""A demand install copies the aligned piece holding the faulting address first and wakes the reader:
it goes on while the rest of the chunk is copied (one element of a fresh 4 MiB chunk: the copy of
the other 3.75 MiB, 2-4 ms on these VMs, leaves the reader's critical path)."""


@dataclass
class RegionStats:
    faults: int = 0
    chunks_installed: int = 0
    bytes_fetched: int = 0
    bytes_decompressed: int = 0
    readahead_chunks: int = 0
    zero_chunks: int = 0
    early_wakes: int = 0
    evictions: int = 0
    failures: int = 0
    fetch_seconds: float = 0.0
    install_seconds: float = 0.0


class _NoRoom(Exception):
    """A readahead install found no chunk it may evict; the chunk stays absent."""


class Job:
    """One chunk being installed; requests waiting for it block on ``done``."""

    __slots__ = ("chunk", "done", "error", "fault_at", "others", "priority", "region", "reserved", "shown",
                 "started", "trip", "woken")

    def __init__(self, region: ServedRegion, chunk: int, priority: int) -> None:
        self.region, self.chunk, self.priority = region, chunk, priority
        self.started = False
        self.fault_at = -1  # offset in the chunk of the first reader waiting for it, if any
        self.woken = False  # that reader runs already, the rest of the chunk is still being copied
        # Pages are in place, so a reader not waiting for them may run over them and ask (stats,
        # evict) before the chunk is booked as present.
        self.shown = False
        self.trip = False  # readahead that holds back the chunk's first page as a tripwire
        self.reserved = 0  # budget bytes this install holds while in flight
        self.others: set[ServedRegion] = set()  # clones (forked clients) that faulted on it too
        self.done = threading.Event()
        self.error: BaseException | None = None


@dataclass
class Trip:
    """The first page of a chunk read ahead, held back: installed chunks never fault, so a reader
    going through a window would otherwise fault next only after its end, and wait for a fetch
    (a round trip over a network) while the workers idle. Its fault on this page says the reader
    has reached the chunk: the page goes in at once (a 4 KiB copy) and the window moves on."""

    chunk: int
    data: Any  # ctypes buffer with the page's bytes, or None for a zero chunk


@dataclass(eq=False)  # identity semantics: regions go in sets and are compared by `is`
class ServedRegion:
    client: Client
    region_id: int
    start: int
    length: int  # mapped bytes, page multiple
    nbytes: int  # array bytes
    chunk_size: int  # the install unit: a page multiple (see sources.base.UnitGrid)
    source: Source  # the only thing the monitor knows of the format
    memfd: int
    url: str
    readahead_max: int
    spec: dict[str, Any] = field(default_factory=dict)  # as registered, to clone for forked children
    group: tuple[int, int] = (0, 0)  # regions over one memfd (an array and its forked clones)
    budget: int | None = None  # most array bytes resident at once (None: no limit)
    page_size: int = uffd.PAGE_SIZE  # a huge page size for hugetlbfs memfds
    grid: UnitGrid = field(init=False)
    state: bytearray = field(init=False)
    resident_set: ResidentSet = field(init=False)
    shared_address: int = 0  # our read-write mapping of the memfd (zero-copy installs), or 0
    jobs: dict[int, Job] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stats: RegionStats = field(default_factory=RegionStats)
    closed: bool = False
    sealed: bool = False  # LazyArray.close(): nothing loads any more, a touch gets SIGBUS
    last_fault: int = -2
    ra_end: int = -2  # last chunk the current readahead window covers
    window: int = 0
    trip: Trip | None = None  # the page held back from a chunk read ahead (see Trip)
    fetches: FetchSlots = field(default_factory=lambda: FetchSlots(None))  # max_in_flight

    def __post_init__(self) -> None:
        self.grid = UnitGrid(self.nbytes, self.chunk_size)
        self.state = bytearray(self.nchunks)
        self.resident_set = ResidentSet(self.budget, self.chunk_size)

    @property
    def nchunks(self) -> int:
        return -(-self.length // self.chunk_size)

    def map_shared(self) -> None:
        self.shared_address = uffd.map_shared(self.memfd, self.length, prot=uffd.PROT_READ | uffd.PROT_WRITE)

    def unmap_shared(self) -> None:
        if self.shared_address:
            uffd.unmap(self.shared_address, self.length)
            self.shared_address = 0

    def populate(self, offset: int, length: int) -> None:
        """Allocate and map the chunk's pages in our mapping in one call: decompressing into
        unpopulated shared memory instead takes a page fault per 4 KiB (measured: ~50 % slower)."""
        try:
            uffd.madvise(self.shared_address + offset, length, uffd.MADV_POPULATE_WRITE)
        except OSError:  # before Linux 5.14: the first writes fault the pages in
            pass

    def shared_view(self, offset: int, length: int) -> memoryview:
        return memoryview((ctypes.c_char * length).from_address(self.shared_address + offset)).cast("B")

    def read_chunk(self, offset: int, out: memoryview, fault_at: int = -1,
                   on_first: Callable[[int, int], None] | None = None) -> UnitRead:
        """Have the source fill the unit at ``offset`` into ``out`` (or say it is all zeros and
        leave ``out`` alone). The page of ``out[fault_at]`` is urgent: the source hands a range
        holding it to ``on_first`` as soon as it is final (see ``Source.read_unit``). Sources
        retry transient storage errors request by request: an error here means they are spent."""
        page = fault_at - fault_at % self.page_size
        first = (page, min(page + self.page_size, len(out))) if 0 <= fault_at < len(out) else None
        return self.source.read_unit(self.grid, offset // self.chunk_size, out, urgent=first, on_urgent=on_first)

    @property
    def huge(self) -> bool:
        return self.page_size != uffd.PAGE_SIZE

    def page_present(self, offset: int) -> bool:
        """Whether the memfd holds the page at ``offset`` (SEEK_DATA finds page-cache pages).

        hugetlbfs has no SEEK_DATA (it calls the whole file data): there the chunk's state decides."""
        if self.huge:
            return True
        page = offset - offset % uffd.PAGE_SIZE
        try:
            return os.lseek(self.memfd, page, os.SEEK_DATA) == page
        except OSError:  # ENXIO: no data at or after the offset
            return False

    def chunk_complete(self, chunk: int) -> bool:
        """Whether every page of the chunk is in the memfd (SEEK_HOLE finds the first gap).

        Unknowable on hugetlbfs (no SEEK_HOLE): False, and the chunk installs again on its next
        fault, skipping the huge pages already there (EEXIST)."""
        if self.huge:
            return False
        offset, _, span = self.chunk_span(chunk)
        try:
            return os.lseek(self.memfd, offset, os.SEEK_HOLE) >= offset + span
        except OSError:
            return False

    def chunk_span(self, chunk: int) -> tuple[int, int, int]:
        """Offset in the region, array bytes in the chunk, and mapped bytes to install."""
        offset = chunk * self.chunk_size
        data = max(0, min(self.chunk_size, self.nbytes - offset))
        return offset, data, min(self.chunk_size, self.length - offset)


@dataclass
class Client:
    """One process whose userfaultfd we serve: the app, and each forked child of it."""

    uffd: int
    pid: int
    pidfd: int = -1  # readable when the process exits (a child may exit long before the app)
    starts: list[int] = field(default_factory=list)
    regions: list[ServedRegion] = field(default_factory=list)

    def gone(self) -> bool:
        """Whether the process has exited (its pidfd is readable then)."""
        if self.pidfd < 0:
            return False
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def region_at(self, address: int) -> ServedRegion | None:
        i = bisect_right(self.starts, address) - 1
        if i >= 0:
            region = self.regions[i]
            if address < region.start + region.length:
                return region
        return None


class Monitor:
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
        self.queue: queue.PriorityQueue[tuple[int, int, Job | None]] = queue.PriorityQueue()
        self.sequence = 0
        self.buffers = BufferPool()
        self.poller = select.poll()
        self.poller.register(control, select.POLLIN)
        # A pipe lets request threads wake the poll loop when the set of uffds changes.
        self.wakeup_r, self.wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller.register(self.wakeup_r, select.POLLIN)
        if journal is not None:  # it hangs up when the supervisor dies
            self.poller.register(journal.fileno(), select.POLLIN)
        self.workers: list[threading.Thread] = []
        self.base_workers = workers
        self._ensure_workers(workers)

    def _ensure_workers(self, count: int) -> None:
        """Grow the pool to ``count`` workers (at most MAX_WORKERS); it never shrinks."""
        with self.lock:
            while len(self.workers) < min(count, MAX_WORKERS):
                worker = threading.Thread(target=self._work, daemon=True)
                worker.start()
                self.workers.append(worker)

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

    def _snapshot(self) -> list[tuple[str, dict[str, Any], tuple[int, ...]]]:
        """Journal records that rebuild what we serve now: clients first, then their regions."""
        with self.lock:
            records: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
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
        chunk, within = divmod(address - region.start, region.chunk_size)
        if region.sealed:
            self._touched_after_close(region, chunk)
            return
        with region.lock:
            region.stats.faults += 1
            state = region.state[chunk]
            region.resident_set.touched(chunk)
            trip = region.trip
            if trip is not None and trip.chunk == chunk and within < region.page_size:
                self._spring(region, trip)
                self._read_ahead(region, chunk, sequential=True)
                return
            if state == PRESENT and region.page_present(address - region.start):
                # Either the install raced ahead of this message (the thread was woken already), or
                # the chunk is in the page cache but not mapped in this process (a forked child, a
                # new monitor): map it (zero copy) and wake.
                offset, _, span = region.chunk_span(chunk)
                if region.shared_address:
                    try:
                        uffd.continue_range(client.uffd, region.start + offset, span)
                    except OSError:
                        pass
                self._safe_wake(region, offset, span)
            elif state == PENDING:
                job = region.jobs[chunk]
                if job.region is not region:
                    job.others.add(region)  # a clone's thread waits for another clone's install
                elif job.fault_at < 0:
                    job.fault_at = within
                if job.priority > DEMAND:
                    job.priority = DEMAND
                    self._enqueue(job)  # jump the queue; the stale entry is skipped later
            else:
                job = self._new_job(region, chunk, DEMAND)
                job.fault_at = within
                self._enqueue(job)
            self._read_ahead(region, chunk)

    def _touched_after_close(self, region: ServedRegion, chunk: int) -> None:
        """A closed array was touched: loading it again would hide the bug, zeros would be wrong
        data. Poison the chunk (the thread gets SIGBUS) after saying why."""
        offset, _, span = region.chunk_span(chunk)
        print(f"lazymem monitor: {region.url} was closed (LazyArray.close) and then touched at array "
              f"bytes {offset}..{offset + span}: the reading thread gets SIGBUS. Open the array again "
              "to read it.", file=sys.stderr, flush=True)
        self._poison(region, offset, span)

    def _spring(self, region: ServedRegion, trip: Trip) -> bool:
        """Install a held-back page and wake its readers (region.lock held); False if it failed."""
        if region.trip is trip:
            region.trip = None
        target = region.start + trip.chunk * region.chunk_size
        try:
            if trip.data is None:
                uffd.zeropage(region.client.uffd, target, region.page_size)
            else:
                uffd.copy(region.client.uffd, target, ctypes.addressof(trip.data), region.page_size,
                          page=region.page_size)
        except OSError:
            # The app unmapped the region (closing), or the huge page pool is empty. The chunk is
            # no longer whole: a reader's next fault must load it again (and fail loudly if it
            # cannot), not find it "present" and be woken into the same fault for ever (hugetlbfs
            # cannot tell a missing page from a present one).
            region.state[trip.chunk] = ABSENT
            region.resident_set.evicted(trip.chunk)
            self._safe_wake(region, trip.chunk * region.chunk_size, region.page_size)
            return False
        return True

    def _read_ahead(self, region: ServedRegion, chunk: int, *, sequential: bool = False) -> None:
        """Grow the window on sequential faults, drop it on random ones (region.lock held).

        Sequential means the fault is on the chunk right after the previous fault, or right after
        the last chunk read ahead (the reader went through the whole window, which faults no more).
        A fault inside the window proves nothing (a sparse reader skipping chunks looks the same):
        the window stays. Anything else is random access: no readahead, so a sparse reader fetches
        little more than it touches.
        """
        if region.readahead_max <= 0 or (chunk == region.last_fault and not sequential):
            return  # another fault on the chunk just seen (a demand install wakes its reader early)
        if sequential or chunk in (region.last_fault + 1, region.ra_end + 1):
            region.window = min(max(2 * region.window, 2), region.readahead_max)
        elif not region.last_fault < chunk <= region.ra_end:
            region.window = 0
        region.last_fault = chunk
        end = min(chunk + 1 + region.window, region.nchunks)
        new = []
        for ahead in range(chunk + 1, end):
            if region.state[ahead] == ABSENT:
                region.stats.readahead_chunks += 1
                job = self._new_job(region, ahead, READAHEAD)
                new.append(job)
                self._enqueue(job)
        region.ra_end = max(chunk, end - 1) if region.window else chunk
        # The first new chunk of a window of several is the tripwire: when the reader gets there,
        # the rest of the window is still ahead of it while the next one is fetched.
        if len(new) >= 2 and region.trip is None and not region.shared_address and len(
                self.groups.get(region.group, ())) <= 1:
            new[0].trip = True

    def _new_job(self, region: ServedRegion, chunk: int, priority: int) -> Job:
        job = Job(region, chunk, priority)
        region.jobs[chunk] = job
        region.state[chunk] = PENDING
        return job

    def _enqueue(self, job: Job) -> None:
        with self.lock:
            self.sequence += 1
            sequence = self.sequence
        self.queue.put((job.priority, sequence, job))

    # --- workers ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            _, _, job = self.queue.get()
            if job is None:
                return
            region = job.region
            with region.lock:
                # A job re-queued at a higher priority sits in the queue twice: run it once.
                if job.started or region.jobs.get(job.chunk) is not job:
                    continue
                if not region.fetches.take(job):
                    continue  # parked: this array's loads are all in flight; one that ends requeues it
                job.started = True
            try:
                self._install(job)
            except _NoRoom:
                with region.lock:
                    if job.priority != READAHEAD:  # a reader faulted on it meanwhile: install it now
                        job.started = False
                        self._enqueue(job)
                        continue
                    region.jobs.pop(job.chunk, None)
                    region.state[job.chunk] = ABSENT
                    others = list(job.others)
                for other in others:
                    self._safe_wake(other, 0, other.length)
                job.done.set()
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the waiters
                self._fail(job, exc)
            else:
                job.done.set()
            finally:
                with region.lock:
                    parked = region.fetches.release()
                    if parked is not None:
                        self._enqueue(parked)

    def _install(self, job: Job) -> None:
        region, chunk = job.region, job.chunk
        if region.closed:
            raise MonitorError(f"{region.url}: array closed")
        if region.sealed:  # queued before close: a reader still waiting for it gets SIGBUS
            raise ClosedArrayError(f"{region.url}: the array was closed (LazyArray.close)")
        offset, data_bytes, span = region.chunk_span(chunk)
        if region.budget is not None:
            self._make_room(job, span)
        t0 = time.perf_counter()
        trip: Trip | None = None
        if region.shared_address:
            # Zero copy: decompress straight into the memfd's page cache through our own mapping,
            # then map those pages into the app with UFFDIO_CONTINUE (MINOR mode). The app cannot
            # see a half-written page: until CONTINUE, its touches fault (MINOR) and wait for us.
            try:
                region.populate(offset, span)  # zeroed pages: a zero chunk is complete already
                read = region.read_chunk(offset, region.shared_view(offset, data_bytes))
                zeros = read.zeros
                if data_bytes < span and not zeros:
                    ctypes.memset(region.shared_address + offset + data_bytes, 0, span - data_bytes)
            except BaseException:
                uffd.punch_hole(region.memfd, offset, span)  # drop the partial chunk
                raise
            t1 = time.perf_counter()
            job.shown = True
            uffd.continue_range(region.client.uffd, region.start + offset, span, wake_waiters=False)
            t2 = time.perf_counter()
        else:
            buf = self.buffers.get(span)
            try:
                target = region.start + offset
                piece = max(FIRST_PIECE, region.page_size)
                early = (0, 0)  # pages installed as soon as the reader's frame was decoded

                def copy_in(lo: int, hi: int, fault_at: int, wake: bool = False) -> None:
                    """Copy ``buf[lo:hi)`` into place without waking, except that a reader waiting
                    at ``fault_at`` is woken as soon as its piece is in (see FIRST_PIECE) if more
                    is to come (other pieces, or with ``wake`` other frames)."""
                    pieces = _pieces(lo, hi, fault_at, piece)
                    wake = wake or len(pieces) > 1
                    job.shown = True
                    for a, b in pieces:
                        if install_zeros:  # stored as zero frames: nothing decompressed, nothing to copy
                            uffd.zeropage(region.client.uffd, target + a, b - a, wake_waiters=False)
                        else:
                            uffd.copy(region.client.uffd, target + a, buf.address + a, b - a, wake_waiters=False,
                                      page=region.page_size)
                        if wake and a <= fault_at < b:
                            job.woken = True
                            uffd.wake(region.client.uffd, target + a, b - a)

                def first_frames_done(lo: int, hi: int) -> None:
                    """The frames holding the faulting reader's page are decoded and verified:
                    install their pages and wake the reader while the other frames are decoded."""
                    nonlocal early
                    if hi >= data_bytes:
                        buf.zero(data_bytes, span)
                        hi = span
                    page = region.page_size  # a huge page goes in whole: its frames come first
                    lo, hi = -(-lo // page) * page, hi - hi % page
                    if lo <= fault_at < hi:
                        copy_in(lo, hi, fault_at, wake=hi - lo < span)
                        early = (lo, hi)

                install_zeros = False
                fault_at = job.fault_at
                early_wake = first_frames_done if fault_at >= 0 else None
                read = region.read_chunk(offset, buf.view[:data_bytes], fault_at, early_wake)
                zeros = read.zeros
                if zeros and region.huge:  # hugetlbfs has no UFFDIO_ZEROPAGE: copy zeros
                    buf.zero(0, span)
                elif not zeros and data_bytes < span:
                    buf.zero(data_bytes, span)  # the tail of the last page lies past the array
                install_zeros = zeros and not region.huge
                t1 = time.perf_counter()
                # Install without waking, book-keep, then wake: whatever the woken thread asks next
                # (stats, prefetch) already sees the chunk as present. A reader waiting inside the
                # chunk gets its piece first (see FIRST_PIECE).
                rest = [(a, b) for a, b in ((0, early[0]), (early[1], span)) if a < b]
                if job.trip and job.priority == READAHEAD and span > region.page_size:
                    # Hold the first page back (see Trip); a reader there faults and brings it in.
                    held = None if install_zeros else (ctypes.c_char * region.page_size).from_buffer_copy(buf.view)
                    trip = Trip(chunk, held)
                    rest = [(region.page_size, span)]
                for lo, hi in rest:
                    copy_in(lo, hi, job.fault_at)
                t2 = time.perf_counter()
            except OSError as exc:
                if region.huge and exc.errno == errno.ENOMEM:
                    raise HugePagesUnavailableError(
                        f"{region.url}: no free huge page to load chunk {chunk} into: the pool was taken "
                        "after an evict gave this array's pages back; reserve more (sysctl vm.nr_hugepages)"
                    ) from exc
                raise
            finally:
                self.buffers.put(buf)
        stats = region.stats
        with region.lock:
            stats.chunks_installed += 1
            stats.zero_chunks += zeros
            stats.early_wakes += job.woken
            stats.bytes_decompressed += data_bytes
            stats.bytes_fetched += read.bytes_fetched or 0
            stats.fetch_seconds += t1 - t0
            stats.install_seconds += t2 - t1
            region.state[chunk] = PRESENT
            region.jobs.pop(chunk, None)
            if trip is not None:  # only copy installs hold pages back
                if region.trip is None and job.priority == READAHEAD:
                    region.trip = trip
                else:  # a reader came meanwhile, or another trip is set: no tripwire after all
                    self._spring(region, trip)
            region.resident_set.installed(chunk, span)
            region.resident_set.in_flight -= job.reserved
            others = list(job.others)
        uffd.wake(region.client.uffd, region.start + offset, span)
        for other in others:  # map it for the clones that wait too
            if other.shared_address:
                try:
                    uffd.continue_range(other.client.uffd, other.start + offset, span)
                except OSError:
                    pass
            self._safe_wake(other, offset, span)

    def _make_room(self, job: Job, span: int) -> None:
        """Evict chunks so that this install stays within the array's budget.

        Demand faults and prefetches install even if nothing can be evicted (everything else is in
        flight or being read): the overshoot is bounded by the number of workers. Readahead gives up
        instead of pushing out what the reader is using or has not read yet.
        """
        region = job.region
        with region.lock:
            reader_at = region.last_fault
            readahead = job.priority == READAHEAD

            def protected(chunk: int) -> bool:
                if chunk == reader_at or region.state[chunk] != PRESENT:
                    return True
                return readahead and reader_at <= chunk < job.chunk

            victims = region.resident_set.victims(span, region.resident_set.in_flight, protected)
            if victims is None:
                if readahead:
                    raise _NoRoom
                victims = region.resident_set.victims(0, 0, protected) or []
            for victim in victims:
                self._evict_chunk(region, victim)
            region.resident_set.in_flight += span
            job.reserved = span

    def _evict_chunk(self, region: ServedRegion, chunk: int) -> bool:
        """Punch the chunk out of the memfd: every mapping of it faults there again (region.lock held).

        On hugetlbfs the punch also gives the freed pages' reservation back to the pool, where
        another array could take it and leave this chunk nothing to load into: reserve it again
        at once. False if the pool was taken meanwhile (the chunk then loads only if pages are free)."""
        offset, _, span = region.chunk_span(chunk)
        uffd.punch_hole(region.memfd, offset, span)
        if region.trip is not None and region.trip.chunk == chunk:
            region.trip = None  # its page went with the rest
        region.state[chunk] = ABSENT
        region.resident_set.evicted(chunk)
        region.stats.evictions += 1
        if region.huge and not region.sealed:  # a closed array loads nothing again: pages go back
            try:
                uffd.reserve_huge_pages(region.memfd, offset, span)
            except OSError:
                return False
        return True

    def _fail(self, job: Job, exc: BaseException) -> None:
        region, chunk = job.region, job.chunk
        job.error = exc
        # The reading process has exited (a pool worker done with its task): its address space is
        # gone, so the install failed (ESRCH); nothing is wrong with the chunk and nobody is left
        # to warn or poison. Other processes waiting for it fault again and get a fresh job.
        gone = region.client.gone() or (isinstance(exc, OSError) and exc.errno == errno.ESRCH)
        with region.lock:
            region.resident_set.in_flight -= job.reserved
            region.jobs.pop(chunk, None)
            others = list(job.others)
            if not gone:
                region.stats.failures += 1
            demanded = job.priority == DEMAND and not gone
            # A failed readahead or prefetch leaves the chunk absent: a later touch retries it.
            region.state[chunk] = FAILED if demanded and not region.closed else ABSENT
        offset, _, span = region.chunk_span(chunk)
        if demanded and not region.closed:
            print(
                f"lazymem monitor: cannot load chunk {chunk} of {region.url} "
                f"(array bytes {offset}..{offset + span}): {type(exc).__name__}: {exc}\n"
                "lazymem monitor: poisoning those pages; the reading thread gets SIGBUS. "
                "Use lazymem.load() or LazyArray.prefetch() to get this error as an exception.",
                file=sys.stderr,
                flush=True,
            )
            for victim in [region, *others]:
                self._poison(victim, offset, span)
        else:
            for other in others:  # they fault again and get a fresh job
                self._safe_wake(other, offset, span)
        job.done.set()

    def _poison(self, region: ServedRegion, offset: int, span: int) -> None:
        client = region.client
        try:
            uffd.poison(client.uffd, region.start + offset, span, page=region.page_size)
        except OSError as exc:
            if client.gone():
                return  # it exited meanwhile: nobody waits
            # Without UFFDIO_POISON the blocked thread would wait forever: kill the app loudly,
            # through its pidfd only: a bare pid may name another process by now.
            print(f"lazymem monitor: UFFDIO_POISON failed ({exc}); sending SIGBUS to the app", file=sys.stderr)
            if client.pidfd >= 0:
                try:
                    signal.pidfd_send_signal(client.pidfd, signal.SIGBUS)
                except OSError:
                    pass

    def _safe_wake(self, region: ServedRegion, offset: int, span: int) -> None:
        try:
            uffd.wake(region.client.uffd, region.start + offset, span)
        except OSError:
            pass

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

    def _op_fork(self, *, client: int, parent: int, region_ids: list[int]) -> None:
        """A forked child mapped the parent's memfds at the same addresses and registered them with
        its own userfaultfd: serve them like the parent's, sharing reader and installed chunks."""
        for region_id in region_ids:
            original = self._region(parent, region_id)
            memfd = os.dup(original.memfd)
            spec = {**original.spec, "client": client, "group": original.group}
            self._add_region(memfd, spec)
            self.regions[(client, region_id)].sealed = original.sealed  # closed before the fork
            if self.journal:
                self.journal.record("region", spec, (memfd,))

    def _client(self, key: int) -> Client:
        client = self.clients.get(key)
        if client is None:
            raise MonitorError(f"unknown client {key}")
        return client

    def _op_register(self, memfd: int, *, request: protocol.Message | None = None, restore: bool = False,
                     **spec: Any) -> None:
        """Serve a region; ``restore``: the app hands over a region a dead monitor served (see
        ``client.MonitorClient.restart``), whose complete chunks are in its memfd already and
        whose readers may wait on faults nobody will answer: wake them, they fault again."""
        self._add_region(memfd, spec, restoring=restore)
        if self.journal:
            self.journal.record("region", spec, (memfd,), request=request)
        if restore:
            self._safe_wake(self._region(spec["client"], spec["region_id"]), 0, spec["length"])

    def _add_region(self, memfd: int, spec: dict[str, Any], *, restoring: bool = False) -> None:
        owner = self._client(spec["client"])
        region = ServedRegion(owner, spec["region_id"], spec["start"], spec["length"], spec["nbytes"],
                              spec["chunk_size"], _source(spec), memfd, spec["url"],
                              spec["readahead"], spec=spec, budget=spec.get("max_resident"),
                              page_size=spec.get("page_size", uffd.PAGE_SIZE))
        region.fetches = FetchSlots(_max_in_flight(spec))
        self._ensure_workers(self.base_workers + (region.fetches.limit or 0))
        key = (spec["client"], spec["region_id"])
        if key in self.regions:  # a retried register: the first one landed before a restart
            os.close(memfd)
            return
        if spec.get("zero_copy"):
            region.map_shared()
        group = tuple(spec.get("group") or key)
        with self.lock:
            members = self.groups.setdefault(group, [])
            if members:
                # One memfd, one truth: a forked child's clone shares the chunk states, jobs and
                # budget of the original, so a chunk in flight for one process is never mapped
                # half-written for another, nor fetched twice.
                holder = members[0]
                region.state, region.jobs, region.lock = holder.state, holder.jobs, holder.lock
                region.resident_set = holder.resident_set
                restoring = False  # the first member of the group restored the shared state
            members.append(region)
            region.group = group
        if restoring and region.shared_address:
            # A dead predecessor may have left a chunk half written in the page cache (zero-copy
            # writes page by page): drop everything; chunks load again on their next touch.
            uffd.punch_hole(memfd, 0, region.length)
        elif restoring:  # UFFDIO_COPY inserts whole pages: what is in the memfd is complete
            for chunk in range(region.nchunks):
                if region.chunk_complete(chunk):
                    region.state[chunk] = PRESENT
                    region.resident_set.installed(chunk, region.chunk_span(chunk)[2])
        with self.lock:
            i = bisect_right(owner.starts, region.start)
            owner.starts.insert(i, region.start)
            owner.regions.insert(i, region)
            self.regions[key] = region

    def wake_everything(self) -> None:
        """Re-deliver faults a dead predecessor read but never served: blocked threads retry."""
        for region in list(self.regions.values()):
            self._safe_wake(region, 0, region.length)

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
            owner = region.client
            i = owner.regions.index(region)
            del owner.starts[i], owner.regions[i]
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
            # gives back the huge pages reserved for chunks never loaded. No view of the array is
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
            present = region.state.count(PRESENT)
            stats = dict(region.stats.__dict__)
            resident = present * region.chunk_size
            last = region.nchunks - 1
            if region.state[last] == PRESENT:
                resident -= region.chunk_size - region.chunk_span(last)[1]
        stats["resident_bytes"] = resident
        stats["chunks_present"] = present
        stats["chunks_total"] = region.nchunks
        stats["chunk_bytes"] = region.chunk_size
        return stats

    @staticmethod
    def _settle(region: ServedRegion) -> None:
        """Wait for installs whose pages are in place already (a reader woken early, or one that
        ran over pages installed ahead of it): what the app asks next (stats, evict) must see
        those chunks installed, as when their book-keeping came before any page."""
        with region.lock:
            early = [job for job in region.jobs.values() if job.shown]
        for job in early:
            job.done.wait()

    def _op_prefetch(self, *, client: int, region_id: int, chunks: list[int]) -> int:
        """Install ``chunks`` (concurrently) and wait; raise the first failure."""
        region = self._region(client, region_id)
        waiting: list[Job] = []
        with region.lock:
            for chunk in chunks:
                if not 0 <= chunk < region.nchunks:
                    raise IndexError(f"chunk {chunk} out of range")
                state = region.state[chunk]
                if state == PRESENT:
                    trip = region.trip
                    if trip is None or trip.chunk != chunk or self._spring(region, trip):
                        continue  # prefetched means all of it: the held-back page too
                    state = region.state[chunk]  # the page could not go in: load the chunk again
                if state == PENDING:
                    job = region.jobs[chunk]
                    if job.priority > PREFETCH:
                        job.priority = PREFETCH
                        self._enqueue(job)
                else:
                    job = self._new_job(region, chunk, PREFETCH)
                    self._enqueue(job)
                waiting.append(job)
        for job in waiting:
            job.done.wait()
        errors = [job.error for job in waiting if job.error is not None]
        if errors:
            raise errors[0]
        return len(waiting)

    def _op_evict(self, *, client: int, region_id: int, chunks: list[int] | None, seal: bool = False) -> int:
        """Drop present chunks by punching holes in the memfd; the next touch faults again.

        ``seal`` (``LazyArray.close``): nothing loads into the region any more, a touch is poisoned."""
        region = self._region(client, region_id)
        if seal:
            region.sealed = True  # first: readahead or a prefetch in flight must not load it again
        self._settle(region)
        evicted = unreserved = 0
        with region.lock:
            if chunks is None:  # a 1 TiB array has 262,144 chunks: find the loaded ones in C (~40 ms -> µs)
                states = np.frombuffer(region.state, dtype=np.uint8)
                chunks = np.flatnonzero((states == PRESENT) | (states == FAILED)).tolist()
            for chunk in chunks:
                if region.state[chunk] not in (PRESENT, FAILED):
                    continue
                unreserved += not self._evict_chunk(region, chunk)
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


def _pieces(lo: int, hi: int, fault_at: int, piece: int = FIRST_PIECE) -> list[tuple[int, int]]:
    """``[lo, hi)`` in install order: the aligned ``piece`` holding ``fault_at``, then the rest."""
    if not lo <= fault_at < hi or hi - lo <= piece:
        return [(lo, hi)]
    aligned = fault_at - fault_at % piece
    start, stop = max(lo, aligned), min(aligned + piece, hi)
    return [(start, stop)] + [(a, b) for a, b in ((lo, start), (stop, hi)) if a < b]


def _source(spec: dict[str, Any]) -> Source:
    """The region's source: as sent, or a flat stream's frame reader (what ``open`` sends today)."""
    source = spec.get("source")
    if source is None:
        from ..sources.flat import FlatSource

        source = FlatSource(spec["reader"], spec["url"])
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

"""Installing one unit into the client's mapping: ``UFFDIO_COPY``, ``UFFDIO_CONTINUE`` or ``UFFDIO_ZEROPAGE``.

Two ways in, chosen per region:

* copy (the default): the source fills a scratch buffer, the pages go in with ``UFFDIO_COPY``
  (``UFFDIO_ZEROPAGE`` for a unit of zeros: nothing decoded, nothing copied). A reader waiting in
  the unit is woken as soon as its own piece is in, while the rest is copied (see FIRST_PIECE),
  or even before the rest is decoded when the source hands its frames over early (``on_urgent``);
* zero copy: the source fills the memfd's page cache through our own mapping of it, and
  ``UFFDIO_CONTINUE`` maps those pages into the client (MINOR mode); nothing is copied.

Pages go in without waking; the unit is booked PRESENT; then its readers are woken: whatever a
woken thread asks next (stats, prefetch) sees the unit installed.
"""

from __future__ import annotations

import ctypes
import errno
import time
from dataclasses import dataclass
from typing import Any

from ..errors import ClosedArrayError, HugePagesUnavailableError, MonitorError
from ..kernel import userfaultfd as uffd
from .buffers import Buffer, BufferPool
from .eviction import make_room
from .jobs import READAHEAD, Job
from .regions import ServedRegion
from .units import PRESENT

FIRST_PIECE = 256 << 10
"""A demand install copies the aligned piece holding the faulting address first and wakes the reader:
it goes on while the rest of the unit is copied (one element of a fresh 4 MiB unit: the copy of
the other 3.75 MiB, 2-4 ms on these VMs, leaves the reader's critical path)."""


def pieces(lo: int, hi: int, fault_at: int, piece: int = FIRST_PIECE) -> list[tuple[int, int]]:
    """``[lo, hi)`` in install order: the aligned ``piece`` holding ``fault_at``, then the rest."""
    if not lo <= fault_at < hi or hi - lo <= piece:
        return [(lo, hi)]
    aligned = fault_at - fault_at % piece
    start, stop = max(lo, aligned), min(aligned + piece, hi)
    return [(start, stop)] + [(a, b) for a, b in ((lo, start), (stop, hi)) if a < b]


@dataclass
class Trip:
    """The first page of a unit read ahead, held back: installed units never fault, so a reader
    going through a window would otherwise fault next only after its end, and wait for a fetch
    (a round trip over a network) while the workers idle. Its fault on this page says the reader
    has reached the unit: the page goes in at once (a 4 KiB copy) and the window moves on."""

    unit: int
    data: Any  # ctypes buffer with the page's bytes, or None for a unit of zeros


@dataclass
class _Done:
    """What filling and placing a unit did, for the books."""

    zeros: bool
    bytes_fetched: int
    fetch_seconds: float
    install_seconds: float
    trip: Trip | None = None


def install(job: Job, buffers: BufferPool) -> None:
    """Load ``job``'s unit, install it, book it PRESENT and wake everyone waiting for it.

    Raises
    ------
    eviction.NoRoom
        A readahead found no room in the budget; nothing was installed.
    HugePagesUnavailableError
        The huge page pool had no page left for the unit.
    """
    region = job.region
    if region.closed:
        raise MonitorError(f"{region.url}: array closed")
    if region.sealed:  # queued before close: a reader still waiting for it gets SIGBUS
        raise ClosedArrayError(f"{region.url}: the array was closed (LazyArray.close)")
    _, _, span = region.unit_span(job.unit)
    if region.budget is not None:
        make_room(job, span)
    done = _zero_copy(job) if region.shared_address else _CopyInstall(job, buffers).run()
    _book(job, done)


def _zero_copy(job: Job) -> _Done:
    """Decode straight into the memfd's page cache through our own mapping, then map those pages
    into the client with UFFDIO_CONTINUE (MINOR mode). The client cannot see a half-written page:
    until CONTINUE, its touches fault (MINOR) and wait for us."""
    region = job.region
    offset, data_bytes, span = region.unit_span(job.unit)
    t0 = time.perf_counter()
    try:
        region.populate(offset, span)  # zeroed pages: a unit of zeros is complete already
        read = region.read_unit(offset, region.shared_view(offset, data_bytes))
        if data_bytes < span and not read.zeros:
            ctypes.memset(region.shared_address + offset + data_bytes, 0, span - data_bytes)
    except BaseException:
        uffd.punch_hole(region.memfd, offset, span)  # drop the partial unit
        raise
    t1 = time.perf_counter()
    job.shown = True
    uffd.continue_range(region.client.uffd, region.start + offset, span, wake_waiters=False)
    return _Done(read.zeros, read.bytes_fetched or 0, t1 - t0, time.perf_counter() - t1)


class _CopyInstall:
    """One unit installed with UFFDIO_COPY from a scratch buffer, or as zero pages."""

    def __init__(self, job: Job, buffers: BufferPool) -> None:
        self.job, self.region, self.buffers = job, job.region, buffers
        self.offset, self.data_bytes, self.span = self.region.unit_span(job.unit)
        self.target = self.region.start + self.offset
        self.piece = max(FIRST_PIECE, self.region.page_size)
        self.fault_at = job.fault_at  # the reader waiting when the load started, if any
        self.zero_pages = False  # install UFFDIO_ZEROPAGE: the unit is zeros, nothing was decoded
        self.early = (0, 0)  # pages installed as soon as the reader's frames were decoded

    def run(self) -> _Done:
        region = self.region
        buf = self.buffers.get(self.span)
        try:
            return self._run(buf)
        except OSError as exc:
            if region.huge and exc.errno == errno.ENOMEM:
                raise HugePagesUnavailableError(
                    f"{region.url}: no free huge page to load unit {self.job.unit} into: the pool was taken "
                    "after an evict gave this array's pages back; reserve more (sysctl vm.nr_hugepages)"
                ) from exc
            raise
        finally:
            self.buffers.put(buf)

    def _run(self, buf: Buffer) -> _Done:
        region, job, span = self.region, self.job, self.span
        t0 = time.perf_counter()
        on_first = (lambda lo, hi: self._first_frames_done(buf, lo, hi)) if self.fault_at >= 0 else None
        read = region.read_unit(self.offset, buf.view[:self.data_bytes], self.fault_at, on_first)
        if read.zeros and region.huge:  # hugetlbfs has no UFFDIO_ZEROPAGE: copy zeros
            buf.zero(0, span)
        elif not read.zeros and self.data_bytes < span:
            buf.zero(self.data_bytes, span)  # the tail of the last page lies past the array
        self.zero_pages = read.zeros and not region.huge
        t1 = time.perf_counter()
        rest = [(a, b) for a, b in ((0, self.early[0]), (self.early[1], span)) if a < b]
        trip = None
        if job.trip and job.priority == READAHEAD and span > region.page_size:
            # Hold the first page back (see Trip); a reader there faults and brings it in.
            held = None if self.zero_pages else (ctypes.c_char * region.page_size).from_buffer_copy(buf.view)
            trip = Trip(job.unit, held)
            rest = [(region.page_size, span)]
        for lo, hi in rest:
            # job.fault_at as it is now: a reader that faulted during the load gets its piece first.
            self._copy_in(buf, lo, hi, job.fault_at)
        return _Done(read.zeros, read.bytes_fetched or 0, t1 - t0, time.perf_counter() - t1, trip)

    def _copy_in(self, buf: Buffer, lo: int, hi: int, fault_at: int, wake: bool = False) -> None:
        """Copy ``buf[lo:hi)`` into place without waking, except that a reader waiting at
        ``fault_at`` is woken as soon as its piece is in (see FIRST_PIECE) if more is to come
        (other pieces, or with ``wake`` other frames)."""
        region, job = self.region, self.job
        order = pieces(lo, hi, fault_at, self.piece)
        wake = wake or len(order) > 1
        job.shown = True
        for a, b in order:
            if self.zero_pages:
                uffd.zeropage(region.client.uffd, self.target + a, b - a, wake_waiters=False)
            else:
                uffd.copy(region.client.uffd, self.target + a, buf.address + a, b - a, wake_waiters=False,
                          page=region.page_size)
            if wake and a <= fault_at < b:
                job.woken = True
                uffd.wake(region.client.uffd, self.target + a, b - a)
                for other in list(job.others):  # a lazy copy's reader (or a clone's) re-faults onto the cache
                    other.wake(self.offset + a, b - a)

    def _first_frames_done(self, buf: Buffer, lo: int, hi: int) -> None:
        """The frames holding the faulting reader's page are decoded and verified (the source's
        ``on_urgent``): install their pages and wake the reader while the other frames are decoded."""
        if hi >= self.data_bytes:
            buf.zero(self.data_bytes, self.span)
            hi = self.span
        page = self.region.page_size  # a huge page goes in whole: its frames come first
        lo, hi = -(-lo // page) * page, hi - hi % page
        if lo <= self.fault_at < hi:
            self._copy_in(buf, lo, hi, self.fault_at, wake=hi - lo < self.span)
            self.early = (lo, hi)


def _book(job: Job, done: _Done) -> None:
    """Count the install, book the unit PRESENT, then wake its readers (in this client and in the
    clones that faulted on it too)."""
    region, unit = job.region, job.unit
    offset, data_bytes, span = region.unit_span(unit)
    stats = region.stats
    with region.lock:
        stats.chunks_installed += 1
        stats.zero_chunks += done.zeros
        stats.early_wakes += job.woken
        stats.bytes_decompressed += data_bytes
        stats.bytes_fetched += done.bytes_fetched
        stats.fetch_seconds += done.fetch_seconds
        stats.install_seconds += done.install_seconds
        region.units.installed(unit)
        region.jobs.pop(unit, None)
        job.booked = True
        if done.trip is not None:  # only copy installs hold pages back
            if region.trip is None and job.priority == READAHEAD:
                region.trip = done.trip
            else:  # a reader came meanwhile, or another trip is set: no tripwire after all
                spring(region, done.trip)
        region.resident_set.installed(unit, span)
        region.resident_set.in_flight -= job.reserved
        others = list(job.others)
    uffd.wake(region.client.uffd, region.start + offset, span)
    for other in others:  # map it for the clones that wait too
        other.map_present(offset, span)


def spring(region: ServedRegion, trip: Trip) -> bool:
    """Install a held-back page and wake its readers (region.lock held); False if it failed."""
    if region.trip is trip:
        region.trip = None
    target = region.start + trip.unit * region.unit_bytes
    try:
        if trip.data is None:
            uffd.zeropage(region.client.uffd, target, region.page_size)
        else:
            uffd.copy(region.client.uffd, target, ctypes.addressof(trip.data), region.page_size,
                      page=region.page_size)
    except OSError:
        # The app unmapped the region (closing), or the huge page pool is empty. The unit is no
        # longer whole: a reader's next fault must load it again (and fail loudly if it cannot),
        # not find it "present" and be woken into the same fault for ever (hugetlbfs cannot tell
        # a missing page from a present one). Unless a forked clone's job is loading it again
        # already (the trip predates the fork): that job makes it whole.
        if region.units[trip.unit] == PRESENT:
            region.units.lost(trip.unit)
            region.resident_set.evicted(trip.unit)
        region.wake(trip.unit * region.unit_bytes, region.page_size)
        return False
    return True

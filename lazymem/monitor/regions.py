"""What the monitor serves: client processes and their regions (one lazy array mapped in one process).

A region knows its memfd, its addresses in the client, its source and how it is cut in install
units; the fault loop, the installer and eviction all work on it. Forked clones of an array
share the original's unit states, jobs, lock and budget (one memfd, one truth).
"""

from __future__ import annotations

import ctypes
import os
import select
import threading
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..kernel import userfaultfd as uffd
from ..sources.base import Source, UnitGrid, UnitRead
from .budget import ResidentSet
from .inflight import FetchSlots
from .readahead import Readahead
from .units import UnitStates

if TYPE_CHECKING:
    from .installer import Trip
    from .jobs import Job


@dataclass
class RegionStats:
    """A region's counters, sent to the app as they are (``lazymem.stats``): the names are public."""

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


@dataclass(eq=False)  # identity semantics: regions go in sets and are compared by `is`
class ServedRegion:
    """One array mapped in one client process, as the monitor serves it."""

    client: Client
    region_id: int
    start: int
    length: int  # mapped bytes, page multiple
    nbytes: int  # array bytes
    unit_bytes: int  # the install unit: a page multiple (see sources.base.UnitGrid)
    source: Source  # the only thing the monitor knows of the format
    memfd: int
    url: str
    readahead_max: int  # most units read ahead of a sequential reader
    spec: dict[str, Any] = field(default_factory=dict)  # as registered, to clone for forked children
    group: tuple[int, int] = (0, 0)  # regions over one memfd (an array and its forked clones)
    budget: int | None = None  # most array bytes resident at once (None: no limit)
    page_size: int = uffd.PAGE_SIZE  # a huge page size for hugetlbfs memfds
    grid: UnitGrid = field(init=False)
    units: UnitStates = field(init=False)
    resident_set: ResidentSet = field(init=False)
    readahead: Readahead = field(init=False)
    shared_address: int = 0  # our read-write mapping of the memfd (zero-copy installs), or 0
    jobs: dict[int, Job] = field(default_factory=dict)  # unit -> the job loading it
    lock: threading.Lock = field(default_factory=threading.Lock)
    stats: RegionStats = field(default_factory=RegionStats)
    closed: bool = False
    sealed: bool = False  # LazyArray.close(): nothing loads any more, a touch gets SIGBUS
    trip: Trip | None = None  # the page held back from a unit read ahead (see installer.Trip)
    fetches: FetchSlots = field(default_factory=lambda: FetchSlots(None))  # max_in_flight
    # A lazy copy (the memfd mapped MAP_PRIVATE in the client, see lazymem.cow) is served through
    # its carrier, the array's shared mapping in the same client: units install there (the page
    # cache), then the copy's readers are woken and map the cached pages.
    carrier: ServedRegion | None = None

    def __post_init__(self) -> None:
        self.grid = UnitGrid(self.nbytes, self.unit_bytes)
        self.units = UnitStates(self.nunits)
        self.resident_set = ResidentSet(self.budget, self.unit_bytes)
        if isinstance(self.source, Source):  # a source's decoded-chunk cache lives within the budget
            self.source.limit_cache(self.budget)
            self.resident_set.held = self.source.cached_bytes
        self.readahead = Readahead(self.readahead_max, self.nunits)

    @property
    def installer(self) -> ServedRegion:
        """The region whose mapping units are installed into for this one's faults."""
        return self.carrier or self

    def serve_through(self, carrier: ServedRegion) -> None:
        """Be a lazy copy of ``carrier``: its counters and readahead window are this copy's too
        (``lazymem.stats`` asks the array; eviction protects the unit either one reads)."""
        self.carrier = carrier
        self.stats, self.readahead = carrier.stats, carrier.readahead

    def share(self, holder: ServedRegion) -> None:
        """Serve the same memfd as ``holder`` (a forked clone): one set of unit states, jobs,
        lock and budget, so a unit in flight for one process is never mapped half-written for
        another, nor fetched twice."""
        self.units, self.jobs, self.lock = holder.units, holder.jobs, holder.lock
        self.resident_set = holder.resident_set

    @property
    def nunits(self) -> int:
        return -(-self.length // self.unit_bytes)

    @property
    def huge(self) -> bool:
        return self.page_size != uffd.PAGE_SIZE

    def unit_span(self, unit: int) -> tuple[int, int, int]:
        """Offset in the region, array bytes in the unit, and mapped bytes to install."""
        offset = unit * self.unit_bytes
        data = max(0, min(self.unit_bytes, self.nbytes - offset))
        return offset, data, min(self.unit_bytes, self.length - offset)

    def read_unit(self, offset: int, out: memoryview, fault_at: int = -1,
                  on_first: Callable[[int, int], None] | None = None) -> UnitRead:
        """Have the source fill the unit at ``offset`` into ``out`` (or say it is all zeros and
        leave ``out`` alone). The page of ``out[fault_at]`` is urgent: the source hands a range
        holding it to ``on_first`` as soon as it is final (see ``Source.read_unit``). Sources
        retry transient storage errors request by request: an error here means they are spent."""
        page = fault_at - fault_at % self.page_size
        first = (page, min(page + self.page_size, len(out))) if 0 <= fault_at < len(out) else None
        return self.source.read_unit(self.grid, offset // self.unit_bytes, out, urgent=first, on_urgent=on_first)

    # --- the memfd --------------------------------------------------------------------------------
    def map_shared(self) -> None:
        self.shared_address = uffd.map_shared(self.memfd, self.length, prot=uffd.PROT_READ | uffd.PROT_WRITE)

    def unmap_shared(self) -> None:
        if self.shared_address:
            uffd.unmap(self.shared_address, self.length)
            self.shared_address = 0

    def populate(self, offset: int, length: int) -> None:
        """Allocate and map the unit's pages in our mapping in one call: decompressing into
        unpopulated shared memory instead takes a page fault per 4 KiB (measured: ~50 % slower)."""
        try:
            uffd.madvise(self.shared_address + offset, length, uffd.MADV_POPULATE_WRITE)
        except OSError:  # before Linux 5.14: the first writes fault the pages in
            pass

    def shared_view(self, offset: int, length: int) -> memoryview:
        return memoryview((ctypes.c_char * length).from_address(self.shared_address + offset)).cast("B")

    def page_present(self, offset: int) -> bool:
        """Whether the memfd holds the page at ``offset`` (SEEK_DATA finds page-cache pages).

        hugetlbfs has no SEEK_DATA (it calls the whole file data): there the unit's state decides."""
        if self.huge:
            return True
        page = offset - offset % uffd.PAGE_SIZE
        try:
            return os.lseek(self.memfd, page, os.SEEK_DATA) == page
        except OSError:  # ENXIO: no data at or after the offset
            return False

    def unit_complete(self, unit: int) -> bool:
        """Whether every page of the unit is in the memfd (SEEK_HOLE finds the first gap).

        Unknowable on hugetlbfs (no SEEK_HOLE): False, and the unit installs again on its next
        fault, skipping the huge pages already there (EEXIST)."""
        if self.huge:
            return False
        offset, _, span = self.unit_span(unit)
        try:
            return os.lseek(self.memfd, offset, os.SEEK_HOLE) >= offset + span
        except OSError:
            return False

    # --- the client's mapping ---------------------------------------------------------------------
    def wake(self, offset: int, span: int) -> None:
        """Wake threads waiting on ``[offset, offset + span)`` of the region; they retry their
        access. Quietly nothing if the client or its mapping has gone."""
        try:
            uffd.wake(self.client.uffd, self.start + offset, span)
        except OSError:
            pass

    def map_present(self, offset: int, span: int) -> None:
        """Map pages the memfd holds already into this client (zero-copy regions: MINOR mode,
        the page cache has them but this process's mapping may not) and wake its readers."""
        if self.closed:  # the app may have mapped something else there since
            return
        if self.shared_address:
            try:
                uffd.continue_range(self.client.uffd, self.start + offset, span)
            except OSError:
                pass
        self.wake(offset, span)


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

    def add(self, region: ServedRegion) -> None:
        """Serve ``region`` in this process (kept sorted by address for ``region_at``)."""
        i = bisect_right(self.starts, region.start)
        self.starts.insert(i, region.start)
        self.regions.insert(i, region)

    def remove(self, region: ServedRegion) -> None:
        i = self.regions.index(region)
        del self.starts[i], self.regions[i]

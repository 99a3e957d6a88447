"""Eviction: punching units out of a region's memfd, to keep its budget or because the app asked.

The app's pages vanish with the hole and its next touch faults again (``fallocate(PUNCH_HOLE)``
from the monitor, which holds the memfd: see DESIGN.md). Which units go is ``budget.ResidentSet``'s
pure policy; this module applies it.
"""

from __future__ import annotations

from ..kernel import userfaultfd as uffd
from .jobs import READAHEAD, Job
from .regions import ServedRegion
from .units import PRESENT


class NoRoom(Exception):
    """A readahead install found no unit it may evict; the unit stays absent."""


def make_room(job: Job, span: int) -> None:
    """Evict units so that ``job``'s install of ``span`` bytes stays within the array's budget.

    Demand faults and prefetches install even if nothing can be evicted (everything else is in
    flight or being read): the overshoot is bounded by the number of workers. Readahead gives up
    instead of pushing out what the reader is using or has not read yet.

    Raises
    ------
    NoRoom
        ``job`` is a readahead and no unit may make room for it.
    """
    region = job.region
    with region.lock:
        reader_at = region.readahead.last_fault
        readahead = job.priority == READAHEAD

        def protected(unit: int) -> bool:
            if unit == reader_at or region.units[unit] != PRESENT:
                return True
            return readahead and reader_at <= unit < job.unit

        victims = region.resident_set.victims(span, region.resident_set.in_flight, protected)
        if victims is None:
            if readahead:
                raise NoRoom
            victims = region.resident_set.victims(0, 0, protected) or []
        for victim in victims:
            evict_unit(region, victim)
        region.resident_set.in_flight += span
        job.reserved = span


def evict_unit(region: ServedRegion, unit: int) -> bool:
    """Punch the unit out of the memfd: every mapping of it faults there again (region.lock held).

    On hugetlbfs the punch also gives the freed pages' reservation back to the pool, where
    another array could take it and leave this unit nothing to load into: reserve it again
    at once. False if the pool was taken meanwhile (the unit then loads only if pages are free)."""
    offset, _, span = region.unit_span(unit)
    uffd.punch_hole(region.memfd, offset, span)
    if region.trip is not None and region.trip.unit == unit:
        region.trip = None  # its page went with the rest
    region.units.evicted(unit)
    region.resident_set.evicted(unit)
    region.stats.evictions += 1
    if region.huge and not region.sealed:  # a closed array loads nothing again: pages go back
        try:
            uffd.reserve_huge_pages(region.memfd, offset, span)
        except OSError:
            return False
    return True

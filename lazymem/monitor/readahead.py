"""Readahead policy: which units to load ahead of a reader (pure logic, no I/O).

We see a reader only through its faults, and an installed unit never faults again. So the window
grows on sequential faults and is dropped on random ones:

* sequential: the fault is on the unit right after the previous fault, or right after the last
  unit read ahead (the reader went through the whole window, which faults no more), or on a
  tripwire page (see ``installer.Trip``);
* inside the window: proves nothing (a sparse reader skipping units looks the same): it stays;
* anything else is random access: no readahead, so a sparse reader fetches little more than it
  touches.

A second fault on the unit just seen changes nothing: a demand install wakes its reader after the
first piece (see ``installer.FIRST_PIECE``), so one reader may fault twice on one unit.

*Extents*: a process that received a view by reference (a dask task, ``client.map`` over views)
will read that view and nothing else; its neighbours are other tasks', often in other processes.
Readahead for a fault inside such a view stops at the view's last unit, or neighbouring chunks
are fetched twice (measured: ``client.map`` over 16 views fetched 3x the file).
"""

from __future__ import annotations

from collections import deque

MAX_EXTENTS = 64
"""Extents remembered per region, the most recent first (a worker runs one task per thread)."""


class Readahead:
    """The readahead window of one region.

    Parameters
    ----------
    max_units
        Most units the window may span (0: no readahead).
    units
        Units in the region: the window stops at its end.
    """

    __slots__ = ("extents", "last_fault", "max_units", "units", "window", "window_end")

    def __init__(self, max_units: int, units: int) -> None:
        self.max_units = max_units
        self.units = units
        self.last_fault = -2  # the unit of the latest fault (-2: none yet, so unit 0 is no successor)
        self.window_end = -2  # the last unit the current window covers
        self.window = 0  # units read ahead of the latest fault
        self.extents: deque[range] = deque(maxlen=MAX_EXTENTS)  # views received by reference

    def add_extent(self, first: int, last: int) -> None:
        """A view over units ``first..last`` (inclusive) was received by reference: readahead for
        a fault inside it stays inside it. The latest extent holding a fault is the one that counts
        (views of past tasks are kept, a bounded few: clipping to one is never wrong, only slower)."""
        extent = range(max(first, 0), min(last + 1, self.units))
        if extent in self.extents:
            self.extents.remove(extent)
        self.extents.appendleft(extent)

    def _limit(self, unit: int) -> int:
        """One past the last unit readahead may reach from a fault on ``unit``."""
        for extent in self.extents:
            if unit in extent:
                return extent.stop
        return self.units

    def on_fault(self, unit: int, *, sequential: bool = False) -> range:
        """A reader faulted on ``unit``: the units to have loaded ahead of it now.

        Parameters
        ----------
        unit
            The unit faulted on.
        sequential
            The fault is known to be sequential (a tripwire page of the window).

        Returns
        -------
        range
            The units of the window after ``unit`` (empty without readahead); some of them may be
            loaded or loading already.
        """
        if self.max_units <= 0 or (unit == self.last_fault and not sequential):
            return range(0)
        if sequential or unit in (self.last_fault + 1, self.window_end + 1):
            self.window = min(max(2 * self.window, 2), self.max_units)
        elif not self.last_fault < unit <= self.window_end:
            self.window = 0
        self.last_fault = unit
        end = min(unit + 1 + self.window, self._limit(unit))
        self.window_end = max(unit, end - 1) if self.window else unit
        return range(unit + 1, end)

"""Which chunks to evict when an install would pass an array's memory budget (pure logic, no I/O).

Policy: least recently installed (or re-faulted) first. We see accesses only through faults, so
this is FIFO with a refresh on each fault: exact for scans, the common case for arrays larger than
memory. Two kinds of chunk are never chosen: the one the reader faulted on last (it is being read),
and, for readahead, chunks ahead of the reader that it has not reached yet (readahead must never
push out what it fetched for the reader, nor what the reader is using).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable


class ResidentSet:
    def __init__(self, budget: int | None, chunk_size: int, held: Callable[[], int] = lambda: 0) -> None:
        self.budget = budget
        self.chunk_size = chunk_size
        self.held = held  # bytes the source keeps beside the units (decoded chunks): in the budget too
        self._order: OrderedDict[int, int] = OrderedDict()  # chunk -> resident bytes, oldest first
        self.in_flight = 0  # bytes being installed right now (resident soon)

    @property
    def resident(self) -> int:
        return sum(self._order.values())

    def installed(self, chunk: int, nbytes: int) -> None:
        self._order[chunk] = nbytes
        self._order.move_to_end(chunk)

    def touched(self, chunk: int) -> None:
        if chunk in self._order:
            self._order.move_to_end(chunk)

    def evicted(self, chunk: int) -> None:
        self._order.pop(chunk, None)

    def victims(self, incoming: int, in_flight: int, protected: Callable[[int], bool]) -> list[int] | None:
        """Chunks to evict so that ``incoming`` more bytes fit; ``None`` if they cannot be found.

        ``in_flight`` counts bytes being installed by other workers, which will be resident soon.
        """
        if self.budget is None:
            return []
        excess = self.resident + in_flight + incoming + self.held() - self.budget
        chosen: list[int] = []
        for chunk, nbytes in self._order.items():
            if excess <= 0:
                break
            if protected(chunk):
                continue
            chosen.append(chunk)
            excess -= nbytes
        return chosen if excess <= 0 else None

"""Decoded chunks kept between install units, within a byte limit (no I/O; thread-safe).

An install unit of an N-d array rarely covers whole chunks: in a C-order array a unit is a run of
rows, and a chunk is a block spanning many runs. A unit decodes every chunk it meets and uses a
part of each; the rest of those chunks belongs to units loaded later (a scan, readahead). The
cache keeps them so each chunk is decoded once, and drops a chunk as soon as all of its elements
have been handed to units (``remaining`` reaches 0), which is what keeps it small in a scan: it
holds the partly used chunks of the band being scanned, not what was used already.

Two workers needing one chunk at once must not decode it twice: the first claims it (``claim``
returns it under ``mine``), the others wait on its future, which ``deliver`` (or ``fail``) settles.

Past ``limit`` bytes the least recently used chunks go, even if partly unused: a later unit
decodes them again (correct, just slower). The monitor counts ``nbytes`` in the array's budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


RELEASED = object()
"""What a waiter gets for a chunk its claimer gave up without an error of the chunk's own."""


@dataclass
class _Entry:
    value: Any
    nbytes: int
    remaining: int  # elements of the chunk no unit has taken yet


@dataclass
class Claims(Generic[K]):
    """What ``claim`` found for each chunk asked for."""

    hits: dict[K, Any] = field(default_factory=dict)
    """Chunks in the cache."""
    waits: dict[K, Future[Any]] = field(default_factory=dict)
    """Chunks another reader is decoding: their futures."""
    mine: list[K] = field(default_factory=list)
    """Chunks the caller must decode, then ``deliver`` (or ``fail``)."""


class ChunkCache(Generic[K]):
    """Decoded chunks by key, at most ``limit`` bytes of them (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nbytes = 0
        self.decoded = 0  # chunks delivered (decoded) since the cache was made: for tests and benchmarks
        self._entries: OrderedDict[K, _Entry] = OrderedDict()  # least recently used first
        self._pending: dict[K, Future[Any]] = {}
        self._lock = threading.Lock()

    def claim(self, keys: Iterable[K]) -> Claims[K]:
        claims: Claims[K] = Claims()
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    claims.hits[key] = entry.value
                elif key in self._pending:
                    claims.waits[key] = self._pending[key]
                else:
                    self._pending[key] = Future()
                    claims.mine.append(key)
        return claims

    def deliver(self, key: K, value: Any, nbytes: int, remaining: int) -> None:
        """A claimed chunk is decoded; ``remaining`` of its elements are for other units."""
        with self._lock:
            future = self._pending.pop(key, None)
            self.decoded += 1
            if remaining > 0 and nbytes <= self.limit:
                self._entries[key] = _Entry(value, nbytes, remaining)
                self.nbytes += nbytes
                self._shrink()
        if future is not None:
            future.set_result(value)

    def fail(self, keys: Iterable[K], error: BaseException) -> None:
        """Claimed chunks could not be decoded: their waiters get ``error``."""
        with self._lock:
            futures = [self._pending.pop(key) for key in keys if key in self._pending]
        for future in futures:
            future.set_exception(error)

    def used_up(self, key: K) -> None:
        """A claimed chunk was decoded straight into the one unit that needs it: nothing to keep
        (a waiter, which cannot be, would decode it itself)."""
        with self._lock:
            future = self._pending.pop(key, None)
            self.decoded += 1
        if future is not None:
            future.set_result(RELEASED)

    def release(self, keys: Iterable[K]) -> None:
        """Claimed chunks will not be decoded by their claimer (it failed for its own reasons):
        their waiters get ``RELEASED`` and decode them themselves."""
        with self._lock:
            futures = [self._pending.pop(key) for key in keys if key in self._pending]
        for future in futures:
            future.set_result(RELEASED)

    def consumed(self, key: K, elements: int) -> None:
        """A unit took ``elements`` of a cached chunk: drop it once nothing of it is left."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.remaining -= elements
            if entry.remaining <= 0:
                del self._entries[key]
                self.nbytes -= entry.nbytes

    def set_limit(self, limit: int) -> None:
        with self._lock:
            self.limit = limit
            self._shrink()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _shrink(self) -> None:
        while self.nbytes > self.limit and self._entries:
            _, entry = self._entries.popitem(last=False)
            self.nbytes -= entry.nbytes

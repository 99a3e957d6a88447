"""The state of each install unit of a region, and the only ways it may change.

A unit is the byte range the monitor installs whole (see ``sources.base.UnitGrid``); it is not a
storage chunk. Its life::

    ABSENT --load--> PENDING --installed--> PRESENT --evicted--> ABSENT
                        |  \\--failed------> FAILED ---evicted--> ABSENT
                        \\--abandoned----> ABSENT
    FAILED --load--> PENDING     (a later prefetch or touch tries again)
    PRESENT --load--> PENDING    (present in the books, but a page of it is missing: load again)
    PRESENT --lost--> ABSENT     (a page held back could not go in: the unit is not whole)
    ABSENT --found--> PRESENT    (a new monitor finds the unit whole in the memfd)

Any other change is a bug in the monitor and raises :class:`IllegalTransition` at once, rather
than leaving a unit in a state that could map wrong data or hang a reader.

The states are bytes in one bytearray: a transition is a fault-path operation (a byte read, a
byte written), and ``loaded`` finds the units to evict with numpy over it (a 1 TiB array has
262,144 units of 4 MiB: ~40 ms in Python, microseconds in C). Callers hold the region's lock.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class UnitState(IntEnum):
    ABSENT = 0
    """Not in memory; the next touch faults and loads it."""
    PENDING = 1
    """A job is loading it (queued or running); readers wait for that job."""
    PRESENT = 2
    """Installed whole; counted against the budget."""
    FAILED = 3
    """Its load failed on demand and its pages were poisoned (readers get SIGBUS)."""


ABSENT, PENDING, PRESENT, FAILED = UnitState


class IllegalTransition(RuntimeError):
    """A unit was moved between states that the monitor's logic never connects: a bug."""


def _mask(*states: UnitState) -> int:
    return sum(1 << state for state in states)


# Allowed source states of each move, as bit masks of the state values: one shift and one and
# on the fault path.
_LOAD = _mask(ABSENT, FAILED, PRESENT)
_SETTLE = _mask(PENDING)
_EVICT = _mask(PRESENT, FAILED)
_LOSE = _mask(PRESENT)
_FIND = _mask(ABSENT)


class UnitStates:
    """The states of a region's units (shared by an array and its forked clones: one memfd).

    Parameters
    ----------
    count
        Units in the region; all start ABSENT.
    """

    __slots__ = ("_states",)

    def __init__(self, count: int) -> None:
        self._states = bytearray(count)

    def __len__(self) -> int:
        return len(self._states)

    def __getitem__(self, unit: int) -> UnitState:
        return UnitState(self._states[unit])

    def count(self, state: UnitState) -> int:
        """How many units are in ``state``."""
        return self._states.count(state)

    def loaded(self) -> list[int]:
        """Units that hold pages (PRESENT) or poison (FAILED): what an evict of everything drops."""
        states = np.frombuffer(self._states, dtype=np.uint8)
        return np.flatnonzero((states == PRESENT) | (states == FAILED)).tolist()

    def _move(self, unit: int, allowed: int, to: UnitState) -> None:
        now = self._states[unit]
        if not (allowed >> now) & 1:
            raise IllegalTransition(f"unit {unit}: {UnitState(now).name} -> {to.name} is not a transition")
        self._states[unit] = to

    def load(self, unit: int) -> None:
        """A job starts loading the unit (ABSENT, FAILED, or PRESENT with a page missing)."""
        self._move(unit, _LOAD, PENDING)

    def installed(self, unit: int) -> None:
        """Its job installed every page of it."""
        self._move(unit, _SETTLE, PRESENT)

    def failed(self, unit: int) -> None:
        """Its job failed on demand; its pages are poisoned."""
        self._move(unit, _SETTLE, FAILED)

    def abandoned(self, unit: int) -> None:
        """Its job gave up without poisoning (readahead with no room, a failed prefetch or
        readahead, the reader gone): a later touch loads it again."""
        self._move(unit, _SETTLE, ABSENT)

    def evicted(self, unit: int) -> None:
        """Its pages (or poison) were punched out of the memfd."""
        self._move(unit, _EVICT, ABSENT)

    def lost(self, unit: int) -> None:
        """A page held back from it could not go in: it is no longer whole."""
        self._move(unit, _LOSE, ABSENT)

    def found(self, unit: int) -> None:
        """A new monitor found the unit whole in the memfd (a dead one installed it)."""
        self._move(unit, _FIND, PRESENT)

"""The app's live regions, for the client: a forked child maps them again, and a new monitor is
handed them all when the last one died.

A registry the region module adds to and the client reads, so that the client (the monitor's
side of the app) never imports the region module that imports it (no import cycle).
"""

from __future__ import annotations

import weakref
from typing import Any

_live: weakref.WeakSet[Any] = weakref.WeakSet()


def add(region: Any) -> None:
    """Track ``region`` while its array lives (a weak reference: dropping the array forgets it)."""
    _live.add(region)


def live_regions() -> list[Any]:
    """Regions whose arrays are still alive."""
    return list(_live)

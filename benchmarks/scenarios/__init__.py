"""The scenarios of ``benchmarks/run.py``, one module each.

Each module has ``TITLE`` (for the progress log) and ``measure(ctx) -> dict``, which returns the
entries it adds to the results JSON (``{"full_scan": [...]}``, ...). ``report.py`` draws their tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from field import Dataset


@dataclass(frozen=True)
class Context:
    """What every scenario is given: the data, and the run's choices from the command line."""

    ds: Dataset
    reps: int
    """Timed repetitions of each contender."""
    quick: bool
    """``--quick``: fewer cases where a case costs much and says little new."""
    huge_pages: bool
    """The huge-page pool holds the array (``--huge-pages`` and warmed up): time those contenders too."""
    huge_arrays: bool
    """Not ``--no-huge``: the first-element scenario also opens the 1 TiB (and 16 GiB) zeros arrays."""
    data_dir: Path

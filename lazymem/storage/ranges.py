"""Coalescing byte ranges into requests: pure arithmetic, no I/O.

One request per wanted range costs a round trip each over a network; one request for
everything costs bytes nobody wanted. Ranges a small gap apart share a request, up to a size
past which async filesystems (S3, HTTP) do better fetching the pieces concurrently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Run", "plan_runs"]


@dataclass(frozen=True)
class Run:
    """One request: stored bytes ``[start, end)`` holding some of the wanted ranges."""

    start: int
    """First byte of the request (inclusive)."""
    end: int
    """One past the last byte of the request (exclusive)."""
    members: tuple[int, ...]
    """Positions, in the caller's list, of the ranges this request holds."""


def plan_runs(ranges: Sequence[tuple[int, int]], max_gap: int = 0, max_run_bytes: int | None = None) -> list[Run]:
    """Group ``[start, end)`` ranges into requests, in order of their starts.

    Parameters
    ----------
    ranges : sequence of (int, int)
        Byte ranges, end exclusive, in any order; they may repeat or overlap.
    max_gap : int
        Bytes between two ranges worth reading (and discarding) to save a request.
    max_run_bytes : int, optional
        No request grows past this many bytes by taking another range (a single range larger
        than this is still one request).

    Returns
    -------
    list of Run
        Every range lies inside exactly one run.
    """
    runs: list[Run] = []
    members: list[int] = []
    run_start = run_end = 0
    for k in sorted(range(len(ranges)), key=lambda k: ranges[k]):
        start, end = ranges[k]
        too_big = max_run_bytes is not None and max(end, run_end) - run_start > max_run_bytes
        if members and start - run_end <= max_gap and not too_big:
            members.append(k)
            run_end = max(run_end, end)
            continue
        if members:
            runs.append(Run(run_start, run_end, tuple(members)))
        members, run_start, run_end = [k], start, end
    if members:
        runs.append(Run(run_start, run_end, tuple(members)))
    return runs

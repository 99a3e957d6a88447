"""Scheduling: unit jobs, their priorities, and the worker threads that run them.

A job loads one unit. Jobs wait in one priority queue shared by every region, most urgent first
(a demand fault, then a prefetch, then readahead), in arrival order within a priority. A job whose
priority rises (a reader faults on a unit being read ahead) is queued again; its stale entry is
skipped. A worker that picks a job of an array whose fetch slots are all busy parks it (see
``inflight``) rather than block a thread other arrays need.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .inflight import MAX_WORKERS

if TYPE_CHECKING:
    from .regions import ServedRegion

DEMAND, PREFETCH, READAHEAD = 0, 1, 2  # job priorities, most urgent first


class Job:
    """One unit being loaded; requests waiting for it block on ``done``."""

    __slots__ = ("booked", "done", "error", "fault_at", "others", "priority", "region", "reserved", "shown",
                 "started", "trip", "unit", "woken")

    def __init__(self, region: ServedRegion, unit: int, priority: int) -> None:
        self.region, self.unit, self.priority = region, unit, priority
        self.started = False
        self.fault_at = -1  # offset in the unit of the first reader waiting for it, if any
        self.woken = False  # that reader runs already, the rest of the unit is still being copied
        # Pages are in place, so a reader not waiting for them may run over them and ask (stats,
        # evict) before the unit is booked as present.
        self.shown = False
        self.booked = False  # the unit is booked PRESENT: only waking its readers is left
        self.trip = False  # readahead that holds back the unit's first page as a tripwire
        self.reserved = 0  # budget bytes this install holds while in flight
        self.others: set[ServedRegion] = set()  # clones (forked clients) that faulted on it too
        self.done = threading.Event()
        self.error: BaseException | None = None


def new_job(region: ServedRegion, unit: int, priority: int) -> Job:
    """A job for ``unit``, which becomes PENDING (region.lock held); queue it with ``Scheduler.put``."""
    job = Job(region, unit, priority)
    region.units.load(unit)
    region.jobs[unit] = job
    return job


class Scheduler:
    """The job queue and the worker threads that run its jobs.

    Parameters
    ----------
    run
        Runs one job to its end (installs it, or fails it); called on a worker thread.
    """

    def __init__(self, run: Callable[[Job], None]) -> None:
        self._run = run
        self._queue: queue.PriorityQueue[tuple[int, int, Job]] = queue.PriorityQueue()
        self._sequence = itertools.count()  # arrival order within a priority (next() is atomic)
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def ensure_workers(self, count: int) -> None:
        """Grow the pool to ``count`` workers (at most MAX_WORKERS); it never shrinks."""
        with self._lock:
            while len(self._workers) < min(count, MAX_WORKERS):
                worker = threading.Thread(target=self._work, daemon=True)
                worker.start()
                self._workers.append(worker)

    def put(self, job: Job) -> None:
        """Queue ``job`` at its priority now."""
        self._queue.put((job.priority, next(self._sequence), job))

    def hurry(self, job: Job, priority: int) -> None:
        """Raise a pending job to ``priority`` if that is more urgent (region.lock held)."""
        if job.priority > priority:
            job.priority = priority
            self.put(job)  # jump the queue; the stale entry is skipped later

    def _work(self) -> None:
        while True:
            _, _, job = self._queue.get()
            region = job.region
            with region.lock:
                # A job queued again at a higher priority sits in the queue twice: run it once.
                if job.started or region.jobs.get(job.unit) is not job:
                    continue
                if not region.fetches.take(job):
                    continue  # parked: this array's loads are all in flight; one that ends requeues it
                job.started = True
            try:
                self._run(job)
            finally:
                with region.lock:
                    parked = region.fetches.release()
                    if parked is not None:
                        self.put(parked)

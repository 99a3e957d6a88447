"""Scheduling alone: jobs run most urgent first, once each, on real worker threads (no faults, no I/O)."""

from __future__ import annotations

import threading

from lazymem.monitor.jobs import DEMAND, PREFETCH, READAHEAD, Job, Scheduler, new_job
from lazymem.monitor.regions import Client, ServedRegion
from lazymem.monitor.units import PENDING

UNIT = 2**20


def region() -> ServedRegion:
    return ServedRegion(Client(uffd=-1, pid=0), 1, 0, 64 * UNIT, 64 * UNIT, UNIT, None, -1, "x",  # type: ignore[arg-type]
                        readahead_max=0)


def test_jobs_run_most_urgent_first_and_a_hurried_job_runs_once() -> None:
    ran: list[int] = []
    last = threading.Event()

    def run(job: Job) -> None:
        ran.append(job.unit)
        if job.unit == 9:
            last.set()

    scheduler = Scheduler(run)
    r = region()
    with r.lock:
        for unit, priority in ((1, READAHEAD), (2, READAHEAD), (3, PREFETCH), (4, DEMAND)):
            scheduler.put(new_job(r, unit, priority))
        scheduler.hurry(r.jobs[2], DEMAND)  # a reader faulted on a unit being read ahead
        scheduler.hurry(r.jobs[4], PREFETCH)  # less urgent than it is: nothing changes
        scheduler.put(new_job(r, 9, READAHEAD))  # queued after the stale entry of unit 2
    assert r.units[2] is PENDING and r.jobs[4].priority == DEMAND
    scheduler.ensure_workers(1)  # one worker: the queue's order is the order they run in
    assert last.wait(60)
    assert ran == [4, 2, 3, 1, 9]

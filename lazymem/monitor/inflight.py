"""``max_in_flight``: how many unit loads of one array may wait on storage at once.

A worker that picks a job of an array whose loads are all busy does not block (it would hold a
worker that other arrays need): it parks the job, and the next load of that array to finish puts
the most urgent parked job back in the queue. Called with the region's lock held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_WORKERS = 64
"""Most worker threads the monitor grows to (they mostly wait on the network; zstd releases the GIL)."""


@dataclass
class FetchSlots:
    limit: int | None  # None: no bound but the number of workers
    busy: int = 0
    parked: list[Any] = field(default_factory=list)  # jobs that found every slot busy

    def take(self, job: Any) -> bool:
        """Claim a slot for ``job``, or park it and return False."""
        if self.limit is not None and self.busy >= self.limit:
            if job not in self.parked:
                self.parked.append(job)
            return False
        if job in self.parked:  # a duplicate queue entry got to it first
            self.parked.remove(job)
        self.busy += 1
        return True

    def release(self) -> Any | None:
        """Give a slot back; return the parked job to queue again, if any (most urgent first)."""
        self.busy -= 1
        while self.parked:
            job = min(self.parked, key=lambda j: j.priority)
            self.parked.remove(job)
            if not job.started and job.region.jobs.get(job.unit) is job:
                return job
        return None

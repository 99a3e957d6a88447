"""Failures: a unit that cannot be loaded, and a closed array touched again.

Never wrong data, never silent zeros: a reader waiting on a unit that failed on demand gets
SIGBUS (``UFFDIO_POISON``), after the monitor said on stderr which array, unit and cause. A
failed prefetch or readahead poisons nothing: the unit stays absent and a later touch retries.
"""

from __future__ import annotations

import errno
import signal
import sys

from ..kernel import userfaultfd as uffd
from .jobs import DEMAND, Job
from .regions import ServedRegion


def fail(job: Job, exc: BaseException) -> None:
    """``job`` raised ``exc``: settle its unit, poison or wake its readers, release its waiters."""
    region, unit = job.region, job.unit
    job.error = exc
    if job.booked:
        # Booked PRESENT already: only waking its readers failed. The pages are in; there is no
        # load to undo and nothing to poison.
        job.done.set()
        return
    # The reading process has exited (a pool worker done with its task): its address space is
    # gone, so the install failed (ESRCH); nothing is wrong with the unit and nobody is left
    # to warn or poison. Other processes waiting for it fault again and get a fresh job.
    gone = region.client.gone() or (isinstance(exc, OSError) and exc.errno == errno.ESRCH)
    with region.lock:
        demanded = job.priority == DEMAND and not gone and not region.closed
        region.resident_set.in_flight -= job.reserved
        others = list(job.others)
        if not gone:
            region.stats.failures += 1
        if demanded:
            region.units.failed(unit)
        else:  # a later touch retries it
            region.units.abandoned(unit)
    offset, _, span = region.unit_span(unit)
    if demanded:
        print(
            f"lazymem monitor: cannot load chunk {unit} of {region.url} "
            f"(array bytes {offset}..{offset + span}): {type(exc).__name__}: {exc}\n"
            "lazymem monitor: poisoning those pages; the reading thread gets SIGBUS. "
            "Use lazymem.load() or LazyArray.prefetch() to get this error as an exception.",
            file=sys.stderr,
            flush=True,
        )
        for victim in [region, *others]:
            poison(victim, offset, span)
    else:
        for other in others:  # they fault again and get a fresh job
            other.wake(offset, span)
    with region.lock:
        # Only now: closing the array waits for the jobs it finds here, and the app unmaps the
        # region once it has closed; a poison after that fails (ENOENT) and used to SIGBUS the
        # app. A later fault or prefetch may have started a new job for the unit meanwhile.
        if region.jobs.get(unit) is job:
            del region.jobs[unit]
    job.done.set()


def touched_after_close(region: ServedRegion, unit: int) -> None:
    """A closed array was touched: loading it again would hide the bug, zeros would be wrong
    data. Poison the unit (the thread gets SIGBUS) after saying why."""
    offset, _, span = region.unit_span(unit)
    print(f"lazymem monitor: {region.url} was closed (LazyArray.close) and then touched at array "
          f"bytes {offset}..{offset + span}: the reading thread gets SIGBUS. Open the array again "
          "to read it.", file=sys.stderr, flush=True)
    poison(region, offset, span)


def poison(region: ServedRegion, offset: int, span: int) -> None:
    """Make ``[offset, offset + span)`` of the region raise SIGBUS in its client, waking its readers."""
    client = region.client
    try:
        uffd.poison(client.uffd, region.start + offset, span, page=region.page_size)
    except OSError as exc:
        if client.gone():
            return  # it exited meanwhile: nobody waits
        # Without UFFDIO_POISON the blocked thread would wait forever: kill the app loudly,
        # through its pidfd only: a bare pid may name another process by now.
        print(f"lazymem monitor: UFFDIO_POISON failed ({exc}); sending SIGBUS to the app", file=sys.stderr)
        if client.pidfd >= 0:
            try:
                signal.pidfd_send_signal(client.pidfd, signal.SIGBUS)
            except OSError:
                pass

"""Timing contenders on a shared machine: alternate them, redo disturbed runs, report medians.

A scenario builds ``Contender``s (a name and a function returning ``(answer, info)``) and hands them
to ``compete``, which runs them in a shuffled order each repetition, checks that they agree, and
returns one summary per contender (medians of the times and of every numeric ``info`` entry), the
records that go into the results JSON.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from machine import background_load, cpu_jiffies, monitor_cpu_seconds

import lazymem

_T0 = time.perf_counter()

BUSY_THRESHOLD = 0.25  # CPUs used by other processes during a timed run before it is redone
RETRIES_IF_BUSY = 3
SHORTEST_JUDGED = 0.3  # /proc/stat counts in 10 ms ticks: only runs this long (s) or longer can be judged


def log(*args: Any) -> None:
    """Progress to stderr, stamped with the seconds since the start (stdout carries the tables)."""
    print(f"[{time.perf_counter() - _T0:5.0f} s]", *args, file=sys.stderr, flush=True)


@dataclass
class Policy:
    """How a run copes with a shared machine; ``run.py`` sets it from its command line."""

    warmup: bool = True
    """One untimed round per scenario before the timed ones (off in quick mode)."""
    quiet_wait: float = 120.0
    """Most seconds to wait for quiet before redoing a disturbed run (``--wait-quiet``)."""
    wait_budget: float = 0.0
    """Seconds left for waiting on other processes and redoing runs, over the whole run (``--wait-budget``)."""


POLICY = Policy()


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to max_wait s) until other processes use less than ``threshold`` CPUs; return the last load."""
    started = time.monotonic()
    deadline = started + min(max_wait, POLICY.wait_budget)
    try:
        load = background_load()
        while load > threshold and time.monotonic() < deadline:
            log(f"machine busy: other processes use {load:.1f} CPUs; waiting ...")
            time.sleep(10)
            load = background_load()
        return load
    finally:
        POLICY.wait_budget = max(0.0, POLICY.wait_budget - (time.monotonic() - started))


# --------------------------------------------------------------------------- contenders


def lazy_stats_dict(arr: Any) -> dict[str, Any]:
    s = lazymem.stats(arr)
    return {
        "bytes_fetched": s.bytes_fetched,
        "chunks_installed": s.chunks_installed,
        "chunks_total": s.chunks_total,
        "faults": s.faults,
        "readahead_chunks": s.readahead_chunks,
        "zero_chunks": s.zero_chunks,
        "fetch_seconds": s.fetch_seconds,
        "install_seconds": s.install_seconds,
    }


def keep(obj: Any) -> dict[str, Any]:
    """Free ``obj`` (an eagerly loaded array) only after the timer stops, as lazy arrays are closed."""
    return {"_after": lambda: {"kept": type(obj).__name__}}


def finish(arr: Any) -> Callable[[], dict[str, Any]]:
    """Stats and close of a lazy array, run after the timer stops (not part of the read)."""

    def after() -> dict[str, Any]:
        info = lazy_stats_dict(arr)
        arr.close()
        return info

    return after


def total(a: Any) -> float:
    """The scan every "+ sum" contender does: float64 accumulation, so that all agree exactly."""
    return float(np.sum(a, dtype=np.float64))


def lazily(url: str, access: Callable[[Any], Any], **options: Any) -> Callable[[], tuple[Any, dict[str, Any]]]:
    """A contender's function: ``access`` on ``lazymem.open(url, **options)``; its stats after the timer."""

    def fn() -> tuple[Any, dict[str, Any]]:
        a = lazymem.open(url, **options)
        return access(a), {"_after": finish(a)}

    return fn


def eagerly(
    read: Callable[[], Any], access: Callable[[Any], Any], **info: Any
) -> Callable[[], tuple[Any, dict[str, Any]]]:
    """A contender's function: ``access`` on the array ``read()`` returns, freed after the timer.

    ``info`` joins the contender's results (for example the bytes an eager reader fetches).
    """

    def fn() -> tuple[Any, dict[str, Any]]:
        b = read()
        return access(b), {**info, **keep(b)}

    return fn


class Contender:
    """One way to get the answer: ``fn()`` returns (answer, info); info may hold lazymem stats.

    An ``info["_after"]`` callable runs once the timer has stopped (``keep``, ``finish``) and its
    entries join the info. An answer of None is not compared with the others (the decode floor).
    """

    def __init__(self, name: str, fn: Callable[[], tuple[Any, dict[str, Any]]]) -> None:
        self.name = name
        self.fn = fn
        self.times: list[float] = []
        self.infos: list[dict[str, Any]] = []
        self.answer: Any = None

    def _run(self) -> tuple[float, Any, dict[str, Any]]:
        gc.collect()
        cpu0 = monitor_cpu_seconds()
        busy0, steal0 = cpu_jiffies()
        p0 = time.process_time()
        t0 = time.perf_counter()
        answer, info = self.fn()
        elapsed = time.perf_counter() - t0
        app_cpu = time.process_time() - p0
        busy1, steal1 = cpu_jiffies()
        info = dict(info)
        info["app_cpu_seconds"] = app_cpu
        cpu1 = monitor_cpu_seconds()
        after = info.pop("_after", None)
        if after is not None:
            info.update(after())
        monitor_cpu = 0.0
        if cpu0 is not None and cpu1 is not None:
            monitor_cpu = info["monitor_cpu_seconds"] = cpu1 - cpu0
        # CPUs used meanwhile by other processes on the machine (noise), and stolen by the host.
        info["others_cpus"] = max(0.0, (busy1 - busy0) - app_cpu - monitor_cpu) / elapsed
        info["steal_cpus"] = (steal1 - steal0) / elapsed
        return elapsed, answer, info

    def run_once(self) -> None:
        """Time one run; redo it (after waiting for quiet) if other processes took CPU meanwhile."""
        for attempt in range(RETRIES_IF_BUSY + 1):
            elapsed, answer, info = self._run()
            if (
                elapsed < SHORTEST_JUDGED
                or info["others_cpus"] <= BUSY_THRESHOLD
                or attempt == RETRIES_IF_BUSY
                or POLICY.wait_budget <= 0
            ):
                break
            log(f"    {self.name}: other processes used {info['others_cpus']:.2f} CPUs during the run; redoing it")
            POLICY.wait_budget -= elapsed
            wait_for_quiet(POLICY.quiet_wait)
        info["redone"] = attempt
        self.times.append(elapsed)
        self.infos.append(info)
        self.answer = answer

    def summary(self) -> dict[str, Any]:
        """Medians over the repetitions: the record of this contender in the results JSON."""
        out: dict[str, Any] = {
            "name": self.name,
            "median_s": statistics.median(self.times),
            "min_s": min(self.times),
            "times_s": self.times,
        }
        keys = set().union(*(i.keys() for i in self.infos)) if self.infos else set()
        for key in sorted(keys):
            values = [i[key] for i in self.infos if key in i]
            if values and all(isinstance(v, (int, float)) for v in values):
                out[key] = statistics.median(values)
        return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def run_order(entrants: list[Contender], rep: int) -> list[Contender]:
    """A different order each repetition, seeded: not a rotation, which keeps every contender behind
    the same predecessor (on this VM memory freed by one run and reused within ~2 s by the next costs
    a tenth of memory the host has taken back, so a fixed predecessor biases a contender)."""
    order = list(entrants)
    random.Random(rep).shuffle(order)
    return order


def compete(title: str, entrants: list[Contender], reps: int, warmup: bool | None = None) -> list[dict[str, Any]]:
    """Run the entrants alternately (a different order each time) ``reps`` times; check they agree.

    ``warmup`` (default ``POLICY.warmup``): one untimed round first. The first entrant's answer is
    the reference; entrants that answer None are left out of the check.
    """
    if POLICY.warmup if warmup is None else warmup:
        for c in entrants:
            c.run_once()
            c.times.clear()
            c.infos.clear()
    for rep in range(reps):
        for c in run_order(entrants, rep):
            c.run_once()
    reference = entrants[0]
    for c in entrants[1:]:
        if c.answer is not None and not same(c.answer, reference.answer):
            raise AssertionError(
                f"{title}: {c.name} disagrees with {reference.name}: {c.answer!r} != {reference.answer!r}"
            )
    results = [c.summary() for c in entrants]
    log(f"  {title}: " + ", ".join(f"{r['name']} {r['median_s'] * 1e3:.1f} ms" for r in results))
    for c in entrants:
        c.answer = None  # free the answers (arrays) before the next scenario
    return results

"""Lazy copies (``a.copy()``, issue 14) against numpy's copy of an eager array.

Run by hand: ``python3 benchmarks/cow.py [--gib 1] [--reps 5]``. Prints a markdown table of medians
(seconds; memory as MiB added to the process: RSS for numpy, ``stats`` for lazymem).

* ``copy``: ``b = a.copy()`` of the whole array. numpy: an eager 1 GiB ndarray's copy. lazymem:
  the lazy copy; and, for scale, the copy as it was before (``np.array(a, copy=True)``: loads the
  array, then duplicates it).
* ``sort``: ``np.sort`` of a 64 MiB slice (numpy copies, then sorts in place).
* ``write 1 %``: a copy, then one element written in 1 % of its pages (spread evenly), then a full
  scan (``sum``) of the copy.

Each repetition opens the array afresh (cold cache: the file is in the OS page cache, so
"loading" is decompression and installs, not disk). Contenders alternate within a repetition.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lazymem
from benchmarks.datagen import generate, n_steps_for
from benchmarks.harness import POLICY, background_load, wait_for_quiet

MiB = 2**20
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident bytes of this process (anonymous and shared memory mapped here)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Clock:
    """``with clock("name"):`` adds the block's wall time to ``row["name"]``."""

    def __init__(self, row: dict[str, float]) -> None:
        self.row = row
        self.name = ""
        self.t0 = 0.0

    def __call__(self, name: str) -> Clock:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.row[self.name] = time.perf_counter() - self.t0


def one_round(path: str, eager: np.ndarray, sort_elems: int) -> dict[str, float]:
    row: dict[str, float] = {}
    clock = Clock(row)
    lazy = lazymem.open(path)

    # copy
    base = rss()
    with clock("numpy copy s"):
        copied = eager.copy()
    row["numpy copy MiB"] = (rss() - base) / MiB
    del copied
    gc.collect()
    base = rss()
    with clock("lazy copy s"):
        b = lazy.copy()
    row["lazy copy MiB"] = (rss() - base) / MiB
    assert lazymem.stats(lazy).chunks_installed == 0

    # write 1 % of the pages, then scan
    pages = b.nbytes // PAGE
    step = 100 * PAGE // b.itemsize
    with clock("lazy write 1% s"):
        b.reshape(-1)[::step] = -1.0
    with clock("lazy scan s"):
        total = float(b.sum(dtype=np.float64))
    row["lazy private MiB"] = lazymem.stats(b).private_bytes / MiB
    row["lazy shared MiB"] = lazymem.stats(b).resident_bytes / MiB
    assert row["lazy private MiB"] * MiB == -(-pages // 100) * PAGE
    del b
    gc.collect()
    e = eager.copy()
    with clock("numpy write 1% s"):
        e.reshape(-1)[::step] = -1.0
    with clock("numpy scan s"):
        want = float(e.sum(dtype=np.float64))
    assert total == want
    del e
    gc.collect()

    # sort of a slice
    with clock("lazy sort s"):
        s1 = np.sort(lazy.reshape(-1)[:sort_elems])
    with clock("numpy sort s"):
        s2 = np.sort(eager.reshape(-1)[:sort_elems])
    assert np.array_equal(s1, s2)
    del s1, s2
    lazy.close()
    del lazy
    gc.collect()

    # as before issue 14: a copy loaded everything and duplicated it
    again = lazymem.open(path)
    base = rss()
    with clock("eager copy of lazy s"):
        old = np.array(again, copy=True)
    row["eager copy of lazy MiB"] = (rss() - base) / MiB
    del old
    again.close()
    del again
    gc.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sort-mib", type=int, default=64)
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="before each repetition, wait up to this many seconds for other processes to go idle")
    args = parser.parse_args()
    nbytes = int(args.gib * 2**30)
    with tempfile.TemporaryDirectory() as tmp:
        eager = generate(n_steps_for(nbytes))
        path = str(Path(tmp) / "field.npy.zst")
        lazymem.save(path, eager)
        eager.reshape(-1)[::1024].sum()  # resident before timing
        rows = []
        for _ in range(args.reps):
            POLICY.wait_budget = args.wait_quiet
            wait_for_quiet(args.wait_quiet)
            rows.append(one_round(path, eager, args.sort_mib * MiB // 4))
            rows[-1]["other processes' CPUs after"] = background_load()
    print(f"array: {eager.nbytes / 2**30:.2f} GiB float32 {eager.shape}, {args.reps} repetitions, medians\n")
    print("| measure | median | each repetition |\n|---|---:|---|")
    for key in rows[0]:
        value = statistics.median(r[key] for r in rows)
        runs = ", ".join(f"{r[key]:.3g}" for r in rows)
        print(f"| {key} | {value:.4f} | {runs} |" if key.endswith(" s") else f"| {key} | {value:.1f} | {runs} |")


if __name__ == "__main__":
    main()

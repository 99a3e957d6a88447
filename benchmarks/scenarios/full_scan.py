"""Full scan, ``np.sum(a, dtype=np.float64)``: lazy against eager readers, zarr, the .npy and the decode floor.

The floor (every frame decoded on all cores into a buffer, no sum) is what no reader of this file
can beat; "load" and the floor into fresh memory separate the cost of new memory from the decoding.
"""

from __future__ import annotations

from typing import Any

import contenders
import numpy as np
from harness import Contender, compete, eagerly, keep, lazily, total

import lazymem
from scenarios import Context

TITLE = "full scan"


def _nothing(_: Any) -> None:
    # What the "load / decode floor" compares: the floor does no sum either. The data is
    # the same as "lazymem.load + sum"'s, whose sum is checked.
    return None


def measure(ctx: Context) -> dict[str, Any]:
    import zarr

    ds = ctx.ds
    url = str(ds.zst)
    floor = contenders.DecodeFloor(url)

    def decode_floor() -> tuple[Any, dict[str, Any]]:
        floor.run()
        return None, {}

    def decode_floor_fresh() -> tuple[Any, dict[str, Any]]:
        return None, keep(floor.run_fresh())

    warm = np.ones_like(floor.out)  # touched: resident, as the floor's own buffer

    def load_warm() -> tuple[Any, dict[str, Any]]:
        # lazymem.load under the floor's conditions: into memory allocated and touched beforehand.
        lazymem.load(url, out=warm)
        return None, {}

    def sum_alone() -> tuple[Any, dict[str, Any]]:
        # The sum every "+ sum" contender pays, on the decoded array in memory (floor.out).
        return total(floor.out), {}

    def npy_mmap() -> tuple[Any, dict[str, Any]]:
        return total(np.load(ds.npy, mmap_mode="r")), {}

    entrants = [
        Contender("lazymem.open + sum", lazily(url, total)),
        Contender("lazymem.load + sum", eagerly(lambda: lazymem.load(url), total)),
        Contender("naive serial zstd + sum", eagerly(lambda: contenders.naive_load(url), total)),
        Contender("decode floor (no sum)", decode_floor),
        Contender("zarr z[:] + sum", eagerly(lambda: zarr.open_array(str(ds.zarr), mode="r")[:], total)),
        Contender("np.load(.npy) + sum", eagerly(lambda: np.load(ds.npy), total)),
        Contender("np.load(.npy, mmap) + sum", npy_mmap),
        Contender("lazymem.load (no sum)", eagerly(lambda: lazymem.load(url), _nothing)),
        Contender("decode floor into fresh memory (no sum)", decode_floor_fresh),
        Contender("lazymem.load into a warm array (no sum)", load_warm),
        Contender("np.sum alone (array in memory)", sum_alone),
    ]
    if ctx.huge_pages:
        entrants.append(Contender("lazymem.open(huge_pages) + sum", lazily(url, total, huge_pages=True)))
    try:
        # The floor produces no sum: check its buffer once, outside timing (compete() leaves
        # answers of None out of its agreement check).
        floor.run()
        if not np.array_equal(floor.out, np.load(ds.npy, mmap_mode="r")):
            raise AssertionError("decode floor: decoded data differs from the .npy")
        # Always a warm-up round, quick mode too: the first scan of the run pays for fresh memory.
        results = compete(TITLE, entrants, ctx.reps, warmup=True)
    finally:
        floor.close()
    return {"full_scan": results}

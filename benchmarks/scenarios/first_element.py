"""First element: ``lazymem.open(url)`` then ``a.flat[0]``, the monitor already running.

What a user waits for before the first value, whatever the array's size: the benchmark field, and
all-zeros arrays of 1 TiB (and 16 GiB in the full run) that cost nothing to store.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from pathlib import Path
from typing import Any

import contenders
import numpy as np
from field import Dataset, GiB, MiB
from harness import log

import lazymem
from scenarios import Context

TITLE = "first element"
MIN_REPS = 5  # single opens are short and noisy: at least this many, whatever --reps says

Target = tuple[str, str, int, dict[str, Any]]
"""(label, url, nbytes, open options)."""


def make_huge(directory: Path, quick: bool) -> list[tuple[str, str, int]]:
    """Huge all-zeros arrays that cost nothing to store: 1 TiB written directly, 16 GiB via lazymem.save."""
    out = []
    tib = directory / "zeros-1TiB-zf-ix.npy.zst"  # zero frames, a layout frame with its index (as lazymem.save now)
    if not tib.exists():
        contenders.write_zeros_seekable(str(tib), 2**40 // 4)
    out.append(("1 TiB zeros (hand-written file)", str(tib), 2**40))
    if not quick:
        g16 = directory / "zeros-16GiB-saved-ix.npy.zst"  # lazymem.save's default frames, indexed layout frame
        if not g16.exists():
            t = time.perf_counter()
            lazymem.save(str(g16), np.broadcast_to(np.float32(0), (16 * GiB // 4,)))
            log(
                f"data: lazymem.save of a 16 GiB broadcast zeros view: {time.perf_counter() - t:.1f} s, "
                f"{g16.stat().st_size / MiB:.1f} MiB"
            )
        out.append(("16 GiB zeros (lazymem.save of a broadcast view)", str(g16), 16 * GiB))
    return out


def _targets(ctx: Context) -> list[Target]:
    ds = ctx.ds
    field = str(ds.zst)
    targets: list[Target] = [(f"{ds.nbytes // MiB} MiB field", field, ds.nbytes, {})]
    if ctx.huge_pages:
        targets.append((f"{ds.nbytes // MiB} MiB field, huge_pages=True", field, ds.nbytes, {"huge_pages": True}))
    huge = make_huge(ctx.data_dir, ctx.quick) if ctx.huge_arrays else []
    return targets + [(label, url, nbytes, {}) for label, url, nbytes in huge]


def _time_first(label: str, url: str, nbytes: int, options: dict[str, Any], reps: int) -> dict[str, Any]:
    """Medians of open, first element, last element; the values read and the chunk count."""
    opens: list[float] = []
    firsts: list[float] = []
    lasts: list[float] = []
    totals: list[float] = []
    for _ in range(max(reps, MIN_REPS)):
        gc.collect()
        t0 = time.perf_counter()
        a = lazymem.open(url, **options)
        t1 = time.perf_counter()
        flat = a.reshape(-1)
        v0 = float(flat[0])
        t2 = time.perf_counter()
        v1 = float(flat[-1])
        t3 = time.perf_counter()
        st = lazymem.stats(a)
        a.close()
        del a, flat
        opens.append(t1 - t0)
        firsts.append(t2 - t1)
        lasts.append(t3 - t2)
        totals.append(t2 - t0)
    return {
        "target": label,
        "open_options": options,
        "nbytes": nbytes,
        "file_bytes": os.path.getsize(url),
        "open_s": statistics.median(opens),
        "first_touch_s": statistics.median(firsts),
        "last_element_s": statistics.median(lasts),
        "open_plus_first_s": statistics.median(totals),
        "chunks_total": st.chunks_total,
        "values": [v0, v1],
    }


def _check_values(entry: dict[str, Any], ds: Dataset, is_field: bool) -> None:
    label, (v0, v1) = entry["target"], entry["values"]
    if is_field:
        m = np.load(ds.npy, mmap_mode="r").reshape(-1)
        if [v0, v1] != [float(m[0]), float(m[-1])]:
            raise AssertionError(f"{label}: read back {v0}, {v1}; the .npy holds {m[0]}, {m[-1]}")
    elif v0 != 0.0 or v1 != 0.0:
        raise AssertionError(f"{label}: zeros array read back {v0}, {v1}")


def _others_first(ds: Dataset, reps: int, expected: float) -> dict[str, float]:
    """The same for zarr and the mmap'd .npy, which exist for the benchmark field only."""
    import zarr

    zt, mt = [], []
    for _ in range(max(reps, MIN_REPS)):
        t0 = time.perf_counter()
        z = zarr.open_array(str(ds.zarr), mode="r")
        zv = float(z[0, 0, 0])
        zt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        m = np.load(ds.npy, mmap_mode="r")
        mv = float(m[0, 0, 0])
        mt.append(time.perf_counter() - t0)
        del m
    assert zv == mv == expected, (zv, mv, expected)
    return {"zarr_open_plus_first_s": statistics.median(zt), "npy_mmap_open_plus_first_s": statistics.median(mt)}


def measure(ctx: Context) -> dict[str, Any]:
    ds = ctx.ds
    out, errors = [], []
    for label, url, nbytes, options in _targets(ctx):
        try:
            entry = _time_first(label, url, nbytes, options, ctx.reps)
        except Exception as exc:  # noqa: BLE001 - reported in the results, not fatal
            log(f"  first element, {label}: FAILED {type(exc).__name__}: {exc}")
            errors.append({"target": label, "error": f"{type(exc).__name__}: {exc}"})
            continue
        is_field = url == str(ds.zst)
        _check_values(entry, ds, is_field)
        if is_field and not options:
            entry.update(_others_first(ds, ctx.reps, entry["values"][0]))
        log(
            f"  first element, {label}: open {entry['open_s'] * 1e3:.1f} ms + a[0] "
            f"{entry['first_touch_s'] * 1e3:.1f} ms"
        )
        out.append(entry)
    return {"first_element": out, "first_element_errors": errors}

"""What checking shard indexes costs (lazymem/sources/zarr_shards.py): a local sharded scan.

A 256 MiB float32 array, zarr v3, shards of 16 MiB (64 inner chunks of 256 KiB, zstd 1), index at
the end with crc32c (zarr's default). Measured, alternated (ABBA), medians of ``--repeat``:

* ``lazymem.load`` (eager, in this process) with the check and with it switched off (the hook's
  function replaced for the run: a benchmark-only switch, no knob in lazymem);
* ``np.sum(lazymem.open(...))`` (the monitor's lazy path, the check always on);
* the check alone: every shard's size + index fetched and checked (what a cold process pays),
  and the hook's cost per chunk read once its shard is checked.

Run: ``PYTHONPATH=. python3 benchmarks/zarr_shards_bench.py [--repeat 5]``. Data goes to
``benchmarks/data/`` (git-ignored) and is reused.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import lazymem
from lazymem.sources import zarr_shards
from lazymem.sources.zarr_array import ZarrSource

DATA = Path(__file__).resolve().parent / "data" / "shards-256m.zarr"
SHAPE, SHARD, INNER = (256, 512, 512), (16, 512, 512), (1, 256, 256)  # 16 shards of 64 inner chunks


def _make() -> None:
    import zarr

    if (DATA / "zarr.json").exists():
        return
    rng = np.random.default_rng(0)
    z = zarr.create_array(store=str(DATA), shape=SHAPE, dtype="<f4", chunks=INNER, shards=SHARD,
                          compressors=zarr.codecs.ZstdCodec(level=1), zarr_format=3, overwrite=True)
    for t in range(0, SHAPE[0], SHARD[0]):
        z[t : t + SHARD[0]] = np.cumsum(rng.standard_normal((SHARD[0], *SHAPE[1:]), dtype=np.float32), axis=2)


def _load(check: bool) -> float:
    real = zarr_shards.check_shard_of
    if not check:
        zarr_shards.check_shard_of = lambda source, coords: None  # type: ignore[assignment]
    try:
        start = time.perf_counter()
        lazymem.load(str(DATA))
        return time.perf_counter() - start
    finally:
        zarr_shards.check_shard_of = real


def _lazy_sum() -> float:
    start = time.perf_counter()
    a = lazymem.open(str(DATA))
    np.sum(a, dtype=np.float64)
    a.close()
    return time.perf_counter() - start


def _checks_alone() -> tuple[float, int]:
    source = ZarrSource(str(DATA))
    shards = [(t * SHARD[0] // INNER[0], 0, 0) for t in range(SHAPE[0] // SHARD[0])]
    start = time.perf_counter()
    for coords in shards:
        zarr_shards.check_shard_of(source, coords)
    return time.perf_counter() - start, len(shards)


def _checked_call(calls: int = 20_000) -> float:
    """Seconds per hook call on a shard already checked (what every chunk read pays after the first)."""
    source = ZarrSource(str(DATA))
    zarr_shards.check_shard_of(source, (0, 0, 0))
    start = time.perf_counter()
    for i in range(calls):
        zarr_shards.check_shard_of(source, (i % SHARD[0], i % 2, 0))
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    _make()
    times: dict[str, list[float]] = {"load, checked": [], "load, unchecked": [], "lazy np.sum, checked": []}
    alone: list[float] = []
    for i in range(args.repeat):
        for check in (True, False) if i % 2 else (False, True):  # ABBA: no order effect
            times["load, checked" if check else "load, unchecked"].append(_load(check))
        times["lazy np.sum, checked"].append(_lazy_sum())
        seconds, count = _checks_alone()
        alone.append(seconds)
    print(f"{np.prod(SHAPE) * 4 >> 20} MiB, {count} shards of {np.prod(SHARD) // np.prod(INNER)} inner chunks, "
          f"{args.repeat} runs alternated (median, min..max):")
    for name, values in times.items():
        print(f"  {name:22s} {statistics.median(values):7.3f} s  ({min(values):.3f}..{max(values):.3f})")
    ratio = statistics.median(times["load, checked"]) / statistics.median(times["load, unchecked"])
    print(f"  load checked / unchecked: {ratio:.3f}")
    per = statistics.median(alone) / count * 1e3
    print(f"  the checks alone: {statistics.median(alone) * 1e3:.1f} ms for {count} shards ({per:.2f} ms per shard)")
    print(f"  the hook on a shard already checked: {_checked_call() * 1e6:.1f} us per chunk read")


if __name__ == "__main__":
    main()

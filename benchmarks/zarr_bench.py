"""zarr benchmarks (issue 16, item 9): lazymem over zarr stores against zarr-python itself.

A float32 random-walk field (time, 256, 512) (``datagen.generate``) written by zarr-python as a
v3 store, zstd level 3, chunks (32, 128, 256) = 4 MiB (a chunk is not contiguous in the array:
the N-d case; a band of 4 chunks is 16 MiB), and the same in shards of (64, 256, 512) (8 inner
chunks, index at the end). Scenarios, each contender in a shuffled order per repetition, medians:

* full scan: ``np.sum(lazymem.open(url))`` vs ``np.sum(zarr.open_array(url)[:])``; and the lazy
  scan under a budget of half a band (what happens when the decoded-chunk cache cannot hold one);
* 1,000 random single elements in a Python loop vs zarr's loop and zarr's ``vindex``;
* open + first element;
* one 2-D slice ``a[t]`` vs ``z[t]``;
* decode + copy vs decode in place: zarr decoding a chunk into a buffer of its own then copied into
  a unit-shaped destination (what ChunkGridSource does) vs zarr decoding it into the destination.

Every lazy repetition opens the array afresh (the monitor is running already); closing happens
after the timer. Run: ``python3 benchmarks/zarr_bench.py [--gib 1] [--reps 5]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zarr
from datagen import STEP_BYTES, generate
from machine import background_load, cpu_jiffies

import lazymem

DATA = Path(__file__).resolve().parent / "data"
CHUNKS = (32, 128, 256)
SHARDS = (64, 256, 512)


def make_store(path: Path, n_time: int, sharded: bool) -> str:
    stamp = path / ".made"
    if stamp.exists():
        return str(path)
    shutil.rmtree(path, ignore_errors=True)
    z = zarr.create_array(store=str(path), shape=(n_time, 256, 512), dtype="<f4", chunks=CHUNKS,
                          shards=SHARDS if sharded else None,
                          compressors=zarr.codecs.ZstdCodec(level=3), fill_value=0)
    block = SHARDS[0]
    data = generate(n_time)
    for t0 in range(0, n_time, block):
        z[t0 : t0 + block] = data[t0 : t0 + block]
    del data
    stamp.write_text("ok")
    return str(path)


def stored_bytes(url: str) -> int:
    return sum(f.stat().st_size for f in Path(url).rglob("*") if f.is_file() and f.name not in ("zarr.json", ".made"))


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Seconds, CPUs used by other processes meanwhile, and the result (finalisers run after)."""
    busy0, _ = cpu_jiffies()
    t0 = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t0
    busy1, _ = cpu_jiffies()
    return seconds, busy1 - busy0, result


def alternate(contenders: dict[str, Callable[[], Any]], reps: int, check: Callable[[Any, Any], bool],
              after: Callable[[Any], Any] = lambda r: None,
              each_rep: Callable[[], None] = lambda: None) -> dict[str, dict[str, Any]]:
    """Each contender ``reps`` times, in a shuffled order per repetition; results compared."""
    rng = random.Random(16)
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    extra: dict[str, list[Any]] = {name: [] for name in contenders}
    for _ in range(reps):
        each_rep()
        order = list(contenders)
        rng.shuffle(order)
        reference = None
        for name in order:
            seconds, _busy, result = timed(contenders[name])
            value, keep = result if isinstance(result, tuple) else (result, None)
            if reference is None:
                reference = value
            elif not check(reference, value):
                raise AssertionError(f"{name} returned other values")
            runs[name].append(seconds)
            extra[name].append(after(keep))
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t), "runs": t, "extra": extra[name]}
            for name, t in runs.items()}


def lazy(url: str, **kwargs: Any) -> Any:
    return lazymem.open(url, **kwargs)


def close_with_stats(a: Any) -> dict[str, Any] | None:
    if a is None:
        return None
    s = lazymem.stats(a)
    out = {"bytes_fetched": s.bytes_fetched, "chunks_installed": s.chunks_installed, "chunk_bytes": s.chunk_bytes,
           "evictions": s.evictions, "early_wakes": s.early_wakes}
    a.close()
    return out


def scenarios(url: str, n_time: int, reps: int, out: dict[str, Any]) -> None:
    z0 = zarr.open_array(url, mode="r")
    band = CHUNKS[0] * STEP_BYTES
    stored = stored_bytes(url)
    out["stored_bytes"] = stored
    out["unit_bytes"] = lazymem.stats(lazy(url)).chunk_bytes

    def lazy_scan(**kw: Any) -> Callable[[], Any]:
        def run() -> Any:
            a = lazy(url, **kw)
            return float(np.sum(a, dtype=np.float64)), a
        return run

    def zarr_scan() -> Any:
        return float(np.sum(zarr.open_array(url, mode="r")[:], dtype=np.float64))

    print("  full scan", flush=True)
    out["full_scan"] = alternate({"lazymem": lazy_scan(), "zarr": zarr_scan,
                                  "lazymem, max_resident half a band": lazy_scan(max_resident=band // 2)},
                                 reps, lambda a, b: a == b, close_with_stats)

    rng = np.random.default_rng(5)
    idx = [tuple(int(rng.integers(0, n)) for n in z0.shape) for _ in range(1000)]
    columns = tuple(np.array(c) for c in zip(*idx, strict=True))

    def lazy_points() -> Any:
        a = lazy(url)
        return np.array([a[i] for i in idx]), a

    def zarr_points() -> Any:
        z = zarr.open_array(url, mode="r")
        return np.array([z[i] for i in idx])

    def zarr_vindex() -> Any:
        return zarr.open_array(url, mode="r").vindex[columns]

    print("  1,000 random elements", flush=True)
    out["random_elements"] = alternate({"lazymem loop": lazy_points, "zarr loop": zarr_points,
                                        "zarr vindex": zarr_vindex},
                                       max(1, reps // 2), lambda a, b: np.array_equal(a, b), close_with_stats)

    def lazy_first() -> Any:
        a = lazy(url)
        return float(a[0, 0, 0]), a

    def zarr_first() -> Any:
        return float(zarr.open_array(url, mode="r")[0, 0, 0])

    print("  open + first element", flush=True)
    out["open_first_element"] = alternate({"lazymem": lazy_first, "zarr": zarr_first}, 4 * reps,
                                          lambda a, b: a == b, close_with_stats)

    ts = iter(rng.integers(0, n_time, 10 * reps).tolist())
    current: dict[str, int] = {}

    def next_t() -> int:
        return current["t"]

    def new_t() -> None:
        current["t"] = next(ts)  # the same t for both contenders of a repetition

    def lazy_slice() -> Any:
        a = lazy(url)
        return np.array(a[next_t()]), a

    def zarr_slice() -> Any:
        return zarr.open_array(url, mode="r")[next_t()]

    print("  one 2-D slice", flush=True)
    out["slice_2d"] = alternate({"lazymem": lazy_slice, "zarr": zarr_slice}, 2 * reps,
                                lambda a, b: np.array_equal(a, b), close_with_stats, new_t)


def below_band(url: str, reps: int) -> dict[str, Any]:
    """A scan with units of 1 MiB (16 per band of 4 chunks) under budgets around one band: each
    chunk decoded once while the decoded-chunk cache (half the budget) holds a band's unused
    parts, more often below that."""
    band = CHUNKS[0] * STEP_BYTES

    def scan(budget: int | None) -> Callable[[], Any]:
        def run() -> Any:
            a = lazy(url, chunk_bytes=1 << 20, max_resident=budget)
            return float(np.sum(a, dtype=np.float64)), a
        return run

    return alternate({"1 MiB units, no budget": scan(None), "max_resident 2 bands": scan(2 * band),
                      "max_resident 1 band": scan(band), "max_resident 1/2 band": scan(band // 2)},
                     reps, lambda a, b: a == b, close_with_stats)


def decode_copy(url: str, reps: int) -> dict[str, Any]:
    """zarr decoding 16 chunks into buffers of their own then copied into a band-shaped
    destination, vs decoding each straight into its place in the destination."""
    from zarr.core.buffer.cpu import NDBuffer

    z = zarr.open_array(url, mode="r")
    dest = np.empty((CHUNKS[0], 256, 512), dtype=np.float32)
    boxes = [(t, y, x) for t in range(4) for y in range(2) for x in range(2)]

    def box(t: int, y: int, x: int) -> tuple[slice, ...]:
        return (slice(t * 32, t * 32 + 32), slice(y * 128, y * 128 + 128), slice(x * 256, x * 256 + 256))

    def via_buffer() -> Any:
        for t, y, x in boxes:
            buf = np.empty(CHUNKS, dtype=np.float32)
            z.get_basic_selection(box(t, y, x), out=NDBuffer.from_numpy_array(buf))
            dest[:, y * 128 : y * 128 + 128, x * 256 : x * 256 + 256] = buf
        return float(dest.sum(dtype=np.float64))

    def in_place() -> Any:
        for t, y, x in boxes:
            view = dest[:, y * 128 : y * 128 + 128, x * 256 : x * 256 + 256]
            z.get_basic_selection(box(t, y, x), out=NDBuffer.from_numpy_array(view))
        return float(dest.sum(dtype=np.float64))

    results = alternate({"decode into a chunk buffer + copy": via_buffer, "decode in place": in_place},
                        3 * reps, lambda a, b: True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="array size in GiB (default 1)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", choices=["plain", "sharded", "below-band"], default=None)
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results" / "zarr.json")
    args = parser.parse_args()
    n_time = int(args.gib * (1 << 30)) // STEP_BYTES // SHARDS[0] * SHARDS[0]
    DATA.mkdir(exist_ok=True)
    lazymem.open(str(make_store(DATA / f"zarr-{n_time}-plain.zarr", n_time, False)))[0, 0, 0]  # monitor up
    report: dict[str, Any] = {"n_time": n_time, "nbytes": n_time * STEP_BYTES, "load_before": background_load(),
                              "cpus": os.cpu_count()}
    if args.only == "below-band":
        url = make_store(DATA / f"zarr-{n_time}-plain.zarr", n_time, False)
        report["below_band"] = {"stored_bytes": stored_bytes(url), "scan": below_band(url, args.reps)}
    for kind in ("plain", "sharded"):
        if args.only and kind != args.only:
            continue
        url = make_store(DATA / f"zarr-{n_time}-{kind}.zarr", n_time, kind == "sharded")
        print(kind, url, flush=True)
        report[kind] = {}
        scenarios(url, n_time, args.reps, report[kind])
        if kind == "plain":
            print("  decode + copy", flush=True)
            report["decode_copy"] = decode_copy(url, args.reps)
    report["load_after"] = background_load()
    args.json.parent.mkdir(exist_ok=True, parents=True)
    args.json.write_text(json.dumps(report, indent=1))
    print_table(report)


def print_table(report: dict[str, Any]) -> None:
    print(f"\n{report['nbytes'] / 2**30:.2f} GiB float32 ({report['n_time']}, 256, 512), chunks {CHUNKS}; "
          f"background load {report['load_before']:.2f} / {report['load_after']:.2f} CPUs")
    for kind in ("plain", "sharded", "below_band"):
        if kind not in report:
            continue
        r = report[kind]
        print(f"\n{kind}: stored {r['stored_bytes'] / 2**20:.0f} MiB, lazymem unit {r.get('unit_bytes', 0) >> 10} KiB")
        for scenario, results in r.items():
            if not isinstance(results, dict):
                continue
            base = next(iter(results.values()))["median"]
            for name, res in results.items():
                fetched = [e["bytes_fetched"] / r["stored_bytes"] for e in res["extra"] if e]
                note = f"  fetched/stored {statistics.median(fetched):.2f}" if fetched else ""
                print(f"  {scenario:20s} {name:36s} {res['median'] * 1000:10.1f} ms "
                      f"({res['min'] * 1000:.1f}-{res['max'] * 1000:.1f})  x{res['median'] / base:.3f}{note}")
    if "decode_copy" in report:
        for name, res in report["decode_copy"].items():
            print(f"  decode 16 chunks: {name:36s} {res['median'] * 1000:8.1f} ms")


if __name__ == "__main__":
    main()

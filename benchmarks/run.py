#!/usr/bin/env python3
"""lazymem benchmarks: lazy vs eager vs zarr vs the decode floor, on a local file in the page cache.

    python3 benchmarks/run.py --quick     # 256 MiB, 3 repetitions, < 2 minutes
    python3 benchmarks/run.py             # 1 GiB, 5 repetitions, plus a 16 GiB zeros array
    python3 benchmarks/run.py --huge-pages  # also lazy arrays on huge pages (root raises the pool)

Writes ``benchmarks/results/results-{quick,full}.json`` and ``benchmarks/results/touched_fraction.png``
(``--out`` to change), prints Markdown tables. Data files go to ``benchmarks/data/`` (git-ignored)
and are reused when they match. Contenders of a scenario run alternately within each repetition
(a seeded shuffle per repetition) and must give identical answers; medians are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import contenders  # noqa: E402
import datagen  # noqa: E402
import hugepool  # noqa: E402
import report as results_report  # noqa: E402
from datasets import CHUNK_BYTES, LEVEL, Dataset, GiB, MiB, read_through  # noqa: E402
from harness import POLICY, Contender, compete, finish, keep, log, wait_for_quiet  # noqa: E402
from machine import machine_info, warm_memory  # noqa: E402

import lazymem  # noqa: E402

FRACTIONS = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]


class ZeroChunkFiles:
    """The field with every other chunk (the odd ones) all zeros, written two ways.

    ``zero_frames``: ``lazymem.save``, which stores the zero chunks as zero frames. ``zstd_frames``:
    an ordinary zstd frame for every chunk, as writers made before zero frames. Made from the field's
    .npy and remade when that is newer.
    """

    def __init__(self, ds: Dataset) -> None:
        stem = f"{ds.npy.stem}-g{datagen.GENERATOR_VERSION}-odd-chunks-zero"
        self.source = ds.npy
        self.zero_frames = ds.dir / f"{stem}-zf.npy.zst"
        self.zstd_frames = ds.dir / f"{stem}-zstd.npy.zst"
        self.chunks_total = -(-ds.nbytes // CHUNK_BYTES)
        self.chunks_zero = self.chunks_total // 2

    def build(self) -> None:
        source_time = self.source.stat().st_mtime
        if all(p.exists() and p.stat().st_mtime > source_time for p in (self.zero_frames, self.zstd_frames)):
            log(f"data: reusing {self.zero_frames.name} and {self.zstd_frames.name}")
        else:
            t = time.perf_counter()
            data = np.load(self.source)
            flat, per_chunk = data.reshape(-1), CHUNK_BYTES // data.itemsize
            for start in range(per_chunk, flat.size, 2 * per_chunk):
                flat[start : start + per_chunk] = 0
            # One frame per chunk, as the zstd-frames file: the two differ in the zero frames alone.
            lazymem.save(str(self.zero_frames), data, chunk_bytes=CHUNK_BYTES, frame_bytes=CHUNK_BYTES, level=LEVEL)
            contenders.write_zstd_frames(str(self.zstd_frames), data, CHUNK_BYTES, LEVEL)
            for path in (self.zero_frames, self.zstd_frames):
                if not np.array_equal(lazymem.load(str(path)), data):
                    raise AssertionError(f"{path.name}: lazymem.load reads back other data")
            log(f"data: wrote {self.zero_frames.name} and {self.zstd_frames.name} in {time.perf_counter() - t:.1f} s")
            del data, flat
        read_through([self.zero_frames, self.zstd_frames])



def full_scan(ds: Dataset, reps: int, huge_pages: bool = False) -> list[dict[str, Any]]:
    import zarr

    url = str(ds.zst)

    def lazy(**options: Any) -> tuple[Any, dict[str, Any]]:
        a = lazymem.open(url, **options)
        total = np.sum(a, dtype=np.float64)
        return float(total), {"_after": finish(a)}

    def load() -> tuple[Any, dict[str, Any]]:
        b = lazymem.load(url)
        return float(np.sum(b, dtype=np.float64)), keep(b)

    def load_only() -> tuple[Any, dict[str, Any]]:
        # What the "load / decode floor" compares: the floor does no sum either. Its data
        # is the same as "lazymem.load + sum"'s, whose sum is checked.
        return None, keep(lazymem.load(url))

    def naive() -> tuple[Any, dict[str, Any]]:
        b = contenders.naive_load(url)
        return float(np.sum(b, dtype=np.float64)), keep(b)

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
        return float(np.sum(floor.out, dtype=np.float64)), {}

    def zarr_read() -> tuple[Any, dict[str, Any]]:
        b = zarr.open_array(str(ds.zarr), mode="r")[:]
        return float(np.sum(b, dtype=np.float64)), keep(b)

    def npy_load() -> tuple[Any, dict[str, Any]]:
        b = np.load(ds.npy)
        return float(np.sum(b, dtype=np.float64)), keep(b)

    def npy_mmap() -> tuple[Any, dict[str, Any]]:
        return float(np.sum(np.load(ds.npy, mmap_mode="r"), dtype=np.float64)), {}

    entrants = [
        Contender("lazymem.open + sum", lazy),
        Contender("lazymem.load + sum", load),
        Contender("naive serial zstd + sum", naive),
        Contender("decode floor (no sum)", decode_floor),
        Contender("zarr z[:] + sum", zarr_read),
        Contender("np.load(.npy) + sum", npy_load),
        Contender("np.load(.npy, mmap) + sum", npy_mmap),
        Contender("lazymem.load (no sum)", load_only),
        Contender("decode floor into fresh memory (no sum)", decode_floor_fresh),
        Contender("lazymem.load into a warm array (no sum)", load_warm),
        Contender("np.sum alone (array in memory)", sum_alone),
    ]
    if huge_pages:
        entrants.append(Contender("lazymem.open(huge_pages) + sum", lambda: lazy(huge_pages=True)))
    try:
        # The floor produces no sum: check its buffer once, outside timing (compete() leaves
        # answers of None out of its agreement check).
        floor.run()
        if not np.array_equal(floor.out, np.load(ds.npy, mmap_mode="r")):
            raise AssertionError("decode floor: decoded data differs from the .npy")
        # Always a warm-up round, quick mode too: the first scan of the run pays for fresh memory.
        results = compete("full scan", entrants, reps, warmup=True)
    finally:
        floor.close()
    return results


def chunk_sample(ds: Dataset, fraction: float, seed: int = 1) -> tuple[np.ndarray, int]:
    """Flat element indices: one random element in each of ``fraction`` of the chunks (random chunks)."""
    per_chunk = CHUNK_BYTES // 4
    n_chunks = -(-int(np.prod(ds.shape)) // per_chunk)
    k = max(1, round(fraction * n_chunks))
    rng = np.random.default_rng(seed)
    chunks = np.sort(rng.choice(n_chunks, size=k, replace=False))
    total = int(np.prod(ds.shape))
    offsets = rng.integers(0, per_chunk, size=k)
    idx = np.minimum(chunks * per_chunk + offsets, total - 1)
    return idx.astype(np.int64), n_chunks


def touched_fraction(ds: Dataset, reps: int, fractions: list[float]) -> list[dict[str, Any]]:
    """One element in each of a fraction of the chunks: the cost of laziness vs loading everything."""
    import zarr

    url = str(ds.zst)
    table = contenders.SeekTable(url)
    out = []
    for fraction in fractions:
        idx, n_chunks = chunk_sample(ds, fraction)
        coords = np.unravel_index(idx, ds.shape)
        touched = np.unique(idx // (CHUNK_BYTES // 4))
        ideal_bytes = int(table.csize[1 + touched].sum())  # frame 0 is the header

        def lazy(idx: np.ndarray = idx) -> tuple[Any, dict[str, Any]]:
            a = lazymem.open(url)
            values = a.reshape(-1)[idx]
            return values, {"_after": finish(a)}

        def lazy_prefetch(coords: Any = coords) -> tuple[Any, dict[str, Any]]:
            # The batch API: name the elements first, and the monitor loads their chunks concurrently.
            # (3-D coordinates: prefetch with a fancy index on a huge 1-D view costs O(its length).)
            a = lazymem.open(url)
            a.prefetch(coords)
            values = a[coords]
            return values, {"_after": finish(a)}

        def load(idx: np.ndarray = idx) -> tuple[Any, dict[str, Any]]:
            b = lazymem.load(url)
            return b.reshape(-1)[idx], {"bytes_fetched": ds.compressed_bytes, **keep(b)}

        def zarr_vindex(coords: Any = coords) -> tuple[Any, dict[str, Any]]:
            z = zarr.open_array(str(ds.zarr), mode="r")
            return z.vindex[coords], {}

        def zarr_loop(coords: Any = coords) -> tuple[Any, dict[str, Any]]:
            z = zarr.open_array(str(ds.zarr), mode="r")
            return np.array([z[t, i, j] for t, i, j in zip(*coords)], dtype=np.float32), {}

        def mmap(idx: np.ndarray = idx) -> tuple[Any, dict[str, Any]]:
            return np.load(ds.npy, mmap_mode="r").reshape(-1)[idx], {}

        entrants = [
            Contender("lazymem.open", lazy),
            Contender("lazymem.load", load),
            Contender("zarr vindex", zarr_vindex),
            Contender("lazymem.open + prefetch(idx)", lazy_prefetch),
        ]
        if fraction <= 0.1:
            entrants += [Contender("zarr z[t,i,j] loop", zarr_loop), Contender("npy mmap", mmap)]
        results = compete(f"touched {fraction:g} ({len(touched)}/{n_chunks} chunks)", entrants, reps)
        out.append(
            {
                "fraction": fraction,
                "chunks_touched": len(touched),
                "chunks_total": n_chunks,
                "ideal_bytes": ideal_bytes,
                "results": results,
            }
        )
    return out


def strided(ds: Dataset, reps: int, quick: bool = False) -> list[dict[str, Any]]:
    import zarr

    url = str(ds.zst)
    nt, ny, nx = ds.shape
    cases: list[tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = [
        # (name, numpy access, zarr access)
        ("every 1000th element", lambda a: np.asarray(a.reshape(-1)[::1000]).copy(), None),
        (
            "time series at one point a[:, 128, 256]",
            lambda a: np.array(a[:, ny // 2, nx // 2]),
            lambda z: z[:, ny // 2, nx // 2],
        ),
        (
            "every 64th time step a[::64].mean()",
            lambda a: float(np.mean(a[::64], dtype=np.float64)),
            lambda z: float(np.mean(z[::64], dtype=np.float64)),
        ),
    ]
    if quick:
        cases = cases[1:]  # every 1000th element touches every chunk: the full scan again
    out = []
    for name, access, zaccess in cases:

        def lazy(access: Any = access) -> tuple[Any, dict[str, Any]]:
            a = lazymem.open(url)
            value = access(a)
            return value, {"_after": finish(a)}

        def load(access: Any = access) -> tuple[Any, dict[str, Any]]:
            b = lazymem.load(url)
            return access(b), keep(b)

        def mmap(access: Any = access) -> tuple[Any, dict[str, Any]]:
            return access(np.load(ds.npy, mmap_mode="r")), {}

        def zarr_read(zaccess: Any = zaccess) -> tuple[Any, dict[str, Any]]:
            return zaccess(zarr.open_array(str(ds.zarr), mode="r")), {}

        def zarr_flat(access: Any = access) -> tuple[Any, dict[str, Any]]:
            # zarr has no flat strided view: step along the flattened array by hand.
            z = zarr.open_array(str(ds.zarr), mode="r")
            flat = np.arange(0, nt * ny * nx, 1000)
            return z.vindex[np.unravel_index(flat, ds.shape)], {}

        entrants = [
            Contender("lazymem.open", lazy),
            Contender("lazymem.load", load),
            Contender("zarr", zarr_read if zaccess is not None else zarr_flat),
            Contender("npy mmap", mmap),
        ]
        out.append({"case": name, "results": compete(name, entrants, reps)})
    return out


def zero_chunks(zc: ZeroChunkFiles, reps: int) -> dict[str, Any]:
    """Full scan of a field with every other chunk all zeros: zero frames against ordinary zstd frames."""
    files = {"zero frames": str(zc.zero_frames), "zstd frames": str(zc.zstd_frames)}

    def lazy(url: str) -> tuple[Any, dict[str, Any]]:
        a = lazymem.open(url)
        return float(np.sum(a, dtype=np.float64)), {"_after": finish(a)}

    def load(url: str) -> tuple[Any, dict[str, Any]]:
        b = lazymem.load(url)
        return float(np.sum(b, dtype=np.float64)), keep(b)

    entrants = [
        Contender(f"{name} + sum, {kind}", lambda fn=fn, url=url: fn(url))
        for name, fn in (("lazymem.open", lazy), ("lazymem.load", load))
        for kind, url in files.items()
    ]
    results = compete("zero chunks", entrants, reps)
    t = {r["name"]: r["median_s"] for r in results}
    return {
        "files": {kind: {"file": Path(url).name, "bytes": os.path.getsize(url)} for kind, url in files.items()},
        "chunks_total": zc.chunks_total,
        "chunks_zero": zc.chunks_zero,
        "results": results,
        "ratios": {
            f"{name}: zero frames / zstd frames": t[f"{name} + sum, zero frames"] / t[f"{name} + sum, zstd frames"]
            for name in ("lazymem.open", "lazymem.load")
        },
    }


def first_element(
    ds: Dataset, reps: int, huge: list[tuple[str, str, int]], huge_pages: bool = False
) -> tuple[list, list]:
    """open() + one element, monitor already running: what a user waits for before the first value."""
    import zarr

    out, errors = [], []
    field = str(ds.zst)
    targets = [(f"{ds.nbytes // MiB} MiB field", field, ds.nbytes, {})]
    if huge_pages:
        targets.append((f"{ds.nbytes // MiB} MiB field, huge_pages=True", field, ds.nbytes, {"huge_pages": True}))
    targets += [(label, url, nbytes, {}) for label, url, nbytes in huge]
    for label, url, nbytes, options in targets:
        opens: list[float] = []
        firsts: list[float] = []
        lasts: list[float] = []
        totals: list[float] = []
        try:
            for _ in range(max(reps, 5)):
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
        except Exception as exc:  # noqa: BLE001 - reported in the results, not fatal
            log(f"  first element, {label}: FAILED {type(exc).__name__}: {exc}")
            errors.append({"target": label, "error": f"{type(exc).__name__}: {exc}"})
            continue
        entry = {
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
        if url == field:
            m = np.load(ds.npy, mmap_mode="r").reshape(-1)
            if [v0, v1] != [float(m[0]), float(m[-1])]:
                raise AssertionError(f"{label}: read back {v0}, {v1}; the .npy holds {m[0]}, {m[-1]}")
            del m
        elif v0 != 0.0 or v1 != 0.0:
            raise AssertionError(f"{label}: zeros array read back {v0}, {v1}")
        if url == field and not options:
            zt, mt = [], []
            for _ in range(max(reps, 5)):
                t0 = time.perf_counter()
                z = zarr.open_array(str(ds.zarr), mode="r")
                zv = float(z[0, 0, 0])
                zt.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                m = np.load(ds.npy, mmap_mode="r")
                mv = float(m[0, 0, 0])
                mt.append(time.perf_counter() - t0)
                del m
            assert zv == mv == v0, (zv, mv, v0)
            entry["zarr_open_plus_first_s"] = statistics.median(zt)
            entry["npy_mmap_open_plus_first_s"] = statistics.median(mt)
        log(
            f"  first element, {label}: open {entry['open_s'] * 1e3:.1f} ms + a[0] "
            f"{entry['first_touch_s'] * 1e3:.1f} ms"
        )
        out.append(entry)
    return out, errors


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


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="256 MiB, 3 repetitions (< 2 minutes)")
    p.add_argument("--size-mb", type=int, help="array size in MiB (default 256 quick, 1024 full)")
    p.add_argument("--reps", type=int, help="repetitions (default 3 quick, 5 full)")
    p.add_argument("--data-dir", type=Path, default=HERE / "data")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--no-huge", action="store_true", help="skip the huge zeros arrays")
    p.add_argument("--scan-only", action="store_true",
                   help="only the full-scan scenario; results to results-scan.json, the other results stay")
    p.add_argument(
        "--huge-pages",
        action="store_true",
        help="also time lazy arrays on huge pages (lazymem.open(huge_pages=True)); as root, raise "
        "/proc/sys/vm/nr_hugepages for the run and restore it at exit",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="wait up to this many seconds for other processes to leave the CPUs idle, at the start "
        "and before redoing a run they disturbed (runs are redone up to 3 times either way)",
    )
    p.add_argument(
        "--wait-budget",
        type=float,
        help="most seconds spent waiting for quiet and redoing disturbed runs, in total (default 30 quick, 900 full)",
    )
    p.add_argument("--replot", type=Path, help="only redraw the plot and tables from a results JSON")
    args = p.parse_args(argv)
    if args.replot:
        print(results_report.redraw(args.replot))
        return 0
    POLICY.warmup = not args.quick
    POLICY.quiet_wait = args.wait_quiet
    POLICY.wait_budget = args.wait_budget if args.wait_budget is not None else (30.0 if args.quick else 900.0)

    size = (args.size_mb or (256 if args.quick else 1024)) * MiB
    ds = Dataset(args.data_dir, size)
    if args.huge_pages:
        pool_context: Any = hugepool.huge_page_pool(ds.nbytes, log)
    else:
        pool_context = contextlib.nullcontext(hugepool.describe())
    with pool_context as pool:
        run(args, ds, pool)
    return 0


def run(args: argparse.Namespace, ds: Dataset, pool: dict[str, Any]) -> None:
    mode = "quick" if args.quick else "full"
    reps = args.reps or (3 if args.quick else 5)
    start = time.perf_counter()

    ds.build()
    ds.warm_page_cache()
    quiet = wait_for_quiet(args.wait_quiet)
    log(f"warming up memory ({3 * ds.nbytes / GiB:.1f} GiB) ...")
    warm_memory(3 * ds.nbytes)
    huge_pages = bool(pool["used"]) and hugepool.warm_huge_pages(str(ds.zst), pool, log)

    report: dict[str, Any] = {
        "mode": mode,
        "reps": reps,
        "machine": {**machine_info(), "huge_pages": pool},
        "dataset": ds.describe(),
        "command": "python3 " + " ".join(sys.argv),
        "background_cpus_at_start": quiet,
    }
    log("full scan ...")
    report["full_scan"] = full_scan(ds, reps, huge_pages)
    if args.scan_only:
        report["ratios"] = results_report.ratios(report)
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / "results-scan.json"
        json_path.write_text(json.dumps(report, indent=1))
        print(results_report.scan_only_markdown(report))
        log(f"wrote {json_path}")
        return
    log("touched fraction ...")
    # With 64 chunks (quick mode) 0.1 % and 1 % of the chunks are both one chunk: keep the larger.
    n_chunks = -(-ds.nbytes // CHUNK_BYTES)
    counts = {f: max(1, round(f * n_chunks)) for f in FRACTIONS}
    fractions = [f for f in FRACTIONS if not any(counts[g] == counts[f] for g in FRACTIONS if g > f)]
    if args.quick:
        fractions.remove(0.5)  # time budget
    report["touched_fraction"] = touched_fraction(ds, reps, fractions)
    log("strided ...")
    report["strided"] = strided(ds, reps, args.quick)
    log("zero chunks ...")
    zc = ZeroChunkFiles(ds)
    zc.build()
    report["zero_chunks"] = zero_chunks(zc, reps)
    log("first element ...")
    huge = [] if args.no_huge else make_huge(args.data_dir, args.quick)
    report["first_element"], report["first_element_errors"] = first_element(ds, reps, huge, huge_pages)
    report["ratios"] = results_report.ratios(report)
    report["elapsed_s"] = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"results-{mode}.json"
    json_path.write_text(json.dumps(report, indent=1))
    png = args.out / results_report.plot_name(mode)
    print(results_report.render(report, png))
    log(f"wrote {json_path} and {png} in {report['elapsed_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())

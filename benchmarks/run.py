#!/usr/bin/env python3
"""lazymem benchmarks: lazy vs eager vs zarr vs the decode floor, on a local file in the page cache.

    python3 benchmarks/run.py --quick     # 256 MiB, 3 repetitions, < 2 minutes
    python3 benchmarks/run.py             # 1 GiB, 5 repetitions, plus a 16 GiB zeros array
    python3 benchmarks/run.py --huge-pages  # also lazy arrays on huge pages (root raises the pool)

Writes ``benchmarks/results/results-{quick,full}.json`` and ``benchmarks/results/touched_fraction.png``
(``--out`` to change), prints Markdown tables. Data files go to ``benchmarks/data/`` (git-ignored)
and are reused when they match. Contenders of a scenario run alternately within each repetition
(a seeded shuffle per repetition) and must give identical answers; medians are reported.
``benchmarks/report.py results.json`` (or ``--replot``) redraws the tables and plot without rerunning.

This file is the command line and the order of the run; the parts are modules beside it:
``harness.py`` (timing, alternation, medians, waiting for quiet), ``machine.py`` (machine facts,
CPU counters), ``field.py`` (the field on disk), ``hugepool.py`` (the huge page pool),
``scenarios/`` (one module per scenario) and ``report.py`` (tables, ratios, plot).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import hugepool  # noqa: E402
import report  # noqa: E402
from field import Dataset, GiB, MiB  # noqa: E402
from harness import POLICY, log, wait_for_quiet  # noqa: E402
from machine import machine_info, warm_memory  # noqa: E402
from scenarios import Context, first_element, full_scan, strided, touched_fraction, zero_chunks  # noqa: E402
from scenarios.touched_fraction import chunk_sample  # noqa: E402

__all__ = ["Dataset", "MiB", "chunk_sample", "main"]  # Dataset, MiB, chunk_sample: profile_monitor.py's imports

# In this order: the full scan first, on memory the run has not used yet (as the earlier runs did).
SCENARIOS = [full_scan, touched_fraction, strided, zero_chunks, first_element]


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
        print(report.redraw(args.replot))
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
    ctx = Context(ds, reps, args.quick, huge_pages, huge_arrays=not args.no_huge, data_dir=args.data_dir)

    results: dict[str, Any] = {
        "mode": mode,
        "reps": reps,
        "machine": {**machine_info(), "huge_pages": pool},
        "dataset": ds.describe(),
        "command": "python3 " + " ".join(sys.argv),
        "background_cpus_at_start": quiet,
    }
    for scenario in SCENARIOS[:1] if args.scan_only else SCENARIOS:
        log(f"{scenario.TITLE} ...")
        results.update(scenario.measure(ctx))
    results["ratios"] = report.ratios(results)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.scan_only:  # the other results stay
        json_path = args.out / "results-scan.json"
        json_path.write_text(json.dumps(results, indent=1))
        print(report.scan_only_markdown(results))
        log(f"wrote {json_path}")
        return
    results["elapsed_s"] = time.perf_counter() - start
    json_path = args.out / f"results-{mode}.json"
    json_path.write_text(json.dumps(results, indent=1))
    png = args.out / report.plot_name(mode)
    print(report.render(results, png))
    log(f"wrote {json_path} and {png} in {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())

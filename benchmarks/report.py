#!/usr/bin/env python3
"""Markdown tables and the touched-fraction plot of a ``benchmarks/run.py`` results JSON, without rerunning.

    python3 benchmarks/report.py benchmarks/results/results-full.json    # tables to stdout, plot beside the JSON
    python3 benchmarks/report.py results-quick.json --plot /tmp/q.png    # the plot elsewhere
    python3 benchmarks/report.py benchmarks/results/results-scan.json    # a --scan-only run: its two tables

The plot goes next to the JSON as ``touched_fraction.png`` (full run) or ``touched_fraction-quick.png``
(quick run), as ``run.py`` names it. Only the JSON is read: results of older runs, which lack some
scenarios or contenders, redraw with what they have. Needs numpy and matplotlib, not lazymem.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

MiB = 2**20

Report = dict[str, Any]
"""A results JSON as ``run.py`` writes it (``results-{quick,full,scan}.json``)."""


def fmt_s(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_mb(b: float) -> str:
    return f"{b / MiB:,.1f} MiB"


def by_name(results: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in results if r["name"] == name)


def plot_name(mode: str) -> str:
    """The plot's file name for a run mode: the quick run's does not overwrite the full run's."""
    return "touched_fraction.png" if mode == "full" else "touched_fraction-quick.png"


# --------------------------------------------------------------------------- tables


def preamble(report: Report) -> list[str]:
    """Machine, huge-page pool, background load and data: what the numbers below belong to."""
    m = report["machine"]
    ds = report["dataset"]
    lines = [
        f"Machine: {m.get('cpu', '?')}, {m['nproc']} CPUs, {m.get('memory_gib', '?')} GiB RAM, "
        f"Linux {m['kernel']}; Python {m['python']}, numpy {m['numpy']}, zstandard {m['zstandard']}, "
        f"zarr {m.get('zarr', '-')}, lazymem {m['lazymem']} (sources sha256 "
        f"{m.get('lazymem_source_sha256', '?')}, zero-copy installs {m.get('lazymem_zero_copy', '?')})."
    ]
    pool = m.get("huge_pages", {})  # runs before --huge-pages existed lack it
    if pool.get("used"):
        lines.append(
            f"Huge pages: pool of {pool['pool_pages']} pages of {pool['page_bytes'] // MiB} MiB "
            f"(was {pool['pool_pages_before']} before the run)."
        )
    elif "reason" in pool:
        lines.append(f"Huge pages: requested but not used ({pool['reason']}).")
    noise = [r.get("others_cpus", 0.0) for r in report["full_scan"]]
    lines.append(
        f"Background load from other processes during the full scan: median {statistics.median(noise):.2f} "
        f"CPUs (max {max(noise):.2f}); before the run: {report.get('background_cpus_at_start', 0):.2f} CPUs."
    )
    lines.append(
        f"Data: float32 {tuple(ds['shape'])} = {fmt_mb(ds['nbytes'])}, {fmt_mb(ds['compressed_bytes'])} "
        f"compressed (ratio {ds['nbytes'] / ds['compressed_bytes']:.2f}), 4 MiB chunks, zstd level 3, "
        f"local file in the page cache. Medians of {report['reps']} alternating repetitions."
    )
    return [*lines, ""]


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def table(title: str | None, columns: dict[str, str], rows: Iterable[str], intro: str | None = None) -> list[str]:
    """A Markdown section: title, optional paragraph, the table, a blank line.

    ``columns`` maps each header to its alignment, ``"l"`` or ``"r"`` (numbers).
    """
    head = ([title, ""] if title else []) + ([intro, ""] if intro else [])
    align = "|" + "".join("---:|" if a == "r" else "---|" for a in columns.values())
    return [*head, row(*columns), align, *rows, ""]


def full_scan_table(report: Report) -> list[str]:
    scan = report["full_scan"]
    nbytes = report["dataset"]["nbytes"]
    floor = by_name(scan, "decode floor (no sum)")["median_s"]
    rows = []
    for r in scan:
        note = ""
        if "bytes_fetched" in r:  # a lazy contender: its lazymem.stats
            note = (
                f"fetched {fmt_mb(r['bytes_fetched'])}, {r['chunks_installed']:.0f} chunks "
                f"({r['readahead_chunks']:.0f} by readahead), {r['faults']:.0f} faults"
            )
            if "monitor_cpu_seconds" in r:
                note += f"; CPU: monitor {r['monitor_cpu_seconds']:.2f} s, app {r['app_cpu_seconds']:.2f} s"
        rows.append(
            row(
                r["name"],
                fmt_s(r["median_s"]),
                f"{nbytes / r['median_s'] / 1e9:.2f}",
                f"{r['median_s'] / floor:.2f}",
                f"{r.get('others_cpus', 0):.2f}",
                note,
            )
        )
    columns = {
        "contender": "l",
        "median": "r",
        "GB/s (uncompressed)": "r",
        "x decode floor": "r",
        "other procs (CPUs)": "r",
        "notes": "l",
    }
    return table("### Full scan: `np.sum(a, dtype=np.float64)`", columns, rows)


def touched_fraction_table(report: Report) -> list[str]:
    rows = []
    for entry in report["touched_fraction"]:
        res = {r["name"]: r for r in entry["results"]}
        lazy = res["lazymem.open"]
        cells = [
            f"{entry['fraction']:g}",
            f"{entry['chunks_touched']}/{entry['chunks_total']}",
            fmt_s(lazy["median_s"]),
            fmt_mb(lazy.get("bytes_fetched", 0)),
            fmt_s(res["lazymem.open + prefetch(idx)"]["median_s"]),
            fmt_s(res["lazymem.load"]["median_s"]),
            fmt_s(res["zarr vindex"]["median_s"]),
        ]
        # The slow contenders run only on the small fractions.
        cells += [fmt_s(res[n]["median_s"]) if n in res else "-" for n in ("zarr z[t,i,j] loop", "npy mmap")]
        cells.append(f"{res['lazymem.load']['median_s'] / lazy['median_s']:.1f}")
        rows.append(row(*cells))
    columns = [
        "fraction",
        "chunks",
        "lazymem.open",
        "fetched (lazy)",
        "lazy + prefetch(idx)",
        "lazymem.load",
        "zarr vindex",
        "zarr loop",
        "npy mmap",
        "load / lazy",
    ]
    title = "### Touched fraction: one element in each of a fraction of the chunks (random chunks)"
    return table(title, dict.fromkeys(columns, "r"), rows)


def strided_table(report: Report) -> list[str]:
    rows = []
    for entry in report["strided"]:
        res = {r["name"]: r for r in entry["results"]}
        lazy = res["lazymem.open"]
        rows.append(
            row(
                entry["case"],
                fmt_s(lazy["median_s"]),
                f"{fmt_mb(lazy.get('bytes_fetched', 0))} ({lazy.get('chunks_installed', 0):.0f} chunks)",
                *(fmt_s(res[name]["median_s"]) for name in ("lazymem.load", "zarr", "npy mmap")),
            )
        )
    columns = ["lazymem.open", "fetched (lazy)", "lazymem.load", "zarr", "npy mmap"]
    return table("### Strided access", {"access": "l", **dict.fromkeys(columns, "r")}, rows)


def zero_chunks_table(report: Report) -> list[str]:
    if "zero_chunks" not in report:  # runs before the scenario existed
        return []
    zc = report["zero_chunks"]
    res = {r["name"]: r for r in zc["results"]}
    sizes = {kind: fmt_mb(f["bytes"]) for kind, f in zc["files"].items()}
    rows = []
    for name in ("lazymem.open", "lazymem.load"):
        zf, zs = res[f"{name} + sum, zero frames"], res[f"{name} + sum, zstd frames"]
        stat = f"{zf['zero_chunks']:.0f} / {zs['zero_chunks']:.0f}" if "zero_chunks" in zf else "-"
        ratio = zc["ratios"][f"{name}: zero frames / zstd frames"]
        rows.append(row(f"{name} + sum", fmt_s(zf["median_s"]), fmt_s(zs["median_s"]), f"{ratio:.2f}", stat))
    intro = (
        f"{zc['chunks_zero']} of {zc['chunks_total']} chunks are zeros. Zero frames: `lazymem.save` "
        f"({sizes['zero frames']}); zstd frames: an ordinary zstd frame for every chunk, as older "
        f"writers made ({sizes['zstd frames']})."
    )
    columns = ["zero frames", "zstd frames", "zero frames / zstd frames", "zero_chunks (lazy stats)"]
    return table(
        "### Zero chunks: the field with every other chunk all zeros, `np.sum(a, dtype=np.float64)`",
        {"contender": "l", **dict.fromkeys(columns, "r")},
        rows,
        intro,
    )


def first_element_table(report: Report) -> list[str]:
    rows = []
    for e in report["first_element"]:
        times = ["open_s", "first_touch_s", "open_plus_first_s", "last_element_s"]
        # zarr and the .npy exist for the benchmark field only, not for the huge zeros arrays.
        others = [fmt_s(e[k]) if k in e else "-" for k in ("zarr_open_plus_first_s", "npy_mmap_open_plus_first_s")]
        rows.append(row(e["target"], fmt_mb(e["file_bytes"]), *(fmt_s(e[k]) for k in times), *others))
    for e in report.get("first_element_errors", []):
        rows.append(f"| {e['target']} | failed: `{e['error']}` | | | | | | |")
    columns = [
        "file size",
        "open",
        "first element",
        "open + first",
        "last element",
        "zarr open + first",
        "npy mmap open + first",
    ]
    return table(
        "### First element: `lazymem.open(url)` then `a.flat[0]`, monitor already running",
        {"array": "l", **dict.fromkeys(columns, "r")},
        rows,
    )


def ratios_table(report: Report, title: str | None) -> list[str]:
    rows = [row(name, f"{value:.2f}") for name, value in report["ratios"].items()]
    return table(title, {"ratio": "l", "value": "r"}, rows)


def markdown(report: Report) -> str:
    """All tables of a full or quick run, as README.md and RESULTS.md quote them."""
    lines = [
        *preamble(report),
        *full_scan_table(report),
        *touched_fraction_table(report),
        *strided_table(report),
        *zero_chunks_table(report),
        *first_element_table(report),
        *ratios_table(report, "### Ratios that matter (time / time; < 1 means the first is faster)"),
    ]
    return "\n".join(lines)


def scan_only_markdown(report: Report) -> str:
    """The two short tables a ``--scan-only`` run prints: each contender against the decode floor, and the ratios."""
    floor = by_name(report["full_scan"], "decode floor (no sum)")["median_s"]
    rows = [row(r["name"], fmt_s(r["median_s"]), f"{r['median_s'] / floor:.2f}") for r in report["full_scan"]]
    lines = table(None, {"contender": "l", "median": "r", "x decode floor": "r"}, rows) + ratios_table(report, None)
    return "\n".join(lines[:-1])  # no blank line at the end, as before


# --------------------------------------------------------------------------- ratios


def ratios(report: Report) -> dict[str, float]:
    """The ratios a run stores in its JSON (``report["ratios"]``), from its scenarios' medians.

    A scan-only report (no ``touched_fraction``) gets the full-scan ratios alone.
    """
    t = {r["name"]: r["median_s"] for r in report["full_scan"]}
    out = {
        "lazy scan / decode floor": t["lazymem.open + sum"] / t["decode floor (no sum)"],
        "lazy scan / parallel eager (lazymem.load + sum)": t["lazymem.open + sum"] / t["lazymem.load + sum"],
        "lazymem.load + sum / decode floor": t["lazymem.load + sum"] / t["decode floor (no sum)"],
        "lazymem.load (no sum) / decode floor": t["lazymem.load (no sum)"] / t["decode floor (no sum)"],
        "lazymem.load (no sum) / decode floor into fresh memory": (
            t["lazymem.load (no sum)"] / t["decode floor into fresh memory (no sum)"]
        ),
        "lazy scan / decode floor into fresh memory": (
            t["lazymem.open + sum"] / t["decode floor into fresh memory (no sum)"]
        ),
        "lazy scan / naive serial eager": t["lazymem.open + sum"] / t["naive serial zstd + sum"],
        "lazy scan / zarr": t["lazymem.open + sum"] / t["zarr z[:] + sum"],
        "lazymem.load + sum / zarr": t["lazymem.load + sum"] / t["zarr z[:] + sum"],
    }
    warm = t.get("lazymem.load into a warm array (no sum)")  # runs before the fourth session lack it
    if warm is not None:
        out["lazymem.load into a warm array (no sum) / decode floor"] = warm / t["decode floor (no sum)"]
    huge = t.get("lazymem.open(huge_pages) + sum")
    if huge is not None:
        out["lazy scan (huge pages) / decode floor"] = huge / t["decode floor (no sum)"]
        out["lazy scan (huge pages) / parallel eager (lazymem.load + sum)"] = huge / t["lazymem.load + sum"]
    for row in report.get("touched_fraction", []):
        if row["fraction"] in (0.01, 0.1):
            res = {r["name"]: r["median_s"] for r in row["results"]}
            pct = f"{row['fraction'] * 100:g} %"
            out[f"sparse {pct}: lazy / eager load"] = res["lazymem.open"] / res["lazymem.load"]
            out[f"sparse {pct}: lazy / zarr vindex"] = res["lazymem.open"] / res["zarr vindex"]
            out[f"sparse {pct}: lazy + prefetch(idx) / zarr vindex"] = (
                res["lazymem.open + prefetch(idx)"] / res["zarr vindex"]
            )
    for name, value in report.get("zero_chunks", {}).get("ratios", {}).items():
        out[f"zero chunks, {name}"] = value
    return out


# --------------------------------------------------------------------------- plot


def _label(ax: Any, ylabel: str, title: str) -> None:
    """Log y axis, labels, grid and legend: the same for both panels."""
    ax.set_yscale("log")
    ax.set_xlabel("chunks touched (one element each): fraction / count")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot(report: Report, path: Path) -> None:
    """Time and bytes read against the fraction of chunks touched, lazy against eager, zarr and the floor."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    rows = report["touched_fraction"]
    x = [r["chunks_touched"] / r["chunks_total"] for r in rows]

    def series(name: str, key: str = "median_s") -> list[float]:
        return [next(c for c in r["results"] if c["name"] == name).get(key, np.nan) for r in rows]

    ds = report["dataset"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    ax1.plot(x, series("lazymem.open"), "o-", label="lazymem.open (lazy)", color="C0", lw=2)
    ax1.plot(x, series("lazymem.load"), "s--", label="lazymem.load (eager, parallel)", color="C1")
    ax1.plot(x, series("lazymem.open + prefetch(idx)"), "d-", label="lazymem.open + prefetch(idx)", color="C4")
    ax1.plot(x, series("zarr vindex"), "^:", label="zarr vindex (batched)", color="C2")
    scan = {r["name"]: r["median_s"] for r in report["full_scan"]}
    ax1.axhline(
        scan["decode floor (no sum)"], color="gray", lw=1, ls="-.", label="decode floor (all chunks, all cores)"
    )
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels(
            [
                f"{100 * v:.0f} %\n{r['chunks_touched']}" if v >= 0.1 else f"{100 * v:.2g} %\n{r['chunks_touched']}"
                for v, r in zip(x, rows)
            ],
            fontsize=8,
        )
        ax.minorticks_off()
    _label(ax1, "time (s), median", "Time to read one element from each touched chunk")

    ax2.plot(
        x,
        np.array(series("lazymem.open", "bytes_fetched")) / MiB,
        "o-",
        color="C0",
        lw=2,
        label="lazymem.open: fetched",
    )
    ax2.plot(
        x, np.array([r["ideal_bytes"] for r in rows]) / MiB, "k:", lw=1, label="compressed size of the touched chunks"
    )
    ax2.axhline(ds["compressed_bytes"] / MiB, color="C1", ls="--", label="lazymem.load: whole file")
    _label(ax2, "compressed bytes read (MiB)", "Bytes read from storage")
    m = report["machine"]
    fig.suptitle(
        f"lazymem, {ds['nbytes'] / MiB:.0f} MiB float32 field, 4 MiB zstd chunks, local file (page cache); "
        f"{m['nproc']} vCPU {m.get('cpu', '')}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- command


def render(report: Report, plot_path: Path | None) -> str:
    """Draw the plot (if there is a path and the report has the touched-fraction scenario); return the tables."""
    if "touched_fraction" not in report:  # a --scan-only run
        return scan_only_markdown(report)
    if plot_path is not None:
        plot(report, plot_path)
    return markdown(report)


def redraw(json_path: Path, plot_path: Path | None = None, draw: bool = True) -> str:
    """Tables of a results JSON; the plot to ``plot_path``, by default beside the JSON (``run.py --replot``)."""
    report = json.loads(json_path.read_text())
    if draw and plot_path is None:
        plot_path = json_path.parent / plot_name(report["mode"])
    return render(report, plot_path if draw else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, help="a results JSON written by benchmarks/run.py")
    p.add_argument("--plot", type=Path, help="where to write the plot (default: beside the JSON)")
    p.add_argument("--no-plot", action="store_true", help="print the tables only")
    args = p.parse_args(argv)
    print(redraw(args.results, args.plot, draw=not args.no_plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Arrays larger than their memory budget: a full scan, lazily within a budget, against eager
loading and np.memmap of the uncompressed file.

Each contender runs in a fresh process that reports its wall time and peak resident set (VmHWM,
reset just before the scan). Eager loading is also run under an address-space limit equal to the
budget, to show where it fails when the array does not fit.

    python3 benchmarks/budget.py            # 1 GiB array, 256 MiB budget
    python3 benchmarks/budget.py --quick    # 256 MiB array, 64 MiB budget

Writes benchmarks/results/budget.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lazymem  # noqa: E402

MiB = 2**20

CHILD = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
import lazymem

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

kind, path, budget = sys.argv[1], sys.argv[2], int(sys.argv[3])
if kind == "lazy":
    a = lazymem.open(path, max_resident=budget)
    a[0]
elif kind == "memmap":
    a = np.load(path, mmap_mode="r")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
if kind == "eager-limited":
    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + budget, resource.RLIM_INFINITY))
t = time.perf_counter()
try:
    if kind.startswith("eager"):
        a = lazymem.load(path)
    total = float(np.sum(a, dtype=np.float64))
    error = None
except MemoryError as exc:
    total, error = None, f"MemoryError: {{exc}}"
elapsed = time.perf_counter() - t
print(json.dumps({{"seconds": elapsed, "peak_bytes": status("VmHWM") - base, "total": total, "error": error}}))
"""


def run(kind: str, path: str, budget: int) -> dict:
    code = CHILD.format(root=str(ROOT))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), kind, path, str(budget)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"seconds": None, "peak_bytes": None, "total": None,
                "error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    size = 256 * MiB if args.quick else 1024 * MiB
    budget = size // 4
    data = ROOT / "benchmarks" / "data"
    data.mkdir(parents=True, exist_ok=True)
    zst, npy = data / f"budget-{size // MiB}.npy.zst", data / f"budget-{size // MiB}.npy"
    if not zst.exists() or not npy.exists():
        rng = np.random.default_rng(0)
        src = np.cumsum(rng.standard_normal(size // 4, dtype=np.float32) * np.float32(0.01), dtype=np.float32)
        lazymem.save(str(zst), src)
        np.save(npy, src)
        del src
    expected = float(np.sum(np.load(npy, mmap_mode="r"), dtype=np.float64))
    kinds = ["lazy", "eager", "memmap", "eager-limited"]
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(args.reps):
        for kind in kinds:  # alternate contenders within each repetition
            target = str(npy) if kind == "memmap" else str(zst)
            r = run(kind, target, budget)
            if r["total"] is not None:
                assert r["total"] == expected, (kind, r["total"], expected)
            results[kind].append(r)
    summary = {}
    for kind, runs in results.items():
        ok = [r for r in runs if r["seconds"] is not None and r["error"] is None]
        summary[kind] = {
            "median_seconds": float(np.median([r["seconds"] for r in ok])) if ok else None,
            "median_peak_mib": float(np.median([r["peak_bytes"] for r in ok])) / MiB if ok else None,
            "error": next((r["error"] for r in runs if r["error"]), None),
        }
    report = {"array_bytes": size, "budget_bytes": budget, "reps": args.reps, "results": summary,
              "nproc": os.cpu_count(), "kernel": os.uname().release}
    out = ROOT / "benchmarks" / "results" / ("budget-quick.json" if args.quick else "budget.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"| full scan of a {size // MiB} MiB float32 array, budget {budget // MiB} MiB | time (s) | peak RSS (MiB) |")
    print("|---|---|---|")
    names = {"lazy": "lazymem.open(max_resident=budget)", "eager": "lazymem.load (no limit)",
             "memmap": "np.load(mmap_mode='r') of the uncompressed .npy",
             "eager-limited": "lazymem.load under RLIMIT_AS = budget"}
    for kind, s in summary.items():
        t = f"{s['median_seconds']:.2f}" if s["median_seconds"] is not None else "fails"
        m = f"{s['median_peak_mib']:.0f}" if s["median_peak_mib"] is not None else (s["error"] or "")[:60]
        print(f"| {names[kind]} | {t} | {m} |")


if __name__ == "__main__":
    main()

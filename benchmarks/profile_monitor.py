#!/usr/bin/env python3
"""Profile the lazymem monitor process with py-spy while the app scans an array again and again.

    pip install py-spy
    python3 benchmarks/profile_monitor.py [--size-mb 256] [--seconds 20] [--native]

The data file is the one ``benchmarks/run.py`` builds (built here if missing). Writes the raw
collapsed stacks to ``benchmarks/results/monitor-profile.txt`` and prints where the monitor's
samples go: by leaf function (self) and by selected inclusive frames.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import run  # noqa: E402

import lazymem  # noqa: E402
from lazymem.monitor.client import get_client  # noqa: E402

INCLUSIVE = [
    "read_into",
    "decode_frame_into",
    "readinto",
    "_frame_extent",
    "fetch_views",
    "cat_file",
    "copy (",
    "wake (",
    "_stored_bytes",
    "_install",
    "poll",
    "read_messages",
    "_on_fault",
    "get (",
    "frames_for",
]


def summarize(raw: Path, top: int = 25) -> str:
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        self_counts[leaf] += n
        if (
            any(k in leaf for k in ("wait (threading", "get (queue", "poll (", "_wait_for_tstate_lock"))
            or "acquire" in leaf
        ):
            idle += n
        seen = set()
        for f in frames:
            for key in INCLUSIVE:
                if key in f and key not in seen:
                    seen.add(key)
                    incl[key] += n
    out = [f"{total} samples (all threads; idle/waiting leaves: {idle})", "", "self (leaf) time:"]
    for name, n in self_counts.most_common(top):
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    out += ["", "inclusive (frame anywhere on the stack):"]
    for name, n in incl.most_common():
        out.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=256)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--native", action="store_true", help="include native (C) frames")
    p.add_argument("--idle", action="store_true", help="include idle threads")
    p.add_argument("--access", choices=["scan", "sparse"], default="scan")
    p.add_argument("--out", type=Path, default=HERE / "results" / "monitor-profile.txt")
    args = p.parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2

    ds = run.Dataset(HERE / "data", args.size_mb * run.MiB)
    ds.build()
    ds.warm_page_cache()
    url = str(ds.zst)
    pid = get_client().monitor_pid
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(args.seconds)),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(args.out),
        "--threads",
        "--nonblocking",
    ]
    if args.native:
        cmd.append("--native")
    if args.idle:
        cmd.append("--idle")
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    idx, _ = run.chunk_sample(ds, 0.1)
    stop = time.monotonic() + args.seconds - 1
    times = []
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        a = lazymem.open(url)
        if args.access == "scan":
            np.sum(a, dtype=np.float64)
        else:
            a.reshape(-1)[idx]
        s = lazymem.stats(a)
        a.close()
        del a
        times.append(time.perf_counter() - t0)
    _, err = spy.communicate()
    if spy.returncode != 0:
        print(err.decode(), file=sys.stderr)
        return 1
    print(
        f"{len(times)} {args.access}s of {ds.nbytes / run.MiB:.0f} MiB, median {np.median(times) * 1e3:.0f} ms; "
        f"last stats: {s}"
    )
    print(summarize(args.out))
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "app"
    sys.exit(main())

"""What the first ``lazymem.open`` of a process costs: it starts the monitor process.

The other ``open`` figures in the README are taken with the monitor running. This runs ``--runs``
fresh interpreters, each timing its import, its first open (monitor start included), a first
touch, and a second open, and prints the medians and ranges in milliseconds.

    python3 benchmarks/first_open.py [--runs 9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import lazymem
t1 = time.perf_counter()
a = lazymem.open(sys.argv[1])
t2 = time.perf_counter()
float(a[12345])
t3 = time.perf_counter()
b = lazymem.open(sys.argv[1])
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "first open": t2 - t1, "first touch": t3 - t2, "second open": t4 - t3}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="fresh processes to time")
    args = parser.parse_args()
    import numpy as np

    import lazymem

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "m.npy.zst")
        lazymem.save(path, np.random.default_rng(0).standard_normal(2**20), chunk_bytes=2**20)  # 8 MiB
        rows = [json.loads(subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True,
                                          check=True).stdout) for _ in range(args.runs)]
    for key in rows[0]:
        ms = sorted(row[key] * 1000 for row in rows)
        print(f"{key:12} median {statistics.median(ms):6.1f} ms  [{ms[0]:.1f}-{ms[-1]:.1f}]")


if __name__ == "__main__":
    main()

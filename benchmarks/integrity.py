"""What proving frame positions costs (issue #19): open + a first element deep in the array.

A frame is placed by the decompressed sizes of the frames before it. lazymem.save's files (layout
frame version 3) keep a CRC of their seek table's rows, so their frames are placed with no further
check; older files (version 2: block sums only; version 1 or none: nothing) have the sizes before
a frame proven from the frames' headers (one small read each, once per process), and files whose
frame headers carry no content size (pyzstd's) by decoding the frames before it.

Each case: a fresh process per repetition is not needed (the proof is per opened array), so each
repetition opens the file anew in this process, with the monitor already running, and reads the
first element and one at 3/4 of the array. Locally and over HTTP (the tests' Range server, in its
own process, on loopback). Medians of ``--reps``.

    python benchmarks/integrity.py [--reps 5]

Writes ``benchmarks/results/integrity.json`` and prints a Markdown table (kept in RESULTS.md).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import contenders  # noqa: E402

import lazymem  # noqa: E402
from tests.remote import ServerProcess  # noqa: E402

TIB = 2**40


def _files(data: Path) -> list[tuple[str, str]]:
    data.mkdir(parents=True, exist_ok=True)
    out = []
    for version in (3, 2, 1):
        path = data / f"zeros-1TiB-layout-v{version}.npy.zst"
        if not path.exists():
            contenders.write_zeros_seekable(str(path), TIB // 4, layout_version=version)
        out.append((f"1 TiB zeros, layout v{version}", path.name))
    # Foreign frames without content sizes: 64 MiB of float32 in pyzstd's 1 MiB frames.
    path = data / "field-64MiB-pyzstd.npy.zst"
    if not path.exists():
        import pyzstd

        buf = io.BytesIO()
        np.save(buf, np.random.default_rng(0).standard_normal(16 << 20).astype(np.float32))
        with pyzstd.SeekableZstdFile(str(path), "w", level_or_option={pyzstd.CParameter.checksumFlag: 1},
                                     max_frame_content_size=1 << 20) as f:
            f.write(buf.getvalue())
    out.append(("64 MiB field, pyzstd (no content sizes)", path.name))
    path = data / "field-64MiB-saved.npy.zst"
    if not path.exists():
        lazymem.save(str(path), np.random.default_rng(0).standard_normal(16 << 20).astype(np.float32))
    out.append(("64 MiB field, lazymem.save", path.name))
    return out


def _time(url: str, reps: int) -> dict[str, float]:
    opens, firsts, deeps = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        a = lazymem.open(url)
        t1 = time.perf_counter()
        flat = a.reshape(-1)
        float(flat[0])
        t2 = time.perf_counter()
        float(flat[3 * flat.size // 4])
        t3 = time.perf_counter()
        a.close()
        opens.append(t1 - t0)
        firsts.append(t2 - t1)
        deeps.append(t3 - t2)
    return {"open_s": statistics.median(opens), "first_s": statistics.median(firsts),
            "deep_s": statistics.median(deeps)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--data-dir", type=Path, default=HERE / "data")
    p.add_argument("--out", type=Path, default=HERE / "results" / "integrity.json")
    args = p.parse_args()
    files = _files(args.data_dir)
    warm = lazymem.open(str(args.data_dir / files[0][1]))
    float(warm.reshape(-1)[0])  # start the monitor before timing
    results: list[dict[str, Any]] = []
    with ServerProcess("http", str(args.data_dir)) as http:
        for label, name in files:
            for where, url in (("local", str(args.data_dir / name)), ("HTTP", f"{http.url}/{name}")):
                http.control(reset=1)
                entry = {"file": label, "where": where, **_time(url, args.reps)}
                if where == "HTTP":
                    entry["requests"] = len(http.control()["requests"]) / args.reps
                results.append(entry)
                print(f"{label:45s} {where:5s} open {entry['open_s'] * 1e3:7.1f} ms  first "
                      f"{entry['first_s'] * 1e3:7.1f} ms  at 3/4 {entry['deep_s'] * 1e3:8.1f} ms"
                      + (f"  {entry['requests']:.0f} requests" if "requests" in entry else ""), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"reps": args.reps, "results": results}, indent=1))
    print("\n| file | where | open | first element | element at 3/4 | HTTP requests per open |")
    print("|---|---|---|---|---|---|")
    for e in results:
        print(f"| {e['file']} | {e['where']} | {e['open_s'] * 1e3:.1f} ms | {e['first_s'] * 1e3:.1f} ms | "
              f"{e['deep_s'] * 1e3:.1f} ms | {e.get('requests', '')} |")


if __name__ == "__main__":
    main()

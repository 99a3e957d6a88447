#!/usr/bin/env python3
"""lazymem quickstart: a few hundred MB of compressed data, opened lazily as a real numpy array.

    python3 examples/quickstart.py [--size-mb 300] [--dir data]

Makes a synthetic daily temperature field (time, lat, lon) in float32, saves it with
``lazymem.save`` (seekable zstd, 4 MiB chunks), opens it with ``lazymem.open`` and reads a few
slices. For each read it shows the time taken and how much of the file was fetched, and checks the
values against the source. Then it does the same reads after an eager ``lazymem.load``.
Exits with status 1 if any value differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, uninstalled
import lazymem

N_LAT, N_LON = 256, 512  # one time step = 512 KiB, so a 4 MiB chunk holds 8 days
SEED = 2024
GENERATOR = 1


def make_field(n_days: int, seed: int = SEED) -> np.ndarray:
    """Daily temperature (K): climatology + seasonal cycle + a random walk, in steps of 1/32 K."""
    rng = np.random.default_rng(seed)
    lat = np.deg2rad(np.linspace(-89.5, 89.5, N_LAT))[:, None]
    lon = np.deg2rad(np.linspace(0.0, 359.3, N_LON))[None, :]
    state = np.rint(32 * (300.0 - 45.0 * np.sin(lat) ** 2 + 3.0 * np.cos(3 * lon) * np.cos(lat))).astype(np.int32)
    amplitude = 32 * 12.0 * np.sin(lat) * np.ones_like(lon)  # opposite seasons in the two hemispheres
    step_of_byte = (np.arange(256) % 5 - 2).astype(np.int32)  # random bytes -> steps of -2..+2
    field = np.empty((n_days, N_LAT, N_LON), dtype=np.float32)
    season = np.empty((N_LAT, N_LON))
    level = np.empty((N_LAT, N_LON), dtype=np.int32)
    for t0 in range(0, n_days, 32):  # chunk-wise: a few hundred MB/s, little extra memory
        t1 = min(n_days, t0 + 32)
        steps = step_of_byte[np.frombuffer(rng.bytes((t1 - t0) * N_LAT * N_LON), np.uint8)]
        steps = steps.reshape(t1 - t0, N_LAT, N_LON)
        for t in range(t0, t1):
            state += steps[t - t0]
            np.rint(amplitude * np.cos(2 * np.pi * t / 365.25), out=season)
            np.add(state, season, out=level, casting="unsafe")
            np.multiply(level, np.float32(1 / 32), out=field[t], casting="unsafe")
    return field


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=300, help="size of the array in MiB (default 300)")
    p.add_argument("--dir", type=Path, default=Path("data"), help="where to put the file (default ./data)")
    args = p.parse_args()

    n_days = max(64, args.size_mb * 2**20 // (N_LAT * N_LON * 4))
    path = args.dir / f"temperature-{n_days}x{N_LAT}x{N_LON}.npy.zst"
    url = str(path)
    meta = {"shape": [n_days, N_LAT, N_LON], "seed": SEED, "generator": GENERATOR}
    meta_path = path.with_suffix(".json")

    # -- 1. the data ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    field = make_field(n_days)
    made = time.perf_counter() - t0
    print(f"Source: temperature[time, lat, lon], {field.shape} float32 = {mib(field.nbytes)} (generated in {ms(made)})")
    try:
        saved_meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        saved_meta = None
    if path.exists() and saved_meta == {**meta, "file_bytes": path.stat().st_size}:
        print(f"File:   {path} exists and matches, not rewritten")
    else:
        args.dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        lazymem.save(url, field)  # 4 MiB chunks, zstd level 3, all cores
        print(f"File:   lazymem.save({str(path)!r}, field) took {ms(time.perf_counter() - t0)}")
        meta_path.write_text(json.dumps({**meta, "file_bytes": path.stat().st_size}))
    file_bytes = path.stat().st_size
    print(f"        {mib(file_bytes)} on disk, {field.nbytes / file_bytes:.2f}x smaller than the array\n")

    # -- 2. open lazily ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    a = lazymem.open(url)
    opened = time.perf_counter() - t0
    s = lazymem.stats(a)
    print(f"a = lazymem.open(url)   took {ms(opened)} (includes starting the monitor process once)")
    print(
        f"  isinstance(a, np.ndarray) = {isinstance(a, np.ndarray)}, shape {a.shape}, dtype {a.dtype}, "
        f"{s.chunks_total} chunks of {mib(s.chunk_bytes)}; fetched so far: {s.bytes_fetched} bytes\n"
    )
    a.close()
    del a

    # -- 3. a few reads, each on a freshly opened array so its cost shows alone ------------------
    nt = n_days
    reads = [
        ("one element", "a[100, 128, 256]", lambda x: x[100, 128, 256]),
        ("one day (a map)", "a[200].mean()", lambda x: x[200].mean(dtype=np.float64)),
        ("last 30 days, mean", "a[-30:].mean(axis=0)", lambda x: x[-30:].mean(axis=0)),
        ("every 64th day", "a[::64, 0, 0]", lambda x: np.array(x[::64, 0, 0])),
        ("time series at a point *", "a[:, 128, 256]", lambda x: np.array(x[:, 128, 256])),
        ("the whole array", "a.max()", lambda x: x.max()),
    ]
    rows = []
    failed = []
    lazy_times = []
    for label, code, read in reads:
        a = lazymem.open(url)
        t0 = time.perf_counter()
        value = read(a)
        elapsed = time.perf_counter() - t0
        s = lazymem.stats(a)
        a.close()
        del a
        lazy_times.append(elapsed)
        expected = read(field)
        ok = np.array_equal(value, expected)
        if not ok:
            failed.append(code)
        shown = f"{float(value):.3f}" if np.ndim(value) == 0 else f"array{np.shape(value)}"
        rows.append(
            [
                code,
                label,
                shown,
                ms(elapsed),
                mib(s.bytes_fetched),
                f"{100 * s.bytes_fetched / file_bytes:.1f} %",
                f"{s.chunks_installed}/{s.chunks_total}",
                "OK" if ok else "MISMATCH",
            ]
        )
    print("Lazy reads (each on a fresh lazymem.open; file in the OS page cache):\n")
    print(
        table(["read", "what", "value", "time", "fetched", "of file", "chunks", "check"], rows, right={2, 3, 4, 5, 6})
    )
    print(
        f"\n* C order puts the {nt} days of one point {N_LAT * N_LON * 4 // 1024} KiB apart: a time series at "
        "one point touches every chunk,\n  so it costs a full decompression. Store the array transposed "
        "(lat, lon, time) if that is your main access.\n"
    )

    # -- 4. all the reads on one lazily opened array (chunks stay resident between reads) ----------
    a = lazymem.open(url)
    t0 = time.perf_counter()
    for (_, code, read), expected in zip(reads, [read(field) for _, _, read in reads]):
        if not np.array_equal(read(a), expected):
            failed.append(f"one lazy array: {code}")
    lazy_shared = time.perf_counter() - t0
    shared = lazymem.stats(a)
    a.close()
    del a

    # -- 5. the same reads after an eager load ----------------------------------------------------
    t0 = time.perf_counter()
    b = lazymem.load(url)
    loaded = time.perf_counter() - t0
    t0 = time.perf_counter()
    eager_values = [read(b) for _, _, read in reads]
    eager_reads = time.perf_counter() - t0
    for (_, code, read), value in zip(reads, eager_values):
        if not np.array_equal(value, read(field)):
            failed.append(f"lazymem.load: {code}")
    ok_load = np.array_equal(b, field)
    if not ok_load:
        failed.append("lazymem.load(url) == field")
    del b

    print(
        table(
            ["", "time", "check"],
            [
                ["lazymem.load(url), whole array", ms(loaded), "OK" if ok_load else "MISMATCH"],
                ["  then the same reads in memory", ms(eager_reads), ""],
                ["eager total", ms(loaded + eager_reads), ""],
                ["lazy: sum of the reads above (each from scratch)", ms(sum(lazy_times)), ""],
                [f"lazy: all reads on one array ({mib(shared.bytes_fetched)} fetched)", ms(lazy_shared), ""],
            ],
            right={1},
        )
    )
    print(
        f"\nLazily, the single element took {ms(lazy_times[0])}: {loaded / lazy_times[0]:,.0f}x sooner than "
        "loading the whole array first."
    )
    if failed:
        print(f"\nFAILED checks: {', '.join(failed)}")
        return 1
    print("All values match the source.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""HDF5 benchmarks (issue 17): the benchmark field as HDF5, chunked (gzip 1 + shuffle, 4 MiB chunks)
and contiguous, read by lazymem and by its contenders.

* full scan: ``np.sum(lazymem.open(...))`` against ``np.sum(h5py d[:])`` (chunked; target <= 1.0);
* contiguous: ``np.sum(lazymem.open(...))`` against ``np.sum(np.memmap)`` at the dataset's offset
  (target <= 1.2);
* 1,000 random elements: a fresh ``lazymem.open`` and 1,000 reads against h5py's loop of
  ``d[i, j, k]`` on a freshly opened file (target <= 0.05x);
* open + first element over HTTP with 50 ms added to every request (the Range server of
  tests/remote.py), with the requests it took.

Files are in the page cache (read through once before timing); medians of ``--repeat`` runs,
contenders alternating. Run by hand: ``python3 benchmarks/hdf5_bench.py [--size-mib 1024]``; it
prints a markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import datagen  # noqa: E402
import h5py  # noqa: E402

import lazymem  # noqa: E402

MiB = 2**20


def build(directory: Path, nbytes: int) -> tuple[Path, np.ndarray]:
    n_time = datagen.n_steps_for(nbytes)
    path = directory / f"field-{nbytes // MiB}MiB.h5"
    field = datagen.generate(n_time)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with h5py.File(tmp, "w") as f:
            # 4 MiB chunks: 8 time steps of 256 x 512 float32, as the native benchmark's chunks.
            f.create_dataset("chunked", data=field, chunks=(8, datagen.N_LAT, datagen.N_LON),
                             compression="gzip", compression_opts=1, shuffle=True)
            f.create_dataset("contiguous", data=field)
        tmp.rename(path)
    with open(path, "rb") as f:  # into the page cache: every contender starts from there
        while f.read(16 * MiB):
            pass
    return path, field


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def scan_lazy(path: Path, name: str) -> float:
    a = lazymem.open(str(path), path=name)
    try:
        return float(np.sum(a, dtype=np.float64))
    finally:
        a.close()


def scan_h5py(path: Path, name: str) -> float:
    with h5py.File(path, "r") as f:
        return float(np.sum(f[name][:], dtype=np.float64))


def scan_memmap(path: Path, shape: tuple[int, ...]) -> float:
    with h5py.File(path, "r") as f:
        offset = f["contiguous"].id.get_offset()
        dtype = f["contiguous"].dtype
    m = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
    return float(np.sum(m, dtype=np.float64))


def random_lazy(path: Path, points: np.ndarray, chunk_bytes: int | None = None) -> float:
    a = lazymem.open(str(path), path="chunked", readahead=0, chunk_bytes=chunk_bytes)
    try:
        return float(sum(float(a[i, j, k]) for i, j, k in points))
    finally:
        a.close()


def random_h5py(path: Path, points: np.ndarray) -> float:
    with h5py.File(path, "r") as f:
        d = f["chunked"]
        return float(sum(float(d[i, j, k]) for i, j, k in points))


def http_open(path: Path, repeat: int) -> dict[str, Any]:
    from tests.remote import ServerProcess

    out: dict[str, Any] = {}
    with ServerProcess("http", str(path.parent)) as server:
        url = f"{server.url}/{path.name}"
        for name in ("chunked", "contiguous"):
            times = []
            for _ in range(repeat):
                server.control(latency=0.05, reset=1)
                seconds, _value = timed(lambda name=name: float(lazymem.open(url, path=name, readahead=0)[0, 0, 0]))
                times.append(seconds)
            gets = [r for r in server.control()["requests"] if r[0] == "GET"]
            server.control(latency=0, reset=1)
            from lazymem.sources.formats import open_array_source

            open_array_source(url, name)
            opened = [r for r in server.control()["requests"] if r[0] == "GET"]
            out[name] = {"seconds": median(times), "requests_open_and_first": len(gets),
                         "requests_open": len(opened), "ranges_open": [r[2] for r in opened]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=str(ROOT / "benchmarks" / "data"))
    args = parser.parse_args()
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    path, field = build(directory, args.size_mib * MiB)
    shape = field.shape
    want = float(np.sum(field, dtype=np.float64))
    del field
    rows: dict[str, list[float]] = {}
    scan_lazy(path, "chunked")  # untimed warm-up: starts the monitor, imports, first mappings
    for _ in range(args.repeat):
        for label, fn in [("scan lazymem chunked", lambda: scan_lazy(path, "chunked")),
                          ("scan h5py chunked", lambda: scan_h5py(path, "chunked")),
                          ("scan lazymem contiguous", lambda: scan_lazy(path, "contiguous")),
                          ("scan memmap contiguous", lambda: scan_memmap(path, shape))]:
            seconds, value = timed(fn)
            assert value == want, (label, value, want)
            rows.setdefault(label, []).append(seconds)
    points = np.random.default_rng(1).integers(0, shape, size=(1000, 3))
    for _ in range(args.repeat):
        for label, fn in [("1000 random lazymem", lambda: random_lazy(path, points)),
                          ("1000 random lazymem 4MiB units", lambda: random_lazy(path, points, 4 * MiB)),
                          ("1000 random h5py loop", lambda: random_h5py(path, points))]:
            seconds, value = timed(fn)
            rows.setdefault(label, []).append(seconds)
    med = {k: median(v) for k, v in rows.items()}
    print(f"\n{args.size_mib} MiB field {shape}, float32; medians of {args.repeat}\n")
    print("| measurement | lazymem | contender | ratio | target |")
    print("|---|---|---|---|---|")
    for ours, theirs, target in [("scan lazymem chunked", "scan h5py chunked", "<= 1.0"),
                                 ("scan lazymem contiguous", "scan memmap contiguous", "<= 1.2"),
                                 ("1000 random lazymem", "1000 random h5py loop", "<= 0.05"),
                                 ("1000 random lazymem 4MiB units", "1000 random h5py loop", "<= 0.05")]:
        print(f"| {ours.replace('lazymem ', '')} | {med[ours]:.3f} s | {theirs.split(' ', 1)[1]}: "
              f"{med[theirs]:.3f} s | {med[ours] / med[theirs]:.2f} | {target} |")
    remote = http_open(path, args.repeat)
    for name, r in remote.items():
        print(f"| HTTP 50 ms: open + a[0,0,0], {name} | {r['seconds']:.3f} s | {r['requests_open_and_first']} GETs "
              f"(open alone: {r['requests_open']}) | | |")
    print("\nopen ranges:", {k: v["ranges_open"] for k, v in remote.items()})


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""An xarray dataset served over HTTP, opened with ``engine="lazymem"``: metadata at open, a sliver
per selection, no copy for ``.values``.

    python3 examples/xarray_dataset.py [--size-mb 128] [--url URL]

Writes a zarr store (zarr v3, consolidated metadata, as ``Dataset.to_zarr`` does by default) with
a float32 temperature field (time, lat, lon), a packed int16 variable (``scale_factor`` /
``add_offset``) and its coordinates; serves it with an HTTP server that honours Range requests (the
test suite's, in its own process; or give ``--url`` of a store of your own). Then, for each step,
prints the time taken and the requests and bytes the server answered:

* opening the dataset (metadata and the dimension coordinates only);
* ``ds.t2m.isel(time=k).mean()`` (one time step: one install unit);
* ``ds.t2m.values`` (a view of the lazy array: nothing fetched until touched);
* a selection of the packed variable (decoded lazily by xarray: only the selected part fetched);
* a mean over all time steps with ``chunks={}`` (dask, threaded: each unit fetched once).

Then the same steps with ``xr.open_dataset(engine="zarr")``, for comparison; every value is checked
against it. Exits with status 1 if any differs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled (the HTTP server is tests.remote's)

import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402

import lazymem  # noqa: E402
from lazymem.integrations.xarray import LazymemBackendEntrypoint  # noqa: E402

MiB = 2**20
N_LAT, N_LON = 181, 360  # one time step of float32: 254 KiB


def engine() -> object:
    """``"lazymem"`` once the package is installed (its entry point registered), else the class."""
    return "lazymem" if "lazymem" in xr.backends.list_engines() else LazymemBackendEntrypoint


def make_dataset(n_time: int) -> xr.Dataset:
    rng = np.random.default_rng(2026)
    lat = np.linspace(-90, 90, N_LAT)
    base = (288 - 30 * np.sin(np.deg2rad(lat)) ** 2)[:, None] * np.ones(N_LON)
    t2m = np.empty((n_time, N_LAT, N_LON), dtype=np.float32)
    state = base.astype(np.float32)
    for t in range(n_time):  # a random walk around a climatology: compresses like real fields do
        state += rng.integers(-2, 3, (N_LAT, N_LON)).astype(np.float32) / 8
        t2m[t] = state
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m, {"units": "K", "long_name": "2 metre temperature"}),
         "tcc": (("time", "lat", "lon"), np.clip(rng.normal(0.5, 0.3, t2m.shape), 0, 1).astype("f4"),
                 {"long_name": "total cloud cover"})},
        coords={"time": pd.date_range("2020-01-01", periods=n_time, freq="6h"), "lat": lat,
                "lon": np.arange(N_LON, dtype="f8")},
        attrs={"title": "lazymem xarray example"},
    )
    ds.tcc.encoding = {"dtype": "i2", "scale_factor": 1 / 30000, "add_offset": 0.0, "_FillValue": -32768}
    return ds


class Counter:
    """Requests and bytes the test server answered since the last :meth:`reset` (from its log)."""

    def __init__(self, server, root: Path) -> None:
        self.server, self.root = server, root

    def reset(self) -> None:
        if self.server is not None:
            self.server.reset()

    def summary(self) -> str:
        if self.server is None:
            return ""
        requests = self.server.control()["requests"]
        total = 0
        for method, path, byte_range in requests:
            file = self.root / path.lstrip("/").split("?")[0]
            if method != "GET" or not file.is_file():
                continue
            size = file.stat().st_size
            if byte_range is None:
                total += size
            else:
                lo, _, hi = byte_range.removeprefix("bytes=").partition("-")
                total += min(int(hi), size) if not lo else min(int(hi or size - 1), size - 1) + 1 - int(lo)
        return f"{len(requests):4d} requests, {total / MiB:8.2f} MiB"


def step(label: str, counter: Counter, fn):  # type: ignore[no-untyped-def]
    counter.reset()
    start = time.perf_counter()
    result = fn()
    print(f"  {label:<46} {time.perf_counter() - start:8.3f} s  {counter.summary()}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=128, help="size of t2m (and of tcc decoded) in MiB")
    parser.add_argument("--url", help="a zarr store (URL) of your own, with a 3-d float variable t2m")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server, root = None, Path(tmp)
        if args.url:
            url = args.url
        else:
            from tests.remote import ServerProcess

            n_time = max(8, args.size_mb * MiB // (N_LAT * N_LON * 4))
            print(f"writing {n_time} time steps ({n_time * N_LAT * N_LON * 4 / MiB:.0f} MiB of t2m) to a zarr store")
            make_dataset(n_time).to_zarr(root / "era.zarr", mode="w", encoding={"t2m": {"chunks": (8, N_LAT, N_LON)}})
            stored = sum(f.stat().st_size for f in (root / "era.zarr").rglob("*") if f.is_file())
            print(f"stored: {stored / MiB:.1f} MiB")
            server = ServerProcess("http", str(root))
            url = f"{server.url}/era.zarr"
        counter = Counter(server, root)
        try:
            return run(url, counter)
        finally:
            if server is not None:
                server.stop()


def run(url: str, counter: Counter) -> int:
    ours = steps(url, engine(), counter)
    theirs = steps(url, "zarr", counter)  # the same steps with xarray's own zarr engine, for comparison
    ok = all(a == b for a, b in zip(ours[:-1], theirs[:-1]))
    ok &= bool(np.allclose(ours[-1], theirs[-1], rtol=1e-5))  # dask's summation order may differ
    print("\nvalues equal to engine='zarr':", "yes" if ok else "NO")
    return 0 if ok else 1


def steps(url: str, eng: object, counter: Counter) -> list:
    """Run the steps with engine ``eng``; return what they read, to compare engines."""
    print(f"\nxr.open_dataset({url!r}, engine={eng!r})")
    ds = step("open (metadata + coordinates)", counter, lambda: xr.open_dataset(url, engine=eng))
    k = ds.sizes["time"] // 2
    got: list = [step(f"t2m.isel(time={k}).mean()", counter, lambda: float(ds.t2m.isel(time=k).mean()))]
    values = step("t2m.values", counter, lambda: ds.t2m.values)
    if isinstance(ds.t2m.data, lazymem.LazyArray):
        lazy = ds.t2m.data
        print(f"    type(ds.t2m.data) = {type(lazy).__name__}, .values shares its memory: "
              f"{np.shares_memory(values, lazy)}, resident {lazymem.stats(lazy).resident_bytes / MiB:.2f} MiB "
              f"of {lazy.nbytes / MiB:.0f} MiB")
    got.append(np.asarray(values[::97, ::13, ::7]).tobytes())
    if "tcc" in ds:
        sel = {"time": slice(k, k + 4), "lat": slice(60, 120)}
        decoded = step("tcc.isel(4 steps, 60 lats).values (decoded)", counter, lambda: ds.tcc.isel(sel).values)
        got.append(decoded.tobytes())
    ds.close()
    chunked = xr.open_dataset(url, engine=eng, chunks={})
    blocks = chunked.t2m.chunks[0]
    print(f"    chunks={{}}: t2m blocks of {blocks[0]} time steps, {len(blocks)} blocks")
    got.append(step("chunks={}: t2m.mean('time').compute()", counter,
                    lambda: chunked.t2m.mean("time").compute().values))
    chunked.close()
    return got


if __name__ == "__main__":
    sys.exit(main())

"""``xr.open_dataset(url, engine="lazymem", chunks={})`` on a real dask.distributed LocalCluster
(worker processes) reading a zarr store from the HTTP Range server: results equal to xarray's zarr
engine, and all workers together fetch about the stored size, not a multiple of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
zarr = pytest.importorskip("zarr")
pytest.importorskip("distributed")
import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from lazymem.integrations.xarray import LazymemBackendEntrypoint  # noqa: E402

T, Y, X = 800, 64, 64  # 12.5 MiB of float32; chunks (10, 64, 64)
BAND = 10 * Y * X * 4  # one row of chunks: 160 KiB


def _store(directory: Path) -> tuple[xr.Dataset, int]:
    rng = np.random.default_rng(1518)
    ds = xr.Dataset({"t2m": (("time", "y", "x"), np.cumsum(rng.standard_normal((T, Y, X)), axis=0).astype("f4"))},
                    coords={"time": np.arange(T, dtype="f8")})
    ds.to_zarr(directory / "big.zarr", mode="w", encoding={"t2m": {"chunks": (10, Y, X)}}, consolidated=True)
    stored = sum(f.stat().st_size for f in (directory / "big.zarr" / "t2m").rglob("c/*/*/*"))
    return ds, stored


def _chunk_bytes_served(server, directory: Path) -> int:
    total = 0
    for method, path, byte_range in server.control()["requests"]:
        if method != "GET" or "/t2m/c/" not in path:
            continue
        file = directory.parent / path.lstrip("/")
        total += file.stat().st_size if byte_range is None else len(range(*_span(byte_range, file.stat().st_size)))
    return total


def _span(byte_range: str, size: int) -> tuple[int, int]:
    lo, _, hi = byte_range.removeprefix("bytes=").partition("-")
    return (size - int(hi), size) if not lo else (int(lo), min(int(hi or size - 1), size - 1) + 1)


@pytest.mark.slow  # a LocalCluster of two worker processes takes seconds to start on two busy cores
@pytest.mark.parametrize("chunks", [{}, "auto"])
def test_a_reduction_on_a_cluster_fetches_about_the_stored_size(http_store, chunks) -> None:
    want, stored = _store(http_store.dir)
    url = f"{http_store.url}/big.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client, dask.config.set({"array.chunk-size": "4MiB"}):
        client.wait_for_workers(2)
        # units of 4 chunk rows (640 KiB, page multiples: no chunk is cut by a unit, which main's zarr
        # source would fetch once per unit that meets it): blocks of 4 units or more, 16 chunk rows
        ds = xr.open_dataset(url, engine=LazymemBackendEntrypoint, chunks=chunks, chunk_bytes=4 * BAND)
        assert len(ds.t2m.chunks[0]) > 1  # several blocks, spread over both workers
        http_store.server.reset()
        mean = ds.t2m.mean("time").compute()
        served = _chunk_bytes_served(http_store.server, http_store.dir)
        print(f"chunks={chunks!r}: blocks {ds.t2m.chunks[0]}, chunk bytes served {served} for {stored} stored "
              f"({served / stored:.2f}x)")
        np.testing.assert_allclose(mean.values, want.t2m.mean("time").values, rtol=1e-4, atol=1e-4)
        assert served <= 1.3 * stored
        ds.close()

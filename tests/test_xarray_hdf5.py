"""``engine="lazymem"`` on NetCDF4/HDF5 and NetCDF3 files: the dataset xarray's netCDF4 and scipy
engines give, byte for byte, through lazymem's group listing (runs once those readers exist)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import lazymem

from .conftest import assert_same_array

xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")

from lazymem.integrations.xarray import LazymemBackendEntrypoint, LazymemStore  # noqa: E402

needs_hdf5 = pytest.mark.skipif(importlib.util.find_spec("lazymem.sources.hdf5") is None,
                                reason="lazymem reads no HDF5 yet (lazymem.sources.hdf5)")
needs_netcdf3 = pytest.mark.skipif(importlib.util.find_spec("lazymem.sources.netcdf3") is None,
                                   reason="lazymem reads no NetCDF3 yet (lazymem.sources.netcdf3)")

RNG = np.random.default_rng(1517)
T, Y, X = 48, 20, 30


def _dataset() -> xr.Dataset:
    t2m = np.cumsum(RNG.standard_normal((T, Y, X)), axis=0).astype("f4")
    ds = xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), t2m, {"units": "K"}),
            "packed": (("time", "lat", "lon"), RNG.uniform(250, 300, (T, Y, X))),
            "flagged": (("lat", "lon"), np.where(RNG.random((Y, X)) < 0.2, -999.0, RNG.random((Y, X)))),
            "mask": (("lat", "lon"), RNG.integers(0, 3, (Y, X)).astype("i2")),
            "nocoord": (("x",), np.arange(7, dtype="i4")),  # a dimension without a coordinate variable
        },
        coords={"time": pd.date_range("2001-01-01", periods=T, freq="h"), "lat": np.linspace(-60, 60, Y),
                "lon": np.arange(X, dtype="f8")},
        attrs={"title": "lazymem netcdf test", "history": "written by the test"},
    )
    ds["packed"].encoding = {"dtype": "i2", "scale_factor": 0.01, "add_offset": 275.0, "_FillValue": -9999}
    ds["flagged"].encoding = {"_FillValue": -999.0}
    return ds


DATASET = _dataset()


def _same(got: xr.Dataset, want: xr.Dataset) -> None:
    assert want.data_vars and sorted(got.variables) == sorted(want.variables)
    assert dict(got.sizes) == dict(want.sizes) and set(got.coords) == set(want.coords)
    np.testing.assert_equal(got.attrs, want.attrs)
    for name in want.variables:
        assert got[name].dims == want[name].dims, name
        np.testing.assert_equal(got[name].attrs, want[name].attrs)
        assert_same_array(got[name].values, want[name].values)


@needs_hdf5
@pytest.mark.parametrize("options", [{}, {"mask_and_scale": False}, {"decode_cf": False},
                                     {"drop_variables": ["packed", "lon"]}])
def test_a_netcdf4_file_reads_as_engine_netcdf4_does(tmp_path: Path, options: dict) -> None:
    pytest.importorskip("netCDF4")
    path = str(tmp_path / "era.nc")
    DATASET.to_netcdf(path, engine="netcdf4", encoding={"t2m": {"chunksizes": (8, Y, X), "zlib": True}})
    with xr.open_dataset(path, engine="netcdf4", **options) as want, \
            xr.open_dataset(path, engine=LazymemBackendEntrypoint, **options) as got:
        _same(got, want)


@needs_hdf5
def test_a_netcdf4_file_opens_lazily_and_a_selection_fetches_its_chunks(tmp_path: Path) -> None:
    pytest.importorskip("netCDF4")
    path = str(tmp_path / "era.nc")
    DATASET.to_netcdf(path, engine="netcdf4", encoding={"t2m": {"chunksizes": (4, Y, X), "zlib": True}})
    with xr.open_dataset(path, engine=LazymemBackendEntrypoint, readahead=0, chunk_bytes=16384) as ds:
        store = ds._close.__self__
        assert isinstance(store, LazymemStore) and store._arrays == {}  # coordinates read, nothing opened
        lazy = ds.t2m.data
        assert isinstance(lazy, lazymem.LazyArray) and np.shares_memory(ds.t2m.values, lazy)
        step = float(ds.t2m.isel(time=5).sum())
        assert step == float(DATASET.t2m.isel(time=5).sum())
        assert 0 < lazymem.stats(lazy).chunks_installed < lazymem.stats(lazy).chunks_total


@needs_hdf5
def test_a_plain_hdf5_file_gets_numbered_dimensions(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    path = str(tmp_path / "plain.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("a", data=np.arange(24, dtype="<i4").reshape(6, 4), chunks=(3, 4))
        f.create_dataset("b", data=np.arange(5.0))
        f["a"].attrs["note"] = "chunked"
    with xr.open_dataset(path, engine=LazymemBackendEntrypoint) as ds:
        assert ds.a.dims == ("dim_0", "dim_1") and ds.b.dims == ("b_dim_0",) and ds.a.attrs["note"] == "chunked"
        assert_same_array(ds.a.values, np.arange(24, dtype="<i4").reshape(6, 4))
        assert_same_array(ds.b.values, np.arange(5.0))


@needs_netcdf3
def test_a_netcdf3_file_reads_as_engine_scipy_does(tmp_path: Path) -> None:
    pytest.importorskip("scipy")
    path = str(tmp_path / "era3.nc")
    DATASET.to_netcdf(path, engine="scipy", format="NETCDF3_64BIT")
    with xr.open_dataset(path, engine="scipy") as want, xr.open_dataset(path, engine=LazymemBackendEntrypoint) as got:
        _same(got, want)


@needs_hdf5
def test_a_netcdf4_file_over_http_opens_with_metadata_and_coordinates_only(http_store) -> None:
    pytest.importorskip("netCDF4")
    big = xr.Dataset({"t2m": (("time", "lat", "lon"), RNG.standard_normal((200, 100, 100)).astype("f4"))},
                     coords={"time": np.arange(200.0), "lat": np.linspace(-90, 90, 100), "lon": np.arange(100.0)})
    path = http_store.dir / "big.nc"
    big.to_netcdf(path, engine="netcdf4", encoding={"t2m": {"chunksizes": (10, 100, 100), "zlib": True}})
    size = path.stat().st_size
    http_store.server.reset()
    # units of 100 pages (a 10-step chunk is 400,000 bytes): a selection meets a few chunks, not the array
    with xr.open_dataset(f"{http_store.url}/big.nc", engine=LazymemBackendEntrypoint, readahead=0,
                         chunk_bytes=409600) as ds:
        requests = http_store.server.control()["requests"]
        fetched = sum(_range_bytes(r[2], size) for r in requests if r[0] == "GET")
        print(f"open: {len(requests)} requests, {fetched} bytes of a {size}-byte file")
        assert fetched < size // 8  # metadata (read again for each coordinate) and three coordinates
        http_store.server.reset()
        assert_same_array(ds.t2m.isel(time=slice(20, 30)).values, big.t2m.values[20:30])
        requests = http_store.server.control()["requests"]
        fetched = sum(_range_bytes(r[2], size) for r in requests if r[0] == "GET")
        print(f"time steps 20..29: {len(requests)} requests, {fetched} bytes")
        assert fetched < size // 4  # two units: the chunks of steps 10..39 and the index, not the file
        assert_same_array(ds.t2m.values, big.t2m.values)


def _range_bytes(byte_range: str | None, size: int) -> int:
    if byte_range is None:
        return size
    lo, _, hi = byte_range.removeprefix("bytes=").partition("-")
    if not lo:
        return min(int(hi), size)
    return min(int(hi) if hi else size - 1, size - 1) + 1 - int(lo)

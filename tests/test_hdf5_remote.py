"""HDF5, NetCDF4 and NetCDF3 files over the HTTP Range server and moto's S3 server (real servers in
their own processes, tests/remote.py): values equal to h5py / netCDF4, open in a small bounded
number of requests independent of the dataset's size, chunk fetches by byte range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lazymem
from lazymem.sources.formats import open_array_source

from .conftest import assert_same_array

# hdf5plugin before netCDF4: netCDF4 brings its own copy of the HDF5 library, and hdf5plugin's
# filters loaded after it fail to register with h5py's ("error during user callback") in this process.
try:
    import hdf5plugin  # noqa: F401
except ImportError:
    pass
h5py = pytest.importorskip("h5py")

RNG = np.random.default_rng(5)


def _write_h5(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> np.ndarray:
    data = np.cumsum(RNG.standard_normal(shape), axis=0).astype("<f4")
    with h5py.File(path, "w") as f:
        f.create_dataset("chunked", data=data, chunks=chunks, compression="gzip", compression_opts=1, shuffle=True)
        f.create_dataset("contiguous", data=data)
        sparse = f.create_dataset("sparse", shape=shape, dtype="<i4", chunks=chunks, fillvalue=-1)
        sparse[:chunks[0]] = 5
    return data


def _gets(state: dict) -> list[list]:
    return [r for r in state["requests"] if r[0] == "GET"]


def test_hdf5_over_http_reads_as_h5py(http_store) -> None:
    data = _write_h5(http_store.dir / "a.h5", (80, 60, 50), (10, 30, 50))
    url = f"{http_store.url}/a.h5"
    for path in ("chunked", "contiguous"):
        a = lazymem.open(url, path=path, readahead=0)
        assert a[41, 3, 7] == data[41, 3, 7]
        assert_same_array(a, data)
        assert_same_array(lazymem.load(url, path=path), data)
    with h5py.File(http_store.dir / "a.h5") as f:
        sparse = f["sparse"][()]
    assert_same_array(lazymem.open(url, path="sparse"), sparse)
    g = lazymem.open_group(url)
    assert sorted(g) == ["chunked", "contiguous", "sparse"]


@pytest.mark.parametrize("scale", [1, 16])
def test_open_over_http_costs_a_few_requests_whatever_the_size(http_store, scale: int) -> None:
    """Open reads the signature (the formats probe: a suffix GET and a 16-byte GET) and h5py's
    metadata through 64 KiB blocks: a handful, the same for a 1 MB and a 16 MB dataset."""
    _write_h5(http_store.dir / "s.h5", (20 * scale, 100, 100), (10, 100, 100))
    url = f"{http_store.url}/s.h5"
    counts = {}
    for path in ("chunked", "contiguous"):
        http_store.server.control(reset=1)
        source = open_array_source(url, path)
        gets = _gets(http_store.server.control())
        counts[path] = len(gets)
        assert all(r[2] is not None for r in gets), "no whole-file GET"
        assert len(gets) <= 8, gets
        fetched = sum(_range_bytes(r[2]) for r in gets)
        assert fetched <= 8 * 65536 + 16, fetched
        assert source.nbytes == 20 * scale * 100 * 100 * 4


def _range_bytes(header: str) -> int:
    spec = header.split("=", 1)[1]
    if spec.startswith("-"):
        return int(spec[1:])
    a, b = spec.split("-")
    return int(b) - int(a) + 1


def test_a_touch_fetches_only_the_chunks_of_its_unit(http_store) -> None:
    data = _write_h5(http_store.dir / "t.h5", (100, 100, 100), (10, 100, 100))  # 400 KB chunks
    url = f"{http_store.url}/t.h5"
    a = lazymem.open(url, path="chunked", readahead=0, chunk_bytes=400_000 // 4096 * 4096)
    http_store.server.control(reset=1)
    assert a[55, 2, 3] == data[55, 2, 3]
    gets = _gets(http_store.server.control())
    assert 1 <= len(gets) <= 2 and sum(_range_bytes(r[2]) for r in gets) < 2 * 400_000, gets


def test_netcdf4_and_netcdf3_over_http(http_store) -> None:
    netCDF4 = pytest.importorskip("netCDF4")
    field = RNG.standard_normal((30, 20, 10)).astype("f4")
    for fmt in ("NETCDF4", "NETCDF3_CLASSIC", "NETCDF3_64BIT_DATA"):
        with netCDF4.Dataset(http_store.dir / f"{fmt}.nc", "w", format=fmt) as ds:
            for name, n in (("time", None), ("y", 20), ("x", 10)):
                ds.createDimension(name, n)
            ds.createVariable("tas", "f4", ("time", "y", "x"))[:] = field
            ds.createVariable("fixed", "i2", ("y", "x"))[:] = np.arange(200).reshape(20, 10)
        url = f"{http_store.url}/{fmt}.nc"
        with netCDF4.Dataset(http_store.dir / f"{fmt}.nc") as ds:
            ds.set_auto_maskandscale(False)
            want = {k: ds[k][:] for k in ("tas", "fixed")}
        for name, expect in want.items():
            got = lazymem.open(url, path=name)
            assert np.array_equal(got, expect) and got.shape == expect.shape, (fmt, name)
            assert lazymem.open_group(url).arrays[name].dimension_names == (("time", "y", "x") if name == "tas"
                                                                            else ("y", "x"))


def test_hdf5_and_netcdf3_over_s3(s3_store, tmp_path: Path) -> None:
    import fsspec

    options = s3_store.storage_options
    data = _write_h5(tmp_path / "a.h5", (40, 60, 50), (10, 30, 50))
    fs = fsspec.filesystem("s3", **options)
    fs.put(str(tmp_path / "a.h5"), "test/a.h5")
    s3_store.control(reset=1)
    source = open_array_source("s3://test/a.h5", "chunked", options)
    assert len(s3_store.control()["requests"]) <= 8
    assert source.describe()["chunks_allocated"] == 8
    for path in ("chunked", "contiguous"):
        a = lazymem.open("s3://test/a.h5", path=path, storage_options=options, readahead=0)
        assert a[17, 4, 9] == data[17, 4, 9]
        assert_same_array(a, data)
        assert_same_array(lazymem.load("s3://test/a.h5", path=path, storage_options=options), data)
    netCDF4 = pytest.importorskip("netCDF4")
    with netCDF4.Dataset(tmp_path / "old.nc", "w", format="NETCDF3_64BIT_OFFSET") as ds:
        ds.createDimension("time", None)
        ds.createDimension("x", 33)
        ds.createVariable("tas", "f8", ("time", "x"))[:] = np.arange(33 * 12, dtype="f8").reshape(12, 33)
        ds.createVariable("n", "i4", ("time",))[:] = np.arange(12)
    fs.put(str(tmp_path / "old.nc"), "test/old.nc")
    tas = lazymem.open("s3://test/old.nc", path="tas", storage_options=options)
    assert tas.dtype == np.dtype(">f8") and np.array_equal(tas, np.arange(33 * 12).reshape(12, 33))
    assert np.array_equal(lazymem.load("s3://test/old.nc", path="n", storage_options=options), np.arange(12))


def test_metadata_reads_are_retried_and_storage_failures_are_fetch_errors(http_store) -> None:
    """h5py's reads at open go through lazymem's storage layer: a transient 503 is sent again; a 403
    is a FetchError (the storage's fault), not a FormatError (the file's)."""
    import fsspec

    from lazymem.sources.hdf5 import open_hdf5
    from lazymem.storage import StoredObject

    data = _write_h5(http_store.dir / "r.h5", (20, 30, 50), (10, 30, 50))
    url = f"{http_store.url}/r.h5"
    storage = StoredObject.open(fsspec.filesystem("http"), url)
    http_store.server.control(fail_next=1, reset=1)  # the first metadata block fails once
    source = open_hdf5(storage, url, "chunked", None)
    gets = _gets(http_store.server.control())
    assert gets[0][2] == gets[1][2], gets  # the same block, asked again
    assert_same_array(source.read_all(), data)
    http_store.server.control(fail_status=403, reset=1)
    with pytest.raises(lazymem.FetchError, match=r"PermissionError|403"):
        open_hdf5(StoredObject.open(fsspec.filesystem("http"), url, storage.size), url, "chunked", None)

"""xarray's ``engine="lazymem"``: the same dataset as xarray's own engines, byte for byte, with
nothing read at open but metadata and dimension coordinates, and only the selected part fetched."""

from __future__ import annotations

import gc
import importlib.util
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

import lazymem
from lazymem.region import live_regions

from .conftest import ROOT, assert_same_array

xr = pytest.importorskip("xarray")
zarr = pytest.importorskip("zarr")
pd = pytest.importorskip("pandas")

from lazymem.integrations.xarray import LazymemBackendEntrypoint, LazymemStore  # noqa: E402

ENGINE = LazymemBackendEntrypoint  # the class: the entry point exists once lazymem is (re)installed

RNG = np.random.default_rng(15)
T, Y, X = 400, 30, 40  # t2m: 1.9 MB of float32, chunks (10, 15, 40): 80 chunks


def _dataset() -> xr.Dataset:
    time = pd.date_range("2000-01-01", periods=T, freq="6h")
    t2m = np.cumsum(RNG.standard_normal((T, Y, X)), axis=0).astype("f4")
    t2m[3, 4, 5] = np.nan
    ds = xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), t2m, {"units": "K", "long_name": "2 m temperature"}),
            "packed": (("time", "lat", "lon"), RNG.uniform(250, 300, (T, Y, X))),
            "flagged": (("lat", "lon"), np.where(RNG.random((Y, X)) < 0.2, -999.0, RNG.random((Y, X)))),
            "count": (("lat", "lon"), RNG.integers(0, 100, (Y, X)).astype("i2")),
            "elevation": (("lat", "lon"), RNG.uniform(0, 4000, (Y, X)).astype("f4")),
        },
        coords={"time": time, "lat": np.linspace(-90, 90, Y), "lon": np.arange(X, dtype="f8"),
                "station": ("lon", np.arange(X, dtype="i4") * 3)},
        attrs={"title": "lazymem xarray test", "version": 3},
    )
    ds["packed"].encoding = {"dtype": "i2", "scale_factor": 0.01, "add_offset": 275.0, "_FillValue": -9999}
    ds["flagged"].encoding = {"_FillValue": -999.0}  # a finite fill value: masked on decode
    return ds


DATASET = _dataset()
CHUNKS = {"t2m": {"chunks": (10, 15, 40)}, "packed": {"chunks": (10, 15, 40)}}


def _write(root: Path, fmt: int, name: str = "era.zarr", consolidated: bool = False) -> str:
    url = str(root / name)
    encoding = {k: {**DATASET[k].encoding, **v} for k, v in CHUNKS.items()}  # to_zarr's encoding replaces theirs
    DATASET.to_zarr(url, mode="w", zarr_format=fmt, encoding=encoding, consolidated=consolidated)
    return url


def _store(ds: xr.Dataset) -> LazymemStore:
    store = ds._close.__self__  # StoreBackendEntrypoint hands the store's close to the dataset
    assert isinstance(store, LazymemStore)
    return store


def _assert_same_dataset(got: xr.Dataset, want: xr.Dataset) -> None:
    assert sorted(got.variables) == sorted(want.variables)
    assert dict(got.sizes) == dict(want.sizes) and got.attrs == want.attrs
    assert set(got.coords) == set(want.coords)
    assert want.data_vars, "an empty dataset compares equal to anything"
    for name in want.variables:
        assert got[name].dims == want[name].dims, name
        np.testing.assert_equal(got[name].attrs, want[name].attrs)  # NaN fill values equal too
        assert_same_array(got[name].values, want[name].values)


# --- the same dataset as xarray's own engines -----------------------------------------------------------
@pytest.mark.parametrize("fmt", [2, 3])
def test_a_zarr_store_reads_as_engine_zarr_does(tmp_path: Path, fmt: int) -> None:
    url = _write(tmp_path, fmt)
    with xr.open_dataset(url, engine="zarr", consolidated=False) as want, xr.open_dataset(url, engine=ENGINE) as got:
        _assert_same_dataset(got, want)
        assert got.t2m.encoding["chunks"] == (10, 15, 40)
        # dask blocks of 4 install units (~1 MiB each) or more, in whole chunk rows: here the whole array
        assert got.t2m.encoding["preferred_chunks"] == {"time": T, "lat": Y, "lon": X}
        assert np.isnan(got.t2m.values[3, 4, 5]) and np.isnan(got.flagged.values).sum() > 0
        assert got.packed.dtype == np.float64 and got["count"].dtype == want["count"].dtype


@pytest.mark.parametrize("options", [{"decode_cf": False}, {"mask_and_scale": False}, {"decode_times": False},
                                     {"drop_variables": ["packed", "lat"]}, {"drop_variables": "t2m"}])
def test_decoding_options_behave_as_in_engine_zarr(tmp_path: Path, options: dict) -> None:
    url = _write(tmp_path, 3)
    with xr.open_dataset(url, engine="zarr", consolidated=False, **options) as want, \
            xr.open_dataset(url, engine=ENGINE, **options) as got:
        _assert_same_dataset(got, want)


def test_a_subgroup_opens_with_group(tmp_path: Path) -> None:
    url = _write(tmp_path, 3)
    DATASET[["elevation"]].to_zarr(url, group="static/v1", mode="w")
    with xr.open_dataset(url, engine="zarr", consolidated=False, group="static/v1") as want, \
            xr.open_dataset(url, engine=ENGINE, group="/static/v1") as got:
        _assert_same_dataset(got, want)
    with pytest.raises(lazymem.ArrayNotFoundError, match="no group 'nothing'"):
        xr.open_dataset(url, engine=ENGINE, group="nothing")


def test_a_single_npy_zst_is_one_variable_with_numbered_dimensions(tmp_path: Path) -> None:
    src = np.cumsum(RNG.standard_normal((256, 1024)), axis=0).astype("f4")  # 1 MiB
    path = str(tmp_path / "temp.npy.zst")
    lazymem.save(path, src, chunk_bytes=64 << 10)
    with xr.open_dataset(path, engine=ENGINE, readahead=0) as ds:
        assert list(ds.data_vars) == ["temp"] and ds.temp.dims == ("dim_0", "dim_1")
        assert ds.temp.encoding["preferred_chunks"] == {"dim_0": 64, "dim_1": 1024}  # 4 units of 64 KiB a block
        lazy = ds.temp.data
        assert isinstance(lazy, lazymem.LazyArray) and lazymem.stats(lazy).chunks_installed == 0
        values = ds.temp.values
        assert np.shares_memory(values, lazy) and np.shares_memory(ds.temp.to_numpy(), lazy)  # no copy
        assert lazymem.stats(lazy).chunks_installed == 0  # .values touched nothing
        assert float(ds.temp.isel(dim_0=100).mean()) == pytest.approx(float(src[100].mean()))
        assert lazymem.stats(lazy).chunks_installed == 1  # row 100: one unit of 16 rows
        assert_same_array(values, src)


def test_a_zarr_array_url_is_one_variable(tmp_path: Path) -> None:
    url = _write(tmp_path, 3)
    with xr.open_dataset(url + "/elevation", engine=ENGINE) as ds:
        assert list(ds.data_vars) == ["elevation"] and ds.elevation.dims == ("lat", "lon")
        assert_same_array(ds.elevation.values, DATASET.elevation.values)


def test_arrays_without_dimension_names_get_numbered_dimensions(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=2)
    group.create_array("a", shape=(6, 4), dtype="<i4", chunks=(3, 4))[...] = np.arange(24).reshape(6, 4)
    group.create_array("b", shape=(5,), dtype="<f8", chunks=(5,))[...] = np.arange(5.0)
    with xr.open_dataset(str(tmp_path / "plain.zarr"), engine=ENGINE, mask_and_scale=False) as ds:
        assert ds.a.dims == ("dim_0", "dim_1") and ds.b.dims == ("b_dim_0",)  # dim_0 would have two sizes
        assert_same_array(ds.a.values, np.arange(24, dtype="<i4").reshape(6, 4))


# --- laziness ---------------------------------------------------------------------------------------------
def test_variables_stay_unopened_until_indexed_and_decode_only_the_selection(tmp_path: Path) -> None:
    url = _write(tmp_path, 3)
    with xr.open_dataset(url, engine=ENGINE, chunk_bytes=65536, readahead=0) as ds, \
            xr.open_dataset(url, engine="zarr", consolidated=False) as want:
        store = _store(ds)
        repr(ds)
        assert store._arrays == {}  # printing a dataset opens nothing
        got = ds.packed.isel(time=slice(50, 52), lat=3).values  # scale/offset: decoded lazily (a copy)
        assert list(store._arrays) == ["packed"]
        packed = store.array("packed")
        assert lazymem.stats(packed).chunks_installed == 1  # 2 time steps of int16: within one 64 KiB unit
        assert_same_array(got, want.packed.isel(time=slice(50, 52), lat=3).values)
        assert lazymem.stats(packed).chunks_total == -(-T * Y * X * 2 // 65536)
        masked = ds.flagged.values  # a finite _FillValue: a decoded copy, NaN where the fill was
        assert not np.shares_memory(masked, store.array("flagged"))
        assert_same_array(masked, want.flagged.values)


def test_outer_and_vectorized_selections_fetch_only_their_units(tmp_path: Path) -> None:
    url = _write(tmp_path, 3)
    with xr.open_dataset(url, engine=ENGINE, chunk_bytes=65536, readahead=0) as ds, \
            xr.open_dataset(url, engine="zarr", consolidated=False) as want:
        outer = {"time": [3, 390], "lat": [1, 5, 29]}  # two vectors: orthogonal indexing
        got = ds.t2m.isel(outer).values
        assert lazymem.stats(ds.t2m.data).chunks_installed == 2  # the units of time steps 3 and 390
        assert_same_array(got, want.t2m.isel(outer).values)
        points = {"time": xr.DataArray([7, 250], dims="p"), "lon": xr.DataArray([0, 39], dims="p")}
        assert_same_array(ds.packed.isel(points).values, want.packed.isel(points).values)
        assert_same_array(ds.t2m.isel(points).values, want.t2m.isel(points).values)
        assert lazymem.stats(ds.t2m.data).chunks_installed == 3  # step 250's unit more (step 7's was loaded)


def test_a_selection_that_cannot_load_raises_and_the_rest_reads(tmp_path: Path) -> None:
    url = _write(tmp_path, 3)
    for chunk in (Path(url) / "t2m").rglob("c/30/*/*"):  # the chunks of time steps 300..309
        chunk.write_bytes(b"not a chunk")
    with xr.open_dataset(url, engine=ENGINE, chunk_bytes=65536, readahead=0) as ds:
        with pytest.raises(lazymem.LazymemError):
            _ = ds.t2m.isel(time=305).values  # prefetched: an exception, not SIGBUS at the first touch
        assert_same_array(ds.t2m.isel(time=slice(0, 100)).values, DATASET.t2m.values[:100])
        whole = ds.t2m.values  # the whole array: a lazy view, nothing fetched (units load on touch)
        assert_same_array(whole[200:250], DATASET.t2m.values[200:250])


def test_a_float_variable_with_a_nan_fill_value_is_the_lazy_memory_itself(tmp_path: Path) -> None:
    url = _write(tmp_path, 3)  # xarray wrote _FillValue=NaN for t2m (its default for floats)
    with xr.open_dataset(url, engine=ENGINE) as ds:
        assert np.isnan(ds.t2m.encoding["_FillValue"])
        lazy = _store(ds).array("t2m")
        assert np.shares_memory(ds.t2m.values, lazy) and isinstance(ds.t2m.data, lazymem.LazyArray)


def _bytes_served(records: list, root: Path) -> dict[str, int]:
    """Bytes each path was answered with, from the server's request log (GET ranges, whole GETs)."""
    served: dict[str, int] = {}
    for method, path, byte_range in records:
        name = urllib.parse.unquote(path.split("?")[0].lstrip("/"))
        file = root / name
        if method != "GET" or not file.is_file():
            served.setdefault(name, 0)
            continue
        size = file.stat().st_size
        if byte_range is None:
            n = size
        else:
            lo, _, hi = byte_range.removeprefix("bytes=").partition("-")
            n = int(hi or size - 1) + 1 - int(lo) if lo else min(int(hi), size)
            n = min(n, size)
        served[name] = served.get(name, 0) + n
    return served


def test_over_http_open_reads_metadata_and_coordinates_only_and_a_selection_a_sliver(http_store) -> None:
    _write(http_store.dir, 3, consolidated=True)  # over HTTP a store cannot be listed: its metadata says all
    url = f"{http_store.url}/era.zarr"
    root = http_store.server.root
    http_store.server.reset()
    ds = xr.open_dataset(url, engine=ENGINE, chunk_bytes=65536, readahead=0)
    served = _bytes_served(http_store.server.control()["requests"], root)
    prefix = f"{http_store.dir.name}/era.zarr/"
    paths = {p.removeprefix(prefix) for p in served}
    data = {p for p in paths if p.split("/")[0] in ("t2m", "packed", "flagged", "count", "elevation", "station")
            and "/c/" in p}
    assert not data, data  # no chunk of any non-index variable
    store_dir = http_store.dir / "era.zarr"
    metadata = sum(f.stat().st_size for f in store_dir.rglob("*") if f.name in ("zarr.json", ".zattrs", ".zgroup"))
    coords = sum(f.stat().st_size for d in ("time", "lat", "lon") for f in (store_dir / d).rglob("*")
                 if f.is_file() and f.name != "zarr.json")
    requests = http_store.server.control()["requests"]
    print(f"open: {len(requests)} requests, {sum(served.values())} bytes (all metadata files {metadata} B, "
          f"coordinate chunks {coords} B)")
    assert sum(served.values()) <= metadata + coords  # each metadata file at most once, each coordinate once

    http_store.server.reset()
    with xr.open_dataset(str(http_store.dir / "era.zarr"), engine="zarr", consolidated=False) as want:
        got = ds.t2m.isel(time=slice(0, 2)).values
        assert_same_array(got, want.t2m.isel(time=slice(0, 2)).values)
    served = _bytes_served(http_store.server.control()["requests"], root)
    chunks = sorted(p.removeprefix(prefix) for p, n in served.items() if "/c/" in p and n)
    # one 64 KiB unit: time steps 0..13 (4,800 B each), which lie in the first two rows of chunks
    assert chunks == ["t2m/c/0/0/0", "t2m/c/0/1/0", "t2m/c/1/0/0", "t2m/c/1/1/0"], chunks
    ds.close()


def test_over_http_values_equal_engine_zarr(http_store) -> None:
    _write(http_store.dir, 2, consolidated=True)
    url = f"{http_store.url}/era.zarr"
    with xr.open_dataset(url, engine="zarr") as want, xr.open_dataset(url, engine=ENGINE) as got:
        _assert_same_dataset(got, want)


# --- dask -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [{}, "auto"])
def test_chunks_give_dask_variables_that_fetch_only_their_blocks(tmp_path: Path, chunks) -> None:
    pytest.importorskip("dask.array")
    url = _write(tmp_path, 3)
    with xr.open_dataset(url, engine=ENGINE, chunks=chunks, chunk_bytes=65536, readahead=0) as ds, \
            xr.open_dataset(url, engine="zarr", consolidated=False) as want:
        assert ds.t2m.chunks is not None and ds.packed.chunks is not None
        if chunks == {}:
            # blocks of 4 units of 64 KiB (55 steps of 4,800 B) in whole chunk rows (10 steps)
            assert ds.t2m.chunks == ((60,) * 6 + (40,), (Y,), (X,))
        store = _store(ds)
        assert store._arrays == {}  # building the graph opened (and hashed) nothing
        first = ds.t2m.isel(time=0).values
        assert lazymem.stats(store.array("t2m")).chunks_installed == 1
        assert_same_array(first, want.t2m.isel(time=0).values)
        assert float(ds.packed.mean().compute()) == float(want.packed.mean())
        assert_same_array(ds.t2m.values, want.t2m.values)


def test_dataarray_chunk_of_a_lazy_array_neither_hashes_nor_copies(tmp_path: Path) -> None:
    pytest.importorskip("dask.array")
    if importlib.util.find_spec("lazymem.integrations.dask") is None or "copy" not in vars(lazymem.LazyArray):
        pytest.skip("needs the dask tokenizer (lazymem.integrations.dask) and the lazy LazyArray.copy")
    import lazymem.integrations.dask as lazy_dask

    lazy_dask.register_now()
    path = str(tmp_path / "big.npy.zst")
    lazymem.save(path, np.arange(4 << 20, dtype="f4").reshape(-1, 1024), chunk_bytes=1 << 20)
    a = lazymem.open(path, readahead=0)
    chunked = xr.DataArray(a).chunk()  # xarray tokenizes the data, dask's from_array copies it
    assert lazymem.stats(a).chunks_installed == 0
    assert float(chunked[5].sum().compute()) == float(np.arange(5 * 1024, 6 * 1024, dtype="f4").sum())


# --- lifetime ---------------------------------------------------------------------------------------------
def test_close_frees_the_memory_and_the_dataset_stays_usable(tmp_path: Path) -> None:
    url = _write(tmp_path, 3)
    before = len(live_regions())
    ds = xr.open_dataset(url, engine=ENGINE)
    values = ds.t2m.values
    assert np.nansum(values, dtype="f8") == np.nansum(DATASET.t2m.values, dtype="f8")  # every page touched
    store = _store(ds)
    lazy = store.array("t2m")
    assert lazymem.stats(lazy).resident_bytes == lazy.nbytes
    ds.close()
    assert lazymem.stats(lazy).resident_bytes == 0 and store._arrays == {}
    assert_same_array(values, DATASET.t2m.values)  # fetched again on touch, never zeros
    assert_same_array(ds.elevation.values, DATASET.elevation.values)  # opens anew after close
    loaded = xr.load_dataset(url, engine=ENGINE)  # open, load, close: the values outlive the close
    assert_same_array(loaded.t2m.values, DATASET.t2m.values)
    with xr.open_dataset(url, engine=ENGINE) as again:
        again.t2m.data.close()  # the array closed by hand first: closing the dataset still works
    del ds, values, lazy, loaded, store, again
    gc.collect()
    assert len(live_regions()) == before  # every mapping went with its last view


# --- bad input ----------------------------------------------------------------------------------------------
def test_a_missing_url_is_array_not_found(tmp_path: Path) -> None:
    with pytest.raises(lazymem.ArrayNotFoundError):
        xr.open_dataset(str(tmp_path / "nothing.zarr"), engine=ENGINE)
    with pytest.raises(lazymem.ArrayNotFoundError):
        xr.open_dataset(str(tmp_path / "nothing.npy.zst"), engine=ENGINE)


def test_a_variable_of_python_objects_is_named_with_the_remedy(tmp_path: Path) -> None:
    url = _write(tmp_path, 3)
    group = zarr.open_group(url, mode="a")
    names = group.create_array("names", shape=(X,), dtype=str, chunks=(X,))
    names[...] = np.array([f"s{i}" for i in range(X)])
    names.attrs["_ARRAY_DIMENSIONS"] = ["lon"]
    with pytest.raises(lazymem.FormatError, match=r"drop_variables=\['names'\]"):
        xr.open_dataset(url, engine=ENGINE)
    with xr.open_dataset(url, engine=ENGINE, drop_variables=["names"]) as ds:
        assert "names" not in ds.variables


# --- the entry point ------------------------------------------------------------------------------------------
def test_the_entry_point_names_this_backend() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["xarray.backends"]["lazymem"]
    module, _, name = target.partition(":")
    assert getattr(importlib.import_module(module), name) is LazymemBackendEntrypoint
    assert "xarray" in project["project"]["optional-dependencies"]


def test_engine_lazymem_by_name(tmp_path: Path) -> None:
    if "lazymem" not in xr.backends.list_engines():
        pytest.skip("the installed lazymem's metadata predates the entry point: pip install -e . registers it")
    path = str(tmp_path / "x.npy.zst")
    lazymem.save(path, np.arange(12.0).reshape(3, 4))
    with xr.open_dataset(path, engine="lazymem") as ds, xr.open_dataset(path) as guessed:
        assert_same_array(ds.x.values, np.arange(12.0).reshape(3, 4))
        assert_same_array(guessed.x.values, np.arange(12.0).reshape(3, 4))


def test_guess_can_open_claims_our_files_and_leaves_zarr_to_engine_zarr(tmp_path: Path) -> None:
    guess = LazymemBackendEntrypoint().guess_can_open
    path = tmp_path / "no-suffix"
    lazymem.save(str(path), np.arange(10))
    np.save(tmp_path / "plain.npy", np.arange(3))
    (tmp_path / "notes.txt").write_text("hello")
    assert guess(str(path)) and guess(path) and guess(str(tmp_path / "plain.npy"))  # by content
    assert guess("https://example.org/a/t2m.npy.zst") and guess("s3://b/x.zst")  # by suffix
    assert not guess(str(tmp_path / "notes.txt")) and not guess(str(tmp_path / "missing"))
    assert not guess(_write(tmp_path, 3)) and not guess("s3://b/era5.zarr")
    assert guess("https://example.org/f.nc") == (importlib.util.find_spec("lazymem.sources.hdf5") is not None)


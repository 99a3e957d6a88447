"""NetCDF3 files (classic, 64-bit offset, CDF5) written by netCDF4 and scipy.io.netcdf: fixed and
record variables through ``lazymem.open`` / ``load`` / ``open_group``, values and dtypes (big-endian)
as netCDF4 reads them raw; a damaged or fuzzed header is a FormatError, never other data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymem
from lazymem.sources.formats import open_array_source
from lazymem.sources.netcdf3 import _NeedMore, layouts, parse_header

from .conftest import assert_same_array
from .source_conformance import SourceTests

# hdf5plugin before netCDF4: netCDF4 brings its own copy of the HDF5 library, and hdf5plugin's
# filters loaded after it fail to register with h5py's ("error during user callback") in this process.
try:
    import hdf5plugin  # noqa: F401
except ImportError:
    pass
netCDF4 = pytest.importorskip("netCDF4")

FORMATS = ["NETCDF3_CLASSIC", "NETCDF3_64BIT_OFFSET", "NETCDF3_64BIT_DATA"]
RNG = np.random.default_rng(3)


def _write(path: Path, fmt: str, nrec: int = 9) -> dict[str, np.ndarray]:
    """Fixed and record variables of several types (a record variable of one byte per record too:
    netCDF-C pads it in the record only when there are several record variables)."""
    variables = {
        "tas": ("f4", ("time", "y", "x")), "flag": ("i1", ("time",)), "count": ("i2", ("time", "x")),
        "elev": ("f8", ("y", "x")), "x": ("i4", ("x",)), "name": ("S1", ("y", "strlen")),
    }
    if fmt == "NETCDF3_64BIT_DATA":
        variables["big"] = ("u8", ("time", "y"))
    sizes = {"time": nrec, "y": 13, "x": 7, "strlen": 3}
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        ds.history = "written by the test"
        for name, n in sizes.items():
            ds.createDimension(name, None if name == "time" else n)
        for name, (dtype, dims) in variables.items():
            v = ds.createVariable(name, dtype, dims)
            v.set_auto_maskandscale(False)
            v.long_name = f"the {name}"
            shape = tuple(sizes[d] for d in dims)
            if dtype == "S1":
                v[:] = RNG.choice(list(b"abc"), size=shape).astype("u1").view("S1")
            else:
                v[:] = (RNG.standard_normal(shape) * 40).astype(dtype)
    with netCDF4.Dataset(path) as ds:
        ds.set_auto_maskandscale(False)
        ds.set_auto_chartostring(False)
        return {name: np.asarray(ds[name][:]) for name in variables}


@pytest.fixture(params=FORMATS)
def nc3(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, np.ndarray]]:
    path = tmp_path / "old.nc"
    return str(path), _write(path, request.param)


def _same_values(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert got.dtype.kind == want.dtype.kind and got.dtype.itemsize == want.dtype.itemsize
    if want.dtype.itemsize > 1:
        assert got.dtype.byteorder == ">"  # as stored: NetCDF3 is big-endian
    assert np.array_equal(got, want)


def test_every_variable_opens_and_loads_as_netcdf4_reads_it(nc3) -> None:
    url, want = nc3
    for name, values in want.items():
        a = lazymem.open(url, path=name, readahead=0)
        _same_values(np.asarray(a), values)
        _same_values(lazymem.load(url, path=name), values)


def test_open_group_lists_variables_dimensions_and_attributes(nc3) -> None:
    url, want = nc3
    g = lazymem.open_group(url)
    assert g.format == "netcdf3" and sorted(g) == sorted(want)
    assert g.attrs == {"history": "written by the test"}
    assert g.arrays["tas"].dimension_names == ("time", "y", "x") and g.arrays["tas"].shape == (9, 13, 7)
    assert g.arrays["tas"].attrs == {"long_name": "the tas"}
    _same_values(np.asarray(g["count"]), want["count"])


def test_a_wrong_path_lists_the_variables_and_none_needs_one_data_variable(nc3, tmp_path: Path) -> None:
    url, _ = nc3
    with pytest.raises(lazymem.ArrayNotFoundError, match=r"no variable 'nope'; the file holds: .*tas"):
        lazymem.open(url, path="nope")
    with pytest.raises(lazymem.FormatError, match="name one with path="):
        lazymem.open(url)
    one = tmp_path / "one.nc"
    with netCDF4.Dataset(one, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("x", 5)
        ds.createVariable("x", "f4", ("x",))[:] = np.arange(5)  # a coordinate variable: does not count
        ds.createVariable("v", "i4", ("x",))[:] = np.arange(5) * 2
    assert np.array_equal(lazymem.open(str(one)), np.arange(5) * 2)


@pytest.mark.parametrize("version", [1, 2])
def test_files_written_by_scipy(tmp_path: Path, version: int) -> None:
    from scipy.io import netcdf_file

    path = str(tmp_path / "s.nc")
    temp = RNG.standard_normal((6, 5)).astype(">f4")
    with netcdf_file(path, "w", version=version) as f:
        f.createDimension("time", None)
        f.createDimension("x", 5)
        v = f.createVariable("temp", "f4", ("time", "x"))
        v[:] = temp
        s = f.createVariable("s", "i2", ("time",))  # the only other record variable: 2 bytes padded to 4
        s[:] = np.arange(6)
    assert_same_array(lazymem.load(path, path="temp"), temp)
    assert np.array_equal(lazymem.open(path, path="s"), np.arange(6))


def test_a_single_record_variable_of_bytes_has_unpadded_records(tmp_path: Path) -> None:
    path = tmp_path / "b.nc"
    with netCDF4.Dataset(path, "w", format="NETCDF3_CLASSIC") as ds:
        ds.createDimension("time", None)
        ds.createVariable("b", "i1", ("time",))[:] = np.arange(-50, 51, dtype="i1")
    assert np.array_equal(lazymem.open(str(path)), np.arange(-50, 51))


def test_a_streaming_file_counts_its_records_from_its_size(tmp_path: Path) -> None:
    path = tmp_path / "stream.nc"
    want = _write(path, "NETCDF3_CLASSIC")
    data = bytearray(path.read_bytes())
    data[4:8] = b"\xff\xff\xff\xff"  # numrecs = STREAMING
    path.write_bytes(bytes(data))
    _same_values(lazymem.load(str(path), path="tas"), want["tas"])


def test_a_truncated_file_is_a_format_error(nc3) -> None:
    url, want = nc3
    data = Path(url).read_bytes()
    for keep in (3, 20, len(data) // 2):
        Path(url).write_bytes(data[:keep])
        with pytest.raises(lazymem.FormatError):
            lazymem.load(url, path="tas")
    for keep in range(len(data) - 12, len(data)):  # the end of the last record: data or its padding
        Path(url).write_bytes(data[:keep])
        for name, values in want.items():
            try:
                got = lazymem.load(url, path=name)
            except lazymem.FormatError:
                continue
            _same_values(got, values)  # a variable whose bytes are all there reads right


def test_describe(nc3) -> None:
    url, _ = nc3
    d = open_array_source(url, "tas").describe()
    assert d["format"] == "netcdf3" and d["record_variable"] and d["records"] == 9
    assert d["chunks"] == [1, 13, 7] and d["stored_bytes"] == 9 * 13 * 7 * 4
    assert open_array_source(url, "elev").describe()["record_variable"] is False


class TestRecordVariableSource(SourceTests):
    @pytest.fixture
    def expected(self, tmp_path: Path) -> np.ndarray:
        self.path = tmp_path / "r.nc"
        return _write(self.path, "NETCDF3_64BIT_OFFSET", nrec=200)["tas"].astype(">f4")

    @pytest.fixture
    def source(self, expected: np.ndarray):
        return open_array_source(str(self.path), "tas")


# -- fuzzing: any damage to the header is a FormatError or a file read as the header now says ----------


def _header_and_file(fmt: str) -> tuple[bytes, int]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.nc"
        _write(path, fmt, nrec=3)
        data = path.read_bytes()
    return data, len(data)


SAMPLES = {fmt: _header_and_file(fmt) for fmt in FORMATS}


def _parse(data: bytes, size: int) -> None:
    try:
        header = parse_header(data, size)
    except _NeedMore:
        return
    except lazymem.FormatError:
        return
    try:
        layouts(header, size, "fuzz")
    except lazymem.FormatError:
        return


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(FORMATS), edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                                    min_size=1, max_size=6))
def test_fuzzed_headers_raise_format_errors_only(fmt: str, edits: list[tuple[int, int]]) -> None:
    data, size = SAMPLES[fmt]
    buf = bytearray(data)
    for pos, value in edits:
        if pos < len(buf):
            buf[pos] = value
    _parse(bytes(buf), size)  # no IndexError, MemoryError, UnicodeError, ValueError of numpy...


@settings(max_examples=200, deadline=None)
@given(fmt=st.sampled_from(FORMATS), cut=st.integers(0, 600), size_delta=st.integers(-64, 64))
def test_cut_headers_and_lying_sizes_raise_format_errors_only(fmt: str, cut: int, size_delta: int) -> None:
    data, size = SAMPLES[fmt]
    _parse(data[:cut], max(size + size_delta, 1))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_random_bytes_after_the_magic_raise_format_errors_only(tail: bytes) -> None:
    for magic in (b"CDF\x01", b"CDF\x02", b"CDF\x05"):
        _parse(magic + tail, 1 << 20)


NC_DTYPES = ["i1", "i2", "i4", "f4", "f8"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fmt=st.sampled_from(FORMATS), nrec=st.integers(0, 12),
       variables=st.lists(st.tuples(st.sampled_from(NC_DTYPES), st.booleans(), st.lists(st.integers(1, 9), max_size=2)),
                          min_size=1, max_size=5))
def test_any_mix_of_fixed_and_record_variables(tmp_path: Path, fmt: str, nrec: int, variables) -> None:
    path = tmp_path / "h.nc"
    rng = np.random.default_rng(nrec)
    with netCDF4.Dataset(path, "w", format=fmt) as ds:
        ds.createDimension("rec", None)
        for k, (dtype, is_record, dims) in enumerate(variables):
            names = [f"d{k}_{i}" for i in range(len(dims))]
            for name, n in zip(names, dims):
                ds.createDimension(name, n)
            v = ds.createVariable(f"v{k}", dtype, (["rec"] if is_record else []) + names)
            v.set_auto_maskandscale(False)
            shape = ((nrec,) if is_record else ()) + tuple(dims)
            if math.prod(shape):
                v[:] = (rng.standard_normal(shape) * 100).astype(dtype)
    with netCDF4.Dataset(path) as ds:
        ds.set_auto_maskandscale(False)
        want = {name: np.asarray(ds[name][:]) for name in ds.variables}
    for name, values in want.items():
        _same_values(lazymem.load(str(path), path=name), values)
        source = open_array_source(str(path), name)
        if source.nbytes:
            grid = source.unit_grid(4096)
            out = bytearray(grid.span(0)[1])
            source.read_unit(grid, 0, memoryview(out))
            assert bytes(out) == values.astype(source.dtype).tobytes()[: len(out)]

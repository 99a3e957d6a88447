"""HDF5 and NetCDF4 datasets through ``lazymem.open``, ``load`` and ``open_group``: files written by
h5py and netCDF4, values compared byte for byte with h5py's raw reads (no CF decoding), locally.
Remote storage is in ``test_hdf5_remote.py``, the filters alone in ``test_hdf5_filters.py``."""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

import numpy as np
import pytest

import lazymem
from lazymem.sources.formats import open_array_source

from .conftest import assert_same_array, run_python
from .source_conformance import SourceTests

# hdf5plugin before netCDF4: netCDF4 brings its own copy of the HDF5 library, and hdf5plugin's
# filters loaded after it fail to register with h5py's ("error during user callback") in this process.
try:
    import hdf5plugin  # noqa: F401
except ImportError:
    pass
h5py = pytest.importorskip("h5py")

RNG = np.random.default_rng(17)
FIELD = np.cumsum(RNG.standard_normal((60, 50, 40)), axis=0).astype(">f4")  # 480 KB, big-endian as stored


def _write(path: Path, **datasets: dict) -> str:
    with h5py.File(path, "w") as f:
        for name, options in datasets.items():
            f.create_dataset(name, **options)
    return str(path)


def _h5(url: str, path: str) -> np.ndarray:
    with h5py.File(url, "r") as f:
        return f[path][()]


@pytest.fixture
def sample(tmp_path: Path) -> str:
    sparse = np.zeros((300, 200), dtype="<i2")
    return _write(
        tmp_path / "sample.h5",
        contiguous={"data": FIELD},
        chunked={"data": FIELD, "chunks": (7, 16, 40), "compression": "gzip", "compression_opts": 1, "shuffle": True},
        **{"group/sparse": {"shape": sparse.shape, "dtype": sparse.dtype, "chunks": (64, 64), "fillvalue": -3}},
    )


class TestContiguousSource(SourceTests):
    @pytest.fixture
    def expected(self) -> np.ndarray:
        return FIELD

    @pytest.fixture
    def source(self, sample: str):
        return open_array_source(sample, "contiguous")


class TestChunkedSource(SourceTests):
    @pytest.fixture
    def expected(self) -> np.ndarray:
        return FIELD

    @pytest.fixture
    def source(self, sample: str):
        return open_array_source(sample, "chunked")


def test_a_local_contiguous_dataset_is_mapped_by_the_kernel(sample: str) -> None:
    from lazymem.mapped import MappedArray

    a = lazymem.open(sample, path="contiguous")
    assert isinstance(a, MappedArray) and a.dtype == np.dtype(">f4")
    assert_same_array(a, FIELD)
    assert a.prefetch() >= 0 and lazymem.stats(a).chunks_present == lazymem.stats(a).chunks_total
    clone = pickle.loads(pickle.dumps(a[5:9]))  # by reference: the URL and the dataset's path travel
    assert isinstance(clone, MappedArray) and np.array_equal(clone, FIELD[5:9])
    a.close()
    with pytest.raises(lazymem.ClosedArrayError):
        a.prefetch()


def test_contiguous_and_chunked_datasets_open_lazily_and_read_as_h5py(sample: str) -> None:
    for path in ("chunked", "/chunked"):
        a = lazymem.open(sample, path=path, readahead=0)
        assert isinstance(a, lazymem.LazyArray) and a.dtype == np.dtype(">f4")
        assert lazymem.stats(a).chunks_installed == 0  # nothing read at open
        assert a[33, 7, 5] == FIELD[33, 7, 5]
        assert_same_array(a, FIELD)
    for path in ("contiguous", "chunked"):
        assert_same_array(lazymem.load(sample, path=path), FIELD)
    clone = pickle.loads(pickle.dumps(lazymem.open(sample, path="chunked")[3:9, 4]))
    assert_same_array(np.ascontiguousarray(clone), np.ascontiguousarray(FIELD[3:9, 4]))


def test_unallocated_chunks_are_the_fill_value_and_cost_no_fetch(sample: str) -> None:
    with h5py.File(sample, "a") as f:
        f["group/sparse"][100:130, 10:20] = 9
    want = _h5(sample, "group/sparse")
    assert (want == -3).sum() > 0
    source = open_array_source(sample, "group/sparse")
    assert source.fill_value == -3
    assert source.describe()["chunks_allocated"] == 2 and source.describe()["chunks_total"] == 20
    assert sum(source.chunk_present(c) for c in np.ndindex(5, 4)) == 2
    reads = list(source.read_chunks([(0, 0), (1, 0)]))
    assert {r.coords: (r.data is None, r.stored_bytes) for r in reads}[(0, 0)] == (True, 0)
    assert_same_array(lazymem.open(sample, path="group/sparse"), want)
    assert_same_array(lazymem.load(sample, path="group/sparse"), want)


def test_compact_and_never_written_datasets(tmp_path: Path) -> None:
    path = tmp_path / "small.h5"
    with h5py.File(path, "w") as f:
        space = h5py.h5s.create_simple((3, 4))
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_layout(h5py.h5d.COMPACT)
        h5py.h5d.create(f.id, b"compact", h5py.h5t.STD_U16LE, space, plist)
        f["compact"][...] = np.arange(12, dtype="<u2").reshape(3, 4)
        f.create_dataset("unwritten", shape=(1000, 30), dtype="<f8", fillvalue=2.5)
        f.create_dataset("zeros", shape=(1000, 30), dtype="<i4")
        f.create_dataset("scalar", data=np.float64(4.25))
    for name in ("compact", "unwritten", "zeros", "scalar"):
        want = _h5(str(path), name)
        assert_same_array(np.asarray(lazymem.load(str(path), path=name)), np.asarray(want))
        assert_same_array(np.asarray(lazymem.open(str(path), path=name)), np.asarray(want))
    assert open_array_source(str(path), "compact").describe()["layout"] == "compact"


@pytest.mark.parametrize("dtype", ["<i8", ">u2", "|b1", "<c8", "|S5", "<f2"])
def test_dtypes_are_kept_as_stored(tmp_path: Path, dtype: str) -> None:
    raw = RNG.integers(0, 255, size=(40, 33 * np.dtype(dtype).itemsize), dtype=np.uint8)
    data = raw.view(dtype) if np.dtype(dtype).kind not in "b" else raw % 2 == 1
    if np.dtype(dtype).kind == "f":
        data = np.nan_to_num(data.astype(dtype))
    url = _write(tmp_path / "t.h5", c={"data": data}, k={"data": data, "chunks": (8, 5), "compression": "lzf"})
    for name in ("c", "k"):
        want = _h5(url, name)
        got = lazymem.open(url, path=name)
        assert got.dtype == want.dtype
        assert_same_array(got, want)


def test_compound_dtypes_match_h5py(tmp_path: Path) -> None:
    dtype = np.dtype([("a", "<i4"), ("b", ">f8"), ("c", "S3")])
    data = np.zeros(500, dtype=dtype)
    data["a"], data["b"], data["c"] = np.arange(500), np.linspace(0, 1, 500), b"xyz"
    url = _write(tmp_path / "c.h5", r={"data": data, "chunks": (64,), "compression": "gzip"})
    assert_same_array(lazymem.load(url, path="r"), _h5(url, "r"))


def test_netcdf4_variables_dimension_names_and_attrs(tmp_path: Path) -> None:
    netCDF4 = pytest.importorskip("netCDF4")
    path = str(tmp_path / "run.nc")
    with netCDF4.Dataset(path, "w") as ds:
        ds.title = "run 42"
        for name, n in (("time", None), ("lat", 50), ("lon", 40)):
            ds.createDimension(name, n)
        ds.createDimension("bnds", 2)  # a dimension without a coordinate variable
        ds.createVariable("lat", "f8", ("lat",))[:] = np.linspace(-90, 90, 50)
        salt = ds.createVariable("salt", "i2", ("time", "lat", "lon"), zlib=True, chunksizes=(5, 25, 40))
        salt.scale_factor, salt.add_offset, salt.units = 0.01, 30.0, "psu"
        salt.set_auto_maskandscale(False)
        salt[0:60] = (FIELD * 100).astype("i2")
        ds.createVariable("bounds", "f4", ("lat", "bnds"))[:] = np.ones((50, 2))
    a = lazymem.open(path, path="salt")
    assert_same_array(a, _h5(path, "salt"))  # raw integers: no scale/offset here
    source = open_array_source(path, "salt")
    assert source.dimension_names == ("time", "lat", "lon")
    assert source.attrs["units"] == b"psu" or source.attrs["units"] == "psu"
    assert source.attrs["scale_factor"].tolist() == [0.01]  # raw: HDF5 attributes are arrays
    g = lazymem.open_group(path)
    assert sorted(g) == ["bounds", "lat", "salt"]  # "bnds" is a dimension, not a variable
    assert g.format == "hdf5" and g.attrs["title"] in ("run 42", b"run 42")
    assert g.arrays["salt"].dimension_names == ("time", "lat", "lon")
    assert g.arrays["lat"].dimension_names == ("lat",)
    assert g.arrays["bounds"].dimension_names == ("lat", "bnds")
    assert_same_array(g["lat"], _h5(path, "lat"))


def test_path_may_be_omitted_when_one_data_variable_remains(tmp_path: Path) -> None:
    netCDF4 = pytest.importorskip("netCDF4")
    path = str(tmp_path / "one.nc")
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("x", 30)
        ds.createVariable("x", "f4", ("x",))[:] = np.arange(30)  # a coordinate variable: does not count
        ds.createVariable("v", "<i4", ("x",))[:] = np.arange(30) * 3
    assert_same_array(lazymem.open(path), _h5(path, "v"))
    only = _write(tmp_path / "only.h5", **{"deep/x": {"data": np.arange(7)}})
    assert_same_array(lazymem.open(only), np.arange(7))


def test_a_wrong_path_lists_the_datasets(sample: str) -> None:
    with pytest.raises(lazymem.ArrayNotFoundError, match=r"no dataset at path 'nope'.*chunked, contiguous, "
                       r"group/sparse"):
        lazymem.open(sample, path="nope")
    with pytest.raises(lazymem.ArrayNotFoundError):
        lazymem.load(sample, path="group")  # a group, not a dataset
    with pytest.raises(lazymem.FormatError, match="name one with path="):
        lazymem.open(sample)


def test_variable_length_types_are_refused_clearly(tmp_path: Path) -> None:
    url = _write(tmp_path / "v.h5", s={"data": np.array(["a", "bcd"], dtype=h5py.string_dtype())})
    with pytest.raises(lazymem.FormatError, match="variable-length"):
        lazymem.open(url, path="s")


def test_an_unsupported_filter_names_its_id(tmp_path: Path) -> None:
    url = _write(tmp_path / "so.h5", s={"data": np.arange(1000, dtype="<i4"), "chunks": (100,), "scaleoffset": 0})
    with pytest.raises(lazymem.UnsupportedCodecError, match=r"filter 6 \(scaleoffset\)"):
        lazymem.open(url, path="s")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    url = _write(tmp_path / "lz4.h5", s={"data": np.arange(1000, dtype="<i4"), "chunks": (100,), **hdf5plugin.LZ4()})
    with pytest.raises(lazymem.UnsupportedCodecError, match=r"filter 32004 \(lz4\)"):
        lazymem.load(url, path="s")


def _chunk_ranges(url: str, path: str) -> list[tuple[tuple[int, ...], int, int]]:
    with h5py.File(url, "r") as f:
        d = f[path]
        return [(tuple(int(o) // c for o, c in zip(si.chunk_offset, d.chunks)), si.byte_offset, si.size)
                for si in (d.id.get_chunk_info(i) for i in range(d.id.get_num_chunks()))]


def test_a_corrupt_chunk_raises_on_load_and_prefetch(sample: str) -> None:
    coords, offset, size = _chunk_ranges(sample, "chunked")[3]
    with open(sample, "r+b") as f:
        f.seek(offset + size // 2)
        f.write(b"\x00garbage\xff" * 4)
    with pytest.raises(lazymem.CorruptChunkError, match=rf"chunk \({coords[0]}, {coords[1]}, {coords[2]}\)"):
        lazymem.load(sample, path="chunked")
    a = lazymem.open(sample, path="chunked", readahead=0, chunk_bytes=16384)  # units of about 2 rows
    with pytest.raises(lazymem.CorruptChunkError):
        a.prefetch()
    far = 59 if coords[0] < 4 else 0
    assert_same_array(np.ascontiguousarray(a[far]), np.ascontiguousarray(FIELD[far]))  # other units still read


def test_a_corrupt_chunk_is_sigbus_with_the_message_on_a_touch(sample: str) -> None:
    coords, offset, size = _chunk_ranges(sample, "chunked")[-1]
    with open(sample, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * min(size, 64))
    row = coords[0] * 7
    result = run_python(
        f"""
        import faulthandler, lazymem
        faulthandler.disable()
        a = lazymem.open({sample!r}, path="chunked", readahead=0, chunk_bytes=16384)
        print("before", float(a[0, 0, 0]) == {float(FIELD[0, 0, 0])!r}, flush=True)
        print("NEVER", a[{row}, {coords[1] * 16}, 0], flush=True)
        """
    )
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "before True" in result.stdout and "NEVER" not in result.stdout
    assert "does not decode" in result.stderr and "chunked" in result.stderr


def test_fletcher32_catches_a_flipped_bit(tmp_path: Path) -> None:
    url = _write(tmp_path / "f.h5", x={"data": FIELD, "chunks": (10, 50, 40), "fletcher32": True})
    assert_same_array(lazymem.load(url, path="x"), FIELD)
    _, offset, _ = _chunk_ranges(url, "x")[2]
    with open(url, "r+b") as f:
        f.seek(offset + 100)
        byte = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([byte[0] ^ 0x10]))
    with pytest.raises(lazymem.CorruptChunkError, match="fletcher32"):
        lazymem.load(url, path="x")


def test_a_chunk_index_past_the_end_fails_at_open(sample: str) -> None:
    ranges = _chunk_ranges(sample, "chunked")
    end = max(offset + size for _, offset, size in ranges)
    with open(sample, "r+b") as f:
        f.truncate(end - 10)  # the last chunk is cut; metadata sits before the data in h5py's files
    with pytest.raises(lazymem.FormatError, match=r"past the end of the file|truncat"):
        lazymem.open(sample, path="chunked")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_files_fail_with_a_format_error(sample: str, keep: float) -> None:
    data = Path(sample).read_bytes()
    Path(sample).write_bytes(data[: int(len(data) * keep)])
    for path in ("contiguous", "chunked"):
        with pytest.raises(lazymem.FormatError):
            lazymem.load(sample, path=path)


def test_describe_says_what_lazymem_info_prints(sample: str) -> None:
    d = open_array_source(sample, "chunked").describe()
    assert d["format"] == "hdf5" and d["layout"] == "chunked" and d["chunks"] == [7, 16, 40]
    assert d["filters"] == ["2 (shuffle)", "1 (deflate (gzip))"]
    assert d["decoded_bytes"] == FIELD.nbytes and 0 < d["stored_bytes"] < FIELD.nbytes
    assert d["chunks_allocated"] == d["chunks_total"] == 9 * 4
    c = open_array_source(sample, "contiguous").describe()
    assert c["layout"] == "contiguous" and c["stored_bytes"] == FIELD.nbytes and c["filters"] == []


def test_cli_info_and_convert(sample: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lazymem.cli import main

    assert main(["info", sample, "--path", "chunked"]) == 0
    out = capsys.readouterr().out
    assert "layout            chunked" in out and "filters           2 (shuffle), 1 (deflate (gzip))" in out
    assert "chunks allocated  36" in out
    dst = str(tmp_path / "c.npy.zst")
    assert main(["convert", sample, dst, "--path", "chunked"]) == 0
    assert_same_array(lazymem.load(dst), FIELD)
    assert main(["info", sample, "--path", "nope"]) == 1
    assert "no dataset at path 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("user_block", [512, 4096, 131072])
def test_a_file_with_a_user_block_is_recognised(tmp_path: Path, user_block: int) -> None:
    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", userblock_size=user_block) as f:
        f.create_dataset("x", data=FIELD[:5], chunks=(1, 50, 40), compression="gzip")
    with open(path, "r+b") as f:
        f.write(b"#!/bin/sh\necho not a signature\n")  # what user blocks hold: anything
    assert_same_array(lazymem.open(str(path), path="x"), FIELD[:5])
    assert sorted(lazymem.open_group(str(path))) == ["x"]

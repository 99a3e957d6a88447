"""Every codec zarr stores use, in data written by zarr-python itself, reads byte for byte as
``zarr.open_array(...)[...]`` reads it (issue #16 item 4): v2 compressors and filters through
numcodecs, v3 codecs through zarr-python, sharded stores with the index at either end, missing
chunks; hypothesis over shapes, chunk shapes, dtypes, codecs and missing chunks."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymem

from .conftest import assert_same_array

zarr = pytest.importorskip("zarr")
numcodecs = pytest.importorskip("numcodecs")

from zarr.codecs import (  # noqa: E402
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    ShardingCodec,
    TransposeCodec,
    ZstdCodec,
)

from lazymem.sources.base import PAGE_SIZE  # noqa: E402
from lazymem.sources.zarr_array import ZarrSource  # noqa: E402

RNG = np.random.default_rng(4)
FIELD = np.cumsum(RNG.standard_normal((70, 33, 9)), axis=0).astype("<f4")  # nothing divides


def _write(where: Path, data: np.ndarray, *, region: Any = ..., **kwargs: Any) -> str:
    z = zarr.create_array(store=str(where), shape=data.shape, dtype=data.dtype, **kwargs)
    z[region] = data[region]
    return str(where)


def _zarr_reads(url: str) -> np.ndarray:
    return zarr.open_array(url, mode="r")[...]


def _lazy_equals_zarr(url: str) -> None:
    want = _zarr_reads(url)
    a = lazymem.open(url, readahead=2, chunk_bytes=3 * PAGE_SIZE)
    try:
        got = np.array(a, order="K")
        assert_same_array(got, np.asfortranarray(want) if a.flags.f_contiguous and not a.flags.c_contiguous
                          else want)
        assert_same_array(lazymem.load(url), got)
    finally:
        a.close()


V2_COMPRESSORS = {
    "blosc-lz4-shuffle": numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
    "blosc-zstd-bitshuffle": numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE),
    "blosc-zlib-noshuffle": numcodecs.Blosc(cname="zlib", clevel=1, shuffle=numcodecs.Blosc.NOSHUFFLE),
    "blosc-lz4hc": numcodecs.Blosc(cname="lz4hc", clevel=9, shuffle=numcodecs.Blosc.AUTOSHUFFLE),
    "blosc-blosclz": numcodecs.Blosc(cname="blosclz"),
    "zstd": numcodecs.Zstd(level=5),
    "zstd-checksum": numcodecs.Zstd(level=1, checksum=True),
    "gzip": numcodecs.GZip(level=6),
    "zlib": numcodecs.Zlib(level=1),
    "lz4": numcodecs.LZ4(acceleration=1),
    "bz2": numcodecs.BZ2(level=1),
    "lzma": numcodecs.LZMA(),
    "none": None,
}

V2_FILTERS = {
    "none": None,
    "delta": [numcodecs.Delta(dtype="<f4")],
    "shuffle": [numcodecs.Shuffle(elementsize=4)],
    "delta+shuffle": [numcodecs.Delta(dtype="<f4"), numcodecs.Shuffle(elementsize=4)],
    "fixedscaleoffset": [numcodecs.FixedScaleOffset(offset=0, scale=100, dtype="<f4", astype="<i4")],
    "quantize": [numcodecs.Quantize(digits=3, dtype="<f4")],
    "bitround": [numcodecs.BitRound(keepbits=10)],
}


@pytest.mark.parametrize("compressor", list(V2_COMPRESSORS))
def test_v2_compressors(tmp_path: Path, compressor: str) -> None:
    url = _write(tmp_path / "a.zarr", FIELD, chunks=(16, 10, 9), zarr_format=2,
                 compressors=V2_COMPRESSORS[compressor])
    _lazy_equals_zarr(url)


@pytest.mark.parametrize("filters", [f for f in V2_FILTERS if f != "none"])
def test_v2_filters_with_blosc(tmp_path: Path, filters: str) -> None:
    url = _write(tmp_path / "a.zarr", FIELD, chunks=(16, 10, 9), zarr_format=2, filters=V2_FILTERS[filters],
                 compressors=numcodecs.Blosc(cname="zstd", shuffle=numcodecs.Blosc.SHUFFLE))
    _lazy_equals_zarr(url)


def test_v2_fortran_order_big_endian_with_delta(tmp_path: Path) -> None:
    data = (np.arange(50 * 31, dtype=">i4").reshape(50, 31) * 7) % 1000
    url = _write(tmp_path / "f.zarr", data, chunks=(8, 9), zarr_format=2, order="F",
                 filters=[numcodecs.Delta(dtype=">i4")], compressors=numcodecs.Zstd(level=3))
    assert zarr.open_array(url).metadata.order == "F"
    _lazy_equals_zarr(url)


V3_CODECS: dict[str, dict[str, Any]] = {
    "bytes-little": {"serializer": BytesCodec(endian="little"), "compressors": None},
    "bytes-big": {"serializer": BytesCodec(endian="big"), "compressors": None},
    "zstd": {"compressors": ZstdCodec(level=3)},
    "zstd-checksum": {"compressors": ZstdCodec(level=1, checksum=True)},
    "gzip": {"compressors": GzipCodec(level=5)},
    "blosc-lz4-shuffle": {"compressors": BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4)},
    "blosc-zstd-bitshuffle": {"compressors": BloscCodec(cname="zstd", shuffle="bitshuffle", typesize=4)},
    "crc32c": {"compressors": [ZstdCodec(level=1), Crc32cCodec()]},
    "transpose": {"filters": [TransposeCodec(order=(2, 0, 1))], "compressors": ZstdCodec()},
    "transpose-big-gzip": {"filters": [TransposeCodec(order=(1, 2, 0))], "serializer": BytesCodec(endian="big"),
                           "compressors": [GzipCodec(), Crc32cCodec()]},
    "numcodecs-lz4": {"compressors": [zarr.codecs.numcodecs.LZ4()]},
    "numcodecs-delta": {"filters": [zarr.codecs.numcodecs.Delta(dtype="<f4")], "compressors": ZstdCodec()},
}


@pytest.mark.parametrize("codecs", list(V3_CODECS))
def test_v3_codecs(tmp_path: Path, codecs: str) -> None:
    url = _write(tmp_path / "a.zarr", FIELD, chunks=(16, 10, 9), zarr_format=3, **V3_CODECS[codecs])
    _lazy_equals_zarr(url)


@pytest.mark.parametrize("index_location", ["end", "start"])
@pytest.mark.parametrize("inner", ["bytes", "zstd+crc32c", "blosc-big"])
def test_v3_sharding_with_missing_inner_chunks(tmp_path: Path, index_location: str, inner: str) -> None:
    codecs = {"bytes": [BytesCodec()],
              "zstd+crc32c": [BytesCodec(), ZstdCodec(level=2), Crc32cCodec()],
              "blosc-big": [BytesCodec(endian="big"), BloscCodec(cname="lz4", typesize=4, shuffle="shuffle")]}[inner]
    sharding = ShardingCodec(chunk_shape=(8, 11, 9), codecs=codecs, index_location=index_location)
    z = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=FIELD.shape, dtype=FIELD.dtype, chunks=(32, 33, 9),
                          serializer=sharding, compressors=None, fill_value=-1.5, zarr_format=3)
    z[5:30, 3:20] = FIELD[5:30, 3:20]  # inner chunks missing in written shards, and whole shards missing
    z[66:, :] = FIELD[66:, :]
    assert z.metadata.codecs[0].index_location.value == index_location
    _lazy_equals_zarr(str(tmp_path / "s.zarr"))


def test_v3_sharded_through_create_array_shards(tmp_path: Path) -> None:
    url = _write(tmp_path / "s.zarr", FIELD, chunks=(5, 11, 3), shards=(20, 33, 9), zarr_format=3,
                 compressors=ZstdCodec(level=3), region=np.s_[10:50])
    _lazy_equals_zarr(url)


# -- hypothesis: the source reads every install unit as zarr reads the array -------------------------

DTYPES = ["|u1", "<i2", "<u4", "<f4", "<f8", "<c8", "|b1", "<i8"]


def _v2_codec(draw: Any, dtype: np.dtype[Any]) -> dict[str, Any]:
    compressor = draw(st.sampled_from(["none", "blosc-lz4-shuffle", "blosc-zstd-bitshuffle", "zstd", "gzip",
                                       "lz4", "zlib"]))
    kwargs: dict[str, Any] = {"compressors": V2_COMPRESSORS[compressor]}
    if dtype.kind in "iuf" and draw(st.booleans()):
        kwargs["filters"] = [numcodecs.Delta(dtype=dtype.str)]
    if dtype.itemsize > 1 and draw(st.booleans()):
        kwargs.setdefault("filters", [])
        kwargs["filters"] = [*kwargs["filters"], numcodecs.Shuffle(elementsize=dtype.itemsize)]
    kwargs["order"] = draw(st.sampled_from(["C", "F"]))
    return kwargs


def _v3_codec(draw: Any, dtype: np.dtype[Any], ndim: int) -> dict[str, Any]:
    serializer = BytesCodec(endian=draw(st.sampled_from(["little", "big"]))) if dtype.itemsize > 1 else BytesCodec()
    compressors = draw(st.sampled_from([
        [], [ZstdCodec(level=1)], [GzipCodec(level=1)], [ZstdCodec(), Crc32cCodec()],
        [BloscCodec(cname="lz4", typesize=dtype.itemsize, shuffle="shuffle")],
        [BloscCodec(cname="zstd", typesize=dtype.itemsize, shuffle="bitshuffle")],
    ]))
    kwargs: dict[str, Any] = {"serializer": serializer, "compressors": compressors}
    if ndim > 1 and draw(st.booleans()):
        kwargs["filters"] = [TransposeCodec(order=tuple(draw(st.permutations(range(ndim)))))]
    return kwargs


@st.composite
def stores(draw: Any) -> dict[str, Any]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 30), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, n + 3)) for n in shape)
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    zarr_format = draw(st.sampled_from([2, 3]))
    kwargs = _v2_codec(draw, dtype) if zarr_format == 2 else _v3_codec(draw, dtype, ndim)
    if zarr_format == 3 and draw(st.booleans()):  # sharded: shards a whole number of chunks
        shards = tuple(c * draw(st.integers(1, 3)) for c in chunks)
        # filters go inside the shard (zarr wants a transpose before sharding in transposed coordinates)
        inner = ShardingCodec(chunk_shape=chunks, codecs=[*(kwargs.get("filters") or []), kwargs["serializer"],
                                                          *kwargs["compressors"]],
                              index_location=draw(st.sampled_from(["end", "start"])))
        kwargs = {"serializer": inner, "compressors": None}
        chunks = shards
    fill = draw(st.sampled_from([0, 1])) if dtype.kind != "b" else draw(st.booleans())
    # a box written, the rest left missing (the fill value): possibly everything, possibly nothing
    region = tuple(slice(draw(st.integers(0, n)), None) for n in shape)
    seed = draw(st.integers(0, 2**16))
    return {"shape": shape, "chunks": chunks, "dtype": dtype, "zarr_format": zarr_format, "kwargs": kwargs,
            "fill": fill, "region": region, "seed": seed}


def _data(shape: tuple[int, ...], dtype: np.dtype[Any], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    data = raw.view(dtype).reshape(shape)
    if dtype.kind == "f" or dtype.kind == "c":
        data = np.nan_to_num(data)  # zarr's NaN fill compares fine, but keep values ordinary
    if dtype.kind == "b":
        data = raw[: int(np.prod(shape))].reshape(shape) % 2 == 1
    return data


def _check(spec: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = str(Path(tmp) / "h.zarr")
        data = _data(spec["shape"], spec["dtype"], spec["seed"])
        z = zarr.create_array(store=url, shape=spec["shape"], dtype=spec["dtype"], chunks=spec["chunks"],
                              zarr_format=spec["zarr_format"], fill_value=spec["fill"], **spec["kwargs"])
        z[spec["region"]] = data[spec["region"]]
        want = _zarr_reads(url)
        source = ZarrSource(url)
        order = source.order
        image = want.tobytes(order=order)
        for unit_bytes in (None, PAGE_SIZE):
            grid = source.unit_grid(unit_bytes)
            for unit in range(len(grid)):
                offset, length = grid.span(unit)
                out = bytearray(b"\xa5" * length)
                result = source.read_unit(grid, unit, memoryview(out))
                got = bytes(length) if result.zeros else bytes(out)
                assert got == image[offset : offset + length], (spec, unit)
        whole = np.empty(source.shape, dtype=source.dtype, order=order)
        source.read_all_into(whole)
        assert whole.tobytes(order=order) == image


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stores())
def test_any_store_zarr_writes_reads_as_zarr_reads_it(spec: dict[str, Any]) -> None:
    _check(spec)


@pytest.mark.slow  # ~1 minute
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stores())
def test_any_store_zarr_writes_reads_as_zarr_reads_it_long(spec: dict[str, Any]) -> None:
    _check(spec)


def test_the_codecs_are_listed_by_describe(tmp_path: Path) -> None:
    url = _write(tmp_path / "d.zarr", FIELD, chunks=(16, 10, 9), zarr_format=3, **V3_CODECS["transpose-big-gzip"])
    facts = ZarrSource(url).describe()
    assert facts["codecs"] == ["transpose", "bytes", "gzip", "crc32c"]
    assert re.fullmatch(r"[<>|]f4", facts["dtype"])

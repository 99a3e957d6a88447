"""HDF5 filter pipelines decoded without h5py, against h5py's own reads: hypothesis over shapes,
chunk shapes, dtypes, filter pipelines and unallocated chunks; each filter's format alone."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymem
from lazymem.sources.formats import open_array_source
from lazymem.sources.hdf5_filters import CorruptFilterInput, bitunshuffle, fletcher32_matches, lzf_decompress

h5py = pytest.importorskip("h5py")
hdf5plugin = pytest.importorskip("hdf5plugin")

PIPELINES = {
    "none": {},
    "gzip": {"compression": "gzip", "compression_opts": 4},
    "gzip+shuffle+fletcher32": {"compression": "gzip", "shuffle": True, "fletcher32": True},
    "lzf+shuffle": {"compression": "lzf", "shuffle": True},
    "fletcher32": {"fletcher32": True},
    "zstd": dict(hdf5plugin.Zstd(clevel=3)),
    "blosc-lz4-shuffle": dict(hdf5plugin.Blosc(cname="lz4", shuffle=hdf5plugin.Blosc.SHUFFLE)),
    "blosc-zstd-bitshuffle": dict(hdf5plugin.Blosc(cname="zstd", shuffle=hdf5plugin.Blosc.BITSHUFFLE)),
    "bitshuffle-lz4": dict(hdf5plugin.Bitshuffle(cname="lz4")),
    "bitshuffle-zstd": dict(hdf5plugin.Bitshuffle(cname="zstd")),
    "bitshuffle": dict(hdf5plugin.Bitshuffle(cname="none")),
}
DTYPES = ["<f4", ">f8", "<i2", ">u4", "u1", "<i8", "<c8"]


@st.composite
def datasets(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], str, np.ndarray]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, n + 5)) for n in shape)
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    # Smooth data (compressible, like a field) or noise (incompressible: filters may be skipped).
    smooth = draw(st.booleans())
    values = np.cumsum(rng.standard_normal(shape), axis=-1) * 10 if smooth else rng.standard_normal(shape) * 1e3
    data = values.astype(dtype) if dtype.kind != "u" else np.abs(values).astype(dtype)
    written = rng.random(shape) < draw(st.sampled_from([0.0, 0.3, 1.0]))  # where elements are written
    return data, chunks, draw(st.sampled_from(sorted(PIPELINES))), written


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(case=datasets())
def test_decoded_chunks_equal_h5py(tmp_path: Path, case) -> None:
    data, chunks, pipeline, written = case
    path = tmp_path / "h.h5"
    with h5py.File(path, "w") as f:
        # Chunks larger than the shape need an extensible dataset (h5py refuses them otherwise).
        maxshape = (None,) * data.ndim if any(c > n for c, n in zip(chunks, data.shape)) else None
        d = f.create_dataset("x", shape=data.shape, dtype=data.dtype, chunks=chunks, fillvalue=data.dtype.type(3),
                             maxshape=maxshape, **PIPELINES[pipeline])
        if written.all():
            d[...] = data
        else:  # write only the chunks holding a written element: the others stay unallocated
            for index in zip(*np.nonzero(written)):
                box = tuple(slice(i // c * c, i // c * c + c) for i, c in zip(index, chunks))
                d[box] = data[box]
        want = d[()]
    got = lazymem.load(str(path), path="x")
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes(), pipeline
    source = open_array_source(str(path), "x")
    grid = source.unit_grid(4096)
    unit = len(grid) - 1
    offset, length = grid.span(unit)
    out = bytearray(length)
    result = source.read_unit(grid, unit, memoryview(out))
    assert (bytes(length) if result.zeros else bytes(out)) == want.tobytes()[offset : offset + length]


def test_a_filter_skipped_for_some_chunks_is_honoured(tmp_path: Path) -> None:
    """An optional filter that cannot shrink a chunk is skipped for it (its bit set in the chunk's
    filter mask): random bytes with gzip, next to compressible chunks."""
    data = np.zeros((4, 1000), dtype="u1")
    data[1] = np.random.default_rng(0).integers(0, 256, 1000)
    data[3] = np.random.default_rng(1).integers(0, 256, 1000)
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=(1, 1000), **hdf5plugin.Zstd())
        d = f["x"]
        masks = [d.id.get_chunk_info(i).filter_mask for i in range(4)]
    assert np.array_equal(lazymem.load(str(path), path="x"), data)
    assert masks  # HDF5 decides which chunks are filtered; the values are equal either way


def test_raw_chunks_written_with_a_filter_mask(tmp_path: Path) -> None:
    """write_direct_chunk with filter_mask=1: that chunk is stored raw although the pipeline has gzip."""
    data = np.arange(2000, dtype="<i4").reshape(2, 1000)
    path = tmp_path / "raw.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", shape=data.shape, dtype=data.dtype, chunks=(1, 1000), compression="gzip")
        d.id.write_direct_chunk((0, 0), data[0].tobytes(), filter_mask=1)
        d.id.write_direct_chunk((1, 0), zlib.compress(data[1].tobytes()), filter_mask=0)
        assert np.array_equal(d[()], data)
    assert np.array_equal(lazymem.load(str(path), path="x"), data)


def test_lzf_decodes_literals_and_overlapping_references() -> None:
    # "abcabcabc...": a literal run of 3, then a back reference of distance 3 (overlapping) of 9 bytes.
    stream = bytes([2]) + b"abc" + bytes([(7 << 5) | 0, 9 - 2 - 7, 2])
    assert lzf_decompress(stream, 12) == b"abc" * 4
    with pytest.raises(CorruptFilterInput):
        lzf_decompress(stream, 11)
    with pytest.raises(CorruptFilterInput):
        lzf_decompress(bytes([(1 << 5) | 0, 200]), 10)  # a reference before the start
    with pytest.raises(CorruptFilterInput):
        lzf_decompress(bytes([5, 1, 2]), 6)  # a literal run past the end


def test_fletcher32_matches_hdf5_reference_values() -> None:
    # Values from HDF5's checksum test (test/checksum.c): "abcde" padded as words, and zeros.
    assert fletcher32_matches(b"\x00" * 8, 0)
    body = bytes(range(256)) * 5
    words = np.frombuffer(body, ">u2").astype(np.uint64)
    s1 = int(words.sum() % 65535)
    s2 = int(np.cumsum(words).sum() % 65535)
    assert fletcher32_matches(body, (s2 << 16) | s1)
    assert not fletcher32_matches(body, (s2 << 16) | ((s1 + 1) % 65535))


def test_bitunshuffle_inverts_the_bit_transpose() -> None:
    data = np.random.default_rng(2).integers(0, 2**31, 64, dtype="<u4")
    bits = np.unpackbits(data.view(np.uint8).reshape(64, 4), axis=1, bitorder="little")
    shuffled = np.packbits(bits.T, axis=1, bitorder="little").tobytes()
    assert bitunshuffle(shuffled, 4) == data.tobytes()


@pytest.mark.parametrize("inflate", ["zlib", "isal"])
def test_deflate_with_zlib_and_with_isal(monkeypatch: pytest.MonkeyPatch, inflate: str) -> None:
    """Both inflaters decode the same chunks and refuse the same damage (isal is used when installed)."""
    from lazymem.sources import hdf5_filters
    from lazymem.sources.hdf5_filters import DEFLATE, Filter, decode_chunk

    module = zlib if inflate == "zlib" else pytest.importorskip("isal.isal_zlib")
    monkeypatch.setattr(hdf5_filters, "_inflate", module)
    monkeypatch.setattr(hdf5_filters, "_INFLATE_ERRORS", (zlib.error, module.error))
    raw = np.arange(5000, dtype="<i4").tobytes()
    stored = zlib.compress(raw, 1)
    pipeline = [Filter(DEFLATE, 0, (1,))]
    assert decode_chunk(stored, pipeline, 0, len(raw), 4) == raw
    for damaged in (stored[:-7], stored[:20] + b"\xff" * 20 + stored[40:], zlib.compress(raw + b"more", 1)):
        with pytest.raises(CorruptFilterInput):
            decode_chunk(damaged, pipeline, 0, len(raw), 4)

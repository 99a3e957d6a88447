"""The native format end to end: save -> load round trips, byte ranges, interop with zstd and pyzstd."""

from __future__ import annotations

import io
import itertools
import multiprocessing
import os
import pickle
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import fsspec
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lazymem
from lazymem import eager
from lazymem.eager import load
from lazymem.errors import TruncatedFileError
from lazymem.sources import RawNpyReader, SeekableZstdReader, open_source, seekable_zstd
from lazymem.sources.frames import FrameTable
from lazymem.sources.local_batches import MappedBatches, PreadBatches, local_batches
from lazymem.writer import _frame_bytes, save, seek_table_bytes

from .conftest import CountingFileSystem, rewrite_layout_frame

pyzstd = pytest.importorskip("pyzstd")

PAGE = 4096
CHUNKS = [PAGE, 2 * PAGE, 3 * PAGE]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def assert_same_array(loaded: np.ndarray, original: np.ndarray) -> None:
    """Byte-for-byte equal, same dtype and shape, and the memory order np.load would give."""
    assert type(loaded) is np.ndarray
    assert loaded.dtype == original.dtype
    assert loaded.shape == original.shape
    assert loaded.tobytes() == original.tobytes()  # C-order bytes: compares values, NaN payloads included
    reference = np.load(io.BytesIO(npy_bytes(original)))
    assert loaded.flags.c_contiguous == reference.flags.c_contiguous
    assert loaded.flags.f_contiguous == reference.flags.f_contiguous
    assert loaded.flags.writeable


# -- strategies -------------------------------------------------------------------------------------

scalar_dtypes = st.one_of(
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.boolean_dtypes(),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.unicode_string_dtypes(endianness="?", min_len=1, max_len=5),
    hnp.byte_string_dtypes(min_len=1, max_len=5),
)
dtypes = st.one_of(
    scalar_dtypes,
    hnp.array_dtypes(subtype_strategy=scalar_dtypes, min_size=1, max_size=3),
)


@st.composite
def arrays_any_layout(draw: st.DrawFn) -> np.ndarray:
    """Arrays of any dtype and small shape, C-contiguous, F-contiguous or strided."""
    dtype = draw(dtypes)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=24))
    # Random bytes rather than hypothesis elements: every bit pattern must survive (NaN payloads, NaT).
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = draw(st.binary(min_size=min(nbytes, 64), max_size=min(nbytes, 64)))
    seed = int.from_bytes(raw[:8].ljust(8, b"\0"), "little")
    data = np.random.default_rng(seed).integers(0, 256, size=nbytes, dtype=np.uint8)
    array = data.view(dtype).reshape(shape) if nbytes else np.zeros(shape, dtype)
    layout = draw(st.sampled_from(["C", "F", "strided", "reversed"]))
    if layout == "F":
        array = np.asfortranarray(array)
    elif layout == "strided" and array.ndim:
        big = np.repeat(array, 2, axis=-1)
        array = big[..., ::2]
    elif layout == "reversed" and array.ndim:
        array = array[::-1]
    return array


# -- round trips ------------------------------------------------------------------------------------


@SETTINGS
@given(array=arrays_any_layout(), chunk_bytes=st.sampled_from(CHUNKS), threads=st.sampled_from([1, 2]),
       frames=st.sampled_from([None, PAGE, 2 * PAGE]))
def test_save_load_round_trip(tmp_path: Path, array: np.ndarray, chunk_bytes: int, threads: int,
                              frames: int | None) -> None:
    path = str(tmp_path / f"{uuid.uuid4().hex}.npy.zst")
    frames = frames if frames is None or frames <= chunk_bytes else None
    save(path, array, chunk_bytes=chunk_bytes, frame_bytes=frames, threads=threads)
    assert_same_array(load(path, threads=threads), array)
    # The decompressed stream is exactly what np.save writes.
    reader = open_source(path)
    stream = bytearray(reader.stream_size)
    reader.read_into(0, stream)
    assert bytes(stream) == npy_bytes(array)
    # Native layout: header alone in frame 0, then each chunk's frames, then the layout frame.
    sizes = reader.table.decompressed_sizes
    assert sizes[0] == reader.header.data_offset
    assert sizes[-1] == 0 and reader.chunk_bytes_hint == chunk_bytes
    frame_bytes = _frame_bytes(chunk_bytes, array.nbytes, frames)
    expected = [min(frame_bytes, chunk_bytes - start, array.nbytes - chunk - start)
                for chunk in range(0, array.nbytes, chunk_bytes) for start in range(0, chunk_bytes, frame_bytes)
                if chunk + start < array.nbytes]
    assert list(sizes[1:-1]) == expected
    os.unlink(path)


@pytest.mark.parametrize(
    "array",
    [
        np.array(3.25),
        np.array(b"bytes", dtype="S5"),
        np.zeros((0,), dtype="<f8"),
        np.zeros((3, 0, 2), dtype=">i2"),
        np.arange(1000, dtype=">i8").reshape(10, 100),
        np.asfortranarray(np.arange(60000, dtype="<f4").reshape(200, 300)),
        np.arange(100000, dtype="<f8").reshape(100, 1000)[::3, 5::7],
        np.arange(100000, dtype="<u2").reshape(100, 1000).T,
        np.array(["2021-03-04", "NaT"], dtype="M8[s]"),
        np.array(["ünïcode", "text"], dtype=">U7"),
        np.zeros(17, dtype=[("a", "<i4"), ("b", ">f8", (2, 3)), ("c", "S3"), ("d", [("e", "?")])]),
        np.ma.masked_array(np.arange(10.0), mask=np.arange(10) % 2 == 0),
        [[1, 2], [3, 4]],
    ],
    ids=lambda a: f"{np.asarray(a).dtype}-{np.shape(a)}",
)
def test_round_trip_examples(tmp_path: Path, array: object) -> None:
    path = str(tmp_path / "a.npy.zst")
    save(path, array, chunk_bytes=PAGE)
    original = np.asarray(array)
    assert_same_array(load(path), original if not isinstance(array, np.ndarray) else array.view(np.ndarray))


def test_non_contiguous_rows_bigger_than_a_chunk(tmp_path: Path) -> None:
    """Strided arrays whose single rows exceed chunk_bytes are split inside rows, never copied whole."""
    base = np.arange(4 * 3 * 5000, dtype="<f8").reshape(4, 3, 5000)
    array = base[::2, :, ::-1]
    path = str(tmp_path / "s.npy.zst")
    save(path, array, chunk_bytes=PAGE)
    assert_same_array(load(path), array)


def test_multi_batch_eager_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batches exercise the fetch/decode pipeline and buffer reuse."""
    array = np.random.default_rng(1).standard_normal((300, 500))
    path = str(tmp_path / "b.npy.zst")
    save(path, array, chunk_bytes=PAGE)
    monkeypatch.setattr(eager, "BATCH_BYTES", 20_000)
    for threads in (1, 2):
        assert_same_array(load(path, threads=threads), array)


# -- byte ranges ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unaligned_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The same .npy stream as native, pyzstd (1000-byte frames, header and data mixed) and plain .npy."""
    directory = tmp_path_factory.mktemp("ranges")
    array = np.random.default_rng(2).standard_normal((37, 211)).astype(">f4")
    stream = npy_bytes(array)
    native = str(directory / "native.npy.zst")
    save(native, array, chunk_bytes=3 * PAGE)
    mixed = str(directory / "pyzstd.npy.zst")
    with pyzstd.SeekableZstdFile(mixed, "w", max_frame_content_size=1000) as f:
        f.write(stream)
    plain = str(directory / "plain.npy")
    Path(plain).write_bytes(stream)
    return {"native": native, "pyzstd": mixed, "plain": plain, "stream": stream}  # type: ignore[dict-item]


@SETTINGS
@given(kind=st.sampled_from(["native", "pyzstd", "plain"]), data=st.data())
def test_read_into_random_ranges(unaligned_files: dict[str, str], kind: str, data: st.DataObject) -> None:
    stream = unaligned_files["stream"]
    reader = open_source(unaligned_files[kind])
    assert reader.stream_size == len(stream)
    start = data.draw(st.integers(0, len(stream)))
    stop = data.draw(st.integers(start, min(len(stream), start + 40_000)))
    out = bytearray(stop - start)
    reader.read_into(start, out)
    assert bytes(out) == stream[start:stop]
    # numpy arrays are valid destinations too.
    dest = np.zeros(stop - start, dtype=np.uint8)
    reader.read_into(start, dest)
    assert dest.tobytes() == stream[start:stop]


def test_read_into_rejects_out_of_range(unaligned_files: dict[str, str]) -> None:
    reader = open_source(unaligned_files["native"])
    with pytest.raises(ValueError, match="outside"):
        reader.read_into(reader.stream_size - 2, bytearray(3))
    with pytest.raises(ValueError, match="outside"):
        reader.read_into(-1, bytearray(3))
    with pytest.raises(ValueError, match="read-only"):
        reader.read_into(0, b"abc")


def test_readers_by_format(unaligned_files: dict[str, str]) -> None:
    assert isinstance(open_source(unaligned_files["native"]), SeekableZstdReader)
    assert isinstance(open_source(unaligned_files["pyzstd"]), SeekableZstdReader)
    assert isinstance(open_source(unaligned_files["plain"]), RawNpyReader)
    array = np.load(io.BytesIO(unaligned_files["stream"]))  # type: ignore[arg-type]
    for kind in ("native", "pyzstd", "plain"):
        assert_same_array(load(unaligned_files[kind]), array)


def test_fetch_and_decompress_frames(unaligned_files: dict[str, str]) -> None:
    reader = open_source(unaligned_files["pyzstd"])
    stream = unaligned_files["stream"]
    indices = [5, 2, 3, 9]
    blobs = reader.fetch(indices)
    assert all(isinstance(b, bytes) for b in blobs)
    for index, blob in zip(indices, blobs):
        assert len(blob) == reader.table.compressed_sizes[index]
        out = bytearray(int(reader.table.decompressed_sizes[index]))
        reader.decompress_into(index, blob, out)
        start = int(reader.table.decompressed_offsets[index])
        assert bytes(out) == stream[start : start + len(out)]
    with pytest.raises(ValueError, match="output buffer"):
        reader.decompress_into(2, blobs[1], bytearray(5))
    with pytest.raises(IndexError):
        reader.fetch([len(reader.table)])


# -- request counts ---------------------------------------------------------------------------------


def test_open_costs_two_requests_and_fetch_coalesces(tmp_path: Path) -> None:
    path = str(tmp_path / "c.npy.zst")
    save(path, np.arange(50_000, dtype="<f8"), chunk_bytes=PAGE)
    fs = CountingFileSystem()
    CountingFileSystem.requests = []
    reader = SeekableZstdReader.open(fs, path)
    assert len(CountingFileSystem.requests) == 2  # tail with the table, frame 0 with the header
    CountingFileSystem.requests = []
    reader.fetch([3, 4, 5, 6])
    assert len(CountingFileSystem.requests) == 1
    CountingFileSystem.requests = []
    reader.fetch([3, 4, 8, 9])
    assert len(CountingFileSystem.requests) == 2  # two runs, through cat_ranges
    CountingFileSystem.requests = []
    reader.read_into(reader.data_offset + 100, bytearray(5 * PAGE))
    assert len(CountingFileSystem.requests) == 1


@pytest.mark.slow  # ~2 s
def test_big_seek_table_needs_a_second_read(tmp_path: Path) -> None:
    path = str(tmp_path / "many.npy.zst")
    array = np.zeros(9000 * PAGE // 8)  # 9002 frames: the table (72 KiB) exceeds the 64 KiB tail read
    save(path, array, chunk_bytes=PAGE)
    fs = CountingFileSystem()
    CountingFileSystem.requests = []
    reader = SeekableZstdReader.open(fs, path)
    assert len(reader.table) == 9002  # header, data, layout frame
    assert len(CountingFileSystem.requests) == 3  # the second tail read holds the layout frame too
    assert reader.chunk_bytes_hint == PAGE
    assert_same_array(load(path), array)


# -- other filesystems, pickling --------------------------------------------------------------------


def test_memory_filesystem_round_trip() -> None:
    url = f"memory://lazymem-tests/{uuid.uuid4().hex}/a.npy.zst"
    array = np.arange(30_000, dtype="<i4").reshape(100, 300)
    save(url, array, chunk_bytes=PAGE)
    assert_same_array(load(url), array)
    reader = open_source(url)
    assert isinstance(reader, SeekableZstdReader)
    out = bytearray(10_000)
    reader.read_into(1234, out)
    assert bytes(out) == npy_bytes(array)[1234:11234]
    clone = pickle.loads(pickle.dumps(reader))
    clone.read_into(1234, out)
    assert bytes(out) == npy_bytes(array)[1234:11234]
    fsspec.filesystem("memory").rm(url.removeprefix("memory://"))


def test_memory_filesystem_reads_pyzstd_file() -> None:
    array = np.arange(5000, dtype="<f8")
    buf = io.BytesIO()
    with pyzstd.SeekableZstdFile(buf, "w", max_frame_content_size=1000) as f:
        f.write(npy_bytes(array))
    url = f"memory://lazymem-tests/{uuid.uuid4().hex}/p.npy.zst"
    with fsspec.open(url, "wb") as f:
        f.write(buf.getvalue())
    assert_same_array(load(url), array)


def _read_in_child(blob: bytes, start: int, length: int) -> bytes:
    reader = pickle.loads(blob)
    out = bytearray(length)
    reader.read_into(start, out)
    return bytes(out)


def test_reader_pickles_small_and_works_in_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "p.npy.zst")
    array = np.random.default_rng(3).standard_normal(200_000)
    save(path, array, chunk_bytes=PAGE)
    reader = open_source(path)
    blob = pickle.dumps(reader)
    assert len(blob) < 8 * len(reader.table) + 4096  # u32 size columns, not per-frame objects
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply(_read_in_child, (blob, 5000, 100_000))
    assert got == npy_bytes(array)[5000:105_000]


# -- interop ----------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd command-line tool not installed")
@pytest.mark.parametrize(
    "array",
    [
        np.arange(30_000, dtype="<f4").reshape(100, 300),
        np.asfortranarray(np.arange(30_000, dtype=">i4").reshape(100, 300)),
        np.zeros((0, 5)),
        np.array(7, dtype="<c16"),
    ],
)
def test_zstd_cli_decompresses_to_np_save_bytes(tmp_path: Path, array: np.ndarray) -> None:
    path = tmp_path / "z.npy.zst"
    save(str(path), array, chunk_bytes=PAGE)
    result = subprocess.run(["zstd", "-d", "-c", "-q", str(path)], capture_output=True, check=True)
    assert result.stdout == npy_bytes(array)
    subprocess.run(["zstd", "-t", "-q", str(path)], check=True)  # checksums verified by the reference tool


def test_pyzstd_reads_our_files(tmp_path: Path) -> None:
    path = str(tmp_path / "y.npy.zst")
    array = np.random.default_rng(4).standard_normal((64, 700))
    save(path, array, chunk_bytes=2 * PAGE)
    with pyzstd.SeekableZstdFile(path) as f:
        assert_same_array(np.load(f), array)
    with pyzstd.SeekableZstdFile(path) as f:  # random access through its seek table
        f.seek(128 + 8 * 7000)
        assert np.frombuffer(f.read(8), "<f8")[0] == array.reshape(-1)[7000]


@pytest.mark.parametrize("frame_size", [1000, 4096, 1 << 20])
def test_we_read_pyzstd_files(tmp_path: Path, frame_size: int) -> None:
    path = str(tmp_path / "x.npy.zst")
    array = np.asfortranarray(np.random.default_rng(5).integers(0, 1000, (90, 130)))
    with pyzstd.SeekableZstdFile(path, "w", max_frame_content_size=frame_size, level_or_option=5) as f:
        f.write(npy_bytes(array))
    assert_same_array(load(path), array)


@pytest.mark.parametrize("walker", ["default", "python"])
def test_we_read_hand_written_frames(tmp_path: Path, walker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames of odd sizes, with and without checksums and content sizes, plus empty and skippable frames,
    and a seek table whose entries carry checksums."""
    if walker == "python":
        monkeypatch.setattr(seekable_zstd, "_native_frame_size", None)
    array = np.arange(10_007, dtype="<i8")
    stream = npy_bytes(array)
    cuts = [0, 3, 70, 200, 5000, 5001, 5001, 33_333, len(stream)]
    frames, dsizes, checksums = [], [], []
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        cctx = zstandard.ZstdCompressor(level=1 + i % 5, write_checksum=i % 2 == 0, write_content_size=i % 3 != 0)
        frame = cctx.compress(stream[a:b]) if b > a or i % 2 else cctx.compress(b"")
        frames.append(frame)
        dsizes.append(b - a)
        checksums.append(int.from_bytes(frame[-4:], "little") if i % 2 == 0 else 0)
        if i == 3:  # a skippable frame in the middle: no content
            skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"skip!"
            frames.append(skippable)
            dsizes.append(0)
            checksums.append(0)
    csizes = [len(f) for f in frames]
    entries = np.array([csizes, dsizes, checksums], dtype="<u4").T.tobytes()
    footer = len(frames).to_bytes(4, "little") + b"\x80" + (0x8F92EAB1).to_bytes(4, "little")
    table = (0x184D2A5E).to_bytes(4, "little") + (len(entries) + 9).to_bytes(4, "little") + entries + footer
    path = tmp_path / "hand.npy.zst"
    path.write_bytes(b"".join(frames) + table)
    reader = open_source(str(path))
    assert reader.table.checksums is not None
    assert_same_array(load(str(path)), array)
    for start, stop in [(0, len(stream)), (2, 6000), (5000, 5002), (69, 201)]:
        out = bytearray(stop - start)
        reader.read_into(start, out)
        assert bytes(out) == stream[start:stop]
    # The same frames with the writer's table (no checksums) read the same.
    path.write_bytes(b"".join(frames) + seek_table_bytes(np.array(csizes), np.array(dsizes)))
    assert_same_array(load(str(path)), array)
    with pyzstd.SeekableZstdFile(str(path)) as f:
        assert f.read() == stream


# -- the frame table --------------------------------------------------------------------------------


def test_frames_for_skips_empty_frames() -> None:
    table = FrameTable.from_sizes([5, 3, 7, 2, 4, 9, 1], [10, 0, 10, 0, 0, 10, 0])
    assert list(table.decompressed_offsets) == [0, 10, 10, 20, 20, 20, 30]
    assert table.decompressed_total == 30 and table.compressed_total == 31
    assert table.frames_for(0, 10) == range(0, 1)
    assert table.frames_for(10, 11) == range(2, 3)  # not the empty frame 1 at offset 10
    assert table.frames_for(9, 11) == range(0, 3)
    assert table.frames_for(19, 21) == range(2, 6)
    assert table.frames_for(20, 30) == range(5, 6)
    assert table.frames_for(5, 5) == range(0)
    assert table.frame_at(25) == 5
    with pytest.raises(ValueError):
        table.frames_for(0, 31)
    assert table.compressed_offsets.dtype == np.int64
    assert not table.compressed_offsets.flags.writeable


def test_frames_for_large_table_is_vectorised() -> None:
    n = 262_144  # a 1 TiB array in 4 MiB chunks
    table = FrameTable.from_sizes(np.full(n, 1000), np.full(n, 4 << 20))
    assert table.frames_for((4 << 20) * 1000 + 5, (4 << 20) * 1003) == range(1000, 1003)
    clone = pickle.loads(pickle.dumps(table))
    assert len(pickle.dumps(table)) < 8 * n + 16 * (n // 1024 + 1) + 1000  # sizes as u32, and the block sums
    assert np.array_equal(clone.decompressed_offsets, table.decompressed_offsets)
    assert clone.compressed_offsets.dtype == np.int64


# -- save arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_bytes", [0, -4096, 1000, 4097, 2**32, 2**33])
def test_save_rejects_bad_chunk_bytes(tmp_path: Path, chunk_bytes: int) -> None:
    with pytest.raises(ValueError, match="chunk_bytes"):
        save(str(tmp_path / "bad.npy.zst"), np.zeros(3), chunk_bytes=chunk_bytes)
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_non_int_chunk_bytes(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        save(str(tmp_path / "bad.npy.zst"), np.zeros(3), chunk_bytes=4096.0)  # type: ignore[arg-type]


def test_save_replaces_atomically_and_leaves_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "a.npy.zst"
    save(str(path), np.zeros(10), chunk_bytes=PAGE)
    save(str(path), np.ones(20), chunk_bytes=PAGE)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy.zst"]
    assert_same_array(load(str(path)), np.ones(20))
    assert (path.stat().st_mode & 0o777) == (0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_save_file_url(tmp_path: Path) -> None:
    url = (tmp_path / "f.npy.zst").as_uri()
    save(url, np.arange(5), chunk_bytes=PAGE, level=19)
    assert_same_array(load(url), np.arange(5))


def test_leading_empty_frames_and_header_in_a_later_frame(tmp_path: Path) -> None:
    array = np.arange(3000, dtype="<u4")
    stream = npy_bytes(array)
    skippable = struct.pack("<II", 0x184D2A5A, 3) + b"abc"
    empty = zstandard.ZstdCompressor(write_checksum=True).compress(b"")
    frames = [skippable, empty, zstandard.ZstdCompressor().compress(stream)]
    path = tmp_path / "lead.npy.zst"
    table = seek_table_bytes(np.array([len(f) for f in frames]), np.array([0, 0, len(stream)]))
    path.write_bytes(b"".join(frames) + table)
    reader = open_source(str(path))
    assert reader.table.frames_for(0, 10) == range(2, 3)
    assert_same_array(load(str(path)), array)


@pytest.mark.parametrize("mapped", [True, False])
def test_local_batch_fetchers(tmp_path: Path, mapped: bool) -> None:
    path = tmp_path / "l.npy.zst"
    save(str(path), np.arange(20_000, dtype="<f8"), chunk_bytes=PAGE)
    reader = open_source(str(path))
    fetcher = local_batches(reader, mapped=mapped)
    assert isinstance(fetcher, MappedBatches if mapped else PreadBatches)
    try:
        for batch in ([1, 2, 3], [4], [5, 6, 7, 8], [9, 10]):
            assert [bytes(v) for v in fetcher(batch)] == reader.fetch(batch)
    finally:
        fetcher.close()
    fetcher = local_batches(reader, mapped=mapped)
    path.write_bytes(path.read_bytes()[: int(reader.table.compressed_offsets[5])])
    try:
        fetcher([1, 2])  # still there
        with pytest.raises(TruncatedFileError, match="truncated or rewritten"):
            fetcher([4, 5, 6])
    finally:
        fetcher.close()


def test_load_into_a_given_array_and_refuse_a_wrong_one(tmp_path: Path) -> None:
    src = np.asfortranarray(np.random.default_rng(2).standard_normal((300, 70)))
    path = str(tmp_path / "f.npy.zst")
    save(path, src, chunk_bytes=PAGE * 4)
    out = np.full_like(src, 7.0, order="F")
    assert load(path, out=out) is out
    assert_same_array(out, src)
    for wrong in (np.empty_like(src, order="C"), np.empty((300, 71)), np.empty_like(src, dtype=np.float32, order="F")):
        with pytest.raises(ValueError, match="out must be"):
            load(path, out=wrong)
    frozen = np.empty_like(src, order="F")
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        load(path, out=frozen)


def test_read_into_decodes_the_frame_asked_for_first(tmp_path: Path) -> None:
    # The monitor wakes a faulting reader when its frame is done: that frame must be decoded, and
    # final, before any other frame of the chunk is touched.
    path = str(tmp_path / "frames.npy.zst")
    array = np.random.default_rng(5).integers(0, 255, 4 * PAGE + 100, dtype=np.uint8)
    save(path, array, chunk_bytes=8 * PAGE, frame_bytes=PAGE)
    reader = open_source(path)
    expected = np.frombuffer(npy_bytes(array), dtype=np.uint8)[reader.data_offset :]
    for first_at, first_end in ((0, 1), (2 * PAGE + 7, 2 * PAGE + 8), (4 * PAGE + 99, 4 * PAGE + 100),
                                (PAGE - 1, 2 * PAGE + 1)):  # the last spans three frames: all first
        out = bytearray(b"\xaa" * len(expected))
        seen: list[tuple[int, int, bytes]] = []

        def on_first(lo: int, hi: int, out: bytearray = out, seen: list = seen) -> None:
            seen.append((lo, hi, bytes(out)))

        first = (first_at, first_end)
        assert reader.read_into(reader.data_offset, out, first=first, on_first=on_first) is False
        assert bytes(out) == expected.tobytes()
        [(lo, hi, snapshot)] = seen
        assert lo == first_at - first_at % PAGE and hi == min(-(-first_end // PAGE) * PAGE, len(expected))
        assert snapshot[lo:hi] == expected[lo:hi].tobytes()
        assert snapshot[:lo] + snapshot[hi:] == b"\xaa" * (len(expected) - (hi - lo))  # nothing else yet


@pytest.mark.parametrize("layout", ["written", "absent", "bogus chunk size", "other skippable frame"])
def test_open_takes_the_chunk_size_from_the_layout_frame_and_only_from_a_sound_one(tmp_path: Path, layout: str) -> None:
    import lazymem
    from lazymem.sources.layout_frame import LAYOUT_MAGIC, layout_frame

    path = str(tmp_path / "layout.npy.zst")
    array = np.random.default_rng(7).standard_normal(40 * PAGE // 8)
    save(path, array, chunk_bytes=8 * PAGE, frame_bytes=2 * PAGE)
    if layout == "absent":
        rewrite_layout_frame(path, None)
    elif layout == "bogus chunk size":
        rewrite_layout_frame(path, layout_frame(12345))  # not a page multiple
    elif layout == "other skippable frame":
        rewrite_layout_frame(path, struct.pack("<II", LAYOUT_MAGIC, 16) + b"somebody else's!")  # 16 bytes, as declared
    a = lazymem.open(path)
    # Without a sound layout frame the frames are all there is: one frame per chunk, as before.
    assert lazymem.stats(a).chunk_bytes == (8 * PAGE if layout == "written" else 2 * PAGE)
    assert a.dtype == array.dtype and a.shape == array.shape and a.tobytes() == array.tobytes()
    assert_same_array(load(path), array)
    if shutil.which("zstd"):  # any zstd decoder passes over the layout frame
        out = subprocess.run(["zstd", "-dc", path], capture_output=True, check=True).stdout
        assert out == npy_bytes(array)


def test_read_into_first_with_zero_frames_in_the_chunk(tmp_path: Path) -> None:
    # A local read fetches the frames holding `first` alone first: when those are zero frames the
    # rest decides whether the whole range is zeros (left untouched) or must be decoded.
    path = str(tmp_path / "zeros.npy.zst")
    array = np.random.default_rng(6).integers(1, 255, 16 * PAGE, dtype=np.uint8)
    array[2 * PAGE : 3 * PAGE] = 0  # one zero frame in the first chunk
    array[8 * PAGE :] = 0  # the second chunk all zeros
    save(path, array, chunk_bytes=8 * PAGE, frame_bytes=PAGE)
    reader = open_source(path)
    calls: list[tuple[int, int]] = []

    def on_first(lo: int, hi: int) -> None:
        calls.append((lo, hi))

    out = bytearray(b"\xaa" * 8 * PAGE)
    first = (2 * PAGE + 5, 2 * PAGE + 6)
    assert reader.read_into(reader.data_offset, out, skip_zeros=True, first=first, on_first=on_first) is False
    assert bytes(out) == array[: 8 * PAGE].tobytes() and calls == [(2 * PAGE, 3 * PAGE)]
    out = bytearray(b"\xaa" * 8 * PAGE)
    assert reader.read_into(reader.data_offset + 8 * PAGE, out, skip_zeros=True, first=first, on_first=on_first)
    assert bytes(out) == b"\xaa" * 8 * PAGE and len(calls) == 1  # untouched, nothing reported


def test_frames_decoded_together_all_finish_before_an_error_is_raised() -> None:
    # The monitor reuses the buffer a failed chunk was decoded into: no decode may still be writing
    # into it once read_into has raised.
    import threading

    from lazymem.sources.frames import _run_together

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: the jobs run one after the other")
    started, done = threading.Event(), []
    frame = zstandard.ZstdCompressor(level=1).compress(np.random.default_rng(0).bytes(4 << 20))

    def failing() -> None:
        started.wait()  # the other job is under way
        raise ValueError("a corrupt frame")

    def slow() -> None:
        started.set()
        zstandard.ZstdDecompressor().decompress(frame)  # ~10 ms after the failure
        done.append(True)

    with pytest.raises(ValueError, match="corrupt"):
        _run_together([failing, slow])
    assert done == [True]


def test_save_creates_missing_directories_and_takes_sizes_as_strings(tmp_path: Path, monkeypatch) -> None:
    src = np.arange(100_000, dtype="<i8")
    monkeypatch.chdir(tmp_path)
    lazymem.save("data/temp.npy.zst", src, chunk_bytes="64KiB", frame_bytes="16 KiB")  # the README's first line
    reader = open_source(str(tmp_path / "data" / "temp.npy.zst"))
    assert reader.chunk_bytes_hint == 64 * 1024 and int(np.max(reader.table.decompressed_sizes)) == 16 * 1024
    assert np.array_equal(lazymem.load("data/temp.npy.zst"), src)
    a = lazymem.open("data/temp.npy.zst", chunk_bytes="128KiB")
    assert lazymem.stats(a).chunk_bytes == 128 * 1024 and np.array_equal(a, src)
    with pytest.raises(ValueError, match="cannot read"):
        lazymem.save("data/x.npy.zst", src, chunk_bytes="a lot")

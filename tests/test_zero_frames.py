"""Zero frames: the writer stores all-zero chunks as RLE frames, readers recognise them without decoding.

The property that matters: a frame is taken for zeros only if zstd itself decodes it to exactly that
many zeros with a valid checksum. Near misses and corrupted zero frames go to the decoder, which raises.
"""

from __future__ import annotations

import io
import itertools
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymem
from lazymem.eager import read_array
from lazymem.sources import npy_header_bytes, open_source
from lazymem.sources.seekable_zstd import decode_frame_into
from lazymem.sources.zero_frames import BLOCK_MAXIMUM_SIZE, ZSTD_MAGIC, is_zero_frame, parse_frame_header, zero_frame
from lazymem.writer import seek_table_bytes

from .conftest import PAGE, assert_same_array
from .test_fuzz import _mutate, mutations

SIZES = [1, 255, 256, 4096, 12345, 65791, 65792, BLOCK_MAXIMUM_SIZE - 1, BLOCK_MAXIMUM_SIZE,
         BLOCK_MAXIMUM_SIZE + 1, 999_999, 4 << 20, (4 << 20) + 3]


def _checksum(content: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(content)[-4:]


def _frame(block_sizes: list[int], *, byte: int = 0, single_segment: bool = True, fcs_bytes: int | None = None,
           window_log: int = 17, did_bytes: int = 0, did: int = 0, checksum: bool = True) -> bytes:
    """A zstd frame of RLE blocks in any header layout RFC 8878 allows (fcs_bytes None: the smallest)."""
    size = sum(block_sizes)
    if fcs_bytes is None:
        fcs_bytes = 1 if size < 256 and single_segment else 2 if 256 <= size < 65792 else 4 if size < 2**32 else 8
    assert fcs_bytes != (0 if single_segment else 1), "1-byte content sizes exist in single-segment frames only"
    fcs_flag = {0: 0, 1: 0, 2: 1, 4: 2, 8: 3}[fcs_bytes]
    descriptor = fcs_flag << 6 | single_segment << 5 | checksum << 2 | {0: 0, 1: 1, 2: 2, 4: 3}[did_bytes]
    header = ZSTD_MAGIC.to_bytes(4, "little") + bytes([descriptor])
    if not single_segment:
        header += bytes([(window_log - 10) << 3])
    header += did.to_bytes(did_bytes, "little")
    if fcs_bytes:
        header += (size - 256 if fcs_bytes == 2 else size).to_bytes(fcs_bytes, "little")
    return header + _blocks(block_sizes, byte) + (_checksum(bytes([byte]) * size) if checksum else b"")


def _blocks(block_sizes: list[int], byte: int | None) -> bytes:
    """RLE blocks of ``byte``, or raw blocks of zeros if ``byte`` is None."""
    def block(i: int, n: int) -> bytes:
        head = n << 3 | (0 if byte is None else 2) | (i == len(block_sizes) - 1)
        return head.to_bytes(3, "little") + (bytes(n) if byte is None else bytes([byte]))

    return b"".join(block(i, n) for i, n in enumerate(block_sizes))


def _strict_decode(frame: bytes, size: int) -> bytes:
    """What lazymem's decoder makes of ``frame``: exactly ``size`` bytes, checksum verified, or it raises."""
    out = bytearray(size)
    decode_frame_into(frame, memoryview(out))
    return bytes(out)


def _split(size: int, block: int) -> list[int]:
    return [block] * (size // block) + ([size % block] if size % block else [])


# -- the frame itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_zero_frame_decodes_to_zeros_with_python_zstandard(size: int) -> None:
    frame = zero_frame(size)
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes(size)
    assert _strict_decode(frame, size) == bytes(size)
    assert is_zero_frame(frame, size)
    assert not is_zero_frame(frame, size - 1) and not is_zero_frame(frame, size + 1)
    header = parse_frame_header(frame)
    assert header.content_size == size and header.checksummed and header.descriptor & 0x20  # single segment
    assert len(frame) == header.size + 4 * -(-size // BLOCK_MAXIMUM_SIZE) + 4


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd command-line tool is not installed")
def test_zero_frame_decodes_to_zeros_with_the_zstd_cli(tmp_path: Path) -> None:
    for size in SIZES:
        path = tmp_path / f"z{size}.zst"
        path.write_bytes(zero_frame(size))
        done = subprocess.run(["zstd", "-d", "-c", str(path)], capture_output=True, check=True)
        assert done.stdout == bytes(size), size


def test_zero_frames_above_128_mib_use_a_window_zstd_decodes_by_default(tmp_path: Path) -> None:
    # A single-segment frame's window is its content size; zstd refuses windows above 128 MiB.
    size = (1 << 27) + PAGE
    frame = zero_frame(size)
    header = parse_frame_header(frame)
    assert not header.descriptor & 0x20 and header.window_size == BLOCK_MAXIMUM_SIZE
    assert header.content_size == size and is_zero_frame(frame, size)
    reader = zstandard.ZstdDecompressor().stream_reader(frame, read_across_frames=False)
    total = 0
    while piece := reader.read(8 << 20):
        assert not np.frombuffer(piece, dtype=np.uint8).any()
        total += len(piece)
    assert total == size
    if shutil.which("zstd"):
        path = tmp_path / "big.zst"
        path.write_bytes(frame)
        subprocess.run(["zstd", "-t", "-q", str(path)], check=True)  # decodes and verifies the checksum


def test_size_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one byte"):
        zero_frame(0)
    assert not is_zero_frame(zstandard.ZstdCompressor(write_checksum=True).compress(b""), 0)


@st.composite
def zero_frame_layouts(draw: st.DrawFn) -> tuple[bytes, int]:
    """Any header layout and block split zstd accepts, RLE zero blocks only (at most 64 blocks)."""
    size = draw(st.integers(1, 3 * BLOCK_MAXIMUM_SIZE + 7))
    smallest_block = -(-size // 64)
    single_segment = draw(st.booleans())
    if single_segment:
        window_log = 0  # the window is the content size
        largest_block = min(size, BLOCK_MAXIMUM_SIZE)
        fcs_choices = [1] if size < 256 else [2] if size < 65792 else []
    else:
        window_log = draw(st.integers(max(10, (smallest_block - 1).bit_length()), 27))
        largest_block = min(1 << window_log, BLOCK_MAXIMUM_SIZE)
        fcs_choices = [0, 2] if 256 <= size < 65792 else [0]
    block = draw(st.integers(smallest_block, largest_block))
    frame = _frame(
        _split(size, block),
        single_segment=single_segment,
        fcs_bytes=draw(st.sampled_from([*fcs_choices, 4, 8])),
        window_log=window_log,
        did_bytes=draw(st.sampled_from([0, 1, 2, 4])),
        checksum=draw(st.booleans()),
    )
    return frame, size


@settings(max_examples=150, deadline=None)
@given(layout=zero_frame_layouts())
def test_any_rle_zero_layout_is_recognised_and_zstd_agrees(layout: tuple[bytes, int]) -> None:
    frame, size = layout
    assert _strict_decode(frame, size) == bytes(size)
    assert is_zero_frame(frame, size)
    assert is_zero_frame(memoryview(b"xx" + frame + b"yy")[2:-2], size)  # a view into a bigger fetch


def _near_misses() -> dict[str, tuple[bytes, int]]:
    size = 2 * BLOCK_MAXIMUM_SIZE + 1000
    good = zero_frame(size)
    head = parse_frame_header(good).size
    ones = _frame(_split(size, BLOCK_MAXIMUM_SIZE), byte=1)  # valid, but of ones

    def flipped(position: int, mask: int = 0x01) -> bytes:
        out = bytearray(good)
        out[position] ^= mask
        return bytes(out)

    raw = good[:head] + _blocks(_split(size, BLOCK_MAXIMUM_SIZE), None) + good[-4:]
    assert _strict_decode(raw, size) == bytes(size)  # a fine frame of zeros, but not one of RLE blocks
    return {
        "nonzero RLE byte": (flipped(head + 3), size),
        "nonzero RLE byte in the last block": (flipped(len(good) - 5), size),
        "RLE frame of ones with its own checksum": (ones, size),
        "raw block of zeros": (raw, size),
        "zstd's own frame of zeros": (zstandard.ZstdCompressor(write_checksum=True).compress(bytes(size)), size),
        "wrong checksum": (flipped(len(good) - 1, 0x80), size),
        "a block size changed": (flipped(head, 0x08), size),
        "content size off by one": (flipped(5), size),
        "asked for another size": (good, size - 1),
        "trailing byte": (good + b"\0", size),
        "trailing frame": (good + zero_frame(1), size),
        "no last-block bit": (flipped(len(good) - 8), size),
        "early last-block bit": (flipped(head), size),
        "reserved bit": (flipped(4, 0x08), size),
        "unused bit": (flipped(4, 0x10), size),
        "dictionary id": (_frame(_split(size, BLOCK_MAXIMUM_SIZE), did_bytes=1, did=7), size),
        "blocks bigger than the window": (_frame(_split(size, BLOCK_MAXIMUM_SIZE), single_segment=False,
                                                 window_log=16), size),
        "window zstd refuses": (_frame(_split(size, BLOCK_MAXIMUM_SIZE), single_segment=False, window_log=28), size),
        "skippable frame": ((0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + bytes(4), size),
        "empty": (b"", size),
        "size zero": (good, 0),
    }


@pytest.mark.parametrize("name", sorted(_near_misses()))
def test_near_misses_are_not_zero_frames(name: str) -> None:
    frame, size = _near_misses()[name]
    assert not is_zero_frame(frame, size)


def test_truncations_are_not_zero_frames() -> None:
    good = zero_frame(2 * BLOCK_MAXIMUM_SIZE + 1000)
    for end in range(len(good)):
        assert not is_zero_frame(good[:end], 2 * BLOCK_MAXIMUM_SIZE + 1000), end


@pytest.mark.parametrize("size", [4096, 2 * BLOCK_MAXIMUM_SIZE + 1000])
def test_every_bit_flip_is_rejected_or_still_exactly_zeros(size: int) -> None:
    good = zero_frame(size)
    for bit in range(8 * len(good)):
        frame = bytearray(good)
        frame[bit // 8] ^= 1 << (bit % 8)
        if is_zero_frame(bytes(frame), size):
            assert _strict_decode(bytes(frame), size) == bytes(size), bit


@settings(max_examples=200, deadline=None)
@given(layout=zero_frame_layouts(), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_mutated_zero_frames_are_rejected_or_still_exactly_zeros(layout: tuple[bytes, int], data: st.DataObject,
                                                                 seed: int) -> None:
    frame, size = layout
    mutated = _mutate(frame, data.draw(mutations(len(frame))), seed)
    if is_zero_frame(mutated, size):
        assert _strict_decode(mutated, size) == bytes(size)


# -- files ---------------------------------------------------------------------------------------


def _with_zero_chunks(dtype: np.dtype, shape: tuple[int, ...], order: str, chunk: int, zero: list[bool],
                      seed: int) -> np.ndarray:
    """Random nonzero data in stored order, with the stored chunks flagged in ``zero`` zeroed."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.random.default_rng(seed).integers(1, 256, size=nbytes, dtype=np.uint8)
    for k, is_zero in enumerate(zero):
        if is_zero:
            raw[k * chunk : (k + 1) * chunk] = 0
    return np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape, order=order)


def _stream(path: Path) -> bytes:
    """The whole decompressed stream, by python-zstandard: the reference for read_into."""
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(path.read_bytes()), read_across_frames=True).read()


def _check_read_into(path: Path, ranges: list[tuple[int, int]], zero_ranges: set[tuple[int, int]]) -> None:
    """read_into over ``ranges`` equals the stream; with skip_zeros it says True exactly on ``zero_ranges``."""
    stream = _stream(path)
    source = open_source(str(path))
    for start, stop in ranges:
        out = bytearray(b"\xaa" * (stop - start))
        assert source.read_into(start, out) is False
        assert out == stream[start:stop], (start, stop)
        out = bytearray(b"\xaa" * (stop - start))
        skipped = source.read_into(start, out, skip_zeros=True)
        assert skipped == ((start, stop) in zero_ranges), (start, stop)
        if skipped:
            assert out == b"\xaa" * (stop - start) and stream[start:stop] == bytes(stop - start)
        else:
            assert out == stream[start:stop], (start, stop)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from([np.dtype("u1"), np.dtype("<i4"), np.dtype(">f8"), np.dtype("c16")]),
    order=st.sampled_from(["C", "F"]),
    chunk_pages=st.sampled_from([1, 2]),
    threads=st.sampled_from([1, 2]),
    data=st.data(),
    seed=st.integers(0, 2**32 - 1),
)
def test_arrays_mixing_zero_and_nonzero_chunks_round_trip(tmp_path: Path, dtype: np.dtype, order: str,
                                                          chunk_pages: int, threads: int, data: st.DataObject,
                                                          seed: int) -> None:
    chunk = chunk_pages * PAGE
    cols = data.draw(st.sampled_from([1, 3, 8]))
    rows = data.draw(st.integers(1, 6 * chunk // (cols * dtype.itemsize)))
    nbytes = rows * cols * dtype.itemsize
    n_chunks = -(-nbytes // chunk)
    zero = data.draw(st.lists(st.booleans(), min_size=n_chunks, max_size=n_chunks))
    src = _with_zero_chunks(dtype, (rows, cols), order, chunk, zero, seed)
    path = tmp_path / f"mix-{seed}.npy.zst"
    lazymem.save(str(path), src, chunk_bytes=chunk, threads=threads)

    # The writer emitted exactly the canonical zero frames, for exactly the zero chunks.
    source = open_source(str(path))
    table = source.table
    frames = source.fetch(range(len(table) - 1))  # not the layout frame at the end
    assert [is_zero_frame(f, int(s)) for f, s in zip(frames, table.decompressed_sizes[:-1])] == [False, *zero]
    for frame, size, is_zero in zip(frames[1:], table.decompressed_sizes[1:], zero):
        assert (frame == zero_frame(int(size))) == is_zero

    assert_same_array(lazymem.load(str(path), threads=threads), src)
    assert np.load(io.BytesIO(_stream(path))).tobytes(order="A") == src.tobytes(order="A")

    # Whole chunks (what the monitor asks for), ranges across chunk boundaries, random ranges.
    base = source.data_offset
    whole = [(base + k * chunk, base + min((k + 1) * chunk, nbytes)) for k in range(n_chunks)]
    across = [(max(0, base + k * chunk - 100), min(base + nbytes, base + k * chunk + 100)) for k in range(n_chunks)]
    spans = data.draw(st.lists(st.tuples(st.integers(0, base + nbytes), st.integers(0, base + nbytes)), max_size=6))
    ranges = whole + across + [(min(a, b), max(a, b)) for a, b in spans]
    zero_ranges = {(a, b) for a, b in ranges if a < b and a >= base
                   and all(zero[k] for k in range((a - base) // chunk, (b - base - 1) // chunk + 1))}
    _check_read_into(path, ranges, zero_ranges)

    with lazymem.open(str(path)) as lazy:
        assert lazy.tobytes(order="A") == src.tobytes(order="A")


def test_non_contiguous_arrays_get_zero_frames_too(tmp_path: Path) -> None:
    big = np.ones((64, PAGE // 2), dtype="<i4")
    big[16:48] = 0
    src = big[:, ::2]  # through the writer's rechunking path
    path = tmp_path / "strided.npy.zst"
    lazymem.save(str(path), src, chunk_bytes=PAGE)
    source = open_source(str(path))
    frames = source.fetch(range(1, len(source.table) - 1))  # data frames: not header, not layout
    assert [is_zero_frame(f, PAGE) for f in frames] == [not src[k].any() for k in range(64)]
    # A strided view is stored (and loaded) in C order, as np.save stores it.
    assert_same_array(lazymem.load(str(path)), np.ascontiguousarray(src))


def test_read_array_overwrites_zero_chunks_of_a_given_output(tmp_path: Path) -> None:
    src = _with_zero_chunks(np.dtype("<f8"), (5 * PAGE // 8 + 3,), "C", PAGE, [True, False, True, True, False, True], 1)
    path = tmp_path / "out.npy.zst"
    lazymem.save(str(path), src, chunk_bytes=PAGE)
    for threads in (1, 2):
        out = np.full_like(src, 7.0)
        assert read_array(open_source(str(path)), out=out, threads=threads) is out
        assert_same_array(out, src)


def _corrupted_zero_frame_files(tmp_path: Path) -> tuple[np.ndarray, int, dict[str, Path]]:
    src = _with_zero_chunks(np.dtype("<i4"), (3 * PAGE // 4,), "C", PAGE, [False, True, False], 2)
    path = tmp_path / "good.npy.zst"
    lazymem.save(str(path), src, chunk_bytes=PAGE)
    table = open_source(str(path)).table
    start, length = int(table.compressed_offsets[2]), int(table.compressed_sizes[2])
    rle_byte = start + parse_frame_header(zero_frame(PAGE)).size + 3
    files = {}
    for name, position in [("checksum", start + length - 1), ("rle-byte", rle_byte)]:
        data = bytearray(path.read_bytes())
        data[position] ^= 0x01
        files[name] = tmp_path / f"{name}.npy.zst"
        files[name].write_bytes(bytes(data))
    return src, open_source(str(path)).data_offset, files


def test_a_corrupted_zero_frame_raises_and_never_reads_as_zeros(tmp_path: Path) -> None:
    src, base, files = _corrupted_zero_frame_files(tmp_path)
    for path in files.values():
        with pytest.raises(lazymem.CorruptChunkError, match="frame 2"):
            lazymem.load(str(path))
        with pytest.raises(lazymem.CorruptChunkError, match="frame 2"):
            read_array(open_source(str(path)), out=np.ones_like(src))
        source = open_source(str(path))
        for start, stop in [(base + PAGE, base + 2 * PAGE), (base + PAGE + 8, base + PAGE + 16), (0, base + 3 * PAGE)]:
            for skip_zeros in (False, True):
                with pytest.raises(lazymem.CorruptChunkError, match="frame 2"):
                    source.read_into(start, bytearray(stop - start), skip_zeros=skip_zeros)
        # The chunks around it still read fine.
        out = bytearray(PAGE)
        assert source.read_into(base, out, skip_zeros=True) is False and out == src.tobytes()[:PAGE]


def test_a_corrupted_zero_frame_fails_a_lazy_prefetch(tmp_path: Path) -> None:
    _, _, files = _corrupted_zero_frame_files(tmp_path)
    with lazymem.open(str(files["rle-byte"]), readahead=0) as lazy, pytest.raises(lazymem.LazymemError):
        lazy.prefetch()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_mutated_files_with_zero_frames_give_the_right_array_or_an_error(tmp_path: Path, data: st.DataObject,
                                                                         seed: int) -> None:
    src = _with_zero_chunks(np.dtype("<i4"), (4 * PAGE // 4,), "C", PAGE, [True, False, True, True], 3)
    path = tmp_path / "z.npy.zst"
    lazymem.save(str(path), src, chunk_bytes=PAGE)
    good = path.read_bytes()
    table = open_source(str(path)).table
    # Aim at the zero frames half of the time: they are a few dozen bytes of a file of several KiB.
    first_zero = int(table.compressed_offsets[3])
    if data.draw(st.booleans()):
        frame = good[first_zero : first_zero + int(table.compressed_sizes[3])]
        mutated = good[:first_zero] + _mutate(frame, data.draw(mutations(len(frame))), seed)
        mutated += good[first_zero + len(frame) :]
    else:
        mutated = _mutate(good, data.draw(mutations(len(good))), seed)
    path.write_bytes(mutated)
    try:
        got = lazymem.load(str(path))
    except lazymem.LazymemError:
        pass
    else:
        assert_same_array(got, src)
    try:
        source = open_source(str(path))
        out = bytearray(b"\xaa" * (source.data_offset + source.header.nbytes))
        skipped = source.read_into(0, out, skip_zeros=True)
    except lazymem.LazymemError:
        pass
    else:
        assert not skipped and out[source.data_offset :] == src.tobytes()


def test_foreign_layout_with_unaligned_zero_frames(tmp_path: Path) -> None:
    """Zero frames of other layouts, not page-aligned, one cut by the end of the data."""
    src = np.zeros(4000, dtype="<u2")
    src[:500] = np.arange(1, 501)
    src[3000:3500] = 9
    raw = src.tobytes()
    header = npy_header_bytes(src.dtype, src.shape, False)
    cctx = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True)
    frames = [
        cctx.compress(header),
        cctx.compress(raw[:1000]),
        _frame(_split(3000, 1024), single_segment=False, fcs_bytes=0, window_log=10),  # no content size
        _frame(_split(2000, 700), did_bytes=2, checksum=False),
        cctx.compress(raw[6000:7000]),
        _frame([1000]),  # the data's last 1000 bytes (a stream must end with the data: see test_format_errors)
    ]
    assert [is_zero_frame(f, n) for f, n in zip(frames, [len(header), 1000, 3000, 2000, 1000, 1000])] == [
        False, False, True, True, False, True]
    sizes = [len(header), 1000, 3000, 2000, 1000, 1000]
    path = tmp_path / "foreign.npy.zst"
    path.write_bytes(b"".join(frames) + seek_table_bytes(np.array([len(f) for f in frames]), np.array(sizes)))

    assert_same_array(lazymem.load(str(path)), src)
    out = np.full_like(src, 0xFFFF)
    assert_same_array(read_array(open_source(str(path)), out=out), src)
    base = len(header)
    ends = np.cumsum(sizes)
    ranges = [(int(a), int(b)) for a, b in itertools.pairwise(ends)]  # each frame whole
    ranges += [(base + 900, base + 1100), (base + 1500, base + 5500), (base + 6500, base + 8000), (0, base + 8000)]
    zero_ranges = {(base + 1000, base + 4000), (base + 4000, base + 6000), (base + 7000, base + 8000),
                   (base + 1500, base + 5500)}
    _check_read_into(path, ranges, zero_ranges)
    with lazymem.open(str(path)) as lazy:
        assert_same_array(np.asarray(lazy), src)


def test_plain_npy_never_reports_zeros(tmp_path: Path) -> None:
    path = tmp_path / "zeros.npy"
    np.save(path, np.zeros(3 * PAGE, dtype="u1"))
    source = open_source(str(path))
    out = bytearray(b"\xaa" * PAGE)
    assert source.read_into(source.data_offset, out, skip_zeros=True) is False
    assert out == bytes(PAGE)


def test_the_monitor_installs_zero_chunks_as_zero_pages(tmp_path: Path) -> None:
    # 12 chunks of 256 KiB; 0, 5, 6 and the last (short) one hold zeros only.
    src = np.random.default_rng(5).standard_normal(12 * 2**15 - 100)
    per_chunk = 2**15
    for chunk in (0, 5, 6, 11):
        src[chunk * per_chunk:(chunk + 1) * per_chunk] = 0.0
    src[11 * per_chunk - 1] = 1.0  # the element just before the zero tail chunk is not zero
    path = str(tmp_path / "z.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**18)
    a = lazymem.open(path, readahead=0)
    assert a[5 * per_chunk + 77] == 0.0 and a[4 * per_chunk + 3] == src[4 * per_chunk + 3]
    assert lazymem.stats(a).zero_chunks == 1 and lazymem.stats(a).chunks_installed == 2
    assert_same_array(np.asarray(a), src)
    s = lazymem.stats(a)
    assert s.zero_chunks == 4 and s.chunks_installed == 12
    a.evict()  # punched out and loaded again: still zeros, still right
    assert_same_array(np.asarray(a[::-1]), src[::-1])


def test_a_readahead_scan_installs_every_chunk_once(tmp_path: Path) -> None:
    # Zero chunks install fast, so several tripwire chunks of a readahead window finish close together:
    # springing one must not drop another's held page (it would load that chunk a second time).
    path = str(tmp_path / "zeros.npy.zst")
    lazymem.save(path, np.zeros(2**24, dtype=np.float32), chunk_bytes=2**18)  # 64 MiB, 256 chunks
    for _ in range(8):
        a = lazymem.open(path, readahead=16)
        assert float(np.sum(a, dtype=np.float64)) == 0.0
        s = lazymem.stats(a)
        assert s.chunks_installed == s.zero_chunks == s.chunks_total == 256
        del a


@pytest.mark.slow  # ~2.5 s with its teardown
def test_load_faults_in_the_data_ahead_but_never_the_zero_chunks(tmp_path: Path) -> None:
    # lazymem.load faults a fresh output in ahead of its decoders (eager._Prefaulter), for outputs
    # of 32 MiB and more; the pages of zero frames must stay untouched, as the decoders leave them.
    from lazymem import eager

    from .conftest import resident_pages

    mib = 1 << 20
    src = np.frombuffer(np.random.default_rng(8).bytes(96 * mib), dtype=np.uint8).copy()
    src[32 * mib : 64 * mib] = 0
    path = str(tmp_path / "half.npy.zst")
    lazymem.save(path, src)
    assert src.nbytes >= eager.PREFAULT_STEP
    out = lazymem.load(path)
    pages = resident_pages(out)  # before anything reads the zeros (a read maps the zero page)
    first = (out.ctypes.data % PAGE + 40 * mib) // PAGE  # well inside the zeros: huge pages faulted
    assert not pages[first : first + 16 * mib // PAGE].any()  # for the data around stay outside
    assert pages[: 16 * mib // PAGE].all() and pages[-16 * mib // PAGE :].all()
    assert out.tobytes() == src.tobytes()

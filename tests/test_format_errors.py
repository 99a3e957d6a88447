"""Damaged, hostile and foreign files: the right error class, a clear message, never a hang or wrong data."""

from __future__ import annotations

import io
import os
import re
import resource
import struct
import uuid
from pathlib import Path

import numpy as np
import pytest
import zstandard

from lazymem.eager import load, read_array
from lazymem.errors import (
    ArrayNotFoundError,
    CorruptChunkError,
    FormatError,
    HeaderError,
    SeekTableError,
    TruncatedFileError,
    UnsupportedDtypeError,
)
from lazymem.sources import open_source, seekable_zstd
from lazymem.sources.seekable_zstd import parse_seek_table, seek_table_size
from lazymem.writer import save, seek_table_bytes

from .conftest import rewrite_layout_frame

pytestmark = pytest.mark.timeout(60)

PAGE = 4096


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def seekable(frames: list[bytes], dsizes: list[int]) -> bytes:
    """A seekable zstd file from already-compressed frames."""
    return b"".join(frames) + seek_table_bytes(np.array([len(f) for f in frames]), np.array(dsizes))


def compress(data: bytes, **kwargs: bool) -> bytes:
    return zstandard.ZstdCompressor(level=3, **kwargs).compress(data)


def table_entries(data: bytes) -> tuple[int, int]:
    """(offset of the first seek table entry, frame count) in a file written by save."""
    n = struct.unpack_from("<I", data, len(data) - 9)[0]
    return len(data) - 9 - 8 * n, n


@pytest.fixture(params=["libzstd", "python"])
def frame_walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with both ways of finding where a frame ends: libzstd's, and the pure Python walk."""
    if request.param == "libzstd" and seekable_zstd._native_frame_size is None:
        pytest.skip("no binding exposes ZSTD_findFrameCompressedSize (Python < 3.14 without backports.zstd)")
    if request.param == "python":
        monkeypatch.setattr(seekable_zstd, "_native_frame_size", None)
    return str(request.param)


@pytest.fixture
def native(tmp_path: Path) -> tuple[Path, np.ndarray]:
    array = np.random.default_rng(7).standard_normal(6 * PAGE // 8 + 100)  # 7 data frames, the last short
    path = tmp_path / "ok.npy.zst"
    save(str(path), array, chunk_bytes=PAGE)
    return path, array


# -- not there, not ours --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    for url in [str(tmp_path / "nope.npy.zst"), f"memory://lazymem-tests/{uuid.uuid4().hex}"]:
        with pytest.raises(ArrayNotFoundError, match=r"no such file") as info:
            open_source(url)
        assert isinstance(info.value, FileNotFoundError)
        with pytest.raises(FileNotFoundError):
            load(url)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(FormatError, match=r"empty"):
        open_source(str(path))


@pytest.mark.parametrize("size", [1, 8, 17, 1000, 200_000])
def test_random_garbage(tmp_path: Path, size: int) -> None:
    path = tmp_path / "garbage"
    path.write_bytes(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes())
    with pytest.raises(FormatError, match=r"neither a seekable zstd file nor a .npy"):
        open_source(str(path))


@pytest.mark.parametrize("size", [100, 200_000])
def test_plain_zstd_file(tmp_path: Path, size: int) -> None:
    path = tmp_path / "plain.zst"
    path.write_bytes(compress(npy_bytes(np.arange(size // 8, dtype="<f8"))))
    with pytest.raises(FormatError, match=r"without a seek table") as info:
        open_source(str(path))
    assert "truncated" in str(info.value)


def test_plain_npy_is_read_but_checked(tmp_path: Path) -> None:
    path = tmp_path / "plain.npy"
    array = np.arange(1000, dtype=">i4").reshape(10, 100)
    path.write_bytes(npy_bytes(array))
    assert np.array_equal(load(str(path)), array)
    path.write_bytes(npy_bytes(array)[:-1])
    with pytest.raises(TruncatedFileError, match=r"3999 bytes|4128"):
        open_source(str(path))
    path.write_bytes(npy_bytes(array)[:50])
    with pytest.raises(TruncatedFileError, match=r"header"):
        open_source(str(path))


# -- truncation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [1, 4, 9, 100, 0.5, -1, -4, -9, -10, -30, -100])
def test_truncated_files(native: tuple[Path, np.ndarray], keep: float) -> None:
    path, _ = native
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:cut])
    with pytest.raises(FormatError) as info:
        open_source(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message or "seek table" in message


def test_truncated_while_open(native: tuple[Path, np.ndarray]) -> None:
    path, _ = native
    reader = open_source(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError, match=r"shorter"):
        reader.read_into(reader.data_offset, bytearray(reader.stream_size - reader.data_offset))
    with pytest.raises(TruncatedFileError):
        read_array(reader)  # the eager loader's local fast path checks lengths too


def test_file_missing_its_start(native: tuple[Path, np.ndarray]) -> None:
    path, _ = native
    path.write_bytes(path.read_bytes()[10:])
    with pytest.raises(TruncatedFileError, match=r"only .* precede it"):
        open_source(str(path))


# -- bad seek tables ------------------------------------------------------------------------------


def corrupt(path: Path, offset: int, value: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))


def test_corrupted_seekable_magic(native: tuple[Path, np.ndarray]) -> None:
    path, _ = native
    corrupt(path, len(path.read_bytes()) - 4, b"\xb1\xea\x92\x8e")
    with pytest.raises(FormatError, match=r"without a seek table"):
        open_source(str(path))


def test_corrupted_skippable_magic(native: tuple[Path, np.ndarray]) -> None:
    path, _ = native
    entries, _ = table_entries(path.read_bytes())
    corrupt(path, entries - 8, b"\x5f\x2a\x4d\x18")
    with pytest.raises(SeekTableError, match=r"no seek table frame starts there"):
        open_source(str(path))


@pytest.mark.parametrize("delta", [-1, 1, 1000, 2**27])
def test_wrong_frame_count(native: tuple[Path, np.ndarray], delta: int) -> None:
    path, _ = native
    data = path.read_bytes()
    _, n = table_entries(data)
    corrupt(path, len(data) - 9, struct.pack("<I", n + delta))
    with pytest.raises(SeekTableError, match=r"frames"):
        open_source(str(path))


def test_absurd_frame_count(native: tuple[Path, np.ndarray]) -> None:
    path, _ = native
    corrupt(path, len(path.read_bytes()) - 9, struct.pack("<I", 0xFFFFFFFF))
    with pytest.raises(SeekTableError, match=r"refused"):
        open_source(str(path))


def test_reserved_descriptor_bits(native: tuple[Path, np.ndarray]) -> None:
    path, _ = native
    corrupt(path, len(path.read_bytes()) - 5, b"\x04")
    with pytest.raises(SeekTableError, match=r"reserved"):
        open_source(str(path))


def test_unused_descriptor_bits_are_ignored(native: tuple[Path, np.ndarray]) -> None:
    path, array = native
    corrupt(path, len(path.read_bytes()) - 5, b"\x03")
    assert np.array_equal(load(str(path)), array)


def test_compressed_sizes_not_covering_the_file(native: tuple[Path, np.ndarray]) -> None:
    path, _ = native
    data = path.read_bytes()
    entries, _ = table_entries(data)
    csize = struct.unpack_from("<I", data, entries + 8)[0]
    corrupt(path, entries + 8, struct.pack("<I", csize + 1))
    with pytest.raises(TruncatedFileError, match=r"precede"):
        open_source(str(path))
    corrupt(path, entries + 8, struct.pack("<I", csize - 1))
    with pytest.raises(SeekTableError, match=r"cover only"):
        open_source(str(path))


def test_compressed_sizes_shifted_between_frames(native: tuple[Path, np.ndarray], frame_walker: str) -> None:
    """Sizes still sum to the file size, but frame 2 loses its last byte to frame 3. (In a file
    without a layout frame: lazymem.save's own files catch this at open, by their rows' CRC.)"""
    path, _ = native
    rewrite_layout_frame(str(path), None)
    data = path.read_bytes()
    entries, _ = table_entries(data)
    c2, c3 = struct.unpack_from("<I", data, entries + 16)[0], struct.unpack_from("<I", data, entries + 24)[0]
    corrupt(path, entries + 16, struct.pack("<I", c2 - 1))
    corrupt(path, entries + 24, struct.pack("<I", c3 + 1))
    reader = open_source(str(path))
    for index in (2, 3):
        with pytest.raises(CorruptChunkError, match=f"frame {index} "):
            reader.read_into(int(reader.table.decompressed_offsets[index]), bytearray(10))
    with pytest.raises(CorruptChunkError):
        load(str(path))


def test_decompressed_size_lies(native: tuple[Path, np.ndarray]) -> None:
    """Compensated: the stream total holds. (Without a layout frame: see the test above.)"""
    path, _ = native
    rewrite_layout_frame(str(path), None)
    data = path.read_bytes()
    entries, _ = table_entries(data)
    corrupt(path, entries + 16 + 4, struct.pack("<I", PAGE - 8))  # frame 2 claims 8 bytes less
    corrupt(path, entries + 24 + 4, struct.pack("<I", PAGE + 8))  # frame 3 claims 8 bytes more
    reader = open_source(str(path))
    with pytest.raises(CorruptChunkError, match=r"frame 2 .*declares 4096 bytes"):
        reader.read_into(int(reader.table.decompressed_offsets[2]), bytearray(10))
    # Frame 3 decodes right by itself, but is placed by frame 2's lying size: refused.
    with pytest.raises(
        SeekTableError, match=r"entry 2 says frame 2 holds 4088 bytes, but the frame's header says 4096"
    ):
        reader.read_into(int(reader.table.decompressed_offsets[3]), bytearray(10))


def test_lazymem_files_catch_compensated_damage_at_open(native: tuple[Path, np.ndarray]) -> None:
    path, _ = native
    data = path.read_bytes()
    entries, _ = table_entries(data)
    corrupt(path, entries + 16 + 4, struct.pack("<I", PAGE - 8))
    corrupt(path, entries + 24 + 4, struct.pack("<I", PAGE + 8))
    with pytest.raises(SeekTableError, match="CRC"):
        open_source(str(path))


def test_table_with_empty_frame_holding_data(tmp_path: Path) -> None:
    header = npy_header_bytes_for(np.zeros(4))
    data = compress(header) + seek_table_bytes(np.array([len(compress(header)), 0]), np.array([len(header), 32]))
    path = tmp_path / "x.npy.zst"
    path.write_bytes(data)
    with pytest.raises(SeekTableError, match=r"no stored bytes"):
        open_source(str(path))


def npy_header_bytes_for(array: np.ndarray) -> bytes:
    return npy_bytes(array)[: len(npy_bytes(array)) - array.nbytes]


def test_parse_seek_table_needs_the_whole_table(native: tuple[Path, np.ndarray]) -> None:
    path, _ = native
    data = path.read_bytes()
    needed = seek_table_size(data[-9:])
    assert parse_seek_table(data[-needed:], len(data)).n_frames == 9  # header, 7 data, layout
    with pytest.raises(ValueError, match=f"needs the last {needed} bytes"):
        parse_seek_table(data[-needed + 1 :], len(data))
    with pytest.raises(ValueError, match=r"more than the file size"):
        parse_seek_table(data, len(data) - 1)


# -- bad headers ----------------------------------------------------------------------------------


def file_with_stream(tmp_path: Path, stream: bytes) -> str:
    path = tmp_path / f"{uuid.uuid4().hex}.npy.zst"
    path.write_bytes(seekable([compress(stream, write_checksum=True)], [len(stream)]))
    return str(path)


def header_stream(text: str, version: tuple[int, int] = (1, 0), data: bytes = b"") -> bytes:
    encoded = text.encode()
    fmt = "<H" if version == (1, 0) else "<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(encoded)) + encoded + data


def test_object_dtype_in_header(tmp_path: Path) -> None:
    stream = npy_bytes(np.array([None, 1], dtype=object))  # numpy writes a pickle after the header
    with pytest.raises(UnsupportedDtypeError, match=r"objects"):
        open_source(file_with_stream(tmp_path, stream))
    structured = header_stream("{'descr': [('a', '<i4'), ('o', '|O')], 'fortran_order': False, 'shape': (1,)}")
    with pytest.raises(UnsupportedDtypeError):
        load(file_with_stream(tmp_path, structured))


def test_absurd_shape(tmp_path: Path) -> None:
    stream = header_stream("{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296)}")
    with pytest.raises(HeaderError, match=r"absurd"):
        open_source(file_with_stream(tmp_path, stream))


def test_header_len_too_large(tmp_path: Path) -> None:
    stream = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**30) + b"{}" * 10
    with pytest.raises(HeaderError, match=r"absurd"):
        open_source(file_with_stream(tmp_path, stream))


def test_stream_shorter_than_header_says(tmp_path: Path) -> None:
    stream = npy_bytes(np.arange(100.0))[:-8]
    with pytest.raises(TruncatedFileError, match=r"describes 800 bytes"):
        open_source(file_with_stream(tmp_path, stream))
    with pytest.raises(TruncatedFileError, match=r"header is .* long"):
        open_source(file_with_stream(tmp_path, npy_bytes(np.arange(3.0))[:40]))


def test_stream_that_is_not_npy(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"not a .npy stream"):
        open_source(file_with_stream(tmp_path, b"hello, this is a text file compressed as seekable zstd"))
    path = tmp_path / "nothing.zst"
    path.write_bytes(seek_table_bytes(np.array([], dtype=np.int64), np.array([], dtype=np.int64)))
    with pytest.raises(FormatError, match=r"decompresses to nothing"):
        open_source(str(path))


def test_header_frame_corrupt(tmp_path: Path) -> None:
    frame = bytearray(compress(npy_bytes(np.arange(4.0)), write_checksum=True))
    frame[-6] ^= 0x10
    path = tmp_path / "h.zst"
    path.write_bytes(seekable([bytes(frame)], [len(npy_bytes(np.arange(4.0)))]))
    with pytest.raises(CorruptChunkError, match=r"frame 0"):
        open_source(str(path))


# -- corrupt data frames --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["middle", "checksum", "block header"])
def test_bit_flip_in_a_data_frame(native: tuple[Path, np.ndarray], where: str, frame_walker: str) -> None:
    path, array = native
    reader = open_source(str(path))
    bad = 3
    start = int(reader.table.compressed_offsets[bad])
    size = int(reader.table.compressed_sizes[bad])
    offset = {"middle": start + size // 2, "checksum": start + size - 2, "block header": start + 7}[where]
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x04
    path.write_bytes(bytes(data))
    reader = open_source(str(path))
    frame_start = int(reader.table.decompressed_offsets[bad])
    with pytest.raises(CorruptChunkError, match=re.escape(f"{path}: frame {bad} ")) as info:
        reader.read_into(frame_start - 10, bytearray(20))
    assert isinstance(info.value, ValueError)
    with pytest.raises(CorruptChunkError, match=f"frame {bad} "):
        load(str(path))
    # Every other frame still reads, and reads right.
    stream = npy_bytes(array)
    for index in range(len(reader.table)):
        if index == bad:
            continue
        lo = int(reader.table.decompressed_offsets[index])
        hi = lo + int(reader.table.decompressed_sizes[index])
        out = bytearray(hi - lo)
        reader.read_into(lo, out)
        assert bytes(out) == stream[lo:hi]


def test_trailing_garbage_inside_a_frame(tmp_path: Path, frame_walker: str) -> None:
    stream = npy_bytes(np.arange(1000.0))
    frames = [compress(stream[:128]), compress(stream[128:4224]) + b"\0\0\0", compress(stream[4224:])]
    path = tmp_path / "t.zst"
    path.write_bytes(seekable(frames, [128, 4096, len(stream) - 4224]))
    with pytest.raises(CorruptChunkError, match=r"frame 1 .*garbage"):
        load(str(path))


def test_frame_cut_inside_its_checksum(tmp_path: Path, frame_walker: str) -> None:
    """A frame missing its last checksum byte decodes 'fully' in a streaming decoder: must still fail."""
    stream = npy_bytes(np.arange(1000.0))
    frames = [compress(stream[:128]), compress(stream[128:], write_checksum=True)[:-1]]
    path = tmp_path / "c.zst"
    path.write_bytes(seekable(frames, [128, len(stream) - 128]))
    with pytest.raises(CorruptChunkError, match=r"frame 1 .*cut short"):
        load(str(path))


def rle_bomb(total: int) -> bytes:
    """A zstd frame of `total` zero bytes (a multiple of 128 KiB) in 4 bytes per 128 KiB, no content size."""
    block = 128 << 10
    count = total // block
    frame = bytearray(struct.pack("<IBB", 0xFD2FB528, 0x00, 7 << 3))  # no size, no checksum, 128 KiB window
    rle = struct.pack("<I", (block << 3) | (1 << 1))[:3] + b"\0"
    last = struct.pack("<I", (block << 3) | (1 << 1) | 1)[:3] + b"\0"
    frame += rle * (count - 1) + last
    return bytes(frame)


def test_decompression_bomb_is_refused_without_allocating(tmp_path: Path, frame_walker: str) -> None:
    bomb = rle_bomb(8 << 30)  # 8 GiB of zeros in 256 KiB
    assert zstandard.ZstdDecompressor().stream_reader(bomb).read(1 << 20) == bytes(1 << 20)  # it is real
    header = npy_header_bytes_for(np.zeros(PAGE // 8))
    path = tmp_path / "bomb.npy.zst"
    path.write_bytes(seekable([compress(header), bomb], [len(header), PAGE]))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CorruptChunkError, match=r"frame 1 .*more than the 4096 bytes"):
        load(str(path))
    reader = open_source(str(path))
    with pytest.raises(CorruptChunkError, match=r"more than"):
        reader.read_into(len(header), bytearray(PAGE))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200 << 10


def test_frame_header_size_disagrees_with_table(tmp_path: Path) -> None:
    """A frame whose header declares a huge content size is refused before decompressing."""
    header = npy_header_bytes_for(np.zeros(PAGE // 8))
    big = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(1 << 20))
    path = tmp_path / "big.npy.zst"
    path.write_bytes(seekable([compress(header), big], [len(header), PAGE]))
    with pytest.raises(CorruptChunkError, match=r"declares 1048576 bytes of content, the seek table 4096"):
        load(str(path))


def test_skippable_frame_claiming_content(tmp_path: Path, frame_walker: str) -> None:
    header = npy_header_bytes_for(np.zeros(4, dtype="u1"))
    skip = struct.pack("<II", 0x184D2A50, 4) + b"data"
    path = tmp_path / "s.npy.zst"
    path.write_bytes(seekable([compress(header), skip], [len(header), 4]))
    with pytest.raises(CorruptChunkError, match=r"skippable"):
        load(str(path))


def test_not_a_frame_at_all(tmp_path: Path, frame_walker: str) -> None:
    header = npy_header_bytes_for(np.zeros(16, dtype="u1"))
    path = tmp_path / "n.npy.zst"
    path.write_bytes(seekable([compress(header), b"sixteen raw byte"], [len(header), 16]))
    with pytest.raises(CorruptChunkError, match=r"frame 1 .*not a zstd frame"):
        load(str(path))


def test_directory_is_a_fetch_error(tmp_path: Path) -> None:
    (tmp_path / "dir.npy.zst").mkdir()
    with pytest.raises((FormatError, OSError)) as info:
        open_source(str(tmp_path / "dir.npy.zst"))
    assert not isinstance(info.value, ArrayNotFoundError)


def test_save_refuses_object_dtype(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedDtypeError, match=r"objects"):
        save(str(tmp_path / "o.npy.zst"), np.array([{}, []], dtype=object))
    with pytest.raises(UnsupportedDtypeError):
        save(str(tmp_path / "o.npy.zst"), np.zeros(2, dtype=[("a", "f8"), ("b", "O")]))
    assert os.listdir(tmp_path) == []

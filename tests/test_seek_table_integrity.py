"""Issue #19's cases, one by one: a lying seek table never places a frame at the wrong offset.

The fuzz campaign (test_fuzz_seek_table.py) covers the mutation families broadly; these are the
exact cases, with the error each must give, in every kind of file we read.
"""

from __future__ import annotations

import signal
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import zstandard

import lazymem
from lazymem.errors import SeekTableError
from lazymem.sources import open_source
from lazymem.sources.layout_frame import layout_frame
from lazymem.sources.seekable_zstd import DISCARD_BYTES, decode_frame_into

from .conftest import rewrite_layout_frame, run_python

A = np.arange(256 * 1024, dtype=np.float32)  # 1 MiB: 16 chunks of 64 KiB, 4 frames of 16 KiB each


def _entry(raw: bytearray, index: int) -> int:
    n = struct.unpack_from("<I", raw, len(raw) - 9)[0]
    return len(raw) - 9 - 8 * n + 8 * index


def _saved(tmp_path: Path, layout: str) -> str:
    path = str(tmp_path / f"{layout}.npy.zst")
    lazymem.save(path, A, chunk_bytes=64 << 10, frame_bytes=16 << 10)
    table = open_source(path).table
    if layout == "v2":
        rewrite_layout_frame(path, layout_frame(64 << 10, table.compressed_sizes[:-1],
                                                table.decompressed_sizes[:-1], version=2))
    elif layout == "v1":
        rewrite_layout_frame(path, layout_frame(64 << 10))
    elif layout == "none":
        rewrite_layout_frame(path, None)
    return path


def _one_bit(path: str) -> str:
    """The issue's example: frame 5's decompressed size 0x4000 -> 0x5000."""
    raw = bytearray(Path(path).read_bytes())
    raw[_entry(raw, 5) + 4 + 1] ^= 0x10
    out = path.replace(".npy.zst", "-onebit.npy.zst")
    Path(out).write_bytes(raw)
    return out


def _compensated(path: str) -> str:
    """Frame 5 claims 4 KiB more, frame 9 as much less: the total, and a v2 block's sums, hold."""
    raw = bytearray(Path(path).read_bytes())
    for index, delta in ((5, 0x1000), (9, -0x1000)):
        at = _entry(raw, index) + 4
        struct.pack_into("<I", raw, at, struct.unpack_from("<I", raw, at)[0] + delta)
    out = path.replace(".npy.zst", "-compensated.npy.zst")
    Path(out).write_bytes(raw)
    return out


def test_the_issues_one_bit_example_is_refused_at_open(tmp_path: Path) -> None:
    with pytest.raises(SeekTableError, match="layout frame"):
        lazymem.open(_one_bit(_saved(tmp_path, "v3")))


@pytest.mark.parametrize("layout", ["v1", "none"])
def test_one_bit_in_a_file_without_an_index_is_refused_at_open(tmp_path: Path, layout: str) -> None:
    # The stream the table sums to no longer ends where the .npy header ends the data.
    with pytest.raises(SeekTableError, match="stream"):
        lazymem.open(_one_bit(_saved(tmp_path, layout)))


def test_compensated_damage_in_our_files_is_refused_at_open_by_the_rows_crc(tmp_path: Path) -> None:
    with pytest.raises(SeekTableError, match="CRC"):
        lazymem.open(_compensated(_saved(tmp_path, "v3")))


@pytest.mark.parametrize("layout", ["v2", "v1", "none"])
def test_compensated_damage_in_older_files_is_refused_where_it_would_shift(tmp_path: Path, layout: str) -> None:
    """Chunk 2 (frames 9-12) placed by frame 5's lying size: a prefetch of it alone raises, a touch
    is a SIGBUS with the monitor's message, chunk 0 (before the lie) still reads right."""
    path = _compensated(_saved(tmp_path, layout))
    # The chunk size given: without a layout frame it would be chosen from the (lying) frame sizes.
    a = lazymem.open(path, readahead=0, chunk_bytes=64 << 10)
    assert a[:4].tolist() == A[:4].tolist()  # chunk 0: frames 1-4, all before the lie
    with pytest.raises(SeekTableError, match="entry 5 says frame 5 holds 20480 bytes"):
        a.prefetch(np.s_[32768:32772])
    with pytest.raises(lazymem.LazymemError, match="frame 5"):  # load decodes frame 5 itself: CorruptChunkError
        lazymem.load(path)
    result = run_python(
        f"""
        import faulthandler, lazymem
        faulthandler.disable()
        a = lazymem.open({path!r}, readahead=0, chunk_bytes=65536)
        print("value", a[32768], flush=True)
        """
    )
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "value" not in result.stdout
    assert path in result.stderr and "SeekTableError" in result.stderr and "entry 5" in result.stderr


def test_a_huge_size_is_refused_before_anything_is_sized_from_it(tmp_path: Path) -> None:
    """Bit 31 of a decompressed size: no scratch of 2 GiB, in the app or in the monitor."""
    path = _saved(tmp_path, "none")
    raw = bytearray(Path(path).read_bytes())
    raw[_entry(raw, 5) + 4 + 3] ^= 0x80
    Path(path).write_bytes(raw)
    with pytest.raises(SeekTableError, match="more than any zstd frame can"):
        lazymem.open(path)
    with pytest.raises(SeekTableError, match="more than any zstd frame can"):
        lazymem.load(path)


def test_decoding_part_of_a_frame_keeps_memory_bounded_whatever_size_is_claimed() -> None:
    """A frame with no content size in its header, placed by an entry that claims 64 MiB: decoding
    the part wanted never allocates more than the discard scratch, and the lie is an error."""
    content = np.arange(1 << 20, dtype=np.uint8).tobytes()  # 1 MiB, truly
    frame = zstandard.ZstdCompressor(write_checksum=True, write_content_size=False).compress(content)
    out = bytearray(4096)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="decompressed to 1048576 bytes, the seek table says 67108864"):
            decode_frame_into(frame, memoryview(out), expected=64 << 20, skip=(64 << 20) - 4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < DISCARD_BYTES + (256 << 10), peak
    # And the true size decodes the wanted part exactly.
    decode_frame_into(frame, memoryview(out), expected=1 << 20, skip=5000)
    assert bytes(out) == content[5000:9096]


def test_a_stream_longer_than_the_npy_data_is_refused(tmp_path: Path) -> None:
    """A .npy stream ends with its data: extra stream bytes mean a lying table (or not a .npy)."""
    import io

    buf = io.BytesIO()
    np.save(buf, A[:1000])
    stream = buf.getvalue() + bytes(4096)
    cctx = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True)
    frames = [cctx.compress(stream[:128]), cctx.compress(stream[128:])]
    from lazymem.writer import seek_table_bytes

    path = tmp_path / "longer.npy.zst"
    path.write_bytes(b"".join(frames) + seek_table_bytes(np.array([len(f) for f in frames]),
                                                         np.array([128, len(stream) - 128])))
    with pytest.raises(SeekTableError, match="ends the data at byte"):
        lazymem.open(str(path))

"""Big seek tables read block by block, through the layout frame's index (see layout_frame).

A file whose seek table does not fit in the 64 KiB read at open (more than 8,192 frames) is opened
with the table's first block only; lookups read the 8 KiB block they need and check it against
the index. Everything is compared with the same file read with the whole table, byte for byte.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

import lazymem
from lazymem.errors import SeekTableError
from lazymem.sources import open_source
from lazymem.sources.frames import BLOCK
from lazymem.sources.layout_frame import LAYOUT_FRAME_SIZE
from lazymem.sources.seekable_zstd import FOOTER_SIZE, parse_seek_table

from .conftest import PAGE, assert_same_array, rewrite_layout_frame

FRAMES = 10 * BLOCK + 300  # 11 blocks, the last one partial; an 83 KiB table


@pytest.fixture(scope="module")
def big_table(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    path = str(tmp_path_factory.mktemp("lazy-table") / "many-frames.npy.zst")
    # One page per frame and per chunk; runs of zeros give zero frames among the others.
    src = np.random.default_rng(11).integers(0, 50, (FRAMES - 2) * PAGE, dtype=np.uint8)
    src[5 * BLOCK * PAGE : (5 * BLOCK + 7) * PAGE] = 0
    lazymem.save(path, src, chunk_bytes=PAGE)
    return path, src


def _whole_table(path: str):
    data = Path(path).read_bytes()
    return parse_seek_table(data, len(data))


def _loaded(reader) -> list[int]:
    return [int(b) for b in np.flatnonzero(reader.table._loader.loaded)]


def test_open_reads_only_the_first_block_and_lookups_match_the_whole_table(big_table) -> None:
    path, _ = big_table
    reader = open_source(path)
    table, whole = reader.table, _whole_table(path)
    assert table.lazy and len(table) == len(whole) == FRAMES
    assert _loaded(reader) == [0]  # the header's frame is in block 0
    assert table.decompressed_total == whole.decompressed_total
    assert table.compressed_total == whole.compressed_total
    assert reader.chunk_bytes_hint == PAGE
    # Single lookups read one block each, and agree with the whole table.
    for index in (7 * BLOCK + 3, 3 * BLOCK, FRAMES - 1):
        assert table.compressed_offset(index) == int(whole.compressed_offsets[index])
        assert table.decompressed_offset(index) == int(whole.decompressed_offsets[index])
        assert table.compressed_size(index) == int(whole.compressed_sizes[index])
    assert _loaded(reader) == [0, 3, 7, 10]
    rng = np.random.default_rng(0)
    for _ in range(200):
        start = int(rng.integers(0, whole.decompressed_total))
        stop = int(rng.integers(start, min(whole.decompressed_total, start + 5 * PAGE) + 1))
        assert table.frames_for(start, stop) == whole.frames_for(start, stop)
    # The whole columns read every block left, and are the table's.
    assert np.array_equal(table.compressed_sizes, whole.compressed_sizes)
    assert np.array_equal(table.decompressed_offsets, whole.decompressed_offsets)
    assert _loaded(reader) == list(range(11))


def test_a_pickled_lazy_table_keeps_the_blocks_read_and_reads_the_others(big_table) -> None:
    path, src = big_table
    reader = open_source(path)
    reader.table.compressed_offset(4 * BLOCK + 1)
    clone = pickle.loads(pickle.dumps(reader))
    assert _loaded(clone) == [0, 4]
    assert len(pickle.dumps(reader)) < 3 * BLOCK * 8 + 4096  # two blocks and the sums, not the table
    out = bytearray(3 * PAGE)
    start = reader.header.data_offset + (9 * BLOCK + 5) * PAGE  # frame 9*BLOCK+6 (frame 0: the header)
    clone.read_into(start, out)
    assert bytes(out) == src[(9 * BLOCK + 5) * PAGE : (9 * BLOCK + 8) * PAGE].tobytes()
    assert _loaded(clone) == [0, 4, 9]


@pytest.mark.slow  # ~2 s
def test_lazy_open_load_and_prefetch_give_the_saved_bytes(big_table) -> None:
    path, src = big_table
    a = lazymem.open(path, chunk_bytes=64 * PAGE)  # 4 KiB chunks would take 10k faults to read
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(src), 500)
    assert np.array_equal(a[picks], src[picks])
    assert a.prefetch(np.s_[-100 * PAGE :]) > 0
    assert a.tobytes() == src.tobytes()
    assert_same_array(lazymem.load(path), src)


def _patch(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _entry_offset(path: str, index: int) -> int:
    """Where seek table entry ``index`` lies in the file (8-byte entries, no checksums)."""
    size = Path(path).stat().st_size
    return size - FOOTER_SIZE - (FRAMES - index) * 8


def _copy(big_table, tmp_path: Path) -> tuple[str, np.ndarray]:
    path, src = big_table
    copy = str(tmp_path / "copy.npy.zst")
    Path(copy).write_bytes(Path(path).read_bytes())
    return copy, src


@pytest.mark.parametrize("damage", ["sums", "compensated"])
def test_a_damaged_entry_in_an_unread_block_is_an_error_where_it_is_used(big_table, tmp_path: Path,
                                                                        damage: str) -> None:
    path, src = _copy(big_table, tmp_path)
    frame = 6 * BLOCK + 10  # chunk 6*BLOCK+9
    at = _entry_offset(path, frame)
    stored = struct.unpack_from("<I", Path(path).read_bytes(), at)[0]
    if damage == "sums":  # the block no longer sums to its index entry
        _patch(path, at, struct.pack("<I", stored + 1))
        error: type[Exception] = SeekTableError
    else:  # the block's sums still hold, its rows' CRC (layout frame version 3) does not
        following = struct.unpack_from("<I", Path(path).read_bytes(), at + 8)[0]
        _patch(path, at, struct.pack("<II", stored + 1, PAGE) + struct.pack("<I", following - 1))
        error = SeekTableError
    a = lazymem.open(path, chunk_bytes=PAGE, readahead=0)  # opens: block 6 is not read yet
    chunk = frame - 1
    assert a[: 5 * PAGE].tobytes() == src[: 5 * PAGE].tobytes()
    with pytest.raises(error):
        a.prefetch(np.s_[chunk * PAGE : (chunk + 1) * PAGE])
    assert a[8 * BLOCK * PAGE :].tobytes() == src[8 * BLOCK * PAGE :].tobytes()  # the blocks after
    with pytest.raises(error):
        lazymem.load(path)


def _layout_offset(path: str) -> tuple[int, int]:
    """Offset and size of the layout frame (the seek table's last entry)."""
    size = Path(path).stat().st_size
    stored = struct.unpack_from("<I", Path(path).read_bytes(), _entry_offset(path, FRAMES - 1))[0]
    return size - FOOTER_SIZE - FRAMES * 8 - 8 - stored, stored


@pytest.mark.parametrize("damage", ["index byte", "crc", "block count"])
def test_a_damaged_index_is_ignored_and_the_whole_table_read(big_table, tmp_path: Path, damage: str) -> None:
    path, src = _copy(big_table, tmp_path)
    start, size = _layout_offset(path)
    data = Path(path).read_bytes()
    if damage == "index byte":
        _patch(path, start + LAYOUT_FRAME_SIZE + 8 + 17, bytes([data[start + LAYOUT_FRAME_SIZE + 8 + 17] ^ 1]))
    elif damage == "crc":
        _patch(path, start + size - 4, bytes(4))
    else:
        _patch(path, start + LAYOUT_FRAME_SIZE + 4, struct.pack("<I", 12))
    reader = open_source(path)
    assert not reader.table.lazy and reader.chunk_bytes_hint == PAGE  # the chunk size still holds
    a = lazymem.open(path, chunk_bytes=64 * PAGE)
    assert a.tobytes() == src.tobytes()


@pytest.mark.parametrize("lie", ["stored sums traded", "stream total"])
def test_an_index_that_lies_with_a_sound_crc_is_an_error_where_it_is_used(big_table, tmp_path: Path,
                                                                          lie: str) -> None:
    # A writer's bug rather than damage: wrong sums under a CRC computed over them.
    path, src = _copy(big_table, tmp_path)
    start, size = _layout_offset(path)
    body_at = start + LAYOUT_FRAME_SIZE + 8
    # Version 3 index entries: stored sum, stream sum, rows CRC, zero (u64, u64, u32, u32).
    index = np.frombuffer(Path(path).read_bytes()[body_at : start + size - 4], dtype="<u8").reshape(-1, 3).copy()
    if lie == "stream total":
        index[2, 1] += PAGE
    else:
        index[2, 0] += 100
        index[3, 0] -= 100  # the total still covers the file exactly
    body = index.tobytes()
    _patch(path, body_at, body + struct.pack("<I", zlib.crc32(body)))
    if lie == "stream total":  # caught at open: the stream must end where the header says the data ends
        with pytest.raises(SeekTableError, match="stream"):
            lazymem.open(path)
        return
    a = lazymem.open(path, chunk_bytes=PAGE, readahead=0)
    assert a[: BLOCK * PAGE].tobytes() == src[: BLOCK * PAGE].tobytes()
    for block in (2, 3):
        with pytest.raises(SeekTableError, match="index"):
            a.prefetch(np.s_[(block * BLOCK + 5) * PAGE])


@pytest.mark.slow  # ~1.5 s
def test_files_without_an_index_read_the_whole_table_as_before(big_table, tmp_path: Path) -> None:
    from lazymem.sources.layout_frame import layout_frame

    path, src = _copy(big_table, tmp_path)
    rewrite_layout_frame(path, layout_frame(PAGE))  # version 1: the chunk size alone
    reader = open_source(path)
    assert not reader.table.lazy and reader.chunk_bytes_hint == PAGE
    assert_same_array(lazymem.load(path), src)


@pytest.mark.slow  # ~2.5 s
def test_a_lazy_table_over_http(http_store, big_table) -> None:
    path, src = big_table
    (http_store.dir / "many.npy.zst").write_bytes(Path(path).read_bytes())
    url = f"{http_store.url}/many.npy.zst"
    http_store.server.control(reset=1)
    a = lazymem.open(url, chunk_bytes=64 * PAGE, readahead=0)
    requests = http_store.server.control()["requests"]
    # The tail, the layout frame with the table's first block, the header's frame: never the table.
    assert len(requests) == 3 and requests[0][2] == "bytes=-65536"
    picks = np.random.default_rng(2).integers(0, len(src), 50)
    assert np.array_equal(a[picks], src[picks])
    assert_same_array(lazymem.load(url), src)


@pytest.mark.slow  # ~5 s
def test_a_lazy_table_over_s3(s3_store, big_table) -> None:
    import fsspec

    path, src = big_table
    options = s3_store.storage_options
    with fsspec.open("s3://test/many.npy.zst", "wb", **options) as f:
        f.write(Path(path).read_bytes())
    reader = open_source("s3://test/many.npy.zst", options)
    assert reader.table.lazy and _loaded(reader) == [0]
    a = lazymem.open("s3://test/many.npy.zst", storage_options=options, chunk_bytes=64 * PAGE, readahead=0)
    picks = np.random.default_rng(3).integers(0, len(src), 50)
    assert np.array_equal(a[picks], src[picks])
    assert a.tobytes() == src.tobytes()

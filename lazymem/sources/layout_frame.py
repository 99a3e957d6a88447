"""The layout frame: files written by :func:`lazymem.save` name their chunk size, and index their
seek table.

A chunk (what a fault installs) is made of several frames (what is decoded and checksummed):
a reader that faults is woken once *its* frame is verified, while the rest of the chunk is decoded
(a 512 KiB frame decodes in ~1 ms on these VMs, a 4 MiB one in ~9 ms). Frame sizes alone cannot
say where chunks end, so the writer adds this frame, a zstd *skippable* frame that every zstd
decoder passes over, just before the seek table. The seek table lists it with a decompressed size
of 0 (and its stored size, which is how a reader finds where it starts).

Version 2 adds an index of the seek table: the sums of the stored and of the decompressed sizes of
each block of 1024 entries (16 bytes per 4 GiB of a 1 TiB array in 4 MiB frames). With it a
reader opens a big file without reading its whole seek table (2 MiB for 1 TiB): it reads the
blocks it needs when it needs them, and checks each block against its sums.

Version 3 (what :func:`lazymem.save` writes) adds a CRC-32 of each block's rows, as stored. Sums
catch a single damaged entry but not *compensated* damage (one size larger, another smaller by as
much), which shifts every frame between the two to a wrong place in the stream, where each still
decodes and passes its own checksum. The rows' CRC catches any such damage, so the rows of a
version 3 table are *proven* and frames are placed by them with no further check (see
:mod:`lazymem.sources.positions` for what older and foreign files cost instead).

    [magic 0x184D2A5C u32][payload size u32]["LZMC"][version u32][chunk_bytes u64]
    versions 2, 3: [entries per block u32][blocks u32]
    version 2:     [blocks x (stored sum u64, stream sum u64)]
    version 3:     [blocks x (stored sum u64, stream sum u64, rows CRC-32 u32, zero u32)]
    versions 2, 3: [CRC-32 of the index u32]
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from .frames import BLOCK, block_sums

LAYOUT_MAGIC = 0x184D2A5C
"""A skippable frame magic (0x184D2A50..5F); 0x184D2A5E is the seek table's."""
_V1 = struct.Struct("<II4sIQ")
_V2_COUNTS = struct.Struct("<II")
LAYOUT_FRAME_SIZE = _V1.size
"""Size of a version 1 frame, and of the fixed part of any version."""
_V3_ENTRY = np.dtype([("stored", "<u8"), ("stream", "<u8"), ("crc", "<u4"), ("zero", "<u4")])
_INDEX_ENTRY = {2: 16, 3: _V3_ENTRY.itemsize}
"""Bytes of one block's index entry, by version."""
MAX_LAYOUT_FRAME_SIZE = LAYOUT_FRAME_SIZE + _V2_COUNTS.size + 24 * (0x8000000 // BLOCK) + 4
"""Largest layout frame a reader accepts (an index of the most frames a seek table can list)."""
_TAG = b"LZMC"


@dataclass(frozen=True)
class Layout:
    chunk_bytes: int | None
    """The writer's chunk size, if sound (positive)."""
    block_sums: tuple[np.ndarray, np.ndarray] | None = None
    """Per block of ``BLOCK`` seek table entries: sums of stored and of decompressed sizes (int64)."""
    row_crcs: np.ndarray | None = None
    """Per block: CRC-32 of its seek table rows as stored (version 3; ``uint32``)."""


def layout_frame_size(n_frames: int, version: int = 3) -> int:
    """Bytes of the version 2 or 3 layout frame of a file of ``n_frames`` frames (itself included)."""
    return LAYOUT_FRAME_SIZE + _V2_COUNTS.size + _INDEX_ENTRY[version] * -(-n_frames // BLOCK) + 4


def rows_crcs(rows: np.ndarray) -> np.ndarray:
    """CRC-32 of each block of ``BLOCK`` seek table rows (``uint32`` rows, as stored)."""
    rows = np.ascontiguousarray(rows, dtype="<u4")
    return np.array([zlib.crc32(rows[lo : lo + BLOCK].tobytes()) for lo in range(0, len(rows), BLOCK)],
                    dtype=np.uint32)


def layout_frame(chunk_bytes: int, compressed_sizes: np.ndarray | None = None,
                 decompressed_sizes: np.ndarray | None = None, *, version: int = 3) -> bytes:
    """The layout frame of a file whose chunks hold ``chunk_bytes`` decompressed bytes.

    With the sizes of every frame before it (header and data frames), a version 3 frame (or 2,
    for tests of older files) whose index also covers its own entry, the seek table's last;
    without, a version 1 frame. Version 3 assumes the seek table's rows hold no checksums
    (8 bytes each), as :func:`lazymem.save` writes them.
    """
    if compressed_sizes is None or decompressed_sizes is None:
        return _V1.pack(LAYOUT_MAGIC, LAYOUT_FRAME_SIZE - 8, _TAG, 1, chunk_bytes)
    if version not in _INDEX_ENTRY:
        raise ValueError(f"version must be one of {sorted(_INDEX_ENTRY)} (got {version!r})")
    size = layout_frame_size(len(compressed_sizes) + 1, version)
    compressed = np.append(np.asarray(compressed_sizes, dtype=np.int64), size)
    decompressed = np.append(np.asarray(decompressed_sizes, dtype=np.int64), 0)
    stored, stream = block_sums(compressed), block_sums(decompressed)
    if version == 2:
        pairs = np.empty((len(stored), 2), dtype="<u8")
        pairs[:, 0], pairs[:, 1] = stored, stream
        body = pairs.tobytes()
    else:
        index = np.zeros(len(stored), dtype=_V3_ENTRY)
        index["stored"], index["stream"] = stored, stream
        index["crc"] = rows_crcs(np.stack([compressed, decompressed], axis=1).astype("<u4"))
        body = index.tobytes()
    return (_V1.pack(LAYOUT_MAGIC, size - 8, _TAG, version, chunk_bytes) + _V2_COUNTS.pack(BLOCK, len(stored))
            + body + struct.pack("<I", zlib.crc32(body)))


def parse_layout_frame(data: bytes | memoryview, n_frames: int) -> Layout | None:
    """What a layout frame says about a file of ``n_frames`` frames, or None if ``data`` is not
    one (any other skippable frame, an unknown version): readers then fall back to choosing
    chunks from the frame sizes, and to reading the whole seek table. An index that does not fit
    ``n_frames`` is ignored; one that lies is caught when its blocks are read."""
    if len(data) < LAYOUT_FRAME_SIZE:
        return None
    magic, size, tag, version, chunk_bytes = _V1.unpack_from(data, 0)
    if magic != LAYOUT_MAGIC or size != len(data) - 8 or tag != _TAG or version not in (1, 2, 3):
        return None
    chunk = int(chunk_bytes) if chunk_bytes > 0 else None
    if version == 1:
        return Layout(chunk) if len(data) == LAYOUT_FRAME_SIZE else None
    if len(data) < LAYOUT_FRAME_SIZE + _V2_COUNTS.size:
        return None
    block, blocks = _V2_COUNTS.unpack_from(data, LAYOUT_FRAME_SIZE)
    if block != BLOCK or blocks != -(-n_frames // BLOCK) or len(data) != layout_frame_size(n_frames, version):
        return Layout(chunk)
    body = bytes(data[LAYOUT_FRAME_SIZE + _V2_COUNTS.size : -4])
    if zlib.crc32(body) != int.from_bytes(data[-4:], "little"):
        return Layout(chunk)  # a damaged index: the reader reads the whole table instead
    if version == 2:
        index = np.frombuffer(body, dtype="<u8").reshape(blocks, 2)
        stored, stream, crcs = index[:, 0], index[:, 1], None
    else:
        entries = np.frombuffer(body, dtype=_V3_ENTRY)
        if entries["zero"].any():
            return Layout(chunk)
        stored, stream, crcs = entries["stored"], entries["stream"], entries["crc"].astype(np.uint32)
    if blocks and max(int(stored.max()), int(stream.max())) >= 1 << 62:  # absurd: no index (no int64 overflow)
        return Layout(chunk)
    return Layout(chunk, (stored.astype(np.int64), stream.astype(np.int64)), crcs)

"""The layout frame: files written by :func:`lazymem.save` name their chunk size.

A chunk (what a fault installs) is made of several frames (what is decoded and checksummed):
a reader that faults is woken once *its* frame is verified, while the rest of the chunk is decoded
(a 512 KiB frame decodes in ~1 ms on these VMs, a 4 MiB one in ~9 ms). Frame sizes alone cannot
say where chunks end, so the writer adds this frame, a zstd *skippable* frame that every zstd
decoder passes over, just before the seek table. The seek table lists it with a decompressed size
of 0. Readers find it in the bytes they read for the seek table anyway: it costs no request.

    [magic 0x184D2A5C u32][payload size 16 u32]["LZMC"][version 1 u32][chunk_bytes u64]
"""

from __future__ import annotations

import struct

LAYOUT_MAGIC = 0x184D2A5C
"""A skippable frame magic (0x184D2A50..5F); 0x184D2A5E is the seek table's."""
_FRAME = struct.Struct("<II4sIQ")
LAYOUT_FRAME_SIZE = _FRAME.size
_TAG, _VERSION = b"LZMC", 1


def layout_frame(chunk_bytes: int) -> bytes:
    """The layout frame of a file whose chunks hold ``chunk_bytes`` decompressed bytes."""
    return _FRAME.pack(LAYOUT_MAGIC, LAYOUT_FRAME_SIZE - 8, _TAG, _VERSION, chunk_bytes)


def parse_layout_frame(data: bytes | memoryview) -> int | None:
    """The chunk size a layout frame names, or None if ``data`` is not one (any other skippable
    frame, another version): readers then fall back to choosing chunks from the frame sizes."""
    if len(data) != LAYOUT_FRAME_SIZE:
        return None
    magic, size, tag, version, chunk_bytes = _FRAME.unpack(bytes(data))
    if magic != LAYOUT_MAGIC or size != LAYOUT_FRAME_SIZE - 8 or tag != _TAG or version != _VERSION:
        return None
    return int(chunk_bytes) if chunk_bytes > 0 else None

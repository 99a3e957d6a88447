"""Regenerate the corpus of nasty files replayed by tests/test_fuzz.py (run from the repo root).

Each ``NAME.npy.zst`` comes with ``NAME.npy.zst.expect``: what ``load`` and a lazy ``prefetch``
must do with it ("load-ok lazy-ok" means the exact array, "-error" a LazymemError).
"""

from __future__ import annotations

import struct
import sys
import tempfile
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import lazymem
from lazymem.sources import open_source

HERE = Path(__file__).parent
SRC = np.arange(3000, dtype="<i4").reshape(100, 30)
BOTH_FAIL = "load-error lazy-error"


def valid() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "v.npy.zst"
        lazymem.save(str(path), SRC, chunk_bytes=4096)
        return path.read_bytes()


def with_zero_chunks() -> bytes:
    """SRC's size, with data chunk 1 (frame 2) all zeros, so stored as a zero frame."""
    src = SRC.copy()
    src.reshape(-1)[1024:2048] = 0
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "z.npy.zst"
        lazymem.save(str(path), src, chunk_bytes=4096)
        return path.read_bytes()


def table_of(data: bytes):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.npy.zst"
        path.write_bytes(data)
        return open_source(str(path)).table


def seek_table(frames: list[tuple[int, int]]) -> bytes:
    entries = b"".join(struct.pack("<II", c, d) for c, d in frames)
    footer = struct.pack("<IBI", len(frames), 0, 0x8F92EAB1)
    body = entries + footer
    return struct.pack("<II", 0x184D2A5E, len(body)) + body


def write(name: str, data: bytes, expect: str) -> None:
    (HERE / f"{name}.npy.zst").write_bytes(data)
    (HERE / f"{name}.npy.zst.expect").write_text(expect + "\n")


def main() -> None:
    good = valid()
    table = table_of(good)
    write("valid", good, "load-ok lazy-ok")
    write("truncated-half", good[: len(good) // 2], BOTH_FAIL)
    write("truncated-footer", good[:-3], BOTH_FAIL)
    flipped = bytearray(good)
    middle = int(table.compressed_offsets[2]) + int(table.compressed_sizes[2]) // 2
    flipped[middle] ^= 0x10
    write("flipped-data-frame", bytes(flipped), BOTH_FAIL)
    zeroed = bytearray(good)
    start = int(table.compressed_offsets[-1]) + int(table.compressed_sizes[-1])
    zeroed[start + 8 : len(zeroed) - 9] = bytes(len(zeroed) - 9 - start - 8)
    write("zeroed-seek-table", bytes(zeroed), BOTH_FAIL)
    # A frame that decompresses to 64 MiB while the seek table says 4 KiB: a bomb.
    header = lazymem.sources.npy_header_bytes(np.dtype("<i4"), (1024,), False)
    cctx = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True)
    frames = [cctx.compress(header), cctx.compress(bytes(64 * 2**20))]
    sizes = [(len(frames[0]), len(header)), (len(frames[1]), 4096)]
    write("bomb", b"".join(frames) + seek_table(sizes), BOTH_FAIL)
    # Sizes that add up but lie about where frames end.
    lying = [(len(frames[0]) + 1, len(header)), (len(frames[1]) - 1, 4096)]
    write("lying-sizes", b"".join(frames) + seek_table(lying), BOTH_FAIL)
    # Object dtype in a well-formed file.
    obj = b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (3,), }".ljust(127) + b"\n"
    obj_frames = [cctx.compress(obj), cctx.compress(bytes(24))]
    write("object-dtype", b"".join(obj_frames) + seek_table([(len(obj_frames[0]), 128),
                                                              (len(obj_frames[1]), 24)]), BOTH_FAIL)
    # A shape of 2**62 elements: absurd, rejected at open without allocating.
    huge = b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }"
    huge = huge.ljust(127) + b"\n"
    huge_frames = [cctx.compress(huge)]
    write("absurd-shape", huge_frames[0] + seek_table([(len(huge_frames[0]), 128)]), BOTH_FAIL)
    # Zero frames (RLE blocks of 0, recognised without decoding) with one byte flipped: errors, never zeros.
    with_zeros = with_zero_chunks()
    zeros_table = table_of(with_zeros)
    zero_start = int(zeros_table.compressed_offsets[2])
    zero_end = zero_start + int(zeros_table.compressed_sizes[2])
    rle_byte = bytearray(with_zeros)
    rle_byte[zero_end - 5] ^= 0x01  # the last block's byte (its 4 checksum bytes follow)
    write("zero-frame-flipped-rle-byte", bytes(rle_byte), BOTH_FAIL)
    checksum = bytearray(with_zeros)
    checksum[zero_end - 1] ^= 0x01
    write("zero-frame-flipped-checksum", bytes(checksum), BOTH_FAIL)


if __name__ == "__main__":
    main()

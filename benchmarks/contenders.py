"""Non-lazymem readers of the same file, written directly on zstandard (the baselines).

The seek table is parsed here by hand (it is 20 lines), so the baselines share no code with
lazymem's readers and cannot inherit their bugs or their costs.
"""

from __future__ import annotations

import io
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zstandard

SEEK_TABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1


class SeekTable:
    """Frames of a seekable zstd file: compressed offsets/sizes and decompressed offsets/sizes."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            f.seek(-9, os.SEEK_END)
            n, descriptor, magic = struct.unpack("<IBI", f.read(9))
            if magic != SEEKABLE_MAGIC:
                raise ValueError(f"{path}: not a seekable zstd file")
            entry = 12 if descriptor & 0x80 else 8
            f.seek(-(9 + n * entry + 8), os.SEEK_END)
            skip_magic, _size = struct.unpack("<II", f.read(8))
            if skip_magic != SEEK_TABLE_MAGIC:
                raise ValueError(f"{path}: bad seek table")
            entries = np.frombuffer(f.read(n * entry), dtype="<u4").reshape(n, entry // 4)
        self.csize = entries[:, 0].astype(np.int64)
        self.dsize = entries[:, 1].astype(np.int64)
        self.coff = np.concatenate([[0], np.cumsum(self.csize)[:-1]])
        self.doff = np.concatenate([[0], np.cumsum(self.dsize)[:-1]])

    def __len__(self) -> int:
        return len(self.csize)


def _npy_header(table: SeekTable, fd: int) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Shape, dtype, fortran_order and data offset from the start of the stream."""
    head = zstandard.ZstdDecompressor().decompress(os.pread(fd, int(table.csize[0]), 0))
    buf = io.BytesIO(head)
    version = np.lib.format.read_magic(buf)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(buf)
    return shape, dtype, fortran, buf.tell()


def _readinto(dctx: zstandard.ZstdDecompressor, src: bytes, out: memoryview) -> None:
    reader = dctx.stream_reader(src, read_across_frames=False)
    done = 0
    while done < len(out):
        n = reader.readinto(out[done:])
        if n == 0:
            raise ValueError("short frame")
        done += n


def _data_frames(table: SeekTable, data_offset: int) -> list[int]:
    frames = [i for i in range(len(table)) if table.dsize[i] > 0 and table.doff[i] >= data_offset]
    if table.doff[frames[0]] != data_offset:
        raise ValueError("baseline readers expect lazymem's layout (header alone in frame 0)")
    return frames


def naive_load(path: str) -> np.ndarray:
    """Serial eager reader: pread each frame, decompress it into one preallocated array."""
    table = SeekTable(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        shape, dtype, fortran, data_offset = _npy_header(table, fd)
        out = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        flat = memoryview(out.reshape(-1, order="A").view(np.uint8))
        dctx = zstandard.ZstdDecompressor()
        for i in _data_frames(table, data_offset):
            start = int(table.doff[i]) - data_offset
            src = os.pread(fd, int(table.csize[i]), int(table.coff[i]))
            _readinto(dctx, src, flat[start : start + int(table.dsize[i])])
    finally:
        os.close(fd)
    return out


class DecodeFloor:
    """Decompress every data frame, on all cores, into a buffer allocated and touched beforehand.

    Nothing else: no page faults, no installs, no computation. The time to beat.
    """

    def __init__(self, path: str, threads: int | None = None) -> None:
        self.path = path
        self.table = SeekTable(path)
        self.fd = os.open(path, os.O_RDONLY)
        shape, dtype, fortran, self.data_offset = _npy_header(self.table, self.fd)
        self.out = np.ones(shape, dtype=dtype, order="F" if fortran else "C")  # touched: resident
        self.flat = memoryview(self.out.reshape(-1, order="A").view(np.uint8))
        self.frames = _data_frames(self.table, self.data_offset)
        self.pool = ThreadPoolExecutor(threads or os.cpu_count() or 1)
        self._local = threading.local()

    def _one(self, i: int) -> None:
        dctx = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = self._local.dctx = zstandard.ZstdDecompressor()
        start = int(self.table.doff[i]) - self.data_offset
        src = os.pread(self.fd, int(self.table.csize[i]), int(self.table.coff[i]))
        _readinto(dctx, src, self.flat[start : start + int(self.table.dsize[i])])

    def run(self) -> np.ndarray:
        for _ in self.pool.map(self._one, self.frames):
            pass
        return self.out

    def run_fresh(self) -> np.ndarray:
        """The same into a new array, as an eager loader must: the floor for `load`, where fresh
        memory costs what it costs on the machine (on this VM, memory freed a few seconds ago has
        gone back to the host and costs ~1.5 s per GiB to touch again, 0.17 s if reused at once)."""
        out = np.empty_like(self.out)
        self.flat = memoryview(out.reshape(-1, order="A").view(np.uint8))
        try:
            for _ in self.pool.map(self._one, self.frames):
                pass
        finally:
            self.flat = memoryview(self.out.reshape(-1, order="A").view(np.uint8))
        return out

    def close(self) -> None:
        self.pool.shutdown()
        os.close(self.fd)


def _seek_table(entries: list[tuple[int, int]]) -> bytes:
    """The seek table frame for frames of these (compressed, decompressed) sizes, without checksums."""
    table = np.asarray(entries, dtype="<u4").tobytes()
    footer = struct.pack("<IBI", len(entries), 0, SEEKABLE_MAGIC)
    return struct.pack("<II", SEEK_TABLE_MAGIC, len(table) + len(footer)) + table + footer


def _npy_header_bytes(dtype: str, shape: tuple[int, ...]) -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    return header.getvalue()


def write_zstd_frames(path: str, array: np.ndarray, chunk_bytes: int = 4 * 2**20, level: int = 3) -> int:
    """Write ``array`` in lazymem's native layout with an ordinary zstd frame for every chunk.

    What writers made before zero frames: frame 0 the ``.npy`` header alone, frame k >= 1 data bytes
    ``[(k-1) * chunk_bytes, k * chunk_bytes)``, then the seek table (``lazymem/writer.py``'s layout),
    every frame from ``ZstdCompressor(level, write_checksum=True, write_content_size=True)``, all-zero
    chunks included. Serial (~4 s per GiB). Returns the file size.
    """
    array = np.ascontiguousarray(array)
    head = _npy_header_bytes(np.lib.format.dtype_to_descr(array.dtype), array.shape)
    data = memoryview(array.reshape(-1).view(np.uint8))
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    entries = []
    with open(path + ".tmp", "wb") as f:
        for raw in [head, *(data[i : i + chunk_bytes] for i in range(0, len(data), chunk_bytes))]:
            frame = cctx.compress(raw)
            f.write(frame)
            entries.append((len(frame), len(raw)))
        f.write(_seek_table(entries))
    os.replace(path + ".tmp", path)
    return os.path.getsize(path)


def write_zeros_seekable(path: str, n_elements: int, dtype: str = "<f4", chunk_bytes: int = 4 * 2**20,
                         layout_version: int = 3) -> int:
    """Write a huge all-zeros array in lazymem's native layout at almost no cost.

    Every data frame is the zero frame ``lazymem.save`` writes for an all-zero chunk (RLE blocks,
    141 bytes for 4 MiB), so a 1 TiB array takes ~37 MB and well under a second. Returns the file size.
    """
    from lazymem.sources.layout_frame import layout_frame
    from lazymem.sources.zero_frames import zero_frame  # the writer's canonical frames, not a reader

    header = _npy_header_bytes(dtype, (n_elements,))
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    head = cctx.compress(header)
    nbytes = n_elements * np.dtype(dtype).itemsize
    n_full, last = divmod(nbytes, chunk_bytes)
    full = zero_frame(chunk_bytes)
    entries = [(len(head), len(header))] + [(len(full), chunk_bytes)] * n_full
    tail = b""
    if last:
        tail = zero_frame(last)
        entries.append((len(tail), last))
    # One frame per chunk, as lazymem.save lays out an array this big (its seek table stays 2 MiB),
    # and the layout frame with its index of the table.
    # (Version 1 names the chunk size alone; versions 2 and 3 index the table, 3 with its rows' CRCs.)
    layout = (layout_frame(chunk_bytes) if layout_version == 1 else
              layout_frame(chunk_bytes, np.array([c for c, _ in entries]), np.array([d for _, d in entries]),
                           version=layout_version))
    tail += layout
    entries.append((len(layout), 0))
    with open(path + ".tmp", "wb") as f:
        f.write(head)
        block = full * 1024
        for _ in range(n_full // 1024):
            f.write(block)
        f.write(full * (n_full % 1024))
        f.write(tail)
        f.write(_seek_table(entries))
    os.replace(path + ".tmp", path)
    return os.path.getsize(path)

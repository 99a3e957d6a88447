"""Eager loading: read a whole array into memory as fast as the cores decompress.

The output is one ``np.empty`` array; frames that lie wholly inside the data decompress straight
into their slice of it (no temporary, no copy), on a thread pool (python-zstandard releases the
GIL). The compressed bytes come in large coalesced requests, fetched by the calling thread while
the pool decompresses the previous batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from lazymem.sources import open_source
from lazymem.sources.frames import FramedSource, storage_errors

__all__ = ["load", "read_array"]

BATCH_BYTES = 64 << 20
"""Stored bytes fetched per batch: few requests, bounded memory (two batches live at most)."""
ASYNC_REQUEST_BYTES = 16 << 20
"""Request size on async filesystems (S3, HTTP), where a batch's requests run concurrently."""


def _batches(source: FramedSource, indices: Sequence[int], batch_bytes: int) -> list[list[int]]:
    sizes = source.table.compressed_sizes
    batches: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index in indices:
        current.append(index)
        total += int(sizes[index])
        if total >= batch_bytes:
            batches.append(current)
            current, total = [], 0
    if current:
        batches.append(current)
    return batches


class _LocalBatchReader:
    """Reads batches of a local file with ``pread`` into two reused buffers.

    Saves what ``cat_file`` costs on a page-cache-hot file: a fresh ``bytes`` per batch, whose first
    touch page-faults (measured: a sizeable share of a whole eager load).
    """

    def __init__(self, source: FramedSource, capacity: int) -> None:
        self._source = source
        self._fd = os.open(source.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._buffers = [np.empty(capacity, dtype=np.uint8) for _ in range(2)]
        self._turn = 0

    def close(self) -> None:
        os.close(self._fd)

    def fetch(self, batch: Sequence[int]) -> list[memoryview]:
        table = self._source.table
        start = int(table.compressed_offsets[batch[0]])
        end = int(table.compressed_offsets[batch[-1]] + table.compressed_sizes[batch[-1]])
        buffer = self._buffers[self._turn]
        self._turn ^= 1
        if len(buffer) < end - start:
            buffer = self._buffers[self._turn ^ 1] = np.empty(end - start, dtype=np.uint8)
        view = memoryview(buffer)[: end - start]
        done = 0
        with storage_errors(self._source.path):
            while done < len(view):
                count = os.preadv(self._fd, [view[done:]], start + done)
                if count == 0:
                    break
                done += count
        self._source._check_length(view[:done], start, end)  # type: ignore[arg-type]
        return [
            view[int(table.compressed_offsets[i]) - start : int(table.compressed_offsets[i] + table.compressed_sizes[i]) - start]
            for i in batch
        ]


def _decode(source: FramedSource, index: int, blob: memoryview, data_start: int, out: memoryview) -> None:
    offset = int(source.table.decompressed_offsets[index]) - data_start
    size = int(source.table.decompressed_sizes[index])
    if 0 <= offset and offset + size <= len(out):
        source.decompress_into(index, blob, out[offset : offset + size])
    else:
        # Cut by the data's edges (a frame shared with the header, or trailing bytes): through a scratch.
        source._decode_overlap(index, blob, data_start, out)


def read_array(source: FramedSource, *, threads: int | None = None) -> np.ndarray:
    """Read the whole array of an open source into a new ndarray.

    Parameters
    ----------
    source : FramedSource
        From :func:`lazymem.sources.open_source`.
    threads : int, optional
        Decompression threads (default: one per CPU).

    Returns
    -------
    numpy.ndarray
        A fresh array with the header's dtype, shape and order.
    """
    header = source.header
    out = np.empty(header.shape, dtype=header.dtype, order=header.order)
    if header.nbytes == 0:
        return out
    # As 1-D in memory order any contiguous array views as bytes (memoryview() refuses datetime64).
    target = memoryview(out.reshape(-1, order="A").view(np.uint8))
    data_start = header.data_offset
    sizes = source.table.decompressed_sizes
    indices = [i for i in source.table.frames_for(data_start, data_start + header.nbytes) if sizes[i] > 0]
    threads = max(1, min(threads or os.cpu_count() or 1, len(indices)))
    is_async = bool(getattr(source.fs, "async_impl", False))
    max_run = ASYNC_REQUEST_BYTES if is_async else None

    if threads == 1:
        for batch in _batches(source, indices, BATCH_BYTES):
            for index, blob in zip(batch, source.fetch_views(batch, max_gap=1 << 16, max_run_bytes=max_run)):
                _decode(source, index, blob, data_start, target)
        return out

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lazymem-load") as pool:
        previous: list[Future[Any]] = []
        try:
            for batch in _batches(source, indices, BATCH_BYTES):
                # Fetch this batch while the pool still decodes the previous one.
                blobs = source.fetch_views(batch, max_gap=1 << 16, max_run_bytes=max_run)
                for future in previous:
                    future.result()
                previous = [
                    pool.submit(_decode, source, index, blob, data_start, target)
                    for index, blob in zip(batch, blobs)
                ]
            for future in previous:
                future.result()
        finally:
            for future in previous:
                future.cancel()
    return out


def load(url: str, *, storage_options: dict[str, Any] | None = None, threads: int | None = None) -> np.ndarray:
    """Read a whole array into memory, decompressing on all cores.

    Parameters
    ----------
    url : str
        A native ``.npy.zst`` file, any seekable zstd file holding a ``.npy`` stream, or a plain
        ``.npy`` file; anywhere fsspec reaches.
    storage_options : dict, optional
        Passed to the filesystem.
    threads : int, optional
        Decompression threads (default: one per CPU).

    Returns
    -------
    numpy.ndarray
        The array, with the stored dtype, shape and memory order.

    Raises
    ------
    ArrayNotFoundError
        Nothing at ``url``.
    FormatError
        Not a readable file (subclasses say which part is wrong).
    CorruptChunkError
        A frame failed to decompress or its checksum did not match.
    FetchError
        Storage failed.
    """
    return read_array(open_source(url, storage_options), threads=threads)

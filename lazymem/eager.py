"""Eager loading: read a whole array into memory as fast as the cores decompress.

The output is one ``np.zeros`` array; frames that lie wholly inside the data decompress straight
into their slice of it (no temporary, no copy), on a thread pool (python-zstandard releases the
GIL). Frames of zeros are recognised without decoding and skipped: their pages stay untouched.
The compressed bytes come in large coalesced requests, fetched by the calling thread while the pool
decompresses the previous batch; local files are mapped instead of read (no copy, see
:mod:`lazymem.sources.local_batches`).
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from lazymem.kernel import userfaultfd as uffd
from lazymem.sources.frames import FramedSource, byte_view
from lazymem.sources.local_batches import local_batches
from lazymem.sources.npy_header import NpyHeader

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


def _decode(
    source: FramedSource, index: int, blob: memoryview, data_start: int, out: memoryview, zeroed: bool
) -> None:
    offset = int(source.table.decompressed_offsets[index]) - data_start
    size = int(source.table.decompressed_sizes[index])
    if 0 <= offset and offset + size <= len(out):
        if zeroed and source.is_zero_frame(index, blob):
            return  # already zeros, and its pages stay untouched: no memory, no time
        source.decompress_into(index, blob, out[offset : offset + size])
    else:
        # Cut by the data's edges (a frame shared with the header, or trailing bytes): through a scratch.
        source._decode_overlap(index, blob, data_start, out)


PREFAULT_STEP = 32 << 20
"""Bytes of the output faulted in per call by the prefault thread."""
LIKELY_ZERO_RATIO = 256
"""Frames compressed more than this are not prefaulted: zero frames (4 MiB in 141 bytes) leave
their pages of the ``np.zeros`` output untouched, and must keep costing no memory."""


class _Prefaulter:
    """Faults the fresh output in, in frame order, on a thread of its own, ahead of the decoders.

    On this VM, memory freed a few seconds ago has gone back to the host, and the first touch of
    each page then stalls its thread (0.17 to 1.5 s per GiB). Decoders that fault the output in as
    they write stall in turn; a thread that faults it in ahead takes most of those stalls off them
    (measured: 1 GiB `load` 1.89 -> 1.45 s, medians of 6 alternated). The pages hold zeros either
    way (``MADV_POPULATE_WRITE`` writes nothing), so its progress never matters for correctness.
    """

    def __init__(self, source: FramedSource, indices: Sequence[int], data_start: int, out: np.ndarray) -> None:
        self._stop = threading.Event()
        self._address, self._nbytes = out.ctypes.data, out.nbytes
        # The ranges are worked out on the thread too: nothing here delays the decoders' start.
        self._thread = threading.Thread(target=self._run, args=(source.table, indices, data_start),
                                        name="lazymem-prefault", daemon=True)
        self._thread.start()

    def _ranges(self, table: Any, indices: Sequence[int], data_start: int) -> list[tuple[int, int]]:
        """Output byte ranges of the frames worth faulting in, adjacent ones joined up to a step."""
        frames = np.asarray(indices, dtype=np.int64)
        sizes = table.decompressed_sizes[frames].astype(np.int64)  # whole columns: read_array built them
        keep = table.compressed_sizes[frames].astype(np.int64) * LIKELY_ZERO_RATIO >= sizes
        starts = table.decompressed_offsets[frames][keep] - data_start
        ends = np.minimum(starts + sizes[keep], self._nbytes).tolist()
        ranges: list[tuple[int, int]] = []
        for lo, hi in zip(np.maximum(starts, 0).tolist(), ends):
            if ranges and ranges[-1][1] == lo and hi - ranges[-1][0] <= PREFAULT_STEP:
                ranges[-1] = (ranges[-1][0], hi)
            else:
                ranges.append((lo, hi))
        return ranges

    def _run(self, table: Any, indices: Sequence[int], data_start: int) -> None:
        page = mmap.PAGESIZE
        for lo, hi in self._ranges(table, indices, data_start):
            if self._stop.is_set():
                return
            start = -(-(self._address + lo) // page) * page  # whole pages inside the range only
            end = (self._address + hi) // page * page
            if end <= start:
                continue
            try:
                uffd.madvise(start, end - start, uffd.MADV_POPULATE_WRITE)
            except OSError:  # before Linux 5.14, or no memory: the decoders fault pages in themselves
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def _check_out(out: np.ndarray, header: NpyHeader) -> None:
    if not isinstance(out, np.ndarray) or out.dtype != header.dtype or out.shape != header.shape:
        raise ValueError(
            f"out must be an ndarray of shape {header.shape} and dtype {header.dtype}, "
            f"got {type(out).__name__} {getattr(out, 'shape', None)} {getattr(out, 'dtype', None)}"
        )
    contiguous = out.flags.f_contiguous if header.fortran_order else out.flags.c_contiguous
    if not contiguous or not out.flags.writeable:
        raise ValueError(f"out must be writeable and {header.order}-contiguous, like the stored array")


def read_array(source: FramedSource, *, threads: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Read the whole array of an open source into a new ndarray (or into ``out``).

    Parameters
    ----------
    source : FramedSource
        From :func:`lazymem.sources.open_source`.
    threads : int, optional
        Decompression threads (default: one per CPU).
    out : numpy.ndarray, optional
        Destination with the stored shape, dtype and order (saves allocating and first-touching
        fresh memory when loading repeatedly).

    Returns
    -------
    numpy.ndarray
        ``out``, or a fresh array with the header's dtype, shape and order.
    """
    header = source.header
    # A fresh np.zeros is calloc'd (untouched pages cost nothing), so zero frames need no writing.
    zeroed = out is None
    if out is None:
        out = np.zeros(header.shape, dtype=header.dtype, order=header.order)
    else:
        _check_out(out, header)
    if header.nbytes == 0:
        return out
    # As 1-D in memory order any contiguous array views as bytes (memoryview() refuses datetime64).
    target = byte_view(out.reshape(-1, order="A").view(np.uint8))
    data_start = header.data_offset
    sizes = source.table.decompressed_sizes
    indices = [i for i in source.table.frames_for(data_start, data_start + header.nbytes) if sizes[i] > 0]
    threads = max(1, min(threads or os.cpu_count() or 1, len(indices)))
    batches = _batches(source, indices, BATCH_BYTES)
    local = local_batches(source) if source.storage.is_local else None
    # A fresh output is faulted in ahead of the decoders (a given `out` is the caller's, touched).
    prefault = _Prefaulter(source, indices, data_start, out) if zeroed and out.nbytes >= PREFAULT_STEP else None
    try:
        # On async filesystems (S3, HTTP) the requests of a batch run concurrently.
        max_run = ASYNC_REQUEST_BYTES if getattr(source.fs, "async_impl", False) else None
        fetch: Callable[[Sequence[int]], list[memoryview]] = (
            local if local is not None else partial(source.fetch_views, max_gap=1 << 16, max_run_bytes=max_run)
        )
        if threads == 1:
            for batch in batches:
                for index, blob in zip(batch, fetch(batch)):
                    _decode(source, index, blob, data_start, target, zeroed)
        else:
            _decode_on_pool(source, batches, fetch, data_start, target, threads, zeroed)
    finally:
        if prefault is not None:
            prefault.close()
        if local is not None:
            local.close()
    return out


def _decode_on_pool(
    source: FramedSource,
    batches: list[list[int]],
    fetch: Callable[[Sequence[int]], list[memoryview]],
    data_start: int,
    target: memoryview,
    threads: int,
    zeroed: bool,
) -> None:
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lazymem-load") as pool:
        previous: list[Future[Any]] = []
        try:
            for batch in batches:
                # Fetch this batch while the pool still decodes the previous one.
                blobs = fetch(batch)
                for future in previous:
                    future.result()
                previous = [
                    pool.submit(_decode, source, index, blob, data_start, target, zeroed)
                    for index, blob in zip(batch, blobs)
                ]
            for future in previous:
                future.result()
        finally:
            for future in previous:
                future.cancel()


def load(
    url: str,
    *,
    path: str | None = None,
    storage_options: dict[str, Any] | None = None,
    threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Read a whole array into memory, decompressing on all cores.

    Parameters
    ----------
    url : str
        Anything :func:`lazymem.open` reads (``.npy.zst``, seekable zstd, ``.npy``, zarr, HDF5,
        NetCDF), anywhere fsspec reaches.
    path : str, optional
        The array's path inside a group or file, as for :func:`lazymem.open`.
    storage_options : dict, optional
        Passed to the filesystem.
    threads : int, optional
        Decompression threads (default: one per CPU).
    out : numpy.ndarray, optional
        Load into this array (writeable, the stored shape, dtype and memory order) instead of a new
        one: loading repeatedly then costs no fresh memory.

    Returns
    -------
    numpy.ndarray
        The array (``out`` if given), with the stored dtype, shape and memory order.

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
    from .sources.formats import open_array_source

    source = open_array_source(url, path, storage_options)  # load asks only the source interface
    if out is None:
        return source.read_all(threads=threads)
    source.read_all_into(out, threads=threads)
    return out

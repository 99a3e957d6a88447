"""A chunked HDF5 dataset's chunk index, read once at open, and the fetching and decoding of its
chunks from it with fsspec (no h5py after open).

The index is dense over the chunk grid (numpy arrays of stored offset, stored size and filter
mask per grid cell; offset -1 where no chunk was written): a lookup costs nothing on the fault
path and the whole pickles to the monitor in one piece (20 bytes a chunk).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from lazymem.errors import CorruptChunkError, FormatError, TruncatedFileError
from lazymem.storage import StoredObject

from .hdf5_filters import CorruptFilterInput, Filter, decode_chunk

REMOTE_MAX_GAP = 64 << 10
"""Bytes between two chunks worth reading through to save a request (remote storage)."""
MAX_RUN_BYTES = 16 << 20
"""Largest coalesced request: larger ones are split so that their pieces are fetched concurrently."""


@dataclass(frozen=True)
class ChunkIndex:
    """Where each chunk of the grid is stored."""

    chunks: tuple[int, ...]
    """The chunk shape, in elements."""
    offsets: np.ndarray
    """Stored offset of each chunk (the grid's shape), -1 where unallocated."""
    sizes: np.ndarray
    """Stored bytes of each chunk, 0 where unallocated."""
    masks: np.ndarray
    """Filter mask of each chunk (bit ``i`` set: filter ``i`` was skipped)."""

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.offsets.shape)

    @property
    def allocated(self) -> int:
        return int(np.count_nonzero(self.offsets >= 0))

    @property
    def stored_bytes(self) -> int:
        return int(self.sizes.sum())

    @classmethod
    def read(cls, dataset: Any, storage: StoredObject, url: str) -> ChunkIndex:
        """The index of an h5py chunked dataset, checked against the file: every chunk on the grid
        and inside the file (``TruncatedFileError`` / ``FormatError`` naming the chunk otherwise)."""
        shape = tuple(int(n) for n in dataset.shape)
        chunks = tuple(int(c) for c in dataset.chunks)
        grid = tuple(-(-n // c) for n, c in zip(shape, chunks))
        offsets = np.full(grid, -1, dtype=np.int64)
        sizes = np.zeros(grid, dtype=np.int64)
        masks = np.zeros(grid, dtype=np.uint32)
        where = f"{url}: dataset {dataset.name}"

        def add(start: Sequence[int], mask: int, offset: int | None, size: int) -> None:
            if offset is None:
                return  # listed but never written
            cell = tuple(int(s) // c for s, c in zip(start, chunks))
            if any(int(s) % c for s, c in zip(start, chunks)) or any(not 0 <= i < g for i, g in zip(cell, grid)):
                raise FormatError(f"{where}: the chunk index names a chunk at {tuple(start)}, off the chunk grid "
                                  f"{chunks} of shape {shape}")
            if size <= 0 or offset < 0 or offset + size > storage.size:
                raise TruncatedFileError(f"{where}: chunk {cell} is stored at bytes [{offset}, {offset + size}), "
                                         f"past the end of the file ({storage.size} bytes)")
            offsets[cell], sizes[cell], masks[cell] = offset, size, mask

        if math.prod(grid):
            dsid = dataset.id
            if hasattr(dsid, "chunk_iter"):  # one walk of the B-tree (HDF5 >= 1.12.3)
                dsid.chunk_iter(lambda si: add(si.chunk_offset, si.filter_mask, si.byte_offset, si.size))
            else:
                for i in range(dsid.get_num_chunks()):
                    si = dsid.get_chunk_info(i)
                    add(si.chunk_offset, si.filter_mask, si.byte_offset, si.size)
        return cls(chunks, offsets, sizes, masks)


class ChunkFetcher:
    """Fetches and decodes chunks of one dataset (picklable; thread-safe: no mutable state)."""

    def __init__(self, storage: StoredObject, url: str, path: str, shape: tuple[int, ...], dtype: np.dtype[Any],
                 filters: tuple[Filter, ...], index: ChunkIndex) -> None:
        self.storage = storage
        self.url = url
        self.path = path
        self.shape = shape
        self.dtype = dtype
        self.filters = filters
        self.index = index
        self.chunk_nbytes = math.prod(index.chunks) * dtype.itemsize

    def present(self, coords: tuple[int, ...]) -> bool:
        return bool(self.index.offsets[coords] >= 0)

    def _clip(self, coords: tuple[int, ...], decoded: bytes | memoryview) -> np.ndarray:
        full = np.frombuffer(decoded, dtype=self.dtype).reshape(self.index.chunks)
        box = tuple(slice(0, min(c, n - i * c)) for i, c, n in zip(coords, self.index.chunks, self.shape))
        return full[box]

    def decode(self, coords: tuple[int, ...], stored: bytes | memoryview) -> np.ndarray:
        """One chunk's stored bytes, decoded and clipped to the array (``CorruptChunkError`` if they do not decode)."""
        mask = int(self.index.masks[coords])
        try:
            decoded = decode_chunk(stored, self.filters, mask, self.chunk_nbytes, self.dtype.itemsize)
        except CorruptFilterInput as exc:
            start = int(self.index.offsets[coords])
            raise CorruptChunkError(f"{self.url}: dataset {self.path}: chunk {coords} (stored bytes [{start}, "
                                    f"{start + len(stored)})) does not decode: {exc}") from None
        if len(decoded) != self.chunk_nbytes:
            raise CorruptChunkError(f"{self.url}: dataset {self.path}: chunk {coords} decodes to {len(decoded)} "
                                    f"bytes, expected {self.chunk_nbytes}")
        return self._clip(coords, decoded)

    def read(self, coords: Sequence[tuple[int, ...]]) -> Iterator[tuple[tuple[int, ...], np.ndarray | None, int]]:
        """``(coords, decoded chunk or None if unallocated, stored bytes)`` for each chunk, decoded
        as soon as fetched; the stored ranges are read coalesced (and concurrently on remote storage)."""
        wanted = []
        for c in coords:
            c = tuple(int(i) for i in c)
            if not self.present(c):
                yield c, None, 0
            else:
                wanted.append(c)
        if not wanted:
            return
        ranges = [(int(self.index.offsets[c]), int(self.index.offsets[c] + self.index.sizes[c])) for c in wanted]
        remote = not self.storage.is_local
        blobs = self.storage.read_ranges(ranges, max_gap=REMOTE_MAX_GAP if remote else 0,
                                         max_run_bytes=MAX_RUN_BYTES)
        if len(wanted) == 1:
            yield wanted[0], self.decode(wanted[0], blobs[0]), len(blobs[0])
            return
        workers = min(len(wanted), os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:  # zlib and zstd release the GIL
            for c, blob, data in zip(wanted, blobs, pool.map(self.decode, wanted, blobs)):
                yield c, data, len(blob)

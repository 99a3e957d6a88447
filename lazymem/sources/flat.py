"""Flat sources: an array stored as one ``.npy`` stream (``.npy.zst``, any seekable zstd file
holding a ``.npy``, a plain ``.npy``), behind the :class:`~lazymem.sources.base.Source` interface.

The image of the array is the stream's data bytes, in order; an install unit is a page-aligned run
of them, assembled from the frames it meets (see :meth:`FramedSource.read_into`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .base import PAGE_SIZE, Order, Source, SourceHints, UnitGrid, UnitRead, Urgent, unit_target
from .frames import FramedSource

DEFAULT_UNIT_BYTES = 4 << 20
"""Install unit of files that name none and whose frames suggest none (4 MiB: see DESIGN, costs)."""
MAX_UNIT_BYTES = 64 << 20
"""Largest install unit chosen from a file: a unit is held whole while it is decoded."""


def _round_up(n: int, to: int = PAGE_SIZE) -> int:
    return -(-n // to) * to


def choose_unit_bytes(reader: FramedSource, nbytes: int) -> int:
    """Install unit for a flat stream: the chunk size our own files name, else one frame for files
    laid out like ours (page-sized frames aligned to the data), else a page multiple near the
    frame size, within [4 MiB, 64 MiB], never past the array."""
    hint = reader.chunk_bytes_hint
    if hint is not None and hint % PAGE_SIZE == 0 and hint <= MAX_UNIT_BYTES:
        return min(hint, _round_up(max(nbytes, 1)))  # as saved: a chunk of several frames
    table = reader.table
    sizes = np.asarray(table.decompressed_sizes)
    data_offset = reader.header.data_offset
    if len(sizes) > 1 and sizes[0] == data_offset:
        # Frame 0 is exactly the header (files written by save): the data frames are the others,
        # found without building every frame's offset (a 1 TiB array has 262,144).
        data_sizes = sizes[1:]
    else:
        offsets = np.asarray(table.decompressed_offsets)
        data = offsets >= data_offset
        data_sizes = sizes[data] if data.any() and offsets[data][0] == data_offset else sizes[:0]
    if len(data_sizes):
        first = int(data_sizes[0])
        if first > 0 and first % PAGE_SIZE == 0 and bool(np.all(data_sizes[:-1] == first)) and data_sizes[-1] <= first:
            return first  # frames are aligned to the data: one frame per unit, no assembly
    typical = int(np.median(sizes)) if len(sizes) else DEFAULT_UNIT_BYTES
    unit = min(max(_round_up(typical), DEFAULT_UNIT_BYTES), MAX_UNIT_BYTES)
    return min(unit, _round_up(max(nbytes, 1)))


class FlatSource(Source):
    """A :class:`FramedSource` (seekable zstd or plain ``.npy``) as a :class:`Source`."""

    def __init__(self, reader: FramedSource, url: str | None = None) -> None:
        self.reader = reader
        self.url = url if url is not None else reader.path

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> FlatSource:
        """Open the ``.npy`` stream at ``url`` (see :func:`lazymem.sources.open_source`)."""
        from . import open_source

        return cls(open_source(url, storage_options), url)

    def __repr__(self) -> str:
        return f"<FlatSource {self.reader!r}>"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.reader.header.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.reader.header.dtype

    @property
    def order(self) -> Order:
        return "F" if self.reader.header.fortran_order else "C"

    @property
    def nbytes(self) -> int:
        return int(self.reader.header.nbytes)

    @property
    def storage_chunks(self) -> tuple[int, ...]:
        per_frame = self.reader.chunk_bytes_hint or int(np.median(np.asarray(self.reader.table.decompressed_sizes)))
        return (max(1, per_frame // max(self.dtype.itemsize, 1)),)

    @property
    def hints(self) -> SourceHints:
        from ..storage import is_local_file
        from ..storage.remote import default_max_in_flight

        local = is_local_file(self.reader.fs)
        return SourceHints(remote=not local, max_in_flight=default_max_in_flight(self.reader.fs),
                           local_path=self.reader.path if local else None, unit_bytes=self.reader.chunk_bytes_hint)

    def default_unit_bytes(self) -> int:
        return choose_unit_bytes(self.reader, self.nbytes)

    def read_unit(self, grid: UnitGrid, unit: int, out: memoryview, *, urgent: Urgent | None = None,
                  on_urgent: Callable[[int, int], None] | None = None) -> UnitRead:
        offset, length, view = unit_target(grid, unit, out)
        start = self.reader.data_offset + offset
        zeros = self.reader.read_into(start, view, skip_zeros=True, first=urgent, on_first=on_urgent)
        return UnitRead(zeros=bool(zeros), bytes_fetched=self.stored_bytes(offset, length))

    def stored_bytes(self, offset: int, length: int) -> int:
        """Stored bytes of the frames holding image bytes ``[offset, offset + length)``."""
        table = self.reader.table
        start = self.reader.data_offset + offset
        frames = table.frames_for(start, start + length)
        return int(table.compressed_span(frames.start, frames.stop))

    def read_all_into(self, out: np.ndarray, *, threads: int | None = None) -> None:
        from ..eager import read_array

        read_array(self.reader, threads=threads, out=out)

    def read_all(self, *, threads: int | None = None) -> np.ndarray:
        from ..eager import read_array

        return read_array(self.reader, threads=threads)  # zero frames stay untouched np.zeros pages

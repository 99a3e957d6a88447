"""Chunked HDF5 / NetCDF4 datasets: the N-d chunk machinery of
:class:`~lazymem.sources.chunk_grid.ChunkGridSource` over chunks fetched by byte range and decoded
without h5py (:mod:`.hdf5_index`, :mod:`.hdf5_filters`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .base import Order, SourceHints
from .chunk_grid import ChunkGridSource, ChunkRead
from .hdf5 import DatasetInfo
from .hdf5_index import ChunkFetcher


class Hdf5ChunkedSource(ChunkGridSource):
    """One chunked dataset of an HDF5 file (NetCDF4 variables included)."""

    def __init__(self, fetcher: ChunkFetcher, info: DatasetInfo, fill: bytes) -> None:
        self.fetcher = fetcher
        self.info = info
        self.url = fetcher.url
        self._fill_value = np.frombuffer(fill, dtype=info.dtype)[0]

    def __repr__(self) -> str:
        return (f"<Hdf5ChunkedSource {self.url!r} path={self.info.path!r} shape={self.shape} dtype={self.dtype} "
                f"chunks={self.storage_chunks}>")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.info.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.info.dtype

    @property
    def order(self) -> Order:
        return "C"  # HDF5 stores every chunk in C order

    @property
    def storage_chunks(self) -> tuple[int, ...]:
        return self.fetcher.index.chunks

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.info.attrs)

    @property
    def dimension_names(self) -> tuple[str, ...] | None:
        return self.info.dimension_names

    @property
    def hints(self) -> SourceHints:
        from ..storage.remote import default_max_in_flight

        storage = self.fetcher.storage
        return SourceHints(remote=not storage.is_local, max_in_flight=default_max_in_flight(storage.fs),
                           local_path=None, unit_bytes=None)

    @property
    def fill_value(self) -> Any:
        return self._fill_value

    def chunk_present(self, coords: tuple[int, ...]) -> bool | None:
        return self.fetcher.present(tuple(coords))

    def read_chunks(self, coords: Sequence[tuple[int, ...]]) -> Iterator[ChunkRead]:
        for c, data, stored in self.fetcher.read(coords):
            yield ChunkRead(c, data, stored)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        index = self.fetcher.index
        info.update({
            "format": "hdf5", "path": self.info.path, "layout": "chunked",
            "filters": [f.label() for f in self.fetcher.filters],
            "fill_value": _jsonable(self._fill_value),
            "stored_bytes": index.stored_bytes, "decoded_bytes": self.nbytes,
            "chunks_allocated": index.allocated, "chunks_total": int(index.offsets.size),
        })
        return info


def _jsonable(value: Any) -> Any:
    """A fill value as ``lazymem info`` can print it (JSON): a number, else its repr."""
    item = value.item() if hasattr(value, "item") else value
    return item if isinstance(item, bool | int | float) else repr(item)

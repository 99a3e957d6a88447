"""The source interface: what the monitor, ``open``, ``load``, ``prefetch`` and ``evict`` may ask
of a format, and nothing more.

A *source* is one array in storage. It says what the array is (shape, dtype, order, its storage
chunk grid) and fills *install units*: page-aligned byte ranges of the array's image in memory,
tiling it, which the monitor installs whole. A unit is neither what the format stores (a zstd
frame, a zarr chunk) nor what it fetches: a flat source cuts its stream in equal units; an N-d
source (zarr, HDF5) will cut the image in units that suit its chunk grid and assemble each from
the parts of the chunks it meets. The monitor never learns which: it asks :meth:`Source.read_unit`
to fill a unit, with the faulting reader's piece first (``urgent``), and gets back whether the unit
is all zeros (map zero pages, copy nothing) and how many stored bytes it cost.

Every source keeps the integrity contract written in :mod:`lazymem.sources.frames` (indexes checked
before use, nothing placed by an unproven index, no allocation before validation, checksums all or
nothing), and passes the conformance suite ``tests/source_conformance.py`` (``SourceTests``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

Order = Literal["C", "F"]


@dataclass(frozen=True, slots=True)
class UnitGrid:
    """Install units tiling an array's image ``[0, nbytes)``: ``[k * unit_bytes, (k + 1) * unit_bytes)``
    for each unit ``k``, the last one cut at ``nbytes``. Unit starts are page aligned."""

    nbytes: int
    """Bytes of the array's image."""
    unit_bytes: int
    """Bytes of every unit but the last; a positive multiple of the page size."""

    def __post_init__(self) -> None:
        if self.unit_bytes <= 0 or self.unit_bytes % PAGE_SIZE:
            raise ValueError(f"unit_bytes must be a positive multiple of {PAGE_SIZE} (got {self.unit_bytes!r})")
        if self.nbytes < 0:
            raise ValueError(f"nbytes must be >= 0 (got {self.nbytes!r})")

    def __len__(self) -> int:
        return -(-self.nbytes // self.unit_bytes)

    def span(self, unit: int) -> tuple[int, int]:
        """``(offset, length)`` of ``unit`` in the image (the last unit may be shorter)."""
        if not 0 <= unit < len(self):
            raise IndexError(f"unit {unit} out of range (the grid has {len(self)})")
        offset = unit * self.unit_bytes
        return offset, min(self.unit_bytes, self.nbytes - offset)

    def unit_at(self, offset: int) -> int:
        """The unit holding image byte ``offset``."""
        if not 0 <= offset < self.nbytes:
            raise IndexError(f"byte {offset} is outside the image [0, {self.nbytes})")
        return offset // self.unit_bytes

    def units_for(self, start: int, stop: int) -> range:
        """The units that image bytes ``[start, stop)`` meet (empty if ``start >= stop``)."""
        start, stop = max(start, 0), min(stop, self.nbytes)
        if start >= stop:
            return range(0)
        return range(start // self.unit_bytes, (stop - 1) // self.unit_bytes + 1)


@dataclass(frozen=True, slots=True)
class UnitRead:
    """What filling one unit did."""

    zeros: bool
    """The unit holds zeros only (or the fill value zero) and ``out`` was left untouched."""
    bytes_fetched: int | None
    """Stored bytes read from storage for it (0 where nothing was fetched; None if the format's
    library does not say)."""


@dataclass(frozen=True, slots=True)
class SourceHints:
    """What a source knows of its storage, for the monitor's policies (never for correctness)."""

    remote: bool
    """Reads cross a network: worth more requests in flight, and coalescing."""
    max_in_flight: int | None
    """Fetches worth running at once for this storage (None: no limit)."""
    local_path: str | None
    """A plain local file's path (the kernel's page cache and mmap may serve it better)."""
    unit_bytes: int | None
    """The install unit the format suggests (the writer's chunk size), if it names one."""


def unit_target(grid: UnitGrid, unit: int, out: Any) -> tuple[int, int, memoryview]:
    """``(offset, length, view)`` of ``unit``, with ``out`` as a flat writable byte view of
    exactly the unit's length (what every ``read_unit`` checks first)."""
    from .frames import byte_view

    offset, length = grid.span(unit)
    view = byte_view(out)
    if len(view) != length:
        raise ValueError(f"unit {unit} holds {length} bytes, the output buffer has {len(view)}")
    return offset, length, view


Urgent = tuple[int, int]
"""Bytes ``[lo, hi)`` of a unit a reader is waiting for (offsets within the unit)."""


class Source(ABC):
    """One array in storage, as the monitor and the eager loader see it.

    Implementations pickle cheaply (the monitor receives them pickled) and are safe to use from
    several threads at once.
    """

    url: str
    """Where the array is, as the user named it."""

    @property
    @abstractmethod
    def shape(self) -> tuple[int, ...]:
        """The array's shape."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype[Any]:
        """The array's dtype (byte order as stored)."""

    @property
    @abstractmethod
    def order(self) -> Order:
        """Memory order of the image: ``"C"`` or ``"F"``."""

    @property
    def nbytes(self) -> int:
        """Bytes of the array's image."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    @abstractmethod
    def storage_chunks(self) -> tuple[int, ...]:
        """The format's own chunk shape, in elements (a flat source: elements per frame)."""

    @property
    @abstractmethod
    def hints(self) -> SourceHints:
        """What the source knows of its storage."""

    @property
    def attrs(self) -> dict[str, Any]:
        """The array's own attributes as the format stores them (zarr attributes, HDF5/NetCDF
        attributes): raw, no CF decoding. Empty where the format has none."""
        return {}

    @property
    def dimension_names(self) -> tuple[str, ...] | None:
        """Names of the dimensions where the format records them (zarr v3 ``dimension_names``, v2
        ``_ARRAY_DIMENSIONS``, HDF5 dimension scales, NetCDF dimensions), else None."""
        return None

    def describe(self) -> dict[str, Any]:
        """What ``lazymem info`` prints: ``format``, and whatever the format can say cheaply (chunk
        and shard grids, codecs, stored and decoded sizes, chunks present...). JSON-serialisable."""
        return {"format": type(self).__name__, "url": self.url, "shape": list(self.shape),
                "dtype": self.dtype.str, "order": self.order, "chunks": list(self.storage_chunks),
                "nbytes": self.nbytes}

    def unit_grid(self, unit_bytes: int | None = None) -> UnitGrid:
        """Install units for this array: of ``unit_bytes`` if given, else of the source's choice."""
        return UnitGrid(self.nbytes, unit_bytes if unit_bytes is not None else self.default_unit_bytes())

    @abstractmethod
    def default_unit_bytes(self) -> int:
        """The install unit this source serves best (a page multiple)."""

    @abstractmethod
    def read_unit(self, grid: UnitGrid, unit: int, out: memoryview, *, urgent: Urgent | None = None,
                  on_urgent: Callable[[int, int], None] | None = None) -> UnitRead:
        """Fill ``out`` (exactly the unit's length) with the unit's bytes of the image.

        ``urgent`` names the bytes a reader waits for: the source makes a range holding them
        final first, calls ``on_urgent(lo, hi)`` with that range (offsets in the unit; at most
        once, only if the rest is not final yet), then fills the rest. If the unit holds zeros
        only, the source may leave ``out`` untouched and say so (``zeros``).

        Raises
        ------
        LazymemError
            The unit cannot be read right (damaged data, failed fetch): nothing it returned
            before (``on_urgent``) was wrong, and the caller poisons or raises.
        """

    def unit_bytes_within(self, budget: int) -> int:
        """The install unit for an array held within ``budget`` bytes (``max_resident``): by
        default :meth:`default_unit_bytes`; sources free to choose keep a few units in it."""
        return self.default_unit_bytes()

    def cached_bytes(self) -> int:
        """Decoded bytes the source keeps between units in this process (parts of chunks that
        units not read yet need): the monitor counts them in the array's budget."""
        return 0

    def limit_cache(self, budget: int | None) -> None:
        """The array's budget (``max_resident``; None: none): the source keeps its cache within a
        share of it."""
        return None  # a source without a cache has nothing to limit

    @abstractmethod
    def read_all_into(self, out: np.ndarray, *, threads: int | None = None) -> None:
        """Fill ``out`` (the array's shape, dtype and order) with the whole array, eagerly."""

    def read_all(self, *, threads: int | None = None) -> np.ndarray:
        """The whole array in a new ndarray, eagerly. Sources that can leave zero units untouched
        in fresh (calloc'd) memory override this to skip them."""
        out = np.empty(self.shape, dtype=self.dtype, order=self.order)
        self.read_all_into(out, threads=threads)
        return out

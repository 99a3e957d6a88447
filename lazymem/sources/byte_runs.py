"""Arrays stored uncompressed, as byte ranges of one object: contiguous HDF5 datasets, NetCDF3
variables (fixed-size ones as one range, record variables as one range per record).

The image of the array *is* the stored bytes, in order: ``count`` runs of ``length`` bytes, run
``r`` at ``begin + r * stride`` (one run for a contiguous dataset). An install unit is read as
the ranges it meets, nothing decoded; local files are read with ``preadv`` straight into the
unit's memory (no copy). Small runs close together (a NetCDF3 record variable of a few bytes per
record) are read as one span and gathered with a strided numpy view, not as one request each.

:class:`InlineSource` serves arrays whose bytes were read at open (HDF5 compact datasets) or that
hold one value everywhere (a contiguous dataset never written: its fill value).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from lazymem.errors import TruncatedFileError
from lazymem.storage import StoredObject

from .base import PAGE_SIZE, Order, Source, SourceHints, UnitGrid, UnitRead, Urgent, unit_target
from .frames import byte_view

DEFAULT_UNIT_BYTES = 4 << 20
"""Install unit: 4 MiB (the native format's chunk: see DESIGN, costs)."""
SPAN_SLACK = 1 << 20
"""Bytes of other records worth reading (and dropping) to gather small runs with one request."""
MAX_GAP = 64 << 10
"""Gap between two wanted ranges worth reading through to save a request."""
EAGER_PIECE = 16 << 20
"""Bytes per read of an eager load (several run at once)."""


def _round_up(n: int, to: int = PAGE_SIZE) -> int:
    return -(-n // to) * to


class ByteRunsSource(Source):
    """An uncompressed array at fixed byte ranges of one stored object."""

    def __init__(self, storage: StoredObject, url: str, shape: tuple[int, ...], dtype: np.dtype[Any], *,
                 begin: int, count: int = 1, stride: int = 0, order: Order = "C",
                 chunks: tuple[int, ...] | None = None, attrs: dict[str, Any] | None = None,
                 dimension_names: tuple[str, ...] | None = None, details: dict[str, Any] | None = None) -> None:
        self.storage = storage
        self.url = url
        self._shape = tuple(int(n) for n in shape)
        self._dtype = np.dtype(dtype)
        self._order: Order = order
        self.begin, self.count = int(begin), int(count)
        self.length = self.nbytes // self.count if self.count else 0
        """Bytes of each run."""
        self.stride = int(stride) if self.count > 1 else self.length
        self._chunks = chunks
        self._attrs = attrs or {}
        self._dimension_names = dimension_names
        self.details = details or {}
        """Format-specific entries of :meth:`describe`."""
        if self.count and self.length * self.count != self.nbytes:
            raise ValueError(f"{count} runs cannot hold {self.nbytes} bytes evenly")
        if self.count > 1 and self.stride < self.length:
            raise ValueError(f"runs of {self.length} bytes {self.stride} bytes apart overlap")
        end = self.begin + (self.count - 1) * self.stride + self.length if self.count else self.begin
        if self.nbytes and end > storage.size:
            raise TruncatedFileError(f"{storage.path}: the array's bytes end at {end}, but the file has only "
                                     f"{storage.size} bytes")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_fd", None)  # a descriptor belongs to one process
        return state

    def __repr__(self) -> str:
        return (f"<ByteRunsSource {self.url!r} shape={self.shape} dtype={self.dtype} begin={self.begin} "
                f"runs={self.count}x{self.length}/{self.stride}>")

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def order(self) -> Order:
        return self._order

    @property
    def storage_chunks(self) -> tuple[int, ...]:
        if self._chunks is not None:
            return self._chunks
        return tuple(max(n, 1) for n in self.shape) or (1,)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    @property
    def dimension_names(self) -> tuple[str, ...] | None:
        return self._dimension_names

    @property
    def hints(self) -> SourceHints:
        from ..storage.remote import default_max_in_flight

        local = self.storage.is_local
        return SourceHints(remote=not local, max_in_flight=default_max_in_flight(self.storage.fs),
                           local_path=self.storage.path if local else None, unit_bytes=None)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({"stored_bytes": self.nbytes, "offset": self.begin, "filters": []})
        if self.count > 1:
            info.update({"records": self.count, "record_bytes": self.length, "record_stride": self.stride})
        info.update(self.details)
        return info

    def default_unit_bytes(self) -> int:
        return min(DEFAULT_UNIT_BYTES, _round_up(max(self.nbytes, 1)))

    def _pieces(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """``(stored offset, image offset, length)`` of the stored ranges holding image bytes ``[start, stop)``."""
        if self.count == 1 or self.stride == self.length:
            return [(self.begin + start, start, stop - start)]
        pieces = []
        for r in range(start // self.length, (stop - 1) // self.length + 1):
            a, b = max(start, r * self.length), min(stop, (r + 1) * self.length)
            pieces.append((self.begin + r * self.stride + a - r * self.length, a, b - a))
        return pieces

    def _local_fd(self) -> int:
        fd = self.__dict__.get("_fd")
        if fd is None or fd[0] != os.getpid():
            fd = (os.getpid(), self.storage.duplicate_descriptor())  # the inode the object first opened
            self.__dict__["_fd"] = fd
        return int(fd[1])

    def _read_image(self, start: int, view: memoryview) -> None:
        """Image bytes ``[start, start + len(view))`` into ``view``."""
        stop = start + len(view)
        if not len(view):
            return
        if self.count > 1 and self.stride != self.length:
            r0, r1 = start // self.length, (stop - 1) // self.length + 1
            span = (r1 - r0 - 1) * self.stride + self.length
            if span <= 2 * len(view) + SPAN_SLACK:  # small runs close together: one read, a strided gather
                first = self.begin + r0 * self.stride
                blob = np.frombuffer(self.storage.read(first, first + span), dtype=np.uint8)
                runs = np.lib.stride_tricks.as_strided(blob, shape=(r1 - r0, self.length),
                                                       strides=(self.stride, 1), writeable=False)
                lo = start - r0 * self.length
                flat = np.frombuffer(view, dtype=np.uint8)
                flat[:] = runs.reshape(-1)[lo : lo + len(view)]
                return
        pieces = self._pieces(start, stop)
        if self.storage.is_local:
            fd = self._local_fd()
            for stored, image, length in pieces:
                target = view[image - start : image - start + length]
                done = 0
                while done < length:
                    got = os.preadv(fd, [target[done:]], stored + done)
                    if got <= 0:
                        raise TruncatedFileError(f"{self.storage.path}: the file ends before byte {stored + length}")
                    done += got
            return
        blobs = self.storage.read_ranges([(s, s + n) for s, _, n in pieces], max_gap=MAX_GAP)
        for (_, image, length), piece in zip(pieces, blobs):
            view[image - start : image - start + length] = piece

    def read_unit(self, grid: UnitGrid, unit: int, out: memoryview, *, urgent: Urgent | None = None,
                  on_urgent: Callable[[int, int], None] | None = None) -> UnitRead:
        offset, length, view = unit_target(grid, unit, out)
        # No urgent piece first: the unit's bytes arrive together and need no decoding.
        self._read_image(offset, view)
        return UnitRead(zeros=False, bytes_fetched=length)

    def read_all_into(self, out: np.ndarray, *, threads: int | None = None) -> None:
        if out.shape != self.shape or out.dtype != self.dtype:
            raise ValueError(f"out must have shape {self.shape} and dtype {self.dtype} (got {out.shape}, {out.dtype})")
        if not self.nbytes:
            return
        view = byte_view(out)
        starts = range(0, self.nbytes, EAGER_PIECE)
        workers = threads or min(16 if not self.storage.is_local else (os.cpu_count() or 1), max(len(starts), 1))
        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            list(pool.map(lambda s: self._read_image(s, view[s : s + EAGER_PIECE]), starts))


class InlineSource(Source):
    """An array whose image is ``pattern`` repeated (bytes read at open, or one fill value)."""

    def __init__(self, url: str, shape: tuple[int, ...], dtype: np.dtype[Any], pattern: bytes, *,
                 attrs: dict[str, Any] | None = None, dimension_names: tuple[str, ...] | None = None,
                 details: dict[str, Any] | None = None) -> None:
        self.url = url
        self._shape = tuple(int(n) for n in shape)
        self._dtype = np.dtype(dtype)
        if not pattern or (self.nbytes % len(pattern)):
            raise ValueError("the pattern must tile the image")
        self.pattern = bytes(pattern)
        self._attrs = attrs or {}
        self._dimension_names = dimension_names
        self.details = details or {}

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def order(self) -> Order:
        return "C"

    @property
    def storage_chunks(self) -> tuple[int, ...]:
        return tuple(max(n, 1) for n in self.shape) or (1,)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    @property
    def dimension_names(self) -> tuple[str, ...] | None:
        return self._dimension_names

    @property
    def hints(self) -> SourceHints:
        return SourceHints(remote=False, max_in_flight=None, local_path=None, unit_bytes=None)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update(self.details)
        return info

    def default_unit_bytes(self) -> int:
        return min(DEFAULT_UNIT_BYTES, _round_up(max(self.nbytes, 1)))

    def _fill(self, start: int, view: memoryview) -> None:
        n = len(self.pattern)
        phase = start % n
        reps = -(-(phase + len(view)) // n)
        view[:] = (self.pattern * reps)[phase : phase + len(view)]

    def read_unit(self, grid: UnitGrid, unit: int, out: memoryview, *, urgent: Urgent | None = None,
                  on_urgent: Callable[[int, int], None] | None = None) -> UnitRead:
        offset, _length, view = unit_target(grid, unit, out)
        if not any(self.pattern):
            return UnitRead(zeros=True, bytes_fetched=0)
        self._fill(offset, view)
        return UnitRead(zeros=False, bytes_fetched=0)

    def read_all_into(self, out: np.ndarray, *, threads: int | None = None) -> None:
        if out.shape != self.shape or out.dtype != self.dtype:
            raise ValueError(f"out must have shape {self.shape} and dtype {self.dtype} (got {out.shape}, {out.dtype})")
        if self.nbytes:
            self._fill(0, byte_view(out))

"""Zarr arrays (v2, v3, sharded) behind the :class:`~lazymem.sources.base.Source` interface.

Groundwork for zarr support (issue #16): the monitor does not serve this source yet. zarr-python
does the format's work: metadata, chunk keys, the codec pipeline (sharding included), fill values
for missing chunks. This module cuts each install unit into the N-d boxes its elements form
(:mod:`lazymem.sources.boxes`) and has zarr decode each box straight into the unit's memory
(``get_basic_selection(box, out=...)``: no copy). Elements cut by a unit's edges (item sizes that
do not divide the page size) go through a one-element scratch.

What it does not do yet: keep decoded chunks between units. A unit narrower than a chunk-row band
decodes every chunk its rows meet, so a sequential scan of a wide array decodes each chunk several
times (see ``../shared/DESIGN.md``, N-d chunked sources); the default unit is one band, up to
``MAX_UNIT_BYTES``, to keep that rare.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ArrayNotFoundError, FormatError, LazymemError
from . import zarr_meta
from .base import PAGE_SIZE, Order, Source, SourceHints, UnitGrid, UnitRead, Urgent, unit_target
from .boxes import box_shape, flat_run_boxes

MIN_UNIT_BYTES = 1 << 20
MAX_UNIT_BYTES = 16 << 20


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise ImportError("reading zarr arrays needs zarr-python: pip install 'lazymem[zarr]'") from None
    return zarr


def array_paths(group: Any) -> list[str]:
    """Paths (relative, "/"-separated, nested groups included) of every array in a zarr group."""
    return sorted(name for name, node in group.members(max_depth=None) if not hasattr(node, "members"))


def _dimension_names(array: Any) -> tuple[str, ...] | None:
    """zarr v3 ``dimension_names``, else the v2 (xarray) convention ``_ARRAY_DIMENSIONS``."""
    names = getattr(array.metadata, "dimension_names", None)
    if names is None:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
    if names is None or len(names) != len(array.shape) or any(n is None for n in names):
        return None
    return tuple(str(n) for n in names)


def _store_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    return {"storage_options": storage_options} if storage_options and "://" in url else {}


def list_zarr(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The :class:`~lazymem.sources.formats.Listing` of the zarr group at ``url``."""
    from .formats import ArrayInfo, Listing

    zarr = _zarr()
    zarr_meta.check_group(url, storage_options)  # before zarr parses (and instantiates) any codec
    try:
        group = zarr.open_group(store=url, mode="r", **_store_options(url, storage_options))
        arrays = {name: ArrayInfo(tuple(int(n) for n in node.shape), np.dtype(node.dtype), dict(node.attrs),
                                  _dimension_names(node))
                  for name, node in group.members(max_depth=None) if not hasattr(node, "members")}
    except FileNotFoundError as exc:
        raise ArrayNotFoundError(f"{url}: no zarr group ({exc})") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise FormatError(f"{url}: not a readable zarr group ({type(exc).__name__}: {exc})") from exc
    return Listing(dict(sorted(arrays.items())), dict(group.attrs), "zarr")


class ZarrSource(Source):
    """One zarr array, opened read-only through zarr-python (any store fsspec reaches)."""

    def __init__(self, url: str, path: str | None = None, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.path = path
        self.storage_options = storage_options
        self._open()

    def _open(self) -> None:
        # zarr_meta: raw metadata checked before zarr parses it (no codec instantiated unchecked).
        self.path, self.array, self._zarr_doc = zarr_meta.open_checked_array(
            self.url, self.path, self.storage_options, getattr(self, "_zarr_doc", None))
        dtype = np.dtype(self.array.dtype)
        if dtype.hasobject:
            raise FormatError(f"{self.url}: zarr dtype {dtype} holds Python objects, not fixed-size data")
        self._dtype = dtype

    def _only_array(self, zarr: Any) -> str:
        """The path of the one array in the group at ``url``; an error listing them otherwise."""
        paths = array_paths(zarr.open_group(store=self.url, mode="r", **self._options()))
        if len(paths) != 1:
            listed = ", ".join(paths) if paths else "none"
            raise FormatError(f"{self.url} is a zarr group holding {len(paths)} arrays ({listed}): "
                              "name one with path=")
        return paths[0]

    def _options(self) -> dict[str, Any]:
        return _store_options(self.url, self.storage_options)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.array.attrs)

    @property
    def dimension_names(self) -> tuple[str, ...] | None:
        return _dimension_names(self.array)

    def __getstate__(self) -> dict[str, Any]:
        # Reopened in the other process: zarr arrays hold event loops and stores that need not pickle.
        return {"url": self.url, "path": self.path, "storage_options": self.storage_options,
                "_zarr_doc": self._zarr_doc}  # checked again, not fetched again (zarr_meta)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __repr__(self) -> str:
        return (f"<ZarrSource {self.url!r} path={self.path!r} shape={self.shape} dtype={self.dtype} "
                f"chunks={self.storage_chunks}>")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def order(self) -> Order:
        # zarr v2 stores F-ordered chunks for order "F": an F-order image keeps them contiguous.
        return "F" if getattr(self.array.metadata, "order", "C") == "F" else "C"

    @property
    def storage_chunks(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.array.chunks)

    @property
    def hints(self) -> SourceHints:
        remote = "://" in self.url and not self.url.startswith("file://")
        return SourceHints(remote=remote, max_in_flight=None, local_path=None, unit_bytes=None)

    def default_unit_bytes(self) -> int:
        """One chunk-row band (the chunks sharing the outermost index range), within [1, 16] MiB."""
        shape, chunks = self.shape, self.storage_chunks
        if not shape:
            return PAGE_SIZE
        dims = list(zip(shape, chunks))
        if self.order == "F":
            dims.reverse()
        band = min(dims[0][1], dims[0][0]) * math.prod(n for n, _ in dims[1:]) * self.dtype.itemsize
        unit = min(max(band, MIN_UNIT_BYTES), MAX_UNIT_BYTES)
        return -(-unit // PAGE_SIZE) * PAGE_SIZE

    def _read_elements(self, start: int, stop: int, out: np.ndarray) -> None:
        """Elements ``[start, stop)`` of the image (memory order) into the 1-d ``out``."""
        from zarr.core.buffer.cpu import NDBuffer

        order = self.order
        for first, box in flat_run_boxes(self.shape, start, stop, order):
            shape = box_shape(box)
            n = math.prod(shape)
            target = out[first - start : first - start + n].reshape(shape, order=order)
            self.array.get_basic_selection(box, out=NDBuffer.from_numpy_array(target))

    def read_unit(self, grid: UnitGrid, unit: int, out: memoryview, *, urgent: Urgent | None = None,
                  on_urgent: Callable[[int, int], None] | None = None) -> UnitRead:
        offset, length, view = unit_target(grid, unit, out)
        size = self.dtype.itemsize
        first, last = -(-offset // size), (offset + length) // size  # elements wholly inside
        try:
            if last > first:
                lo = first * size - offset
                body = np.frombuffer(view, dtype=np.uint8, count=(last - first) * size, offset=lo)
                self._read_elements(first, last, body.view(self.dtype))
            for element in {offset // size, (offset + length - 1) // size} - set(range(first, last)):
                scratch = np.empty(1, dtype=self.dtype)  # an element cut by the unit's edge
                self._read_elements(element, element + 1, scratch)
                raw = scratch.view(np.uint8)
                a, b = max(element * size, offset), min((element + 1) * size, offset + length)
                view[a - offset : b - offset] = raw[a - element * size : b - element * size].tobytes()
        except LazymemError:
            raise
        except Exception as exc:
            raise FormatError(f"{self.url}: cannot read unit {unit} (array bytes {offset}..{offset + length}): "
                              f"{type(exc).__name__}: {exc}") from exc
        return UnitRead(zeros=False, bytes_fetched=None)

    def read_all_into(self, out: np.ndarray, *, threads: int | None = None) -> None:
        from zarr.core.buffer.cpu import NDBuffer

        if out.shape != self.shape or out.dtype != self.dtype:
            raise ValueError(f"out must have shape {self.shape} and dtype {self.dtype} (got {out.shape}, {out.dtype})")
        self.array.get_basic_selection(..., out=NDBuffer.from_numpy_array(out))

    def describe(self) -> dict[str, Any]:
        return zarr_meta.describe_array(self)

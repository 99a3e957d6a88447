"""A minimal stand-in for :mod:`lazymem.sources.chunk_grid` (issue 16 owns the real one), with the
same subclass-facing contract, used only while that module is absent: every unit decodes the
chunks it meets (no cache between units), nothing urgent first."""

from __future__ import annotations

import itertools
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import PAGE_SIZE, Source, UnitGrid, UnitRead, Urgent, unit_target
from .boxes import box_shape, flat_run_boxes

MIN_UNIT_BYTES = 1 << 20
MAX_UNIT_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class ChunkRead:
    coords: tuple[int, ...]
    data: np.ndarray | None
    stored_bytes: int | None


class ChunkGridSource(Source):
    @property
    @abstractmethod
    def fill_value(self) -> Any: ...

    @abstractmethod
    def read_chunks(self, coords: Sequence[tuple[int, ...]]) -> Iterator[ChunkRead]: ...

    def chunk_present(self, coords: tuple[int, ...]) -> bool | None:
        return None

    def default_unit_bytes(self) -> int:
        shape, chunks = self.shape, self.storage_chunks
        if not shape:
            return PAGE_SIZE
        band = min(chunks[0], shape[0]) * math.prod(shape[1:]) * self.dtype.itemsize
        unit = min(max(band, MIN_UNIT_BYTES), MAX_UNIT_BYTES)
        return -(-unit // PAGE_SIZE) * PAGE_SIZE

    def _fill_into(self, elements: int, out: np.ndarray, boxes: list[tuple[int, tuple[slice, ...]]], start: int) -> int:
        chunks = self.storage_chunks
        wanted: set[tuple[int, ...]] = set()
        for _, box in boxes:
            wanted.update(itertools.product(*(range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(box, chunks))))
        got: dict[tuple[int, ...], np.ndarray | None] = {}
        fetched = 0
        for read in self.read_chunks(sorted(wanted)):
            got[read.coords] = read.data
            fetched += read.stored_bytes or 0
        fill = np.asarray(self.fill_value, dtype=self.dtype) if self.shape else None
        for first, box in boxes:
            target = out[first - start : first - start + math.prod(box_shape(box))].reshape(box_shape(box))
            for coords in itertools.product(*(range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(box, chunks))):
                inter = tuple(slice(max(s.start, i * c), min(s.stop, (i + 1) * c)) for s, i, c in zip(box, coords, chunks))
                dst = tuple(slice(t.start - s.start, t.stop - s.start) for t, s in zip(inter, box))
                data = got[coords]
                if data is None:
                    target[dst] = fill
                else:
                    src = tuple(slice(t.start - i * c, t.stop - i * c) for t, i, c in zip(inter, coords, chunks))
                    target[dst] = data[src]
        return fetched

    def read_unit(self, grid: UnitGrid, unit: int, out: memoryview, *, urgent: Urgent | None = None,
                  on_urgent: Callable[[int, int], None] | None = None) -> UnitRead:
        offset, length, view = unit_target(grid, unit, out)
        size = self.dtype.itemsize
        e0, e1 = offset // size, -(-(offset + length) // size)
        boxes = flat_run_boxes(self.shape, e0, e1, self.order)
        tmp = np.empty(e1 - e0, dtype=self.dtype)
        fetched = self._fill_into(e1 - e0, tmp, boxes, e0)
        raw = tmp.view(np.uint8)
        lo = offset - e0 * size
        view[:] = raw[lo : lo + length].tobytes()
        return UnitRead(zeros=False, bytes_fetched=fetched)

    def read_all_into(self, out: np.ndarray, *, threads: int | None = None) -> None:
        flat = out.reshape(-1, order="A")
        n = flat.size
        grid = self.unit_grid()
        per = max(grid.unit_bytes // self.dtype.itemsize, 1)
        for e0 in range(0, n, per):
            e1 = min(n, e0 + per)
            self._fill_into(e1 - e0, flat[e0:e1], flat_run_boxes(self.shape, e0, e1, self.order), e0)

"""N-d chunked sources (zarr, HDF5, NetCDF4): install units assembled from the chunks they meet.

A subclass says what the array is (``shape``, ``dtype``, ``order``, ``storage_chunks``, ``hints``,
``fill_value``) and decodes chunks (``read_chunks``); this base does the rest of the
:class:`~lazymem.sources.base.Source` interface:

* **which chunks a unit meets.** A unit is a run of bytes of the image, so a run of elements in
  memory order: a few N-d boxes (:func:`~lazymem.sources.boxes.flat_run_boxes`), each meeting a
  block of chunks (see ``../shared/DESIGN.md``, "N-d chunked sources").
* **how big a unit is** (:meth:`ChunkGridSource.default_unit_bytes`): as large as possible (up to
  16 MiB: fewer faults and installs), but no larger than one band of chunks or 4 MiB, whichever is
  more (a sliver costs a unit), and such that a one-element touch decodes at most
  ``TOUCH_DECODE_BYTES`` of chunks or four times the unit, whichever is more. A narrow array gets whole chunk-row bands;
  a wide one gets units of a few pages that meet a few chunks, never a whole wide band.
* **decoded chunks kept between units** (:class:`~lazymem.sources.chunk_cache.ChunkCache`): the
  parts of a chunk that the unit being read does not need wait there for the units that do, so a
  sequential scan decodes each chunk once as long as the cache holds one band of chunks (the chunks
  sharing an outermost chunk index). With less, the least recently used partly used chunks are
  dropped and decoded again later. The monitor counts the cache in the array's budget
  (``cached_bytes``) and sizes it from that budget (``limit_cache``).
* **the reader's page first**: the chunks meeting the urgent bytes are decoded first, that piece is
  handed over (``on_urgent``), then the other chunks.
* **missing chunks cost nothing**: a chunk the subclass reports missing (``ChunkRead.data`` None, or
  ``chunk_present`` False without any fetch) is the fill value; a unit made of missing chunks only,
  with a fill value of zero bytes, is reported as zeros (the monitor maps zero pages, nothing copied).

Every chunk is checked before it is placed (its shape is the chunk's box clipped to the array, its
dtype the array's): a subclass bug or a lying file raises, it never places other data.
"""

from __future__ import annotations

import itertools
import math
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptChunkError, FormatError, LazymemError
from .base import PAGE_SIZE, Source, UnitGrid, UnitRead, Urgent, unit_target
from .boxes import Box, box_shape, chunk_ranges, flat_run_boxes, intersect, shift
from .chunk_cache import RELEASED, ChunkCache, Claims

Coords = tuple[int, ...]

MAX_UNIT_BYTES = 16 << 20
"""Largest install unit chosen by default."""
BASE_UNIT_BYTES = 4 << 20
"""Units are no larger than one band of chunks (rounded up to a power of two) or this, whichever is
more. A touch installs, and fetches, at least a unit: units of several bands made a sliver of a
narrow array cost several chunks (16 MiB units: one time step of a 2 MiB-chunk array fetched 15 MiB,
zarr 0.9 MiB); units of a whole band cost nothing more to decode (a page already meets the band's
chunks along its row) and need no cache to decode each chunk once."""
TOUCH_DECODE_BYTES = 32 << 20
"""Decoded chunk bytes a one-element touch may cost (unless the unit's own size, or a single page's
chunks, need more): 8 chunks of 4 MiB."""
DEFAULT_CACHE_BYTES = 256 << 20
"""The decoded-chunk cache without a budget, unless one band of chunks needs more."""
READ_ALL_BYTES = 256 << 20
"""Decoded bytes asked of ``read_chunks`` at once by an eager read (its concurrency, bounded)."""

_STATE_LOCK = threading.Lock()
_UNIT_SIZES: dict[tuple[Any, ...], int] = {}  # default_unit_bytes by geometry
_TRANSIENT = ("_cg_cache", "_cg_unit_bytes")  # per process, never pickled


@dataclass(frozen=True, slots=True)
class ChunkRead:
    """One chunk, as :meth:`ChunkGridSource.read_chunks` yields it."""

    coords: tuple[int, ...]
    """The chunk's position in the chunk grid."""
    data: np.ndarray | None
    """The decoded chunk clipped to the array (edge chunks are smaller), of the source's dtype, in
    any memory layout; None: the chunk is missing (unallocated), it holds the fill value and
    nothing was fetched for it."""
    stored_bytes: int | None
    """Bytes fetched from storage for it (0 for a missing chunk; None if unknown)."""


class ChunkGridSource(Source):
    """An array stored in a regular N-d grid of chunks (see the module docstring).

    Subclasses provide ``shape``, ``dtype``, ``order``, ``storage_chunks`` (the chunk shape),
    ``hints``, :attr:`fill_value` and :meth:`read_chunks`; optionally :meth:`chunk_present`. A
    subclass that pickles its own state (``__getstate__``) must leave out attributes starting
    with ``_cg_`` (this base's per-process state, made again when first needed).
    """

    # --- what a subclass provides -----------------------------------------------------------------
    @property
    @abstractmethod
    def fill_value(self) -> Any:
        """What a missing chunk holds (a value castable to ``dtype``)."""

    @abstractmethod
    def read_chunks(self, coords: Sequence[tuple[int, ...]]) -> Iterator[ChunkRead]:
        """Fetch and decode these chunks, concurrently where the storage allows (coalescing
        neighbouring byte ranges where it can), yielding each as soon as it is decoded (any order).

        Raise a LazymemError (CorruptChunkError for a chunk that fails to decode or decodes to the
        wrong size, FetchError for storage) naming the chunk; never yield wrong data. Thread-safe;
        called in the monitor process, so it must not need anything that does not pickle (reopen
        in ``__setstate__``)."""

    def read_chunks_into(self, targets: Sequence[tuple[tuple[int, ...], np.ndarray]]) -> Iterator[ChunkRead]:
        """Optional: decode chunks straight into the given arrays (each of the chunk's clipped
        shape and the source's dtype, often a strided view of an install unit), yielding each
        chunk as it is done with ``data`` that very array (None: missing, the array holds nothing
        or the fill value). The default decodes with :meth:`read_chunks` and copies; a subclass
        whose library decodes into a given buffer overrides it and saves that copy."""
        views = dict(targets)
        for read in self.checked_chunks(list(views)):
            if read.data is None:
                yield read
            else:
                views[read.coords][...] = read.data
                yield ChunkRead(read.coords, views[read.coords], read.stored_bytes)

    def chunk_present(self, coords: tuple[int, ...]) -> bool | None:
        """Whether the chunk is stored, if known without fetching anything (None: unknown). A
        chunk known missing is the fill value and is not asked of :meth:`read_chunks`."""
        return None

    # --- the chunk grid ---------------------------------------------------------------------------
    @property
    def chunk_grid_shape(self) -> tuple[int, ...]:
        """Chunks along each dimension."""
        return tuple(-(-n // c) for n, c in zip(self.shape, self.storage_chunks, strict=True))

    def chunk_box(self, coords: Coords) -> Box:
        """The elements chunk ``coords`` holds, clipped to the array."""
        return tuple(slice(i * c, min((i + 1) * c, n))
                     for i, c, n in zip(coords, self.storage_chunks, self.shape, strict=True))

    def chunks_for(self, start: int, stop: int) -> list[Coords]:
        """The chunks that elements ``[start, stop)`` (memory order) meet, in memory order of first meeting."""
        return self._chunks_of(flat_run_boxes(self.shape, start, stop, self.order))

    def _chunks_of(self, boxes: Iterable[tuple[int, Box]]) -> list[Coords]:
        seen: dict[Coords, None] = {}
        for _, box in boxes:
            seen.update(dict.fromkeys(itertools.product(*chunk_ranges(box, self.storage_chunks))))
        return list(seen)

    def _chunk_bytes(self) -> int:
        return math.prod(self.storage_chunks) * self.dtype.itemsize

    def band_bytes(self) -> int:
        """Decoded bytes of one band of chunks: the chunks sharing an outermost chunk index (in
        memory order), which a sequential scan uses at once."""
        if not self.shape:
            return self.dtype.itemsize
        dims = list(zip(self.shape, self.storage_chunks, strict=True))
        if self.order == "F":
            dims.reverse()
        (n0, c0), rest = dims[0], dims[1:]
        return min(c0, n0) * math.prod(-(-n // c) * c for n, c in rest) * self.dtype.itemsize

    def _fill(self) -> np.ndarray:
        return np.array(self.fill_value, dtype=self.dtype)

    def _fill_is_zero(self) -> bool:
        return not any(self._fill().tobytes())

    # --- unit size --------------------------------------------------------------------------------
    def default_unit_bytes(self) -> int:
        """The largest power-of-two page multiple up to ``MAX_UNIT_BYTES`` whose units each meet
        at most ``max(TOUCH_DECODE_BYTES, 4 * unit, 2 * what one page meets)`` bytes of chunks: a
        touch anywhere decodes a bounded amount, never a whole wide band."""
        known = self.__dict__.get("_cg_unit_bytes")
        if known is not None:
            return int(known)
        key = (self.shape, self.storage_chunks, self.dtype.itemsize, self.order)
        if key in _UNIT_SIZES:  # the same geometry opened again in this process: pure arithmetic, known
            self.__dict__["_cg_unit_bytes"] = _UNIT_SIZES[key]
            return _UNIT_SIZES[key]
        # From the largest down: narrow arrays pass at once; for wide ones each large size is
        # refused at its first sample over the limit (see _touch_cost).
        size = MAX_UNIT_BYTES
        cap = min(max(BASE_UNIT_BYTES, self.band_bytes()), self.nbytes)
        while size > PAGE_SIZE and size // 2 >= cap:
            size //= 2  # the smallest power of two holding a band (or BASE_UNIT_BYTES, or the array)
        floor = max(TOUCH_DECODE_BYTES, 2 * self._touch_cost(PAGE_SIZE))
        while size > PAGE_SIZE and self._touch_cost(size, max(floor, 4 * size)) > max(floor, 4 * size):
            size //= 2
        unit = size
        self.__dict__["_cg_unit_bytes"] = unit
        if len(_UNIT_SIZES) > 1024:
            _UNIT_SIZES.clear()
        _UNIT_SIZES[key] = unit
        return unit

    def unit_bytes_within(self, budget: int) -> int:
        """:meth:`default_unit_bytes`, at most a quarter of the budget (a power-of-two page
        multiple): a unit larger than the budget would make ``max_resident`` meaningless."""
        unit = PAGE_SIZE
        while unit * 2 <= budget // 4:
            unit *= 2
        return min(self.default_unit_bytes(), unit)

    def _touch_cost(self, unit_bytes: int, limit: float = math.inf, samples: int = 12) -> float:
        """The most decoded chunk bytes one unit of ``unit_bytes`` meets, over units spread
        through the array and the unit straddling the first band boundary (where a unit meets
        two bands); it stops at the first sample over ``limit``."""
        nunits = -(-self.nbytes // unit_bytes)
        picks = [nunits * i // samples for i in range(samples)]
        boundary = self.band_bytes()
        if boundary < self.nbytes:
            picks.insert(0, boundary // unit_bytes)
        size, chunk = self.dtype.itemsize, self._chunk_bytes()
        worst = 0.0
        for k in dict.fromkeys(picks):
            lo, hi = k * unit_bytes, min((k + 1) * unit_bytes, self.nbytes)
            boxes = flat_run_boxes(self.shape, lo // size, -(-hi // size), self.order)
            met = [math.prod(len(r) for r in chunk_ranges(box, self.storage_chunks)) for _, box in boxes]
            count = sum(met)
            if len(met) > 1 and count * chunk > limit and count <= 4096:  # boxes of a run may share chunks
                count = len(self._chunks_of(boxes))
            worst = max(worst, float(count * chunk))
            if worst > limit:
                break
        return worst

    # --- the decoded-chunk cache, in the monitor's budget -----------------------------------------
    def _cache(self) -> ChunkCache[Coords]:
        cache = self.__dict__.get("_cg_cache")
        if cache is None:
            with _STATE_LOCK:
                cache = self.__dict__.get("_cg_cache")
                if cache is None:
                    cache = self.__dict__["_cg_cache"] = ChunkCache[Coords](self._cache_limit(None))
        return cache

    def _cache_limit(self, budget: int | None) -> int:
        # One band plus a few chunks lets a scan decode each chunk once; a budget caps it at half
        # (the rest is for installed units).
        limit = max(DEFAULT_CACHE_BYTES, self.band_bytes() + 4 * self._chunk_bytes())
        return limit if budget is None else min(limit, budget // 2)

    def cached_bytes(self) -> int:  # counted in the budget by the monitor (see Source)
        cache = self.__dict__.get("_cg_cache")
        return cache.nbytes if cache is not None else 0

    def limit_cache(self, budget: int | None) -> None:
        self._cache().set_limit(self._cache_limit(budget))

    def chunks_decoded(self) -> int:
        """Chunks this source decoded for install units in this process (tests, benchmarks)."""
        cache = self.__dict__.get("_cg_cache")
        return cache.decoded if cache is not None else 0

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in _TRANSIENT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # --- reading ----------------------------------------------------------------------------------
    def read_unit(self, grid: UnitGrid, unit: int, out: memoryview, *, urgent: Urgent | None = None,
                  on_urgent: Callable[[int, int], None] | None = None) -> UnitRead:
        offset, length, view = unit_target(grid, unit, out)
        try:
            return _UnitAssembly(self, offset, length, view, grid.unit_bytes).run(urgent, on_urgent)
        except _CallerError as exc:  # the caller's own failure (the installer's), as it was raised
            raise exc.error from None
        except LazymemError:
            raise
        except Exception as exc:
            raise FormatError(f"{self.url}: cannot read unit {unit} (array bytes {offset}..{offset + length}): "
                              f"{type(exc).__name__}: {exc}") from exc

    def checked_chunks(self, coords: Sequence[Coords]) -> Iterator[ChunkRead]:
        """:meth:`read_chunks`, each chunk checked (asked for, once, of its clipped box's shape and
        the array's dtype), and every chunk asked for yielded."""
        left = set(coords)
        for read in self.read_chunks(coords):
            where = tuple(read.coords)
            if where not in left:
                raise CorruptChunkError(f"{self.url}: chunk {where} was read but not asked for (or twice)")
            if read.data is not None:
                want = box_shape(self.chunk_box(where))
                if read.data.shape != want or read.data.dtype != self.dtype:
                    raise CorruptChunkError(
                        f"{self.url}: chunk {where} decoded to shape {read.data.shape} {read.data.dtype}, "
                        f"not {want} {self.dtype}")
            left.discard(where)
            yield read
        if left:
            raise FormatError(f"{self.url}: chunks {sorted(left)[:4]} were asked for and never read")

    def read_all_into(self, out: np.ndarray, *, threads: int | None = None) -> None:
        if out.shape != self.shape or out.dtype != self.dtype:
            raise ValueError(f"out must have shape {self.shape} and dtype {self.dtype} (got {out.shape}, {out.dtype})")
        self._read_everything(out, write_fill=True)

    def read_all(self, *, threads: int | None = None) -> np.ndarray:
        if self._fill_is_zero():  # calloc'd: missing chunks are left alone, never touched
            out = np.zeros(self.shape, dtype=self.dtype, order=self.order)
            self._read_everything(out, write_fill=False)
            return out
        return super().read_all(threads=threads)

    def _read_everything(self, out: np.ndarray, *, write_fill: bool) -> None:
        """Every chunk into ``out``, a bounded batch at a time (``read_chunks`` runs a batch concurrently)."""
        fill = self._fill()
        batch = max(1, READ_ALL_BYTES // max(1, self._chunk_bytes()))
        everything = itertools.product(*(range(n) for n in self.chunk_grid_shape))
        while chunk_batch := list(itertools.islice(everything, batch)):
            wanted = []
            for coords in chunk_batch:
                if self.chunk_present(coords) is False:
                    if write_fill:
                        out[self.chunk_box(coords)] = fill
                else:
                    wanted.append(coords)
            for read in self.checked_chunks(wanted):
                if read.data is not None:
                    out[self.chunk_box(read.coords)] = read.data
                elif write_fill:
                    out[self.chunk_box(read.coords)] = fill

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "chunk_grid": list(self.chunk_grid_shape)}


class _CallerError(Exception):
    """An exception raised by the caller's ``on_urgent``: passed on untouched (not a source error)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class _UnitAssembly:
    """One install unit: its elements placed from the chunks they meet (see ``read_unit``)."""

    def __init__(self, source: ChunkGridSource, offset: int, length: int, view: memoryview,
                 unit_bytes: int) -> None:
        self.source, self.offset, self.length, self.view = source, offset, length, view
        size = self.size = source.dtype.itemsize
        self.lo, self.hi = offset // size, -(-(offset + length) // size)  # elements the unit's bytes meet
        self.unit_bytes = unit_bytes
        if offset % size == 0 and length % size == 0:
            self.work = np.frombuffer(view, dtype=source.dtype)  # straight into the unit
            self.direct = True
        else:  # an element cut by the unit's edge: assemble whole elements, copy the unit's bytes out
            self.work = np.empty(self.hi - self.lo, dtype=source.dtype)
            self.direct = False
        self.boxes = self._targets(self.lo, self.hi)
        self.written = False  # out holds something (a zeros unit must leave it untouched)
        self.fetched: int | None = 0

    def _targets(self, lo: int, hi: int) -> list[tuple[Box, np.ndarray]]:
        """Each box of elements ``[lo, hi)`` with its view in ``work``."""
        src = self.source
        out = []
        for first, box in flat_run_boxes(src.shape, lo, hi, src.order):
            shape = box_shape(box)
            at = first - self.lo
            out.append((box, self.work[at : at + math.prod(shape)].reshape(shape, order=src.order)))
        return out

    def place(self, read: ChunkRead, targets: list[tuple[Box, np.ndarray]]) -> None:
        src = self.source
        cbox = src.chunk_box(read.coords)
        corner = tuple(s.start for s in cbox)
        value = src._fill() if read.data is None else None
        for box, target in targets:
            both = intersect(box, cbox)
            if both is None:
                continue
            dst = target[shift(both, tuple(s.start for s in box))]
            dst[...] = value if read.data is None else read.data[shift(both, corner)]
        self.written = True

    def own_elements(self, coords: Coords) -> int:
        """Elements of chunk ``coords`` this unit takes (an element cut by the unit's edge
        counts for both units: see ``demand``)."""
        src = self.source
        cbox = src.chunk_box(coords)
        total = 0
        for box, _ in self.boxes:
            both = intersect(box, cbox)
            if both is not None:
                total += math.prod(box_shape(both))
        return total

    def demand(self, coords: Coords) -> int:
        """How many (unit, element) takings chunk ``coords`` serves in all: its elements, plus
        one for each element of it that a unit boundary cuts (both units take that one)."""
        src, size, unit = self.source, self.size, self.unit_bytes
        cbox = src.chunk_box(coords)
        count = math.prod(box_shape(cbox))
        if unit % size == 0 or not cbox:
            return count
        # The unit boundaries inside the chunk's span of the image, the elements they cut, and
        # whether those lie in the chunk (vectorised: only item sizes that do not divide a page).
        first = int(np.ravel_multi_index([s.start for s in cbox], src.shape, order=src.order))
        last = int(np.ravel_multi_index([s.stop - 1 for s in cbox], src.shape, order=src.order))
        bounds = np.arange(-(-(first * size + 1) // unit), ((last + 1) * size - 1) // unit + 1, dtype=np.int64) * unit
        cut = bounds[bounds % size != 0] // size
        if not len(cut):
            return count
        where = np.unravel_index(cut, src.shape, order=src.order)
        inside = np.ones(len(cut), dtype=bool)
        for axis, s in zip(where, cbox, strict=True):
            inside &= (axis >= s.start) & (axis < s.stop)
        return count + int(inside.sum())

    def flush(self, lo: int, hi: int) -> None:
        """Unit bytes ``[lo, hi)`` from ``work`` into the unit (only when not assembled in place)."""
        if not self.direct:
            skew = self.offset - self.lo * self.size
            raw = self.work.view(np.uint8)
            self.view[lo:hi] = raw[lo + skew : hi + skew].tobytes()

    def run(self, urgent: Urgent | None, on_urgent: Callable[[int, int], None] | None) -> UnitRead:
        src, cache = self.source, self.source._cache()
        needed = src._chunks_of((0, box) for box, _ in self.boxes)
        reads: dict[Coords, ChunkRead] = {}
        for coords in needed:
            if src.chunk_present(coords) is False:
                reads[coords] = ChunkRead(coords, None, 0)
        claims = cache.claim(c for c in needed if c not in reads)
        try:
            return self._assemble(needed, reads, claims, urgent, on_urgent)
        except _CallerError:  # claims not decoded yet: their waiters decode them themselves
            cache.release(claims.mine)
            raise
        except BaseException as exc:  # the chunks' own error: their waiters get it too
            cache.fail(claims.mine, exc if isinstance(exc, Exception) else FormatError(f"{src.url}: interrupted"))
            raise

    def _assemble(self, needed: list[Coords], reads: dict[Coords, ChunkRead], claims: Claims[Coords],
                  urgent: Urgent | None, on_urgent: Callable[[int, int], None] | None) -> UnitRead:
        src, cache = self.source, self.source._cache()
        reads.update(claims.hits)
        taken = list(claims.hits)  # cached chunks this unit takes a part of
        placed: set[Coords] = set()
        mine, waits = list(claims.mine), dict(claims.waits)

        if urgent is not None and on_urgent is not None and (mine or waits):
            lo, hi = urgent
            u_lo = max(self.lo, (self.offset + lo) // self.size)
            u_hi = min(self.hi, -(-(self.offset + hi) // self.size))
            u_targets = self._targets(u_lo, u_hi)
            first = set(src._chunks_of((0, box) for box, _ in u_targets))
            first_mine = [c for c in mine if c in first]
            # Only chunks of our own before the rest: a worker never waits for another's chunk
            # while it holds claims it has not decoded (two workers would wait for each other).
            if not first.intersection(waits) and len(first_mine) < len(mine) + len(waits):  # the rest is not final
                self._decode(first_mine, reads, placed)
                mine = [c for c in mine if c not in first]
                if any(reads[c].data is not None for c in first):  # else maybe a unit of zeros
                    for c in first:
                        if c not in placed:  # cached chunks and missing ones: the urgent piece only, for now
                            self.place(reads[c], u_targets)
                    self.flush(lo, hi)
                    try:
                        on_urgent(lo, hi)
                    except BaseException as exc:
                        raise _CallerError(exc) from exc

        for coords in claims.hits:
            if reads[coords].data is not None:
                self.place(reads[coords], self.boxes)
                placed.add(coords)
        self._decode(mine, reads, placed)
        self._await(waits, reads, placed, taken)
        for coords in taken:
            cache.consumed(coords, self.own_elements(coords))
        missing = [c for c in needed if reads[c].data is None]
        if len(missing) == len(needed) and src._fill_is_zero() and not self.written:
            return UnitRead(zeros=True, bytes_fetched=self.fetched)
        for coords in missing:
            self.place(reads[coords], self.boxes)
        self.flush(0, self.length)
        return UnitRead(zeros=False, bytes_fetched=self.fetched)

    def _decode(self, coords: list[Coords], reads: dict[Coords, ChunkRead], placed: set[Coords]) -> None:
        """Decode the chunks this unit claimed, placing each as it comes and handing it to the
        cache; a chunk that lies wholly in this unit (and nowhere else) is decoded in its place."""
        if not coords:
            return
        src, cache = self.source, self.source._cache()
        left = set(coords)
        # In place only where a chunk found missing cannot spoil a unit of zeros: the source may
        # write the fill value there, and a zeros unit must leave ``out`` untouched.
        zero_fill = src._fill_is_zero()
        inside = {c: view for c in coords
                  if (not zero_fill or src.chunk_present(c)) and (view := self._place_of(c)) is not None}
        try:
            if inside:
                self.written = True  # the source writes into the unit (a missing chunk's fill value too)
                for read in src.read_chunks_into(list(inside.items())):
                    where = tuple(read.coords)
                    if where not in left or where not in inside:
                        raise CorruptChunkError(f"{src.url}: chunk {where} was read but not asked for (or twice)")
                    reads[where] = read
                    if read.data is not None:
                        placed.add(where)
                    self._count(read)
                    left.discard(where)
                    cache.used_up(where)
                if left.intersection(inside):
                    raise FormatError(f"{src.url}: chunks {sorted(left.intersection(inside))[:4]} were never read")
            for read in src.checked_chunks([c for c in coords if c not in inside]):
                where = tuple(read.coords)
                reads[where] = read
                if read.data is not None:
                    self.place(read, self.boxes)
                    placed.add(where)
                self._count(read)
                nbytes = 0 if read.data is None else read.data.nbytes
                remaining = self.demand(where) - self.own_elements(where)
                left.discard(where)
                cache.deliver(where, read, nbytes, remaining)
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else FormatError(f"{src.url}: chunk read interrupted")
            cache.fail(left, error)
            raise

    def _count(self, read: ChunkRead) -> None:
        if read.stored_bytes is None or self.fetched is None:
            self.fetched = None
        else:
            self.fetched += read.stored_bytes

    def _place_of(self, coords: Coords) -> np.ndarray | None:
        """The chunk's place in the unit, if the unit holds all of it and no other unit needs any."""
        cbox = self.source.chunk_box(coords)
        if self.own_elements(coords) != self.demand(coords):
            return None
        for box, target in self.boxes:
            if intersect(box, cbox) == cbox:
                return target[shift(cbox, tuple(s.start for s in box))]
        return None

    def _await(self, waits: dict[Coords, Any], reads: dict[Coords, ChunkRead], placed: set[Coords],
               taken: list[Coords]) -> None:
        """Chunks another unit is decoding: wait for each, then place it."""
        for coords, future in waits.items():
            read = future.result()
            if read is RELEASED:  # its claimer failed for its own reasons: decode it here
                read = next(self.source.checked_chunks([coords]))
            reads[coords] = read
            taken.append(coords)
            if read.data is not None and coords not in placed:
                self.place(read, self.boxes)
                placed.add(coords)

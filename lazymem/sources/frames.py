"""What every source shares: a table of frames, and assembling stream ranges from frames.

A *source* presents an object in storage as a flat decompressed stream (a complete ``.npy`` file)
cut into frames. Each frame is one contiguous range of stored bytes that decodes, on its own, into
one contiguous range of the stream. Seekable zstd files have real frames; a plain ``.npy`` file gets
synthetic ones (stored bytes = stream bytes). The monitor and the eager loader only ever see this
interface: ``table``, ``fetch``, ``decompress_into``, ``is_zero_frame`` and ``read_into``. The
stored bytes come through a :class:`~lazymem.storage.StoredObject` (requests, retries, local
descriptors and storage errors live in :mod:`lazymem.storage`).

The integrity contract every source keeps (seekable zstd today; zarr shard indexes and HDF5 chunk
indexes are held to the same rules):

1. **An index is data from the file, checked before use.** Every entry must be possible for the
   format (sizes within what a stored size can decode to, offsets within the object), and the
   entries together must describe exactly the array the header describes.
2. **Nothing is placed by an unproven index.** Where a unit's place follows from other entries
   (a frame's offset from the sizes before it), those entries are proven first: by a checksum of
   the index written by us, or by the units' own headers, or by decoding them (see
   :mod:`lazymem.sources.positions`). Each unit is also checked against its own entry where it is
   decoded (declared size, decoded length, checksum).
3. **No allocation before validation.** No buffer is sized from the file before the size is
   checked; a unit decodes into the caller's memory or through a bounded scratch. Damage is a
   :class:`~lazymem.errors.LazymemError` (never ``MemoryError``), in the app and in the monitor.
4. **Checksums are all or nothing.** A file that promises checksums (ours always do) has a unit
   without one corrupt; a foreign file without them warns (``UnverifiableDataWarning``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import cached_property, partial
from typing import Any, Protocol, cast

import numpy as np

from lazymem.storage import StoredObject

from .npy_header import NpyHeader

__all__ = ["FrameTable", "FramedSource", "byte_view"]


def _frozen_sizes(values: Any) -> np.ndarray:
    # uint32 (a seek table's own column, possibly a view of the bytes read) stays as it is: every
    # copy of a 1 TiB array's 262,144 frames costs fresh memory, ~1 ms per MiB on these VMs.
    array = np.asarray(values)
    if array.dtype != np.uint32:
        array = np.asarray(array, dtype=np.int64)
    if array.flags.writeable:
        array = array.view()
        array.setflags(write=False)
    return array


def _offsets(sizes: np.ndarray) -> np.ndarray:
    """Exclusive prefix sums as int64 (cast first: numpy's cumsum casting on the fly is 15x slower)."""
    offsets = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        offsets[1:] = sizes[:-1]
        np.cumsum(offsets[1:], out=offsets[1:])
    offsets.setflags(write=False)
    return offsets


BLOCK = 1024
"""Frames per block: tables keep one sum per block, and lazy tables load one block at a time."""


def block_sums(sizes: np.ndarray) -> np.ndarray:
    """Sum of each block of ``BLOCK`` sizes (the last block may be shorter), as int64."""
    n = len(sizes)
    whole = n // BLOCK * BLOCK
    sums = np.empty(-(-n // BLOCK), dtype=np.int64)
    if whole:  # reshape and sum per row: ~0.1 ms for a 1 TiB array's 262,144 frames
        sums[: whole // BLOCK] = sizes[:whole].reshape(-1, BLOCK).sum(axis=1, dtype=np.int64)
    if whole < n:
        sums[-1] = sizes[whole:].sum(dtype=np.int64)
    return sums


class RowLoader(Protocol):
    """Fills a table's rows on demand (a seek table read block by block: see seekable_zstd)."""

    def need(self, lo: int, hi: int) -> None:
        """Make rows ``[lo, hi)`` valid in the columns the table was built over, or raise."""


class _Prefix:
    """Exclusive prefix sums ``P`` of a size column (``P[0] = 0``, ``P[n]`` = the total), without
    building them: one int64 per block of 1024 sizes, the rest summed on demand (at most 1024).

    A 1 TiB array in 1 MiB frames has a million frames: its full offset columns (8 MiB each, fresh
    memory at ~1 ms per MiB on these VMs, plus a cumsum) would cost a monitor's first fault ~10 ms.
    The block sums come with the table (computed once where it is parsed, or read from the file's
    index), so a monitor never sums a whole column; ``need`` loads a block's sizes before use.
    """

    __slots__ = ("need", "sizes", "starts")

    def __init__(self, sizes: np.ndarray, sums: np.ndarray, need: Callable[[int, int], None] | None = None) -> None:
        self.sizes = sizes
        self.need = need
        starts = np.zeros(len(sums) + 1, dtype=np.int64)  # P at each block's start, then P[n]
        np.cumsum(sums, out=starts[1:])
        self.starts = starts

    def _load(self, block: int) -> None:
        if self.need is not None:
            self.need(block * BLOCK, min((block + 1) * BLOCK, len(self.sizes)))

    def at(self, index: int) -> int:
        """``P[index]``, for ``0 <= index <= n``."""
        block, within = divmod(index, BLOCK)
        if index == len(self.sizes) or not within:
            return int(self.starts[-1] if index == len(self.sizes) else self.starts[block])
        self._load(block)
        return int(self.starts[block]) + int(self.sizes[block * BLOCK : index].sum(dtype=np.int64))

    def between(self, lo: int, hi: int) -> np.ndarray:
        """``P[lo], ..., P[hi]`` (int64), for ``0 <= lo <= hi <= n``: one sum and one cumsum."""
        out = np.empty(hi - lo + 1, dtype=np.int64)
        out[0] = self.at(lo)
        if hi > lo:
            if self.need is not None:
                self.need(lo, hi)
            out[1:] = self.sizes[lo:hi]
            np.cumsum(out, out=out)
        return out

    def search(self, value: int, side: str) -> int:
        """``np.searchsorted(P, value, side)`` over the ``n + 1`` entries of ``P``."""
        found = int(np.searchsorted(self.starts, value, side=side))  # type: ignore[call-overload]
        if found == 0:
            return 0
        if found == len(self.starts):  # past P[n]
            return len(self.sizes) + 1
        block = found - 1
        lo = block * BLOCK
        hi = min(lo + BLOCK, len(self.sizes))
        self._load(block)
        local = np.empty(hi - lo + 1, dtype=np.int64)
        local[0] = self.starts[block]
        local[1:] = self.sizes[lo:hi]
        np.cumsum(local, out=local)
        return lo + int(np.searchsorted(local, value, side=side))  # type: ignore[call-overload]


class FrameTable:
    """Where each frame lies in the stored object and in the decompressed stream.

    Columns are numpy arrays, not lists of objects: a 1 TiB array in 4 MiB chunks has 262,144
    frames, and the monitor receives this table pickled. Sizes are ``uint32`` (as a seek table
    stores them) or ``int64``; offsets are ``int64``. Offsets are inclusive starts; a frame covers
    ``[offset, offset + size)``. Frames of decompressed size 0 (skippable frames, empty zstd
    frames) occupy stored bytes but no stream bytes.

    A table may be *lazy* (``loader``): its rows are read block by block when first looked up, and
    only the per-block sums are known from the start. Lookups of single frames (``compressed_size``,
    ``compressed_offset``, ``frames_for``...) load one block at most; the whole columns
    (``compressed_sizes``...) load every block first.
    """

    def __init__(
        self,
        compressed_sizes: np.ndarray,
        decompressed_sizes: np.ndarray,
        checksums: np.ndarray | None = None,
        *,
        sums: tuple[np.ndarray, np.ndarray] | None = None,
        entries: np.ndarray | None = None,
        loader: RowLoader | None = None,
    ) -> None:
        self._compressed = compressed_sizes
        self._decompressed = decompressed_sizes
        self._checksums = checksums
        self._entries = entries  # the seek table rows the columns view, pickled as they are
        self._loader = loader
        if sums is None:
            sums = (block_sums(compressed_sizes), block_sums(decompressed_sizes))
        self._sums = sums
        need = loader.need if loader is not None else None
        self._compressed_prefix = _Prefix(compressed_sizes, sums[0], need)
        self._decompressed_prefix = _Prefix(decompressed_sizes, sums[1], need)

    # -- whole columns (a lazy table loads every block first) ---------------------------------

    @property
    def lazy(self) -> bool:
        """Whether rows are read block by block (some may not be in memory yet)."""
        return self._loader is not None

    def load_all(self) -> None:
        """Load every row of a lazy table (one request for all the blocks still missing)."""
        if self._loader is not None:
            self._loader.need(0, len(self))

    @property
    def compressed_sizes(self) -> np.ndarray:
        """Stored size of each frame."""
        self.load_all()
        return self._compressed

    @property
    def decompressed_sizes(self) -> np.ndarray:
        """Decompressed size of each frame (0 for skippable or empty frames)."""
        self.load_all()
        return self._decompressed

    @property
    def checksums(self) -> np.ndarray | None:
        """Low 32 bits of XXH64 of each frame's content, if the seek table stores them (``uint32``)."""
        self.load_all()
        return self._checksums

    @cached_property
    def compressed_offsets(self) -> np.ndarray:
        """Offset of each frame in the stored object."""
        return _offsets(self.compressed_sizes)

    @cached_property
    def decompressed_offsets(self) -> np.ndarray:
        """Offset of each frame's first byte in the decompressed stream."""
        return _offsets(self.decompressed_sizes)

    # -- single frames (a lazy table loads one block at most) ---------------------------------

    def _need(self, index: int) -> None:
        if self._loader is not None:
            self._loader.need(index, index + 1)

    def compressed_size(self, index: int) -> int:
        """Stored size of frame ``index``."""
        self._need(index)
        return int(self._compressed[index])

    def decompressed_size(self, index: int) -> int:
        """Decompressed size of frame ``index``."""
        self._need(index)
        return int(self._decompressed[index])

    def compressed_offset(self, index: int) -> int:
        """Offset of frame ``index`` in the stored object (without building every frame's offset:
        faults and fetches look up a few frames at a time)."""
        if "compressed_offsets" in self.__dict__:
            return int(self.compressed_offsets[index])
        return self._compressed_prefix.at(index)

    def compressed_offsets_of(self, indices: Sequence[int]) -> list[int]:
        """Offsets of some frames in the stored object (see :meth:`decompressed_offsets_of`)."""
        return self._offsets_of(indices, "compressed_offsets", self._compressed_prefix)

    def decompressed_offsets_of(self, indices: Sequence[int]) -> list[int]:
        """Offsets of some frames in the stream: for frames close together (a chunk's, ~30 lookups
        per fault otherwise) from one sum and one cumsum; for many spread out (an eager load) from
        the full column."""
        return self._offsets_of(indices, "decompressed_offsets", self._decompressed_prefix)

    def _offsets_of(self, indices: Sequence[int], column: str, prefix: _Prefix) -> list[int]:
        if not len(indices):
            return []
        if column in self.__dict__ or len(indices) > 64:
            offsets = getattr(self, column)
            return [int(offsets[i]) for i in indices]
        lo, hi = min(indices), max(indices)
        if hi - lo <= 4 * BLOCK:
            local = prefix.between(lo, hi)
            return [int(local[i - lo]) for i in indices]
        return [prefix.at(i) for i in indices]

    def compressed_span(self, start: int, stop: int) -> int:
        """Stored bytes of frames ``[start, stop)``."""
        return self._compressed_prefix.at(stop) - self._compressed_prefix.at(start)

    def decompressed_offset(self, index: int) -> int:
        """Offset of frame ``index``'s first byte in the decompressed stream."""
        if "decompressed_offsets" in self.__dict__:
            return int(self.decompressed_offsets[index])
        return self._decompressed_prefix.at(index)

    # -- building and pickling ----------------------------------------------------------------

    @classmethod
    def from_sizes(
        cls,
        compressed_sizes: Sequence[int] | np.ndarray,
        decompressed_sizes: Sequence[int] | np.ndarray,
        checksums: np.ndarray | None = None,
    ) -> FrameTable:
        """Build a table from per-frame sizes, frames laid end to end from offset 0.

        Parameters
        ----------
        compressed_sizes, decompressed_sizes : sequence of int
            Stored and decompressed size of each frame, in order.
        checksums : numpy.ndarray, optional
            ``uint32`` checksum per frame.

        Returns
        -------
        FrameTable
        """
        csizes = _frozen_sizes(compressed_sizes)
        dsizes = _frozen_sizes(decompressed_sizes)
        if csizes.shape != dsizes.shape or csizes.ndim != 1:
            raise ValueError("compressed_sizes and decompressed_sizes must be 1-D and of equal length")
        if checksums is not None:
            checksums = np.ascontiguousarray(checksums, dtype=np.uint32)
            checksums.setflags(write=False)
        return cls(csizes, dsizes, checksums)

    @classmethod
    def from_entries(cls, entries: np.ndarray, *, sums: tuple[np.ndarray, np.ndarray] | None = None,
                     loader: RowLoader | None = None) -> FrameTable:
        """A table over a seek table's entries as read: ``uint32`` rows of compressed size,
        decompressed size and, if present, checksum. The columns are views of ``entries``, and the
        table pickles as ``entries`` alone: one contiguous buffer, which the monitor protocol sends
        out of band without a copy (2 MiB for a 1 TiB array). With ``loader``, the rows are
        filled block by block on first use, and ``sums`` (per block) must be given."""
        if entries.ndim != 2 or entries.shape[1] not in (2, 3) or entries.dtype != np.uint32:
            raise ValueError(f"entries must be uint32 rows of 2 or 3 columns, got {entries.dtype} {entries.shape}")
        if loader is not None and sums is None:
            raise ValueError("a lazy table needs its block sums")
        entries = _frozen_sizes(entries)  # a read-only view: a loader fills its own array in place
        checksums = entries[:, 2] if entries.shape[1] == 3 else None
        return cls(entries[:, 0], entries[:, 1], checksums, sums=sums, entries=entries, loader=loader)

    def __len__(self) -> int:
        return len(self._compressed)

    @property
    def entries(self) -> np.ndarray | None:
        """The seek table rows the columns view (``uint32``), if built from them (lazy: rows not
        read yet are zeros)."""
        return self._entries

    def rows_between(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stored sizes, decompressed sizes and stored offsets of frames ``[lo, hi)`` (int64 each;
        a lazy table loads the blocks they lie in)."""
        if self._loader is not None and hi > lo:
            self._loader.need(lo, hi)
        offsets = self._compressed_prefix.between(lo, hi)[:-1]
        return (self._compressed[lo:hi].astype(np.int64), self._decompressed[lo:hi].astype(np.int64), offsets)

    @property
    def block_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per block of ``BLOCK`` frames: sums of stored and of decompressed sizes (int64)."""
        return self._sums

    def __reduce__(self) -> tuple[Any, ...]:
        # The block sums travel along (a few KiB): the monitor never sums a column again.
        if self._loader is not None:  # the loader pickles its rows loaded so far, not the others
            return _lazy_table, (self._loader, self._sums)
        if self._entries is not None:
            return _entries_table, (np.ascontiguousarray(self._entries), self._sums)
        # Pickle the sizes alone, as u32 when they fit (always, for seekable zstd): 8 bytes per frame
        # instead of 32. The offsets are two cumsums away; the monitor receives this table pickled.
        def packed(sizes: np.ndarray) -> np.ndarray:
            if sizes.dtype == np.uint32 or (len(sizes) and sizes.max() > 0xFFFFFFFF):
                return sizes
            return sizes.astype(np.uint32)

        return _sizes_table, (packed(self._compressed), packed(self._decompressed), self._checksums, self._sums)

    @property
    def n_frames(self) -> int:
        """Number of frames, including empty ones."""
        return len(self)

    @property
    def compressed_total(self) -> int:
        """Stored bytes covered by the frames (the seek table itself excluded)."""
        return int(self._compressed_prefix.starts[-1])

    @property
    def decompressed_total(self) -> int:
        """Length of the decompressed stream."""
        return int(self._decompressed_prefix.starts[-1])

    def frames_for(self, start: int, stop: int) -> range:
        """Indices of the frames holding stream bytes ``[start, stop)``.

        The range starts and ends at non-empty frames; it may contain empty frames in between,
        which callers skip (they have nothing to decompress).

        Parameters
        ----------
        start, stop : int
            Stream offsets, ``0 <= start <= stop <= decompressed_total``.

        Returns
        -------
        range
            Empty if ``start == stop``.
        """
        total = self.decompressed_total
        if not 0 <= start <= stop <= total:
            raise ValueError(f"range [{start}, {stop}) is outside the stream [0, {total})")
        if start == stop:
            return range(0)
        # First frame that ends after `start` (empty frames at `start` end *at* it, so are skipped):
        # frame i ends at P[i + 1]. One past the last frame that begins before `stop`: P[i] < stop.
        prefix = self._decompressed_prefix
        return range(prefix.search(start, "right") - 1, prefix.search(stop, "left"))

    def frame_at(self, offset: int) -> int:
        """Index of the non-empty frame holding stream byte ``offset``."""
        return self.frames_for(offset, offset + 1)[0]


def _entries_table(entries: np.ndarray, sums: tuple[np.ndarray, np.ndarray]) -> FrameTable:
    return FrameTable.from_entries(entries, sums=sums)


def _lazy_table(loader: Any, sums: tuple[np.ndarray, np.ndarray]) -> FrameTable:
    return FrameTable.from_entries(loader.entries, sums=sums, loader=loader)


def _sizes_table(compressed: np.ndarray, decompressed: np.ndarray, checksums: np.ndarray | None,
                 sums: tuple[np.ndarray, np.ndarray]) -> FrameTable:
    return FrameTable(_frozen_sizes(compressed), _frozen_sizes(decompressed), checksums, sums=sums)


def byte_view(buffer: Any) -> memoryview:
    """A writable flat ``memoryview`` of unsigned bytes over ``buffer`` (bytearray, ndarray, mmap...)."""
    view = memoryview(buffer)
    if view.readonly:
        raise ValueError("the output buffer is read-only")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _as_bytes(view: memoryview) -> bytes:
    # A view spanning a whole bytes blob costs nothing to return as the blob itself.
    blob = view.obj
    if isinstance(blob, bytes) and len(view) == len(blob):
        return blob
    return view.tobytes()


def _run_together(jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` spread over the CPUs (zstd releases the GIL while decoding) and return once
    every one has finished, raising the first error then: no job may still be writing into a
    buffer its caller reuses. Plain threads, short-lived: nothing to go stale across a fork."""
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        for job in jobs:
            job()
        return
    errors: list[BaseException] = []

    def run(share: list[Callable[[], None]]) -> None:
        try:
            for job in share:
                job()
        except BaseException as exc:  # noqa: BLE001 - raised by the caller once all are done
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(jobs[w::workers],), daemon=True) for w in range(1, workers)]
    for thread in threads:
        thread.start()
    run(jobs[0::workers])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class FramedSource:
    """Base of every source: frame bookkeeping, fetching frames, assembling stream ranges.

    Subclasses set the attributes in ``__init__`` and implement :meth:`decompress_into`.
    Instances hold only their storage object, plain values and numpy arrays, so they pickle cheaply and
    work in another process (the monitor receives them pickled).
    """

    format_name = "framed"
    chunk_bytes_hint: int | None = None
    """The chunk size the writer chose (files written by :func:`lazymem.save` name it), if known."""

    storage: StoredObject
    """The object the frames are stored in (every read goes through it)."""
    table: FrameTable
    """Where the frames lie."""
    header: NpyHeader
    """The parsed ``.npy`` header of the stream."""
    stream_size: int
    """Length of the decompressed stream (header plus data)."""

    def __init__(self, storage: StoredObject, table: FrameTable, header: NpyHeader) -> None:
        self.storage = storage
        self.table = table
        self.header = header
        self.stream_size = table.decompressed_total

    def __repr__(self) -> str:
        h = self.header
        return (
            f"<{type(self).__name__} {self.path!r} {self.format_name}, {len(self.table)} frames, "
            f"shape={h.shape} dtype={h.dtype} order={h.order}>"
        )

    @property
    def fs(self) -> Any:
        """The fsspec filesystem holding the object."""
        return self.storage.fs

    @property
    def path(self) -> str:
        """Path of the object on ``fs``."""
        return self.storage.path

    @property
    def size(self) -> int:
        """Stored size of the object in bytes."""
        return self.storage.size

    @property
    def data_offset(self) -> int:
        """Stream offset of the first data byte (after the ``.npy`` header)."""
        return self.header.data_offset

    # -- fetching -------------------------------------------------------------------------------

    def fetch_views(
        self, indices: Sequence[int], *, max_gap: int = 0, max_run_bytes: int | None = None
    ) -> list[memoryview]:
        """Like :meth:`fetch`, but returns views into the fetched blobs (no copy per frame).

        Parameters
        ----------
        indices : sequence of int
            Frame indices, in any order.
        max_gap : int
            Stored bytes between two wanted frames worth fetching (and discarding) to save a request.
        max_run_bytes : int, optional
            Split requests larger than this (at frame boundaries) so that async filesystems can fetch
            the pieces concurrently.

        Returns
        -------
        list of memoryview
            The stored bytes of each frame, in the order of ``indices``.
        """
        n = len(self.table)
        for index in indices:
            if not 0 <= index < n:
                raise IndexError(f"frame index {index} out of range (the object has {n} frames)")
        ordered = sorted(set(indices))  # in order: offsets of neighbours come from one cumsum
        ranges = [(start, start + self.table.compressed_size(index))
                  for index, start in zip(ordered, self.table.compressed_offsets_of(ordered))]
        views = self.storage.read_ranges(ranges, max_gap=max_gap, max_run_bytes=max_run_bytes)
        by_index = dict(zip(ordered, views))
        return [by_index[index] for index in indices]

    def fetch(self, frame_indices: Sequence[int]) -> list[bytes]:
        """Fetch the stored (compressed) bytes of some frames.

        Contiguous frames are fetched in one request; separate runs are fetched concurrently on
        async filesystems (S3, HTTP): see :meth:`lazymem.storage.StoredObject.read_ranges`.

        Parameters
        ----------
        frame_indices : sequence of int
            Frame indices, in any order.

        Returns
        -------
        list of bytes
            The stored bytes of each frame, in the order of ``frame_indices``.

        Raises
        ------
        ArrayNotFoundError
            The object is gone.
        FetchError
            Storage failed (the cause is chained).
        TruncatedFileError
            Storage returned fewer bytes than the table says.
        """
        views = self.fetch_views(frame_indices)
        # A view spanning its whole blob costs nothing to return as the blob itself.
        return [_as_bytes(view) for view in views]

    # -- decoding -------------------------------------------------------------------------------

    def decompress_into(self, index: int, compressed: bytes | memoryview, out: Any) -> None:
        """Decode frame ``index`` from its stored bytes into ``out`` (exactly the frame's size).

        Raises
        ------
        CorruptChunkError
            The frame does not decode to exactly its declared content.
        """
        raise NotImplementedError

    def is_zero_frame(self, index: int, compressed: bytes | memoryview) -> bool:
        """Whether frame ``index`` certainly decodes to zeros, judged from its stored bytes alone.

        Cheap (no decoding) and strict: False for anything that might not be exactly zeros, corrupt
        frames included. Formats without such frames always say False.
        """
        return False

    def decompress_part(self, index: int, compressed: bytes | memoryview, skip: int, out: memoryview) -> None:
        """Decode frame ``index`` keeping only its content bytes ``[skip, skip + len(out))``, in ``out``.

        Formats whose decoder can discard as it goes override this: memory must not grow with a
        size read from the file before the frame is checked. This default decodes the whole frame.
        """
        scratch = bytearray(self.table.decompressed_size(index))
        self.decompress_into(index, compressed, scratch)
        out[:] = memoryview(scratch)[skip : skip + len(out)]

    def _decode_overlap(self, index: int, blob: memoryview, start: int, out: memoryview,
                        frame_start: int | None = None) -> None:
        """Put the part of frame ``index`` (which starts at ``frame_start`` in the stream, if the
        caller knows) that falls in ``[start, start + len(out))`` into ``out``."""
        if frame_start is None:
            frame_start = self.table.decompressed_offset(index)
        frame_size = self.table.decompressed_size(index)
        stop = start + len(out)
        if start <= frame_start and frame_start + frame_size <= stop:
            # Whole frame inside the request: decode straight into the caller's memory.
            self.decompress_into(index, blob, out[frame_start - start : frame_start - start + frame_size])
            return
        lo = max(frame_start, start)
        hi = min(frame_start + frame_size, stop)
        self.decompress_part(index, blob, lo - frame_start, out[lo - start : hi - start])

    # -- where frames lie (see positions) -------------------------------------------------------

    def prove_before(self, index: int) -> None:
        """Make sure frame ``index`` is placed right: prove the sizes of the frames before it as
        far as the table needs (see :mod:`lazymem.sources.positions`). Sources whose rows are
        proven (synthetic frames, CRC-checked rows) have nothing to do."""

    def prove_frames(self, lo: int, hi: int, have: dict[int, memoryview] | None = None,
                     deferred: Sequence[int] = ()) -> list[int]:
        """Prove the sizes of frames ``[lo, hi)``; return those of ``deferred`` left for the caller's
        decoding to prove. Nothing to do where rows are proven."""
        return []

    def prove_needed(self, index: int) -> bool:
        """Whether frame ``index``'s place (the frames before it) is still to prove."""
        return False

    def note_proven(self, lo: int, hi: int) -> None:
        """Frames ``[lo, hi)`` decoded to exactly their entries' sizes."""

    def read_into(
        self,
        start: int,
        out: Any,
        *,
        skip_zeros: bool = False,
        first: tuple[int, int] | None = None,
        on_first: Callable[[int, int], None] | None = None,
    ) -> bool:
        """Fill ``out`` with decompressed stream bytes ``[start, start + len(out))``.

        Frames wholly inside the range decode straight into ``out``; the (at most two) frames cut by
        its ends decode into a temporary buffer first. All frames come in one coalesced request.

        Parameters
        ----------
        start : int
            Stream offset of the first byte wanted.
        out : writable buffer
            Receives the bytes; its length sets how many.
        skip_zeros : bool
            If every frame holding the range is a zero frame (see :meth:`is_zero_frame`), leave
            ``out`` untouched and return True: the caller can map zero pages instead of copying.
        first, on_first : (int, int), callable, optional
            Decode the frames holding ``out[first[0]:first[1]]`` first, then call
            ``on_first(lo, hi)``: bytes ``out[lo:hi]`` (those frames, a range holding ``first``)
            are final, decoded and checksummed. The other frames follow. A monitor wakes the
            reader waiting in ``first`` (its page) there, before the rest is decoded.

        Returns
        -------
        bool
            True if the range is all zeros and ``out`` was left untouched (only with
            ``skip_zeros``); False if ``out`` was filled.

        Raises
        ------
        ValueError
            The range runs past the end of the stream.
        CorruptChunkError, FetchError, ArrayNotFoundError, TruncatedFileError
            As for :meth:`fetch` and :meth:`decompress_into`.
        """
        view = byte_view(out)
        stop = start + len(view)
        if start < 0 or stop > self.stream_size:
            raise ValueError(f"range [{start}, {stop}) is outside the stream [0, {self.stream_size})")
        table = self.table
        span = table.frames_for(start, stop)
        indices = [i for i in span if table.decompressed_size(i) > 0]
        # Frames are placed by the sizes of those before them: prove those first (see positions).
        if span:
            self.prove_before(span.start)
        offsets = table.decompressed_offsets_of(indices)
        early: list[int] = []  # positions in `indices` of the frames holding `first`
        early_range = (0, 0)  # the part of `out` they fill
        if on_first is not None and first is not None and len(indices) > 1:
            lo, hi = start + first[0], start + first[1]
            ends = [offset + table.decompressed_size(i) for offset, i in zip(offsets, indices)]
            early = [k for k in range(len(indices)) if offsets[k] < hi and lo < ends[k]]
            if early:
                end = ends[early[-1]]
                early_range = (max(offsets[early[0]], start) - start, min(end, stop) - start)
        blobs: list[memoryview | None] = [None] * len(indices)

        def fetch(positions: list[int]) -> None:
            # max_gap: empty frames between wanted ones cost a few bytes, not a second request.
            for k, blob in zip(positions, self.fetch_views([indices[k] for k in positions], max_gap=1 << 16)):
                blobs[k] = blob

        # A local file gives the frames the reader waits for first, alone (a pread of 0.2 MB, not
        # of the chunk's 1.5 MB); over a network the whole chunk comes in one request. Frames
        # whose places still need proving come together: their headers are checked first.
        unproven = bool(span) and self.prove_needed(span[-1])
        fetch(early if early and len(early) < len(indices) and self.storage.is_local and not unproven
              else list(range(len(indices))))
        if unproven:
            have = {i: cast(memoryview, blob) for i, blob in zip(indices, blobs)}
            if self.prove_frames(span.start, span[-1], have, deferred=indices):
                early = []  # some frames prove their size only by decoding: nobody sees a byte before
        if skip_zeros and indices and all(self.is_zero_frame(indices[k], blob) for k, blob in enumerate(blobs)
                                          if blob is not None):
            rest = [k for k, blob in enumerate(blobs) if blob is None]
            if rest:  # the frames read first are zeros: the others decide
                fetch(rest)
            if all(self.is_zero_frame(indices[k], cast(memoryview, blobs[k])) for k in rest):
                if unproven:  # a zero frame's blocks add up to its entry's size: checked
                    self.note_proven(span.start, span.stop)
                return True
        def decode(k: int) -> None:
            self._decode_overlap(indices[k], cast(memoryview, blobs[k]), start, view, offsets[k])

        # Several frames under the reader's page (a 2 MiB huge page holds four): all cores decode
        # them, the reader waits for every one.
        _run_together([partial(decode, k) for k in early])
        rest = [k for k in range(len(indices)) if k not in early]
        if early and rest:
            assert on_first is not None
            on_first(*early_range)
        for k in rest:
            if blobs[k] is None:
                fetch([k for k, blob in enumerate(blobs) if blob is None])
            decode(k)
        if unproven:
            self.note_proven(span.start, span.stop)
        return False

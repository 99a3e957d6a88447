"""``lazymem.open``: a compressed array as a genuine ``numpy.ndarray`` that loads on first touch.

:class:`LazyArray` is modelled on ``numpy.memmap``: the ndarray's buffer keeps the mapping alive
through ``.base``; views share it; results that do not share its memory (arithmetic, reductions,
copies) come back as plain ndarrays.
"""

from __future__ import annotations

import dataclasses
import errno
import operator
import os
from dataclasses import dataclass, fields
from typing import Any

import fsspec
import numpy as np

from . import cow
from .config import default_max_resident, parse_size
from .errors import ClosedArrayError, HugePagesUnavailableError
from .kernel import userfaultfd as uffd
from .kernel.userfaultfd import PAGE_SIZE, round_up
from .mapped import MappedArray, map_npy
from .monitor.client import get_client
from .region import Region
from .sources import absolute_url
from .sources.base import Source
from .sources.flat import FlatSource
from .sources.formats import open_array_source
from .storage.remote import check_shareable, share_whole_file_cache

DEFAULT_READAHEAD = 8  # chunks; the window grows up to this on sequential access
REMOTE_READAHEAD = 16  # over a network each window ends with one fault that waits a round trip


@dataclass(frozen=True)
class Stats:
    """What the monitor did for one array (all counters since ``open``)."""

    faults: int
    """Page-fault messages received (each faulting thread sends one, even for the same chunk)."""
    chunks_installed: int
    """Chunk installs, including readahead and prefetch (a chunk evicted and loaded again counts twice)."""
    chunks_present: int
    """Chunks resident now."""
    chunks_total: int
    chunk_bytes: int
    bytes_fetched: int
    """Compressed bytes read from storage."""
    bytes_decompressed: int
    resident_bytes: int
    """Array bytes resident now."""
    readahead_chunks: int
    zero_chunks: int
    """Chunks stored as zero frames: installed as zero pages, nothing decompressed or copied."""
    early_wakes: int
    """Faults answered before their chunk was complete: the reader's frame (or first 256 KiB) was
    installed and its thread woken while the rest of the chunk was still decoded or copied."""
    evictions: int
    failures: int
    fetch_seconds: float
    """Worker time spent fetching and decompressing (summed over worker threads)."""
    install_seconds: float
    """Worker time spent in ``UFFDIO_COPY``."""
    private_bytes: int = 0
    """Bytes written in lazy copies (``a.copy()``, ``mode="c"``), which copied those pages into
    this process: a copy's own, or for the array all its live copies' in this process. They are
    the process's memory, outside ``max_resident`` and never evicted."""
    copies: int = 0
    """Live lazy copies of the array in this process."""

    @property
    def seconds(self) -> float:
        return self.fetch_seconds + self.install_seconds


def _choose_chunk_bytes(source: Source, requested: int | None, budget: int | None = None) -> int:
    """Install unit: as requested, else the source's choice (within the budget, if one binds)."""
    if requested is not None:
        if requested <= 0 or requested % PAGE_SIZE:
            raise ValueError(f"chunk_bytes must be a positive multiple of {PAGE_SIZE} (got {requested!r})")
        return requested
    return source.default_unit_bytes() if budget is None else source.unit_bytes_within(budget)


class LazyArray(np.ndarray):
    """A read-only ndarray whose chunks are fetched and decompressed on first touch.

    Create one with :func:`lazymem.open`. It is an ordinary ``numpy.ndarray`` to any code that
    uses it; views of it are ``LazyArray`` too and keep the mapping alive.
    """

    __array_priority__ = -100.0
    _lazy: _Handle | None = None

    def __array_finalize__(self, obj: Any) -> None:
        handle = getattr(obj, "_lazy", None)
        if handle is not None and np.may_share_memory(self, obj):
            self._lazy = handle
        else:
            self._lazy = None

    def __array_wrap__(self, arr: np.ndarray, context: Any = None, return_scalar: bool = False) -> Any:
        arr = super().__array_wrap__(arr, context, return_scalar)
        # Results of computations own fresh memory: give them back as plain ndarrays (as memmap).
        if self is arr or type(self) is not LazyArray:
            return arr
        if arr.shape == ():
            return arr[()]
        return arr.view(np.ndarray)

    def __getitem__(self, index: Any) -> Any:
        res = super().__getitem__(index)
        if type(res) is LazyArray and res._lazy is None:
            return res.view(type=np.ndarray)
        return res

    def __reduce__(self) -> Any:
        # By reference: the URL and where this view lies in the array, a few hundred bytes. The
        # other process opens the URL lazily itself (spawn, forkserver, another machine).
        # A view unpickled in this same process (dask's scheduler in the client, a local submit)
        # maps the memory this one has (see reopened.remember).
        handle = self._lazy
        if handle is None or (handle.copy is not None and handle.copy.written_under(self)):
            # A view of a copy with pages written: its data (a reference would lose the writes).
            return np.array(self, copy=True).view(np.ndarray).__reduce__()
        if handle.copy is None:
            from .reopened import remember

            remember(self, handle, handle.url, handle.storage_options, handle.open_options)
        offset = self.ctypes.data - handle.base_address
        args = (handle.url, handle.storage_options, handle.open_options, self.dtype, self.shape, self.strides, offset)
        return (cow.rebuild_copy if handle.copy is not None else _rebuild, args)

    # --- copies: lazy and writeable where they can be (see lazymem.cow) --------------------------
    def copy(self, order: str = "C") -> np.ndarray:  # type: ignore[override]
        """``ndarray.copy``: a writeable copy whose writes stay private.

        A contiguous array or view copied in its own memory order is a *lazy* copy (a
        ``LazyArray``): it costs nothing until read, loads through the array's shared cache, and
        only the pages written become this process's memory. Other copies are numpy's eager ones
        (plain ndarrays). See the README, "Writable copies (copy-on-write)".
        """
        return cow.copy_of(self, order)

    def __copy__(self) -> np.ndarray:
        return cow.copy_of(self, "K")

    def __deepcopy__(self, memo: Any) -> np.ndarray:
        return cow.copy_of(self, "K")

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        # np.copy reaches the subclass only here (np.array(a, copy=True) never does: it copies in C).
        if func is np.copy and args and args[0] is self and self._lazy is not None:
            order = kwargs.get("order", args[1] if len(args) > 1 else "K")
            return cow.copy_of(self, order)
        return super().__array_function__(func, types, args, kwargs)

    def astype(self, dtype: Any, order: Any = "K", casting: Any = "unsafe", subok: bool = True,  # type: ignore[override]
               copy: bool = True) -> np.ndarray:
        # Another dtype is a computed result: a plain ndarray (as arithmetic); the same dtype is a copy.
        if copy and np.dtype(dtype) == self.dtype and self._lazy is not None:
            return cow.copy_of(self, order)
        result = super().astype(dtype, order=order, casting=casting, subok=subok, copy=copy)
        if type(result) is LazyArray and result._lazy is None:
            return result.view(np.ndarray)
        return result

    def resize(self, *new_shape: Any, refcheck: bool = True) -> None:  # type: ignore[override]
        if self._lazy is not None:
            raise ValueError("cannot resize a lazily loaded array (or a lazy copy of one) in place: its memory is "
                             "a mapping of the array's cache. Use np.resize(a, shape), or resize np.array(a)")
        super().resize(*new_shape, refcheck=refcheck)

    # --- lazymem extras ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._lazy is None:
            raise ClosedArrayError("this array does not share memory with a lazily loaded array")
        return self._lazy.url  # still known after close

    def _handle(self) -> _Handle:
        if self._lazy is None:
            raise ClosedArrayError("this array does not share memory with a lazily loaded array")
        if self._lazy.closed:
            raise ClosedArrayError(f"{self._lazy.url}: the array was closed (LazyArray.close); open it again")
        return self._lazy

    def prefetch(self, key: Any = Ellipsis) -> int:
        """Install every chunk under ``self[key]`` concurrently; return when done.

        Errors (a failed fetch, a corrupt chunk) are raised here as Python exceptions. Returns the
        number of chunks that had to be loaded.
        """
        handle = self._handle()
        chunks = _chunks_under(self, key, handle)
        if not chunks:
            return 0
        return int(handle.region.request("prefetch", chunks=chunks))

    def evict(self, key: Any = Ellipsis) -> int:
        """Drop the resident chunks under ``self[key]`` (all of them by default); return how many.

        The memory is freed at once; the next touch loads the chunk again.
        """
        handle = self._handle()
        whole = key is Ellipsis and _is_whole(self, handle)
        chunks = None if whole else _chunks_under(self, key, handle)
        return int(handle.region.request("evict", chunks=chunks))

    def close(self) -> None:
        """Free the resident memory now; the mapping goes when the last view of it is gone.

        Closing any view closes the array. After ``close``, ``prefetch``, ``evict`` and
        :func:`lazymem.stats` raise :class:`ClosedArrayError`, and touching the data kills the
        touching process with SIGBUS after the monitor says why on stderr: never a silent reload,
        never zeros. Calling ``close`` again does nothing.
        """
        handle = self._lazy
        if handle is None or handle.closed:
            return
        handle.closed = True
        if handle.copy is not None:  # a lazy copy: its own pages only, not the array's cache
            handle.copy.close()
            return
        if not handle.region.closed:
            handle.region.request("evict", chunks=None, seal=True)

    def tofile(self, fid: Any, sep: str = "", format: str = "%s") -> None:
        """``ndarray.tofile``; in user-mode-only userfaultfd mode its failure names cause and remedy.

        numpy writes with ``fwrite``: a system call that reads untouched pages, which in that mode
        the kernel cannot load (EFAULT), and numpy then reports only "N requested and 0 written".
        """
        try:
            super().tofile(fid, sep, format)
        except OSError as exc:
            handle = self._lazy
            if handle is None or not handle.region.client.user_mode_only:
                raise
            raise OSError(errno.EFAULT, f"{exc}: a system call read pages of a lazy array that were not loaded "
                          "yet, and this process's userfaultfd is user-mode only (no access to /dev/userfaultfd, "
                          "no CAP_SYS_PTRACE), so the kernel cannot load them for a system call. Call "
                          "a.prefetch() before a.tofile() (or f.write(a), sock.sendall(a)), or give this user "
                          "read-write access to /dev/userfaultfd") from exc

    def __enter__(self) -> LazyArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Handle:
    region: Region
    url: str
    chunk_size: int
    base_address: int
    storage_options: dict[str, Any] | None
    open_options: dict[str, Any]
    closed: bool = False  # LazyArray.close() was called
    keep: Any = None  # the region's buffer: lazy copies keep it (and so the region) alive
    copy: cow.PrivateView | None = None  # set in the handle of a lazy copy: its private mapping

    def for_copy(self, view: cow.PrivateView) -> _Handle:
        return dataclasses.replace(self, base_address=view.address, copy=view, closed=False)


def _rebuild(url: str, storage_options: dict[str, Any] | None, open_options: dict[str, Any],
             dtype: np.dtype, shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> LazyArray:
    """Unpickle a LazyArray (or a view of one): take the same view of the URL, opened lazily once
    per process (see :mod:`lazymem.reopened`), and keep readahead inside it (what a task that
    received it will read)."""
    from .reopened import open_whole

    opened = open_whole(url, storage_options, open_options)
    if opened is None:  # an empty array
        return np.ndarray.__new__(LazyArray, shape, dtype)
    flat, handle, received = opened
    view = np.ndarray.__new__(LazyArray, shape, dtype, buffer=flat, offset=offset, strides=strides)
    view._lazy = handle
    if received and view.size and not _is_whole(view, handle):
        low, high = getattr(np.lib, "array_utils", np).byte_bounds(np.asarray(view))
        handle.region.request("readahead_extent", start=low - handle.base_address, stop=high - handle.base_address)
    return view


def _is_whole(arr: np.ndarray, handle: _Handle) -> bool:
    return arr.ctypes.data == handle.base_address and arr.nbytes == handle.region.nbytes


def _selection_extents(arr: np.ndarray, key: Any) -> tuple[np.ndarray, np.ndarray]:
    """Byte ranges ``[lo, hi)`` (from arr's first element) covering the elements ``arr[key]``.

    Advanced indices (integer arrays, boolean masks) give one range per selected combination;
    slices are folded into each range as their span, so the cost is that of the advanced part of
    the selection, never of the axis lengths, and the lazy data is never read.
    """
    items = [item for item in (key if isinstance(key, tuple) else (key,)) if item is not None]

    def width(item: Any) -> int:
        x = np.asarray(item) if not isinstance(item, slice) else None
        return x.ndim if x is not None and x.dtype == bool else 1

    explicit = sum(width(item) for item in items if item is not Ellipsis)
    if explicit > arr.ndim:
        raise IndexError(f"too many indices for an array of {arr.ndim} dimensions")
    expanded: list[Any] = []
    for item in items:
        expanded += [slice(None)] * (arr.ndim - explicit) if item is Ellipsis else [item]
    expanded += [slice(None)] * (arr.ndim - sum(width(item) for item in expanded))
    lo = hi = 0
    advanced: list[tuple[np.ndarray, int]] = []
    axis = 0
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    for item in expanded:
        if isinstance(item, slice):
            steps = range(*item.indices(arr.shape[axis]))
            if not steps:
                return empty
            ends = (steps[0] * arr.strides[axis], steps[-1] * arr.strides[axis])
            lo, hi = lo + min(ends), hi + max(ends)
            axis += 1
            continue
        x = np.asarray(item)
        coords = np.nonzero(x) if x.dtype == bool else (x.astype(np.int64),)
        if x.dtype != bool and x.dtype.kind not in "iu":
            raise IndexError(f"only integers, slices, Ellipsis, None and integer or boolean arrays are valid "
                             f"indices (got {x.dtype})")
        for coord in coords:
            n = arr.shape[axis]
            coord = np.where(coord < 0, coord + n, coord)
            if coord.size and (coord.min() < 0 or coord.max() >= n):
                raise IndexError(f"index out of bounds for axis {axis} with size {n}")
            advanced.append((coord, arr.strides[axis]))
            axis += 1
    offsets = np.zeros(1, np.int64)
    if advanced:
        coords = np.broadcast_arrays(*(c for c, _ in advanced))
        offsets = np.unique(sum((c.astype(np.int64) * s for c, (_, s) in zip(coords, advanced)),
                                np.zeros((), np.int64)).ravel())
    return offsets + lo, offsets + hi + arr.itemsize


def _chunks_under(arr: LazyArray, key: Any, handle: _Handle) -> list[int]:
    """Chunk numbers holding the elements ``arr[key]``, found without touching the data."""
    if key is Ellipsis or _is_basic_index(key):
        items = key if isinstance(key, tuple) else (key,)
        if not any(item is Ellipsis for item in items):
            items = (*items, Ellipsis)  # a[5] would read the element; a[5, ...] is a 0-d view
        view = np.asarray(np.ndarray.__getitem__(arr, items))
        if view.size == 0:
            return []
        byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds
        low, high = byte_bounds(view)
        base = handle.base_address
        return list(range((low - base) // handle.chunk_size, (high - 1 - base) // handle.chunk_size + 1))
    lo, hi = _selection_extents(arr, key)
    if lo.size == 0:
        return []
    start = arr.ctypes.data - handle.base_address
    first = (lo + start) // handle.chunk_size
    last = (hi - 1 + start) // handle.chunk_size
    chunks: set[int] = set()
    for lo_chunk, hi_chunk in np.unique(np.stack([first, last], axis=1), axis=0):
        chunks.update(range(int(lo_chunk), int(hi_chunk) + 1))
    return sorted(chunks)


def _is_basic_index(key: Any) -> bool:
    items = key if isinstance(key, tuple) else (key,)
    for item in items:
        if item is Ellipsis or item is None or isinstance(item, slice):
            continue
        if isinstance(item, (bool, np.bool_)):
            return False
        try:
            operator.index(item)
        except TypeError:
            return False
    return True


def open(
    url: str,
    *,
    path: str | None = None,
    storage_options: dict[str, Any] | None = None,
    chunk_bytes: int | str | None = None,
    readahead: int | None = None,
    max_resident: int | str | None = None,
    max_in_flight: int | None = None,
    huge_pages: bool | None = None,
    mode: str = "r",
) -> LazyArray | MappedArray:
    """Open a compressed array lazily.

    Parameters
    ----------
    url : str
        Any fsspec URL of a seekable zstd file holding a ``.npy`` stream (as written by
        :func:`lazymem.save`, pyzstd's ``SeekableZstdFile`` or ``zstd --seekable``-style tools),
        a zarr array or group (v2, v3, sharded), an HDF5 / NetCDF file: the format is found from
        the object's bytes, not its name (see the README for each format's limits).
    path : str, optional
        The array's path inside a zarr group or an HDF5 / NetCDF file (``"t2m"``, ``"sub/x"``);
        may be omitted where the group holds one array. A zarr array's URL inside its store
        (``.../era5.zarr/t2m``) names the path too.
    storage_options : dict, optional
        Passed to fsspec, in this process and in the monitor.
    chunk_bytes : int or str, optional
        Install unit, a multiple of the page size (bytes, or a size such as ``"4MiB"``).
        Default: one frame for files written by :func:`lazymem.save`, else about the frames'
        size (at least 4 MiB).
    readahead : int, optional
        Most chunks read ahead on sequential access (0 turns readahead off). Default: 8 for local
        files, 16 over a network.
    max_resident : int or str, optional
        Most bytes of this array held in memory at once (``"2GiB"``, ``500_000_000``); past it
        the least recently loaded chunks are evicted and load again when touched. Default:
        :func:`lazymem.set_max_resident`, else ``$LAZYMEM_MAX_RESIDENT``, else half the memory
        available at open time.
    max_in_flight : int, optional
        Most chunk loads of this array waiting on storage at once (requests in flight, each
        decompressed as it arrives). Default: 16 on network filesystems (S3, HTTP...), the
        monitor's worker count for local files. On S3 the connection pool bounds it too
        (botocore's ``max_pool_connections``, 10 by default): for more, pass
        ``storage_options={"config_kwargs": {"max_pool_connections": 32}}``.
    huge_pages : bool, optional
        Back the array with huge pages from the kernel's hugetlbfs pool (``vm.nr_hugepages``,
        which the administrator sets aside). Installs then copy whole 2 MiB pages, about 5x
        faster than 4 KiB pages (measured in ``benchmarks/``), and the CPU's TLB covers more of
        the array. The whole array is reserved from the pool at open (or
        :class:`HugePagesUnavailableError`), so ``max_resident`` does not apply; chunks become a
        multiple of the huge page size. Default: ``$LAZYMEM_HUGE_PAGES`` (``1`` turns it on), else
        off.
    mode : {"r", "c"}, optional
        ``"r"`` (default): read-only. ``"c"``: copy-on-write, as ``numpy.memmap``'s mode: a
        writeable array whose writes stay in this process, still lazy (the same as
        ``open(url).copy()``; see the README, "Writable copies (copy-on-write)").

    Returns
    -------
    LazyArray or MappedArray
        A read-only ndarray; only the header and the seek table have been read. An uncompressed
        local ``.npy`` file is mapped by the kernel instead: a :class:`MappedArray`, the
        ``numpy.memmap`` of ``np.load(mmap_mode="r")`` with the same ``prefetch``, ``evict``,
        ``close`` and :func:`stats` (the kernel's own mmap is the better tool there). Remote
        ``.npy`` files load lazily by range.
    """
    if mode not in ("r", "c"):
        raise ValueError(f"mode must be one of {('r', 'c')!r} (got {mode!r})")
    if isinstance(chunk_bytes, str):
        chunk_bytes = parse_size(chunk_bytes)
    url = absolute_url(url)  # pickled by URL: a worker in another directory must find it too
    if max_in_flight is not None and (isinstance(max_in_flight, bool) or int(max_in_flight) < 1):
        raise ValueError(f"max_in_flight must be a positive int (got {max_in_flight!r})")
    # memory:// lives in this process: the monitor cannot read it (checked before any read)
    check_shareable(fsspec.core.url_to_fs(url, **(storage_options or {}))[0], url)
    source = open_array_source(url, path, storage_options)
    if isinstance(source, FlatSource):
        reader = source.reader
        share_whole_file_cache(reader.fs)  # one simplecache download for this process and the monitor
        if reader.format_name == "npy" and reader.storage.is_local and reader.header.nbytes:
            # An uncompressed local .npy: the kernel's own page cache and mmap beat anything we could
            # do (no fault round trips, readahead for free). Same read-only ndarray contract.
            if mode == "c":  # the kernel's own copy-on-write file mapping: numpy's memmap mode "c"
                return np.load(reader.path, mmap_mode="c")  # type: ignore[no-any-return]
            return map_npy(reader.path, url)  # type: ignore[return-value]
    from .sources.byte_runs import ByteRunsSource

    if isinstance(source, ByteRunsSource) and source.storage.is_local and source.count == 1 and source.nbytes:
        # An uncompressed array in one range of a local file (contiguous HDF5, fixed NetCDF3): the
        # kernel maps it, as a local .npy.
        from .mapped import map_range

        return map_range(source.storage.path, url, source.begin, source.shape, source.dtype,  # type: ignore[return-value]
                         source.order, path)
    # From here on only the source interface: what the monitor serves is a Source.
    nbytes, shape, dtype, order = source.nbytes, source.shape, source.dtype, source.order
    if nbytes == 0:
        empty = np.ndarray.__new__(LazyArray, shape, dtype, order=order)
        empty.flags.writeable = mode == "c"
        return empty
    budget = parse_size(max_resident) if max_resident is not None else default_max_resident()
    huge_page = _huge_page_size(huge_pages)
    client = get_client()
    chunk_size = _choose_chunk_bytes(source, chunk_bytes, budget if budget < nbytes else None)
    if huge_page:
        if chunk_bytes is not None and chunk_bytes % huge_page:
            raise ValueError(f"with huge pages, chunk_bytes must be a multiple of {huge_page} (got {chunk_bytes})")
        chunk_size = round_up(chunk_size, huge_page)
        budget = nbytes  # reserved from the pool at open: no eviction to stay within a budget
    region = Region(client, nbytes, name=f"lazymem:{url}", huge_page=huge_page)
    try:
        region.announce(source=source, chunk_size=chunk_size, url=url,
                        readahead=_readahead(readahead, source.hints.remote),
                        max_resident=budget if budget < nbytes else None, max_in_flight=max_in_flight)
        buffer = region.buffer()
    except BaseException:
        region.release()
        raise
    # np.frombuffer keeps the read-only memoryview as the base (np.ndarray(buffer=memoryview) would
    # unwrap it to the writable ctypes object, and then `flags.writeable = True` would be allowed).
    flat = np.frombuffer(buffer, dtype=np.uint8, count=nbytes)
    arr = np.ndarray.__new__(LazyArray, shape, dtype, buffer=flat, order=order)
    arr._lazy = _Handle(region, url, chunk_size, region.address, storage_options,
                        {"chunk_bytes": chunk_bytes, "readahead": readahead, "max_resident": max_resident,
                         "max_in_flight": max_in_flight, "huge_pages": huge_pages, "path": path}, keep=buffer)
    if mode == "c":  # a LazyArray; numpy's eager copy only if a huge-page copy finds the pool short
        return cow.copy_of(arr, "K", always=True)  # type: ignore[return-value]
    return arr


def _huge_page_size(requested: bool | None) -> int:
    """The huge page size to back an array with, or 0 for ordinary pages."""
    if requested is None:
        requested = os.environ.get("LAZYMEM_HUGE_PAGES", "").strip().lower() in ("1", "true", "yes", "on")
    if not requested:
        return 0
    size, _free = uffd.huge_pages()
    if not size:
        raise HugePagesUnavailableError("huge_pages=True, but this kernel offers no huge pages (no hugetlbfs)")
    return size


def _readahead(requested: int | None, remote: bool) -> int:
    if requested is not None:
        if isinstance(requested, bool) or int(requested) < 0:
            raise ValueError(f"readahead must be a non-negative int (got {requested!r})")
        return int(requested)
    return REMOTE_READAHEAD if remote else DEFAULT_READAHEAD


def stats(arr: np.ndarray) -> Stats:
    """Counters of the monitor for the lazily loaded array ``arr`` (or any view of it)."""
    if isinstance(arr, MappedArray) and arr._mapped is not None:
        return _mapped_stats(arr)
    if not isinstance(arr, LazyArray) or arr._lazy is None:
        raise TypeError("lazymem.stats needs an array returned by lazymem.open (or a view of one)")
    handle = arr._handle()
    raw = handle.region.request("stats")
    copies = [handle.copy] if handle.copy is not None else list(handle.region.copies)
    raw["private_bytes"] = sum(view.written_bytes() for view in copies)
    raw["copies"] = len(handle.region.copies)
    names = {f.name for f in fields(Stats)}
    return Stats(**{k: v for k, v in raw.items() if k in names})


def _mapped_stats(arr: MappedArray) -> Stats:
    """A plain local .npy is the kernel's file mapping: its chunks are pages, loaded by the kernel
    (no fetch, no decompression), and present when ``mincore`` says so."""
    present, total = arr.resident_pages()
    state = arr._state()
    return Stats(faults=0, chunks_installed=0, chunks_present=present, chunks_total=total, chunk_bytes=PAGE_SIZE,
                 bytes_fetched=0, bytes_decompressed=0, resident_bytes=present * PAGE_SIZE, readahead_chunks=0,
                 zero_chunks=0, early_wakes=0, evictions=state.evictions, failures=0, fetch_seconds=0.0,
                 install_seconds=0.0)

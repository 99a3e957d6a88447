"""What ``lazymem.open`` returns for an uncompressed local ``.npy``: a ``numpy.memmap`` with
the :class:`~lazymem.LazyArray` extras (``prefetch``, ``evict``, ``close``, ``lazymem.stats``).

The kernel's own file mapping beats anything the monitor could do there (no fault round trips,
the page cache's readahead for free), so no monitor is involved: ``prefetch`` faults the pages in
with ``MADV_POPULATE_READ``, ``evict`` drops them from this process with ``MADV_DONTNEED`` (safe
on a read-only file mapping: the next touch reads the file again).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Literal

import numpy as np

from .errors import ClosedArrayError
from .kernel import userfaultfd as uffd
from .kernel.limits import mapping_bytes
from .kernel.userfaultfd import PAGE_SIZE

MADV_DONTNEED = 4
MADV_POPULATE_READ = 22  # Linux 5.14: fault a range in, readable, in one call
PROT_NONE = 0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _check(rc: int) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class _State:
    """Shared by an array and all its views: closing one closes them all."""

    __slots__ = ("closed", "evictions", "path", "url")

    def __init__(self, url: str, path: str | None = None) -> None:
        self.url = url
        self.path = path  # the array inside the file (HDF5 dataset, NetCDF3 variable), if any
        self.closed = False
        self.evictions = 0


class MappedArray(np.memmap):
    """A read-only ``numpy.memmap`` of a local ``.npy`` file (or of an uncompressed array at an
    offset of a local HDF5 / NetCDF3 file) with the ``LazyArray`` extras.

    ``close()`` makes the mapping inaccessible: a touch afterwards is a SIGSEGV (never stale
    or zero data), explicit calls raise :class:`ClosedArrayError`.
    """

    _mapped: _State | None = None
    _mmap: Any  # numpy.memmap's mmap.mmap (None in arrays that do not share its memory)

    def __array_finalize__(self, obj: Any) -> None:
        super().__array_finalize__(obj)
        state = getattr(obj, "_mapped", None)
        self._mapped = state if state is not None and np.may_share_memory(self, obj) else None

    def __array_wrap__(self, arr: np.ndarray, context: Any = None, return_scalar: bool = False) -> Any:
        # np.memmap gives results back as plain ndarrays only for itself, not for subclasses.
        arr = np.ndarray.__array_wrap__(self, arr, context, return_scalar)
        if self is arr:
            return arr
        return arr[()] if arr.shape == () else arr.view(np.ndarray)

    def __getitem__(self, index: Any) -> Any:
        res = super().__getitem__(index)
        if type(res) is MappedArray and res._mapped is None:
            return res.view(type=np.ndarray)
        return res

    def __reduce__(self) -> Any:
        # By reference, as LazyArray: the other process maps the file itself.
        state = self._mapped
        base = self._mmap
        if state is None or base is None:
            return np.array(self, copy=True).view(np.ndarray).__reduce__()
        offset = self.ctypes.data - _mapping_start(self)
        return (_rebuild, (state.url, self.dtype, self.shape, self.strides, offset, state.path))

    def __deepcopy__(self, memo: Any) -> np.ndarray:
        return np.array(self, copy=True).view(np.ndarray)

    def __copy__(self) -> np.ndarray:
        return np.array(self, copy=True).view(np.ndarray)

    @property
    def url(self) -> str:
        return self._state().url

    def _state(self) -> _State:
        if self._mapped is None:
            raise ClosedArrayError("this array does not share memory with an array from lazymem.open")
        if self._mapped.closed:
            raise ClosedArrayError(f"{self._mapped.url}: the array was closed (close()); open it again")
        return self._mapped

    def _pages(self, key: Any) -> tuple[int, int]:
        """Page-aligned address and length covering ``self[key]`` (0 length if empty)."""
        view = np.asarray(np.ndarray.__getitem__(self, key))
        if view.size == 0:
            return 0, 0
        low, high = getattr(np.lib, "array_utils", np).byte_bounds(view)
        low -= low % PAGE_SIZE
        return low, uffd.round_up(high - low)

    def prefetch(self, key: Any = Ellipsis) -> int:
        """Read the pages under ``self[key]`` into memory now; return how many bytes that covers."""
        self._state()
        address, length = self._pages(key)
        if length:
            try:
                uffd.madvise(address, length, MADV_POPULATE_READ)
            except OSError:  # before Linux 5.14: touch one byte per page
                np.asarray(np.ndarray.__getitem__(self, key)).view(np.uint8).reshape(-1)[::PAGE_SIZE].sum()
        return length

    def evict(self, key: Any = Ellipsis) -> int:
        """Drop the pages under ``self[key]`` from this process; the next touch reads the file again."""
        state = self._state()
        address, length = self._pages(key)
        if length:
            uffd.madvise(address, length, MADV_DONTNEED)
            state.evictions += 1
        return length

    def close(self) -> None:
        """Drop the pages and make the mapping inaccessible (a later touch is a SIGSEGV); the file
        is unmapped when the last view is gone. Calling it again does nothing."""
        state = self._mapped
        if state is None or state.closed or self._mmap is None:
            return
        state.closed = True
        address, length = _mapping_start(self), uffd.round_up(len(self._mmap))
        uffd.madvise(address, length, MADV_DONTNEED)
        _check(_libc.mprotect(ctypes.c_void_p(address), length, PROT_NONE))

    def __enter__(self) -> MappedArray:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def resident_pages(self) -> tuple[int, int]:
        """Pages of the whole mapping mapped into this process now, and pages in all.

        From ``/proc/self/smaps`` (``Rss``), not ``mincore``: for a file mapping mincore reports
        the page cache, which ``evict`` does not empty."""
        self._state()
        address, length = _mapping_start(self), uffd.round_up(len(self._mmap))
        return mapping_bytes(address, "Rss") // PAGE_SIZE, length // PAGE_SIZE


def _mapping_start(arr: MappedArray) -> int:
    """Address of the start of ``arr``'s whole mmap (page aligned)."""
    return int(np.frombuffer(arr._mmap, dtype=np.uint8).ctypes.data)


def map_npy(path: str, url: str) -> MappedArray:
    """Map the local ``.npy`` file at ``path`` read-only."""
    mapped = np.load(path, mmap_mode="r").view(MappedArray)
    mapped._mapped = _State(url)
    return mapped


def map_range(file_path: str, url: str, offset: int, shape: tuple[int, ...], dtype: np.dtype, order: Literal["C", "F"],
              path: str | None) -> MappedArray:
    """Map an uncompressed array stored at ``offset`` of the local file ``file_path`` read-only (a
    contiguous HDF5 dataset, a fixed-size NetCDF3 variable: as ``np.memmap`` at its offset)."""
    mapped = np.memmap(file_path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order).view(MappedArray)
    mapped._mapped = _State(url, path)
    return mapped


def _rebuild(url: str, dtype: np.dtype, shape: tuple[int, ...], strides: tuple[int, ...], offset: int,
             path: str | None = None) -> MappedArray:
    from .array import open as open_array

    whole = open_array(url, path=path)
    assert isinstance(whole, MappedArray)
    flat = np.frombuffer(whole._mmap, dtype=np.uint8)
    view = np.ndarray.__new__(MappedArray, shape, dtype, buffer=flat, offset=offset, strides=strides)
    view._mmap, view._mapped = whole._mmap, whole._mapped
    view.flags.writeable = False
    return view

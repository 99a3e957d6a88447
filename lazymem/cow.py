"""Lazy copy-on-write copies of a lazily loaded array: ``a.copy()`` and ``open(url, mode="c")``.

A copy is the array's memfd mapped a second time, ``MAP_PRIVATE`` and writeable, and registered
with the same userfaultfd (``PrivateView``). A fault there is served by installing the unit into
the array's *shared* mapping (the page cache every view of the memfd reads) and waking the
copy's address: the woken thread faults again, finds the page cached and maps it; a write then
copies that one page into the process (the kernel's copy-on-write). So a copy costs nothing until
read, reads share the array's cache (and its ``max_resident`` budget), and written pages are the
process's own anonymous memory: eviction punches holes in the memfd, which drops clean pages of
every mapping but never a private copy (``fallocate(PUNCH_HOLE)`` leaves COWed pages alone).

What is lazy: a copy whose result lies in memory exactly as the source does, i.e. a contiguous
array (or view) copied in its own memory order (``order="K"``/``"A"``, or ``"C"`` of a C-contiguous
one, ``"F"`` of an F-contiguous one), of at least one install unit. Anything else is numpy's
eager copy, as a plain ndarray: a strided or reversed view or another order (the result has
another layout, so it cannot be a mapping of the array), or a view of a copy with written pages
(the writes are in this process only, not in the memfd).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import socket
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from .kernel import userfaultfd as uffd
from .kernel.limits import mapping_bytes
from .monitor import live
from .monitor.client import MonitorClient
from .region import Region, _register_mode

if TYPE_CHECKING:
    from .array import LazyArray

_copy_ids = itertools.count(1 << 40)  # disjoint from region ids: both name regions in the monitor


class PrivateView:
    """A writeable, private mapping of ``carrier``'s memfd, served through ``carrier``.

    It keeps ``keep`` (the carrier's buffer) alive: the carrier's region must outlive every copy,
    since closing it truncates the memfd, which would take the copy's unread pages with it.
    Forks inherit it (no ``MADV_DONTFORK``: the child must keep the pages written before the
    fork), and the child registers it again with its own userfaultfd before any code of its runs.
    """

    def __init__(self, carrier: Region, keep: object) -> None:
        self.carrier = carrier
        self.client: MonitorClient = carrier.client
        self.region_id = next(_copy_ids)
        self.length = carrier.length
        self.page_size = carrier.page_size
        self.pid = os.getpid()
        self.closed = False
        self._keep: object | None = keep
        self._lock = threading.Lock()
        self.address = uffd.map_private(carrier.memfd, self.length, reserve=bool(carrier.huge_page))
        try:
            uffd.register(self.client.uffd, self.address, self.length, _register_mode(carrier.zero_copy))
            # Live before the monitor hears of it: a monitor started between the two (the last one
            # died) must be handed this copy too, or its faults would find no region, for ever.
            carrier.copies.add(self)
            live.add(self)
            self.client.request("copy", **self._copy_args())
        except BaseException:
            self._unmap()
            raise

    def _copy_args(self) -> dict[str, Any]:
        return {"client": self.client.uffd_key, "region_id": self.carrier.region_id, "copy_id": self.region_id,
                "start": self.address}

    @property
    def usable(self) -> bool:
        return not self.closed and self.address != 0

    def buffer(self) -> memoryview:
        """A writeable buffer over the copy whose owner keeps this view alive."""
        raw = (ctypes.c_char * self.length).from_address(self.address)
        raw._lazymem_copy = self  # type: ignore[attr-defined]
        finalizer = weakref.finalize(raw, self.release)
        finalizer.atexit = False
        return memoryview(raw).cast("B")

    def written_under(self, arr: np.ndarray) -> bool:
        """Whether a page under ``arr`` (a view of this copy) was written: then only its data can
        stand for it (a pickle, a copy of it), not a reference to the array.

        ``/proc/self/pagemap`` over the view's pages (8 bytes a page: 2 MiB for a 1 GiB view)
        rather than smaps, which walks every mapping of the process (~0.5 ms and up, per pickle of
        each chunk of a dask graph); past ``_PAGEMAP_MOST`` bytes, the whole copy's count."""
        if not self.usable or arr.size == 0:
            return False
        low, high = getattr(np.lib, "array_utils", np).byte_bounds(arr)
        if high - low > _PAGEMAP_MOST:
            return self.written_bytes() > 0
        return _any_written(low, high - low)

    def written_bytes(self) -> int:
        """Bytes of the copy written (copied privately) in this process."""
        if not self.usable:
            return 0
        if self.carrier.huge_page:
            return _written_huge_pages(self.address, self.length, self.page_size)
        return mapping_bytes(self.address, "Anonymous")  # the pages written (copied)

    # --- what the client asks of every live region (fork, monitor restart) ------------------------
    def announce_again(self, control: socket.socket) -> None:
        """Hand the copy to a new monitor, after its carrier (see ``Region.announce_again``)."""
        with self._lock:
            if self.usable and self.carrier.usable:
                self.client._request_here("copy", control=control, restore=True, **self._copy_args())

    def remap_in_child(self, client: MonitorClient) -> None:
        """In a forked child: the mapping is inherited (with the pages written before the fork) but
        no longer registered (no ``UFFD_FEATURE_EVENT_FORK``): register it with the child's fd."""
        self._lock = threading.Lock()
        self.pid = os.getpid()
        uffd.register(client.uffd, self.address, self.length, _register_mode(self.carrier.zero_copy))
        self.client = client

    def forget_in_child(self) -> None:
        """In a forked child that cannot serve the copy: unmap it, so that a touch is a SIGSEGV
        rather than a read of unregistered memfd pages (zeros, put in the shared page cache)."""
        if self.address:
            uffd.unmap(self.address, self.length)
        self.closed = True
        self.address = 0

    def close(self) -> None:
        """Free the written pages now and make the copy inaccessible (a touch is a SIGSEGV); the
        mapping goes with the last view of the copy."""
        if self.usable:
            uffd.madvise(self.address, self.length, MADV_DONTNEED)
            uffd.protect(self.address, self.length, uffd.PROT_NONE)

    def release(self) -> None:
        """Forget the copy in the monitor, then unmap it. Idempotent; a no-op in a forked child
        that did not take the copy over."""
        with self._lock:
            if self.closed or os.getpid() != self.pid:
                return
            self.closed = True
        try:
            if self.client.alive():
                self.client.request("close", client=self.client.uffd_key, region_id=self.region_id)
        except Exception:  # noqa: BLE001 - a dead monitor: nothing can install here any more
            pass
        self._unmap()

    def _unmap(self) -> None:
        if self.address:
            uffd.release(self.client.uffd, self.address, self.length)
            self.address = 0
        self.carrier.copies.discard(self)
        self._keep = None  # the carrier may go now


MADV_DONTNEED = 4


_PAGEMAP_MOST = 1 << 30
_PM_PRESENT, _PM_SWAP, _PM_FILE = 1 << 63, 1 << 62, 1 << 61  # /proc/self/pagemap entry bits


def _any_written(address: int, length: int) -> bool:
    """Whether a page of ``[address, address + length)`` is this process's own (written, copied):
    present and not a file page, or swapped out (only anonymous pages of a private mapping are)."""
    first, last = address // uffd.PAGE_SIZE, (address + length - 1) // uffd.PAGE_SIZE
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        raw = os.pread(fd, (last - first + 1) * 8, first * 8)
    finally:
        os.close(fd)
    entries = np.frombuffer(raw, dtype=np.uint64)
    present, swapped, file = (entries & np.uint64(bit) != 0 for bit in (_PM_PRESENT, _PM_SWAP, _PM_FILE))
    return bool(np.any(present & ~file | swapped))


def _written_huge_pages(address: int, length: int, page: int) -> int:
    """Bytes of written huge pages in ``[address, address + length)``: ``/proc/self/pagemap``
    says present and not a file page. (smaps has no "Anonymous" count for hugetlbfs, and its
    Private_Hugetlb counts pages by how many map them, not by who owns them.) One read per huge
    page: a huge-page array is bounded by the pool, small."""
    written = 0
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        for at in range(address, address + length, page):
            entry = int.from_bytes(os.pread(fd, 8, at // uffd.PAGE_SIZE * 8), "little")
            if entry & _PM_PRESENT and not entry & _PM_FILE:
                written += page
    finally:
        os.close(fd)
    return written


# --- the copies numpy asks for ---------------------------------------------------------------------

def lazy_order(arr: np.ndarray, order: str) -> bool:
    """Whether numpy's ``arr.copy(order)`` has exactly ``arr``'s memory layout (so a mapping of
    the same bytes can be it)."""
    order = order.upper()
    if order not in ("C", "F", "A", "K"):
        raise ValueError(f"order must be one of 'C', 'F', 'A', 'K' (got {order!r})")
    c, f = arr.flags.c_contiguous, arr.flags.f_contiguous
    return (c and order in ("C", "A", "K")) or (f and order in ("F", "A", "K"))


def copy_of(arr: LazyArray, order: str = "K", *, always: bool = False) -> np.ndarray:
    """``arr.copy(order)``: a lazy writeable copy where it can be one (see the module), else an
    eager one (a plain ndarray). A copy smaller than one install unit is eager unless ``always``:
    loading it costs at most one unit, less than a mapping and a monitor request per copy."""
    from .array import LazyArray

    handle = arr._lazy
    lazy = (handle is not None and not handle.closed and handle.region.usable and arr.size > 0
            and lazy_order(arr, order) and (always or arr.nbytes >= handle.chunk_size))
    if lazy and handle is not None and handle.copy is not None and handle.copy.written_under(arr):
        lazy = False  # a copy of a written copy holds those writes: only an eager copy has them
    if not lazy or handle is None:
        return np.ndarray.copy(arr.view(np.ndarray), order=order)  # type: ignore[arg-type]
    region = handle.region
    try:
        view = PrivateView(region, handle.keep)
    except OSError as exc:
        if exc.errno != errno.ENOMEM or not region.huge_page:
            raise
        # Huge pages: the copy reserves a second set from the pool for its writes; the pool is
        # short. numpy's copy (in ordinary memory) is what the caller asked for anyway.
        return np.ndarray.copy(arr.view(np.ndarray), order=order)  # type: ignore[arg-type]
    flat = np.frombuffer(view.buffer(), dtype=np.uint8, count=region.nbytes)
    offset = arr.ctypes.data - handle.base_address
    out = np.ndarray.__new__(LazyArray, arr.shape, arr.dtype, buffer=flat, offset=offset, strides=arr.strides)
    out._lazy = handle.for_copy(view)
    return out


def rebuild_copy(url: str, storage_options: dict[str, Any] | None, open_options: dict[str, Any],
                 dtype: np.dtype, shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> np.ndarray:
    """Unpickle a lazy copy nobody wrote to: open the array lazily (by reference, as
    ``array._rebuild``), and copy the same view of it lazily."""
    from .array import LazyArray, _rebuild

    view = _rebuild(url, storage_options, open_options, dtype, shape, strides, offset)
    if not isinstance(view, LazyArray) or view._lazy is None:
        return np.array(view, copy=True)
    return copy_of(view, "K", always=True)

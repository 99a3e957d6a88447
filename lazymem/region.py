"""The app's side of one lazily loaded array: a memfd, its read-only mapping, its registration.

The mapping's lifetime is tied to a ctypes buffer object that the ndarray (and every view of it)
keeps alive through ``.base``; when the last view dies, a finalizer tells the monitor to forget
the region (and waits until no install can still land there), then unregisters and unmaps it.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import socket
import threading
import weakref
from typing import Any

from .errors import HugePagesUnavailableError
from .kernel import userfaultfd as uffd
from .monitor import live
from .monitor.client import MonitorClient

_region_ids = itertools.count(1)


def _register_mode(zero_copy: bool) -> int:
    # MINOR too for zero-copy installs: the monitor fills the memfd's page cache itself, and the
    # app must fault on those pages (and wait) until UFFDIO_CONTINUE says a whole chunk is there.
    mode = uffd.UFFDIO_REGISTER_MODE_MISSING
    return mode | uffd.UFFDIO_REGISTER_MODE_MINOR if zero_copy else mode


def live_regions() -> list[Region]:
    """Regions whose arrays are still alive (a forked child maps these again)."""
    return live.live_regions()


class Region:
    """``length`` bytes of lazily filled, read-only memory at ``address``.

    With ``huge_page`` (a huge page size), the memfd lives in hugetlbfs: installs copy whole
    2 MiB pages from the reserved pool (~5x faster than 4 KiB shared-memory pages here, and
    memory the VM has backed already), and the whole array is reserved from the pool at once.
    """

    def __init__(self, client: MonitorClient, nbytes: int, name: str = "lazymem", huge_page: int = 0) -> None:
        self.client = client
        self.nbytes = nbytes
        self.huge_page = huge_page
        self.page_size = huge_page or uffd.PAGE_SIZE
        self.zero_copy = client.zero_copy and not huge_page  # MINOR installs are for shmem only
        self.length = uffd.round_up(max(nbytes, 1), self.page_size)
        self.region_id = next(_region_ids)
        self.pid = os.getpid()
        self.memfd = os.memfd_create(name[:200], os.MFD_CLOEXEC | (os.MFD_HUGETLB if huge_page else 0))
        self.address = 0
        self.closed = False
        self._lock = threading.Lock()
        self._description: dict[str, Any] | None = None  # as announced: to hand to a new monitor
        self.copies: set[Any] = set()  # live lazy copies (cow.PrivateView) served through this region
        try:
            os.ftruncate(self.memfd, self.length)
            self.address = self._map()
            # A forked child must never see this range unregistered (it would read zeros, and with
            # a memfd put zero pages into the shared page cache): make the child not inherit it.
            uffd.madvise(self.address, self.length, uffd.MADV_DONTFORK)
            uffd.register(client.uffd, self.address, self.length, _register_mode(self.zero_copy))
        except BaseException:
            self._unmap()
            raise
        live.add(self)

    def _map(self, address: int = 0) -> int:
        # MAP_NORESERVE: a 1 TiB array costs memory only for what is installed. Huge pages are
        # reserved instead: an install must never find the pool empty halfway through a scan.
        try:
            return uffd.map_shared(self.memfd, self.length, prot=uffd.PROT_READ, address=address,
                                   reserve=bool(self.huge_page))
        except OSError as exc:
            if not self.huge_page or exc.errno != errno.ENOMEM:
                raise
            need = self.length // self.huge_page
            _, free = uffd.huge_pages()
            raise HugePagesUnavailableError(
                f"huge_pages=True needs {need} free huge pages of {self.huge_page >> 20} MiB for this "
                f"array, the pool has {free} free and unreserved: reserve more (sysctl vm.nr_hugepages) "
                "or open it without huge pages"
            ) from exc

    @property
    def usable(self) -> bool:
        return not self.closed and self.address != 0

    def remap_in_child(self, client: MonitorClient) -> None:
        """In a forked child: map the memfd again at the same address, register it with ``client``."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        self._map(self.address)
        self.pid = os.getpid()  # from here on the mapping is this process's to undo
        uffd.madvise(self.address, self.length, uffd.MADV_DONTFORK)
        uffd.register(client.uffd, self.address, self.length, _register_mode(self.zero_copy))
        self.client = client

    def forget_in_child(self) -> None:
        """In a forked child that cannot serve the region: leave its address unmapped for good, so
        a touch is a SIGSEGV rather than a read of unregistered (zero) pages."""
        if self.pid == os.getpid() and self.address:
            uffd.unmap(self.address, self.length)
        self.closed = True
        self.address = 0

    def announce(self, *, source: Any, chunk_size: int, url: str, readahead: int,
                 max_resident: int | None, max_in_flight: int | None = None) -> None:
        """Tell the monitor how to fill this region (its ``Source``, units of ``chunk_size``);
        faults can be served once this returns."""
        self._description = {"source": source, "chunk_size": chunk_size, "url": url,
                             "readahead": readahead, "max_resident": max_resident, "max_in_flight": max_in_flight}
        self.client.request("register", fds=(self.memfd,), **self._register_args())

    def announce_again(self, control: socket.socket) -> None:
        """Hand the region to a new monitor (the last one died; ``control`` reaches the new one):
        it keeps the complete chunks and wakes readers blocked on faults the dead one never
        served. Under the region's lock, so that a ``release`` racing with it sends its ``close``
        after this ``register``."""
        with self._lock:
            if self._description is None or not self.usable:
                return
            self.client._request_here("register", fds=(self.memfd,), control=control, restore=True,
                                      **self._register_args())

    def _register_args(self) -> dict[str, Any]:
        assert self._description is not None
        return {"client": self.client.uffd_key, "region_id": self.region_id, "start": self.address,
                "length": self.length, "nbytes": self.nbytes, **self._description, "zero_copy": self.zero_copy,
                "page_size": self.page_size}

    def buffer(self) -> memoryview:
        """A read-only buffer over the region whose owner keeps this Region alive."""
        raw = (ctypes.c_char * self.length).from_address(self.address)
        raw._lazymem_region = self  # type: ignore[attr-defined]
        finalizer = weakref.finalize(raw, self.release)
        finalizer.atexit = False  # at exit the monitor sees EOF and the kernel frees the rest
        # Read-only export: an ndarray over it can never be made writeable (the mapping is PROT_READ,
        # a write would segfault).
        return memoryview(raw).cast("B").toreadonly()

    def request(self, op: str, **args: Any) -> Any:
        return self.client.request(op, client=self.client.uffd_key, region_id=self.region_id, **args)

    def release(self) -> None:
        """Forget the region in the monitor, then unmap it. Idempotent; a no-op in a forked child."""
        with self._lock:
            if self.closed or os.getpid() != self.pid:
                return
            self.closed = True
        try:
            if self.client.alive():
                self.request("close")
        except Exception:  # noqa: BLE001 - a dead monitor: nothing can install here any more
            pass
        self._unmap()

    def _unmap(self) -> None:
        if self.address:
            uffd.release(self.client.uffd, self.address, self.length)
            self.address = 0
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1

"""The app's side of one lazily loaded array: a memfd, its read-only mapping, its registration.

The mapping's lifetime is tied to a ctypes buffer object that the ndarray (and every view of it)
keeps alive through ``.base``; when the last view dies, a finalizer tells the monitor to forget
the region (and waits until no install can still land there), then unregisters and unmaps it.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import weakref
from typing import Any

from .kernel import userfaultfd as uffd
from .monitor.client import MonitorClient

_region_ids = itertools.count(1)
_live: weakref.WeakSet[Region] = weakref.WeakSet()


def _register_mode(client: MonitorClient) -> int:
    # MINOR too for zero-copy installs: the monitor fills the memfd's page cache itself, and the
    # app must fault on those pages (and wait) until UFFDIO_CONTINUE says a whole chunk is there.
    mode = uffd.UFFDIO_REGISTER_MODE_MISSING
    return mode | uffd.UFFDIO_REGISTER_MODE_MINOR if client.zero_copy else mode


def live_regions() -> list[Region]:
    """Regions whose arrays are still alive (a forked child maps these again)."""
    return list(_live)


class Region:
    """``length`` bytes of lazily filled, read-only memory at ``address``."""

    def __init__(self, client: MonitorClient, nbytes: int, name: str = "lazymem") -> None:
        self.client = client
        self.nbytes = nbytes
        self.length = uffd.round_up(max(nbytes, 1))
        self.region_id = next(_region_ids)
        self.pid = os.getpid()
        self.memfd = os.memfd_create(name[:200], os.MFD_CLOEXEC)
        self.address = 0
        self.closed = False
        self._lock = threading.Lock()
        try:
            os.ftruncate(self.memfd, self.length)
            # MAP_NORESERVE: a 1 TiB array costs memory only for what is installed.
            self.address = uffd.map_shared(self.memfd, self.length, prot=uffd.PROT_READ)
            # A forked child must never see this range unregistered (it would read zeros, and with
            # a memfd put zero pages into the shared page cache): make the child not inherit it.
            uffd.madvise(self.address, self.length, uffd.MADV_DONTFORK)
            uffd.register(client.uffd, self.address, self.length, _register_mode(client))
        except BaseException:
            self._unmap()
            raise
        _live.add(self)

    @property
    def usable(self) -> bool:
        return not self.closed and self.address != 0

    def remap_in_child(self, client: MonitorClient) -> None:
        """In a forked child: map the memfd again at the same address, register it with ``client``."""
        self._lock = threading.Lock()  # another thread may have held it at the fork
        uffd.map_shared(self.memfd, self.length, prot=uffd.PROT_READ, address=self.address)
        self.pid = os.getpid()  # from here on the mapping is this process's to undo
        uffd.madvise(self.address, self.length, uffd.MADV_DONTFORK)
        uffd.register(client.uffd, self.address, self.length, _register_mode(client))
        self.client = client

    def forget_in_child(self) -> None:
        """In a forked child that cannot serve the region: leave its address unmapped for good, so
        a touch is a SIGSEGV rather than a read of unregistered (zero) pages."""
        if self.pid == os.getpid() and self.address:
            uffd.unmap(self.address, self.length)
        self.closed = True
        self.address = 0

    def announce(self, *, reader: Any, data_offset: int, chunk_size: int, url: str, readahead: int,
                 max_resident: int | None, max_in_flight: int | None = None) -> None:
        """Tell the monitor how to fill this region; faults can be served once this returns."""
        self.client.request(
            "register",
            fds=(self.memfd,),
            client=self.client.uffd_key,
            region_id=self.region_id,
            start=self.address,
            length=self.length,
            nbytes=self.nbytes,
            data_offset=data_offset,
            chunk_size=chunk_size,
            reader=reader,
            url=url,
            readahead=readahead,
            max_resident=max_resident,
            max_in_flight=max_in_flight,
            zero_copy=self.client.zero_copy,
        )

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
            try:
                uffd.unregister(self.client.uffd, self.address, self.length)
            except OSError:
                pass
            uffd.unmap(self.address, self.length)
            self.address = 0
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1

"""Page-aligned scratch buffers that chunks are decompressed into before ``UFFDIO_COPY``.

Anonymous mappings rather than bytearrays: they are page aligned, and reusing them means the
kernel does not have to zero fresh pages for every chunk (first touch of new memory is slow here).
"""

from __future__ import annotations

import ctypes
import mmap
import threading


class Buffer:
    __slots__ = ("address", "mapping", "size", "view")

    def __init__(self, size: int) -> None:
        self.size = size
        self.mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.mapping)
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.mapping))

    def zero(self, start: int, stop: int) -> None:
        ctypes.memset(self.address + start, 0, stop - start)


class BufferPool:
    """Keeps a few idle buffers of each size (chunk sizes differ between arrays)."""

    def __init__(self, keep_per_size: int = 8) -> None:
        self._idle: dict[int, list[Buffer]] = {}
        self._lock = threading.Lock()
        self._keep = keep_per_size

    def get(self, size: int) -> Buffer:
        with self._lock:
            idle = self._idle.get(size)
            if idle:
                return idle.pop()
        return Buffer(size)

    def put(self, buf: Buffer) -> None:
        with self._lock:
            idle = self._idle.setdefault(buf.size, [])
            if len(idle) < self._keep:
                idle.append(buf)

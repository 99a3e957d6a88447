"""Plain local files: the one test that says "this is a local file", and a per-process descriptor.

A plain local file is read with ``pread`` on a descriptor kept open (not through fsspec),
mapped for eager loads, served by the kernel's own mapping when it is an uncompressed ``.npy``,
and read ahead further than a network object. Every one of those choices asks
:func:`is_local_file`, so they cannot disagree.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from fsspec.implementations.local import LocalFileSystem

__all__ = ["LocalFile", "is_local_file"]


def is_local_file(fs: Any) -> bool:
    """Whether ``fs`` is fsspec's plain local filesystem (``/path``, ``file://``, ``local://``).

    Subclasses do not count: they may do more than read the file (count requests, inject
    failures, cache), and reading past them with ``pread`` or a mapping would skip that.
    Wrappers (``simplecache::``, ``dir::``) do not count either: their paths are their own.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The filesystem an object was opened on.

    Returns
    -------
    bool
    """
    return type(fs) is LocalFileSystem


class LocalFile:
    """A read-only descriptor on a local file, for one process.

    ``pread`` of a 1.6 MB frame costs 0.3 ms where fsspec's ``cat_file`` (open, seek, read,
    close) costs 1.3 ms. Reading one inode for the owner's life is also what ``np.memmap`` does:
    a file replaced while an array is open is not mixed into it (one deleted before the first
    read is still a ``FileNotFoundError``). The descriptor closes when the object is collected.
    """

    def __init__(self, path: str) -> None:
        self.pid = os.getpid()
        """The process the descriptor belongs to (a forked child must open its own)."""
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._finalizer = weakref.finalize(self, os.close, self.fd)

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``, fewer only at the end of the file (the caller checks)."""
        data = os.pread(self.fd, end - start, start)
        if len(data) < end - start:  # at the end of the file, or a range larger than one read returns
            parts = [data]
            done = len(data)
            while done < end - start:
                part = os.pread(self.fd, end - start - done, start + done)
                if not part:
                    break
                parts.append(part)
                done += len(part)
            data = b"".join(parts)
        return data

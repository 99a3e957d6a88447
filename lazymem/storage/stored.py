"""One object in storage, opened for reading byte ranges: what every source reads through."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from lazymem.errors import FormatError

from ..errors import ArrayNotFoundError
from .errors import check_length, storage_errors
from .local import LocalFile, is_local_file
from .ranges import plan_runs
from .retry import cat_ranges_with_retries, with_retries

__all__ = ["StoredObject", "checked_size"]


def checked_size(path: str, size: int | None) -> int:
    """``size`` as an int, refusing an object of unknown size or an empty one (``FormatError``)."""
    if size is None:
        raise FormatError(f"{path}: storage does not report the object's size")
    if int(size) == 0:
        raise FormatError(f"{path}: the file is empty")
    return int(size)


class StoredObject:
    """An object on an fsspec filesystem, of a known size, read by exact byte ranges.

    Every read is exact (fewer bytes than asked is a ``TruncatedFileError``), sent again on
    transient failures (:mod:`lazymem.storage.retry`), and its errors are lazymem's
    (:func:`~lazymem.storage.errors.storage_errors`). A plain local file is read through one
    descriptor per process (:class:`~lazymem.storage.local.LocalFile`), opened at the first read.

    Pickles as the filesystem, the path and the size (the monitor receives sources pickled); the
    descriptor stays behind, and the process that unpickles opens its own.
    """

    fs: Any
    """The fsspec filesystem."""
    path: str
    """Path of the object on ``fs``, as messages name it."""
    size: int
    """Stored size of the object in bytes, as known at open."""

    def __init__(self, fs: Any, path: str, size: int) -> None:
        self.fs = fs
        self.path = path
        self.size = size

    @classmethod
    def open(cls, fs: Any, path: str, size: int | None = None) -> StoredObject:
        """The object at ``path``, asking storage for its size unless given.

        Raises
        ------
        ArrayNotFoundError, FetchError
            No such object, or storage failed.
        FormatError
            The object is empty, or storage does not report its size.
        """
        if size is None:
            with storage_errors(path):
                size = with_retries(fs.size, path)
        return cls(fs, path, checked_size(path, size))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} {self.size} bytes>"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_local", None)  # an open descriptor belongs to one process
        return state

    @property
    def is_local(self) -> bool:
        """Whether the object is a plain local file (see :func:`~lazymem.storage.local.is_local_file`)."""
        return is_local_file(self.fs)

    def duplicate_descriptor(self) -> int:
        """A new descriptor (close-on-exec) on the same open file as reads use: a local file read
        another way (mapped, ``preadv``) is still the inode this object has read from.

        Raises
        ------
        ValueError
            The object is not a plain local file.
        ArrayNotFoundError
            The file is gone (and was never opened).
        """
        local = self._local_file()
        if local is None:
            raise ValueError(f"{self.path}: not a plain local file")
        return os.dup(local.fd)

    def _local_file(self) -> LocalFile | None:
        if not self.is_local:
            return None
        local: LocalFile | None = self.__dict__.get("_local")
        if local is None or local.pid != os.getpid():
            with storage_errors(self.path):
                local = LocalFile(self.path)
            self._check_identity(local)
            self.__dict__["_local"] = local
        return local

    def _check_identity(self, local: LocalFile) -> None:
        """The first descriptor opened (the app's, at ``open``) names the file; every later one
        (the monitor's, a forked child's) must reach that same file, unchanged. A file replaced or
        rewritten meanwhile would be read with the first one's seek table: refused instead, as
        ``np.memmap`` keeps reading the file it mapped rather than another."""
        st = os.fstat(local.fd)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        known = self.__dict__.setdefault("identity", identity)
        if tuple(known) != identity:
            raise ArrayNotFoundError(
                f"{self.path}: the file was replaced or changed since the array was opened (inode, size or "
                "modification time differ): open it again to read the new file"
            )

    def read(self, start: int, end: int) -> bytes:
        """Stored bytes ``[start, end)``, exactly, in one request.

        Raises
        ------
        ArrayNotFoundError
            The object is gone.
        FetchError
            Storage failed (after the retries; the cause is chained).
        TruncatedFileError
            Storage returned fewer bytes than asked: the object is shorter than that now.
        """
        local = self._local_file()
        with storage_errors(self.path):
            if local is not None:
                data = local.read(start, end)
            else:
                data = with_retries(self.fs.cat_file, self.path, start=start, end=end)
        check_length(data, self.path, self.size, start, end)
        return data

    def read_ranges(self, ranges: Sequence[tuple[int, int]], *, max_gap: int = 0,
                    max_run_bytes: int | None = None) -> list[memoryview]:
        """Stored bytes of several ranges, coalesced into few requests (see :func:`~lazymem.storage.ranges.plan_runs`).

        Async filesystems (S3, HTTP) send the requests concurrently (``fs.cat_ranges``), and send
        again, alone, those that failed transiently; local files read them one by one.

        Parameters
        ----------
        ranges : sequence of (int, int)
            ``[start, end)`` ranges, in any order.
        max_gap : int
            Bytes between two ranges worth reading (and discarding) to save a request.
        max_run_bytes : int, optional
            Split requests larger than this, so that async filesystems fetch the pieces concurrently.

        Returns
        -------
        list of memoryview
            The bytes of each range, in the order of ``ranges`` (views into the requests' blobs).

        Raises
        ------
        ArrayNotFoundError, FetchError, TruncatedFileError
            As for :meth:`read`.
        """
        runs = plan_runs(ranges, max_gap, max_run_bytes)
        blobs = self._read_runs([(run.start, run.end) for run in runs])
        views: list[memoryview] = [memoryview(b"")] * len(ranges)
        for run, blob in zip(runs, blobs):
            whole = memoryview(blob)
            for k in run.members:
                start, end = ranges[k]
                views[k] = whole[start - run.start : end - run.start]
        return views

    def _read_runs(self, runs: Sequence[tuple[int, int]]) -> list[bytes]:
        if len(runs) == 1 or self.is_local:
            return [self.read(start, end) for start, end in runs]
        with storage_errors(self.path):
            results = cat_ranges_with_retries(self.fs, self.path, runs)
        for data, (start, end) in zip(results, runs):
            check_length(data, self.path, self.size, start, end)
        return results

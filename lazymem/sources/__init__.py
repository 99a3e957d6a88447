"""Sources: one reader per storage format, each a flat byte-range reader over fsspec.

:func:`open_source` picks the reader from the object's own bytes, not from its name.
"""

from __future__ import annotations

from typing import Any

import fsspec

from lazymem.errors import FormatError
from lazymem.storage import StoredObject, checked_size, is_local_file, storage_errors
from lazymem.storage.remote import size_and_tail

from .frames import FramedSource, FrameTable
from .npy_header import MAGIC_PREFIX, NpyHeader, npy_header_bytes, parse_npy_header
from .raw_npy import RawNpyReader
from .seekable_zstd import (
    FOOTER_SIZE,
    SEEKABLE_MAGIC,
    SKIPPABLE_MAGIC_BASE,
    SKIPPABLE_MAGIC_MASK,
    TAIL_READ,
    ZSTD_MAGIC,
    SeekableZstdReader,
    parse_seek_table,
)

__all__ = [
    "FrameTable",
    "FramedSource",
    "NpyHeader",
    "RawNpyReader",
    "SeekableZstdReader",
    "absolute_url",
    "npy_header_bytes",
    "open_source",
    "open_source_from_storage",
    "parse_npy_header",
    "parse_seek_table",
]


def _describe_start(head: bytes) -> str:
    """Name what the first bytes of an unreadable object look like, for the error message."""
    if len(head) >= 4:
        magic = int.from_bytes(head[:4], "little")
        if magic == ZSTD_MAGIC or magic & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC_BASE:
            return (
                "it is a zstd file without a seek table at its end: either a plain (non-seekable) zstd "
                "file or a truncated one. Write arrays with lazymem.save (or any zstd seekable-format "
                "writer, e.g. pyzstd.SeekableZstdFile)"
            )
    return f"it is neither a seekable zstd file nor a .npy file (it starts with {head[:8]!r})"


def absolute_url(url: str) -> str:
    """``url`` with a relative local path made absolute (``x.npy.zst``, ``file://x.npy.zst``).

    An array pickles by URL and is opened again in another process, whose working directory
    may differ: the URL must not depend on this one's. Other URLs are returned as they are."""
    from fsspec.implementations.local import make_path_posix

    protocol, path = fsspec.core.split_protocol(url)
    if protocol is None:
        return str(make_path_posix(path))
    if protocol in ("file", "local"):
        return f"{protocol}://{make_path_posix(path)}"
    return url


def _full_path(fs: Any, path: str, url: str) -> str:
    """``path`` with its protocol (``s3://bucket/key``, not ``bucket/key``) for object stores, so that
    every message names the object as the user wrote it; their filesystems accept both forms."""
    if is_local_file(fs) or "::" in url or "://" in path:
        return path  # local, chained caches (their path is the cache's), HTTP (a URL already)
    return str(fs.unstrip_protocol(path))


def open_source(url: str, storage_options: dict[str, Any] | None = None) -> FramedSource:
    """Open the array at ``url`` for reading byte ranges of its ``.npy`` stream.

    Seekable zstd files (the native ``.npy.zst`` format and any other seekable-format writer's)
    give a :class:`SeekableZstdReader`; plain ``.npy`` files a :class:`RawNpyReader`.

    Parameters
    ----------
    url : str
        Anything fsspec reaches: a local path, ``file://``, ``s3://``, ``https://``, ``memory://``,
        chained URLs.
    storage_options : dict, optional
        Passed to the filesystem (credentials, endpoint...).

    Returns
    -------
    FramedSource
        A reader with ``table``, ``header``, ``fetch``, ``decompress_into`` and ``read_into``.

    Raises
    ------
    ArrayNotFoundError
        Nothing at ``url`` (also a ``FileNotFoundError``).
    FetchError
        Storage failed.
    FormatError
        Empty object, unknown format, or a damaged file (subclasses say which part).
    """
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    path = _full_path(fs, path, url)
    with storage_errors(path):
        # HTTP and S3: one suffix-range GET gives the size and the tail (no HEAD first).
        reported, tail = size_and_tail(fs, path, TAIL_READ)
    size = checked_size(path, reported)
    return open_source_from_storage(StoredObject(fs, path, size), None, tail)


def open_source_from_storage(storage: StoredObject, head: bytes | None, tail: bytes | None) -> FramedSource:
    """:func:`open_source` of an object already found, with what was read of it (``head``: its
    first bytes, ``tail``: its last ``TAIL_READ`` bytes or all of it; None where not read)."""
    size = storage.size
    # The tail is needed anyway for a seekable file, and tells it apart in the same request.
    if tail is None:
        tail = storage.read(size - min(size, TAIL_READ), size)
    if len(tail) >= FOOTER_SIZE and int.from_bytes(tail[-4:], "little") == SEEKABLE_MAGIC:
        return SeekableZstdReader.from_storage(storage, tail=tail)
    whole = len(tail) == size
    if head is None or len(head) < min(size, 16):
        head = tail[:16] if whole else storage.read(0, min(size, 16))
    if head[: len(MAGIC_PREFIX)] == MAGIC_PREFIX:
        return RawNpyReader.from_storage(storage, head=tail if whole else None)
    raise FormatError(f"{storage.path}: cannot read this file: {_describe_start(head)}")

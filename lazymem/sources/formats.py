"""Which format a URL holds, found from its bytes: the one place that routes URLs to sources.

``open``, ``load``, ``open_group`` and the CLI ask :func:`open_array_source` (one array) and
:func:`open_listing` (a group: its arrays and attributes); nothing else in lazymem looks at a URL
to decide a format. Adding a format is one entry in :data:`FILE_FORMATS` (single-file formats,
told apart by their first bytes) or a store probe such as :func:`_zarr_source`.

Detection costs few requests: a URL is first read as a file (one suffix GET over HTTP and S3,
which the native format needs anyway); a URL that is no file (a directory, a prefix in an object
store, a 404) or whose bytes no file format claims is then tried as a zarr store (zarr-python
reads ``zarr.json`` / ``.zarray`` / ``.zgroup``). A URL ending in ``.zarr`` is tried as a store
first: that saves the failed file read, and a store whose metadata is missing still falls back.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fsspec

from lazymem.errors import ArrayNotFoundError, FormatError
from lazymem.storage import StoredObject, checked_size, is_local_file, storage_errors
from lazymem.storage.remote import size_and_tail

from .base import Source

HEAD_BYTES = 16
"""Bytes of a file's start every sniffer gets (signatures are shorter)."""


@dataclass(frozen=True)
class FileFormat:
    """A single-file format: how to recognise it and where its opener lives (imported on use, so
    that its optional dependencies load only for files that need them)."""

    name: str
    sniff: Callable[[bytes], bool]
    """True if a file starting with these bytes (at least :data:`HEAD_BYTES` when it has them) is
    of this format."""
    opener: str
    """``"module:function"``: ``function(storage, url, path, storage_options) -> Source``."""
    lister: str | None = None
    """``"module:function"``: ``function(storage, url, storage_options) -> Listing``, for
    :func:`lazymem.open_group`; None for formats holding one array."""


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

FILE_FORMATS: list[FileFormat] = [
    FileFormat("hdf5", lambda head: head.startswith(HDF5_SIGNATURE),
               "lazymem.sources.hdf5:open_hdf5", "lazymem.sources.hdf5:list_hdf5"),
    FileFormat("netcdf3", lambda head: head[:3] == b"CDF" and head[3:4] in (b"\x01", b"\x02", b"\x05"),
               "lazymem.sources.netcdf3:open_netcdf3", "lazymem.sources.netcdf3:list_netcdf3"),
]
"""Single-file formats other than the native one (seekable zstd / ``.npy``, recognised first)."""


@dataclass(frozen=True)
class ArrayInfo:
    """What a group listing says of one array without opening it."""

    shape: tuple[int, ...]
    dtype: Any
    attrs: dict[str, Any] = field(default_factory=dict)
    dimension_names: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Listing:
    """A group's arrays (relative, "/"-separated paths) and its own attributes."""

    arrays: dict[str, ArrayInfo]
    attrs: dict[str, Any]
    format: str


def _load(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def is_zarr_url(url: str) -> bool:
    """A URL that names a zarr store by its suffix (a hint: the content still decides)."""
    return url.rstrip("/").lower().endswith(".zarr")


def split_store_url(url: str, path: str | None) -> tuple[str, str | None]:
    """``https://h/x.zarr/t2m`` names array ``t2m`` of store ``https://h/x.zarr``."""
    if path is None and ".zarr/" in url:
        at = url.index(".zarr/") + len(".zarr")
        return url[:at], url[at + 1 :].strip("/") or None
    return url, path


@dataclass
class _File:
    """A URL read as a file: its storage and first bytes, or why it is not one."""

    storage: StoredObject | None
    head: bytes
    tail: bytes | None
    missing: ArrayNotFoundError | None = None


def _probe_file(url: str, storage_options: dict[str, Any] | None) -> _File:
    from . import _full_path  # the same naming of objects as every other message

    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    path = _full_path(fs, path, url)
    try:
        with storage_errors(path):
            if is_local_file(fs) and os.path.isdir(path):  # a local store: fs.size is the inode's
                raise FileNotFoundError(f"{path} is a directory")
            reported, tail = size_and_tail(fs, path, _tail_read())
            if reported is None:  # object stores report prefixes ("directories") without a size
                raise FileNotFoundError(f"{path} has no size: not a file")
    except ArrayNotFoundError as exc:
        return _File(None, b"", None, missing=exc)
    size = checked_size(path, reported)
    storage = StoredObject(fs, path, size)
    if tail is not None and len(tail) == size:
        return _File(storage, tail[:HEAD_BYTES], tail)
    if tail is not None and _is_seekable_tail(tail):
        return _File(storage, b"", tail)  # the native format: its tail says all, no second request
    return _File(storage, storage.read(0, min(size, HEAD_BYTES)), tail)


def _is_seekable_tail(tail: bytes) -> bool:
    from .seekable_zstd import FOOTER_SIZE, SEEKABLE_MAGIC

    return len(tail) >= FOOTER_SIZE and int.from_bytes(tail[-4:], "little") == SEEKABLE_MAGIC


def _tail_read() -> int:  # imported on use: sources/__init__ imports this module
    from .seekable_zstd import TAIL_READ

    return TAIL_READ


def _zarr_source(url: str, path: str | None, storage_options: dict[str, Any] | None) -> Source:
    from .zarr_array import ZarrSource

    return ZarrSource(url, path, storage_options)


def open_array_source(url: str, path: str | None = None,
                      storage_options: dict[str, Any] | None = None) -> Source:
    """The source of the array at ``url`` (and ``path`` inside a group or file), whatever its format.

    Raises
    ------
    ArrayNotFoundError
        Nothing at ``url``, or no array at ``path``.
    FormatError
        No format lazymem reads.
    """
    from .flat import FlatSource

    url, path = split_store_url(url, path)
    if is_zarr_url(url):
        try:
            return _zarr_source(url, path, storage_options)
        except ArrayNotFoundError:
            if path is not None:
                raise
    probe = _probe_file(url, storage_options)
    if probe.storage is None:
        try:
            return _zarr_source(url, path, storage_options)
        except ArrayNotFoundError:
            if path is not None:
                raise  # the store's own message: the arrays there are
            assert probe.missing is not None
            raise probe.missing from None
    for fmt in FILE_FORMATS:
        if probe.head and fmt.sniff(probe.head):
            return _load(fmt.opener)(probe.storage, url, path, storage_options)  # type: ignore[no-any-return]
    from . import open_source_from_storage

    try:
        reader = open_source_from_storage(probe.storage, probe.head or None, probe.tail)
    except FormatError:
        try:  # a store whose URL answered as something else (an HTML directory listing)
            return _zarr_source(url, path, storage_options)
        except (ArrayNotFoundError, FormatError):
            pass
        raise
    if path is not None:
        raise FormatError(f"{url}: a {reader.format_name} file holds one array; path={path!r} does not apply")
    return FlatSource(reader, url)


def open_listing(url: str, storage_options: dict[str, Any] | None = None) -> Listing:
    """The arrays and attributes of the group at ``url`` (a zarr group, an HDF5/NetCDF file)."""
    if not is_zarr_url(url):
        probe = _probe_file(url, storage_options)
        if probe.storage is not None:
            for fmt in FILE_FORMATS:
                if fmt.sniff(probe.head) and fmt.lister is not None:
                    return _load(fmt.lister)(probe.storage, url, storage_options)  # type: ignore[no-any-return]
            raise FormatError(f"{url}: a single array, not a group: open it with lazymem.open")
    from .zarr_array import list_zarr

    return list_zarr(url, storage_options)

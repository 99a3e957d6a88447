"""What object storage needs beyond fsspec's defaults.

* :func:`size_and_tail`: the object's size and its last bytes in *one* request. fsspec asks for
  the size first (a HEAD), then for the tail; a suffix range (``Range: bytes=-N``) returns the tail
  and, in ``Content-Range``, the size. With the header frame that makes ``open`` two requests.
* :func:`check_shareable`: a filesystem that lives inside this process (``memory://``) cannot be
  read by the monitor process; say so at ``open`` rather than fail at the first touch.
* :func:`default_max_in_flight`: how many chunk loads of one array may wait on storage at once.
* :func:`share_whole_file_cache`: ``simplecache::`` downloads the object once, for the app and
  the monitor process together.
"""

from __future__ import annotations

import sys
from typing import Any

from lazymem.errors import UnsupportedStorageError

from .local import is_local_file
from .retry import http_status, with_retries

__all__ = ["REMOTE_MAX_IN_FLIGHT", "check_shareable", "default_max_in_flight", "share_whole_file_cache",
           "size_and_tail"]

REMOTE_MAX_IN_FLIGHT = 16
"""Default requests in flight per array on network filesystems (S3, HTTP...)."""


def _filesystem_class(module: str, name: str) -> type | None:
    # Only look at libraries already imported: a filesystem of that kind imported its own module.
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def _total_from_content_range(value: str | None) -> int | None:
    """The object size in ``bytes 0-9/10`` or ``bytes */10``; None if absent or ``*``."""
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


async def _http_suffix(fs: Any, url: str, length: int) -> tuple[int, bytes] | None:
    kwargs = dict(fs.kwargs)
    headers = dict(kwargs.pop("headers", None) or {})
    headers["Range"] = f"bytes=-{length}"
    headers["Accept-Encoding"] = "identity"  # Content-Range must count stored bytes
    session = await fs.set_session()
    async with session.get(fs.encode_url(url), headers=headers, **kwargs) as response:
        if response.status == 404:
            raise FileNotFoundError(url)
        if response.status == 416:  # an empty object has no suffix; other answers: ask the usual way
            return (0, b"") if _total_from_content_range(response.headers.get("Content-Range")) == 0 else None
        response.raise_for_status()
        if response.status == 206:
            total = _total_from_content_range(response.headers.get("Content-Range"))
            if total is not None:
                return total, await response.read()
        elif response.content_length is not None and response.content_length <= length:
            body = await response.read()  # the server ignores Range, but the whole object is small
            return len(body), body
    return None  # ignores Range on a big object, or no size: the caller asks the usual way


async def _s3_suffix(fs: Any, path: str, length: int) -> tuple[int, bytes] | None:
    bucket, key, version = fs.split_path(path)
    extra = {"VersionId": version} if version else {}
    try:
        response = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes=-{length}", **extra)
    except OSError as exc:
        if http_status(exc) == 416:
            return None  # an empty object: let the usual way report it
        raise
    try:
        body = await response["Body"].read()
    finally:
        response["Body"].close()
    total = _total_from_content_range(response.get("ContentRange"))
    if total is None and len(body) < length:
        total = len(body)  # the whole object came back
    return (total, body) if total is not None else None


def size_and_tail(fs: Any, path: str, length: int) -> tuple[int | None, bytes | None]:
    """The size of ``path`` and, where one request gives both, its last ``min(length, size)`` bytes.

    HTTP(S) and S3 filesystems send one ranged GET; other filesystems (local files, chained
    caches) return ``(fs.size(path), None)`` and the caller reads the tail itself. Transient
    failures are retried; storage exceptions are left for the caller to translate.
    """
    from fsspec.asyn import sync

    http = _filesystem_class("fsspec.implementations.http", "HTTPFileSystem")
    s3 = _filesystem_class("s3fs", "S3FileSystem")
    probe: Any = None
    if http is not None and isinstance(fs, http):
        probe = _http_suffix
    elif s3 is not None and isinstance(fs, s3):
        probe = _s3_suffix
    if probe is not None:
        found = with_retries(lambda: sync(fs.loop, probe, fs, path, length))
        if found is not None and len(found[1]) == min(length, found[0]):
            return found
    return with_retries(fs.size, path), None


def _process_local(fs: Any) -> str | None:
    """The protocol of ``fs`` (or of a filesystem it wraps) if it exists in this process alone."""
    memory = _filesystem_class("fsspec.implementations.memory", "MemoryFileSystem")
    for _ in range(8):  # simplecache::memory://, dir::memory://... wrap it
        if fs is None:
            return None
        if memory is not None and isinstance(fs, memory):
            return "memory"
        fs = getattr(fs, "fs", None)
    return None


def check_shareable(fs: Any, url: str) -> None:
    """Refuse a filesystem the monitor process cannot see (``memory://``) with a clear message.

    Raises
    ------
    UnsupportedStorageError
        ``fs`` holds its files in this process's memory.
    """
    protocol = _process_local(fs)
    if protocol is not None:
        raise UnsupportedStorageError(
            f"{url}: lazymem.open cannot serve arrays from {protocol}:// storage: chunks are loaded by a "
            f"separate monitor process, which cannot see this process's {protocol} filesystem. Use "
            "lazymem.load() to read the array eagerly, or save it to a file or object store first."
        )


def default_max_in_flight(fs: Any) -> int | None:
    """Chunk loads of one array allowed to wait on storage at once: a bound for network
    filesystems, none (the monitor's worker count) for local files."""
    return None if is_local_file(fs) else REMOTE_MAX_IN_FLIGHT


def share_whole_file_cache(fs: Any) -> None:
    """Make the monitor reuse the app's ``simplecache::`` download instead of making its own.

    With its default ``cache_storage="TMP"`` a simplecache filesystem downloads into a temporary
    directory of its own instance; the copy unpickled in the monitor made another one and
    downloaded the whole object again on the first touch. Naming the app's directory in the
    options the filesystem pickles with makes both processes use one cache (files are named by
    a hash of the URL). The app's instance still owns the directory and removes it when it goes.
    ``blockcache::`` and ``filecache::`` keep a cache per process (blockcache fetches only the
    blocks read, filecache keeps metadata that two processes would both write).
    """
    simplecache = _filesystem_class("fsspec.implementations.cached", "SimpleCacheFileSystem")
    for _ in range(8):  # the cache may sit under other wrappers
        if fs is None:
            return
        if simplecache is not None and isinstance(fs, simplecache):
            cache: Any = fs
            if cache.storage_options.get("cache_storage", "TMP") == "TMP":
                cache.storage_options = {**cache.storage_options, "cache_storage": cache.storage[-1]}
            return
        fs = getattr(fs, "fs", None)

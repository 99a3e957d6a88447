"""Zarr arrays (v2, v3, sharded) behind the :class:`~lazymem.sources.base.Source` interface.

zarr-python does the format's work: metadata, chunk keys, the codec pipeline (sharding included),
fill values for missing chunks. This module only says what the array is and decodes chunks, each
through zarr's public ``get_basic_selection`` of the chunk's box; the N-d engine (which chunks a
unit meets, the decoded-chunk cache, unit sizing, the reader's page first) is
:class:`~lazymem.sources.chunk_grid.ChunkGridSource`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np

from ..errors import ArrayNotFoundError, CorruptChunkError, FetchError, FormatError, LazymemError
from . import zarr_meta
from .base import Order, SourceHints
from .boxes import box_shape
from .chunk_grid import ChunkGridSource, ChunkRead

LOCAL_READS = 4
"""Chunks decoded at once from local storage (zarr's codecs release the GIL)."""
REMOTE_READS = 16
"""Chunks fetched at once over a network: latency hidden by concurrency."""
_POOL_LOCK = threading.Lock()


def _zarr() -> Any:
    try:
        import zarr
    except ImportError:
        raise ImportError("reading zarr arrays needs zarr-python: pip install 'lazymem[zarr]'") from None
    return zarr


def array_paths(group: Any) -> list[str]:
    """Paths (relative, "/"-separated, nested groups included) of every array in a zarr group."""
    return sorted(name for name, node in group.members(max_depth=None) if not hasattr(node, "members"))


def _dimension_names(array: Any) -> tuple[str, ...] | None:
    """zarr v3 ``dimension_names``, else the v2 (xarray) convention ``_ARRAY_DIMENSIONS``."""
    names = getattr(array.metadata, "dimension_names", None)
    if names is None:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
    if names is None or len(names) != len(array.shape) or any(n is None for n in names):
        return None
    return tuple(str(n) for n in names)


def _store_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    return {"storage_options": storage_options} if storage_options and "://" in url else {}


def list_zarr(url: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The :class:`~lazymem.sources.formats.Listing` of the zarr group at ``url``."""
    from .formats import ArrayInfo, Listing

    zarr = _zarr()
    zarr_meta.check_group(url, storage_options)  # before zarr parses (and instantiates) any codec
    try:
        group = zarr.open_group(store=url, mode="r", **_store_options(url, storage_options))
        arrays = {name: ArrayInfo(tuple(int(n) for n in node.shape), np.dtype(node.dtype), dict(node.attrs),
                                  _dimension_names(node))
                  for name, node in group.members(max_depth=None) if not hasattr(node, "members")}
    except FileNotFoundError as exc:
        raise ArrayNotFoundError(f"{url}: no zarr group ({exc})") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise FormatError(f"{url}: not a readable zarr group ({type(exc).__name__}: {exc})") from exc
    return Listing(dict(sorted(arrays.items())), dict(group.attrs), "zarr")


class ZarrSource(ChunkGridSource):
    """One zarr array, opened read-only through zarr-python (any store fsspec reaches)."""

    def __init__(self, url: str, path: str | None = None, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.path = path
        self.storage_options = storage_options
        self._open()

    def _open(self) -> None:
        # zarr_meta: raw metadata checked before zarr parses it (no codec instantiated unchecked).
        self.path, self.array, self._zarr_doc = zarr_meta.open_checked_array(
            self.url, self.path, self.storage_options, getattr(self, "_zarr_doc", None))
        dtype = np.dtype(self.array.dtype)
        if dtype.hasobject:
            raise FormatError(f"{self.url}: zarr dtype {dtype} holds Python objects, not fixed-size data")
        self._dtype = dtype
        self._observe(_zarr())

    def _observe(self, zarr: Any) -> None:
        """The array again, over its store seen through :class:`ObservedStore` (no new request):
        what chunks cost, which are missing, shard indexes fetched once."""
        from .zarr_store import ObservedStore, ShardLayout

        metadata = self.array.metadata
        self._shape = tuple(int(n) for n in self.array.shape)  # asked on every unit: zarr's are properties
        self._chunks = tuple(int(c) for c in self.array.chunks)
        self._shards = ShardLayout.of(metadata)
        self._store = ObservedStore(self.array.store, self._shards)
        path = zarr.storage.StorePath(self._store, self.array.path)
        self._reader = zarr.Array(zarr.AsyncArray(metadata=metadata, store_path=path))

    def _only_array(self, zarr: Any) -> str:
        """The path of the one array in the group at ``url``; an error listing them otherwise."""
        paths = array_paths(zarr.open_group(store=self.url, mode="r", **self._options()))
        if len(paths) != 1:
            listed = ", ".join(paths) if paths else "none"
            raise FormatError(f"{self.url} is a zarr group holding {len(paths)} arrays ({listed}): "
                              "name one with path=")
        return paths[0]

    def _options(self) -> dict[str, Any]:
        return _store_options(self.url, self.storage_options)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.array.attrs)

    @property
    def dimension_names(self) -> tuple[str, ...] | None:
        return _dimension_names(self.array)

    def __getstate__(self) -> dict[str, Any]:
        # Reopened in the other process: zarr arrays hold event loops and stores that need not pickle.
        return {"url": self.url, "path": self.path, "storage_options": self.storage_options,
                "_zarr_doc": self._zarr_doc}  # checked again, not fetched again (zarr_meta)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open()

    def __repr__(self) -> str:
        return (f"<ZarrSource {self.url!r} path={self.path!r} shape={self.shape} dtype={self.dtype} "
                f"chunks={self.storage_chunks}>")

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def order(self) -> Order:
        # zarr v2 stores F-ordered chunks for order "F": an F-order image keeps them contiguous.
        return "F" if getattr(self.array.metadata, "order", "C") == "F" else "C"

    @property
    def storage_chunks(self) -> tuple[int, ...]:
        return self._chunks

    @property
    def hints(self) -> SourceHints:
        remote = "://" in self.url and not self.url.startswith("file://")
        return SourceHints(remote=remote, max_in_flight=None, local_path=None, unit_bytes=None)

    @property
    def fill_value(self) -> Any:
        fill = self.array.fill_value
        # zarr v2's fill_value null means "undefined": zarr-python reads missing chunks as zeros.
        return np.zeros((), dtype=self.dtype)[()] if fill is None else fill

    def read_chunks(self, coords: Sequence[tuple[int, ...]]) -> Iterator[ChunkRead]:
        """Each chunk decoded by zarr-python (``get_basic_selection`` of its box, into a buffer of
        its own), several at once on a thread pool: zarr's event loop overlaps their fetches."""
        return self._read_concurrently([(c, None) for c in coords])

    def read_chunks_into(self, targets: Sequence[tuple[tuple[int, ...], np.ndarray]]) -> Iterator[ChunkRead]:
        """As :meth:`read_chunks`, zarr decoding each chunk straight into its place in the unit."""
        return self._read_concurrently(targets)

    def _read_concurrently(self, targets: Sequence[tuple[tuple[int, ...], np.ndarray | None]]) -> Iterator[ChunkRead]:
        if len(targets) == 1:
            yield self._read_chunk(*targets[0])
            return
        futures = [self._executor().submit(self._read_chunk, c, out) for c, out in targets]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def _read_chunk(self, coords: tuple[int, ...], out: np.ndarray | None = None) -> ChunkRead:
        from zarr.core.buffer.cpu import NDBuffer

        key, local = self._key(coords)
        if self.chunk_present(coords) is False:
            return ChunkRead(coords, None, 0)
        # Every read, lazy or eager, passes here: the shard holding this chunk has its index checked
        # (once per process) before zarr-python reads from it (zarr_shards).
        from .zarr_shards import check_shard_of

        check_shard_of(self, coords)
        box = self.chunk_box(coords)
        data = np.empty(box_shape(box), dtype=self.dtype, order=self.order) if out is None else out
        try:
            self._reader.get_basic_selection(box, out=NDBuffer.from_numpy_array(data))
        except LazymemError:
            raise
        except OSError as exc:
            raise FetchError(f"{self.url}: cannot fetch chunk {coords}: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise CorruptChunkError(f"{self.url}: chunk {coords} does not decode: {type(exc).__name__}: {exc}") from exc
        fetched, missing = self._store.take(key)
        if missing or (local is not None and self._store.inner_chunk_present(key, local) is False):
            return ChunkRead(coords, None, fetched)  # zarr gave the fill value: no data was fetched
        return ChunkRead(coords, data, fetched)

    def _key(self, coords: tuple[int, ...]) -> tuple[str, tuple[int, ...] | None]:
        """The store key holding chunk ``coords`` (its shard's, if sharded), and its place in the shard."""
        if self._shards is None:
            return self.array.metadata.encode_chunk_key(coords), None
        per = self._shards.chunks_per_shard
        shard = tuple(c // n for c, n in zip(coords, per, strict=True))
        return self.array.metadata.encode_chunk_key(shard), tuple(c % n for c, n in zip(coords, per, strict=True))

    def chunk_present(self, coords: tuple[int, ...]) -> bool | None:
        if self._shards is None:
            return None
        key, local = self._key(coords)
        return self._store.inner_chunk_present(key, local) if local is not None else None

    def _executor(self) -> ThreadPoolExecutor:
        # Per process: a forked child inherits the pool without its threads (work would never run).
        pid, pool = self.__dict__.get("_pool", (0, None))
        if pool is None or pid != os.getpid():
            with _POOL_LOCK:
                pid, pool = self.__dict__.get("_pool", (0, None))
                if pool is None or pid != os.getpid():
                    workers = REMOTE_READS if self.hints.remote else LOCAL_READS
                    pool = ThreadPoolExecutor(workers, thread_name_prefix="lazymem-zarr")
                    self.__dict__["_pool"] = (os.getpid(), pool)
        return pool

    def describe(self) -> dict[str, Any]:
        return zarr_meta.describe_array(self)

"""A zarr array's store as lazymem reads it: what each chunk cost, which chunks are missing, and
each shard's index fetched once.

zarr-python decodes (``get_basic_selection``) and says nothing of what it fetched: it returns the
fill value for a missing chunk, and its sharding codec fetches a shard's index again for every
selection that reads part of the shard. Wrapping the store (zarr's public ``WrapperStore``) shows
us every request without touching zarr's private chunk APIs:

* bytes fetched per key (a chunk's object, or a shard's), taken by the chunk reader afterwards
  (``take``): ``UnitRead.bytes_fetched`` and ``stats().bytes_fetched``;
* keys found missing (the store returned nothing): the chunk is the fill value;
* shard indexes: the request for one (the suffix or prefix of the index's exact size) is answered
  from a bounded cache after the first time, concurrent first requests share one fetch, and a
  whole shard read fills the cache too. :class:`ShardLayout` reads an index's entries, so missing
  inner chunks (offset and size 2^64-1) are known without any fetch.

The coroutines run on zarr's event loop thread; the chunk readers read the books from worker
threads, hence the lock.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.storage import WrapperStore

from ..errors import CorruptChunkError

MISSING_ENTRY = 2**64 - 1
"""An index entry's offset and size for an inner chunk that is not stored."""
INDEXES_KEPT = 4096
"""Shard indexes kept (a 16x16x4 shard's index is 16 KiB: 64 MiB at most)."""
_UNKNOWN = object()


@dataclass(frozen=True, slots=True)
class ShardLayout:
    """Where a shard's index is and how to read its entries (``sharding_indexed`` whose index
    codecs are ``bytes`` and optionally ``crc32c``: what zarr writes; other index codecs are
    left to zarr alone, without index caching)."""

    chunks_per_shard: tuple[int, ...]
    at_start: bool
    """The index is at the start of the shard (else at its end)."""
    little_endian: bool
    checksum: bool
    """A 4-byte crc32c follows the entries."""

    @property
    def index_bytes(self) -> int:
        return 16 * math.prod(self.chunks_per_shard) + 4 * self.checksum

    @classmethod
    def of(cls, metadata: Any) -> ShardLayout | None:
        """The layout of an array's shards, None if it is not sharded that way."""
        codecs: tuple[Any, ...] = tuple(getattr(metadata, "codecs", ()))
        if len(codecs) != 1 or type(codecs[0]).__name__ != "ShardingCodec":
            return None
        codec = codecs[0]
        names = [type(c).__name__ for c in codec.index_codecs]
        if names not in (["BytesCodec"], ["BytesCodec", "Crc32cCodec"]):
            return None
        endian = getattr(codec.index_codecs[0], "endian", None)
        shard_shape = tuple(metadata.chunk_grid.chunk_shape)
        if any(s % c for s, c in zip(shard_shape, codec.chunk_shape, strict=True)):
            return None
        return cls(tuple(s // c for s, c in zip(shard_shape, codec.chunk_shape, strict=True)),
                   str(getattr(codec.index_location, "value", codec.index_location)) == "start",
                   getattr(endian, "value", endian) != "big", len(names) == 2)

    def is_index_request(self, byte_range: Any) -> bool:
        if self.at_start:
            return isinstance(byte_range, RangeByteRequest) and byte_range.start == 0 and \
                byte_range.end == self.index_bytes
        return isinstance(byte_range, SuffixByteRequest) and byte_range.suffix == self.index_bytes

    def check_entry(self, key: str, byte_range: RangeByteRequest) -> None:
        """An inner chunk's range (from the index) must not overlap an index at the shard's start."""
        if self.at_start and byte_range.start < self.index_bytes and not self.is_index_request(byte_range):
            raise CorruptChunkError(f"shard {key}: its index places an inner chunk at bytes "
                                    f"{byte_range.start}..{byte_range.end}, inside the index itself")

    def entry(self, index: bytes, local: tuple[int, ...]) -> tuple[int, int] | None:
        """``(offset, nbytes)`` of the inner chunk at ``local`` (its place in the shard), or None if
        the index is too short to say (zarr raises on it when decoding)."""
        n = math.prod(self.chunks_per_shard)
        if len(index) < 16 * n:
            return None
        entries = np.frombuffer(index, dtype="<u8" if self.little_endian else ">u8", count=2 * n)
        at = int(np.ravel_multi_index(local, self.chunks_per_shard))
        return int(entries[2 * at]), int(entries[2 * at + 1])


class ObservedStore(WrapperStore[Any]):
    """The array's store, with books on what was fetched (see the module docstring)."""

    def __init__(self, store: Any, shards: ShardLayout | None = None) -> None:
        super().__init__(store)
        self.shards = shards
        self._lock = threading.Lock()
        self._fetched: dict[str, int] = {}
        self._missing: set[str] = set()
        self._indexes: OrderedDict[str, Any] = OrderedDict()  # shard key -> index Buffer, or None: no shard
        self._index_fetches: dict[str, asyncio.Future[Any]] = {}  # on the event loop's thread only

    def _with_store(self, store: Any) -> ObservedStore:
        return type(self)(store, self.shards)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if self.shards is not None and self.shards.is_index_request(byte_range):
            return await self._index(key, prototype, byte_range)
        if self.shards is not None and isinstance(byte_range, RangeByteRequest):
            self.shards.check_entry(key, byte_range)
        value = await self._store.get(key, prototype, byte_range)
        self._book(key, value)
        if self.shards is not None and isinstance(byte_range, RangeByteRequest):
            got = 0 if value is None else len(value)
            if got != byte_range.end - byte_range.start:  # the shard ends before its index says
                raise CorruptChunkError(f"shard {key}: its index places an inner chunk at bytes "
                                        f"{byte_range.start}..{byte_range.end}, the shard holds {got} of them")
        if value is not None and byte_range is None and self.shards is not None:
            size = self.shards.index_bytes  # a whole shard: its index comes with it
            if len(value) >= size:
                self._keep_index(key, value[:size] if self.shards.at_start else value[len(value) - size:])
        return value

    async def _index(self, key: str, prototype: Any, byte_range: Any) -> Any:
        with self._lock:
            if key in self._indexes:
                self._indexes.move_to_end(key)
                return self._indexes[key]
        running = self._index_fetches.get(key)
        if running is not None:  # another selection is fetching it: one request
            return await asyncio.shield(running)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._index_fetches[key] = future
        try:
            value = await self._store.get(key, prototype, byte_range)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._index_fetches.pop(key, None)
        self._book(key, value)
        self._keep_index(key, value)
        future.set_result(value)
        return value

    def _book(self, key: str, value: Any) -> None:
        with self._lock:
            if len(self._fetched) > 100_000:  # books nobody took (metadata, eager reads): forget them
                self._fetched.clear()
                self._missing.clear()
            if value is None:
                self._missing.add(key)
            else:
                self._fetched[key] = self._fetched.get(key, 0) + len(value)

    def _keep_index(self, key: str, value: Any) -> None:
        with self._lock:
            self._indexes[key] = value
            while len(self._indexes) > INDEXES_KEPT:
                self._indexes.popitem(last=False)

    def take(self, key: str) -> tuple[int, bool]:
        """Bytes fetched for ``key`` since the last take, and whether it was found missing."""
        with self._lock:
            missing = key in self._missing
            self._missing.discard(key)
            return self._fetched.pop(key, 0), missing

    def inner_chunk_present(self, key: str, local: tuple[int, ...]) -> bool | None:
        """Whether shard ``key`` stores its inner chunk ``local``, from the cached index (None: not known)."""
        if self.shards is None:
            return None
        with self._lock:
            index = self._indexes.get(key, _UNKNOWN)
        if index is _UNKNOWN:
            return None
        if index is None:
            return False  # no shard at all
        entry = self.shards.entry(index.to_bytes(), local)
        if entry is None:
            return None
        return entry != (MISSING_ENTRY, MISSING_ENTRY)

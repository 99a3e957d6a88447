"""Shard indexes of sharded zarr v3 arrays, checked before zarr-python reads from the shard.

zarr-python trusts a shard's index (``sharding_indexed``): an entry pointing past the shard's end
reads short and zarr takes the short read for a missing inner chunk (the fill value, silently),
and an entry pointing into an index at the shard's start decodes the index as data. An index
without a crc32c is protected by nothing else, and a crc32c proves only that the index was written
as it is, not that it is sane. So before zarr reads inner chunks from a shard, the shard's size and
index are fetched here and every entry is checked (:func:`check_index`, pure, fuzzed by
``tests/test_zarr_shards.py``):

* ``(2^64-1, 2^64-1)`` is a missing inner chunk (the fill value); half of it is a lie;
* otherwise ``nbytes > 0``, ``offset + nbytes`` fits in 64 bits, and the bytes lie inside the
  shard and outside its index.

* no two entries overlap, unless they are the very same ``(offset, nbytes)`` (a writer may store
  identical inner chunks once).

An entry pointing at another inner chunk's bytes exactly, of the right size, cannot be told from
such sharing: only a checksum inside each inner chunk (an inner ``crc32c`` codec) would tell.

Cost per shard, once per process (:class:`ShardChecker` keeps the keys checked, bounded): the
shard's size (``Store.getsize``: a HEAD over HTTP/S3, a ``stat`` locally) and its index (one ranged
GET: a suffix for an index at the end, a prefix for one at the start), both at once. zarr-python
fetches the index again itself. A missing shard (no object) is left to zarr: the fill value.

Only a shard whose stored bytes are the sharding codec's own output is checked: ``sharding_indexed``
as the array-to-bytes codec with no bytes-to-bytes codec after it (zarr's layout; any codec after
it would make the stored object something else). Index codecs lazymem does not parse (anything but
``bytes`` and an optional ``crc32c``) raise :class:`~lazymem.errors.UnsupportedCodecError`.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptChunkError, FetchError, FormatError, LazymemError, UnsupportedCodecError

MISSING = 2**64 - 1
"""An index entry's offset and nbytes for an inner chunk that is not stored."""
SHARDS_KEPT = 1 << 16
"""Shard keys remembered as checked per source (strings: a few MiB at most)."""
_ARRAY_TO_ARRAY = frozenset({"transpose"})
_LOCK = threading.Lock()


def _name(codec: Any) -> str:
    return codec if isinstance(codec, str) else str(codec.get("name")) if isinstance(codec, dict) else repr(codec)


def _config(codec: Any) -> dict[str, Any]:
    config = codec.get("configuration") if isinstance(codec, dict) else None
    return config if isinstance(config, dict) else {}


def _ints(value: Any, what: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) and not isinstance(v, bool)
                                                          and v > 0 for v in value):
        raise FormatError(f"{where}: {what} must be a list of positive integers (got {value!r:.80})")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """How an array's shards are laid out, as far as their index goes."""

    shard_shape: tuple[int, ...]
    """Elements per shard (the array's chunk grid)."""
    chunks_per_shard: tuple[int, ...]
    """Inner chunks per shard along each dimension, in the order the index lists them."""
    at_start: bool
    """The index is at the shard's start (else at its end)."""
    big_endian: bool
    checksum: bool
    """A little-endian crc32c (4 bytes) follows the index's entries."""

    @property
    def entries(self) -> int:
        return math.prod(self.chunks_per_shard)

    @property
    def index_bytes(self) -> int:
        return 16 * self.entries + 4 * self.checksum

    @classmethod
    def of(cls, doc: Any, where: str = "zarr array") -> ShardSpec | None:
        """The spec of a zarr v3 array document (``zarr.json``, untrusted: only what this module
        needs is checked), None if the array is not sharded or its shards are stored through a
        codec after ``sharding_indexed`` (see the module docstring)."""
        if not isinstance(doc, dict) or doc.get("zarr_format") != 3:
            return None
        codecs = doc.get("codecs")
        if not isinstance(codecs, list):
            return None
        names = [_name(c) for c in codecs]
        if "sharding_indexed" not in names:
            return None
        at = names.index("sharding_indexed")
        if at != len(names) - 1 or any(n not in _ARRAY_TO_ARRAY for n in names[:at]):
            return None  # bytes-to-bytes codecs over whole shards, or array codecs we do not follow
        grid = doc.get("chunk_grid")
        shard_shape = _ints(_config(grid).get("chunk_shape"), "chunk_grid chunk_shape", where)
        for codec in codecs[:at]:  # transpose: the sharding codec sees the shard permuted
            order = _config(codec).get("order")
            if not isinstance(order, list) or sorted(order) != list(range(len(shard_shape))):
                raise FormatError(f"{where}: transpose order {order!r:.80} does not fit {len(shard_shape)} dimensions")
            shard_shape = tuple(shard_shape[i] for i in order)
        config = _config(codecs[at])
        inner = _ints(config.get("chunk_shape"), "sharding_indexed chunk_shape", where)
        if len(inner) != len(shard_shape) or any(s % c for s, c in zip(shard_shape, inner)):
            raise FormatError(f"{where}: shard shape {shard_shape} is not a whole number of inner chunks {inner}")
        location = config.get("index_location", "end")
        if location not in ("start", "end"):
            raise FormatError(f"{where}: sharding_indexed index_location {location!r:.40} is not 'start' or 'end'")
        big, checksum = _index_codecs(config.get("index_codecs", ["bytes", "crc32c"]), where)
        grid_shape = _ints(_config(grid).get("chunk_shape"), "chunk_grid chunk_shape", where)
        return cls(grid_shape, tuple(s // c for s, c in zip(shard_shape, inner)), location == "start", big, checksum)


def _index_codecs(codecs: Any, where: str) -> tuple[bool, bool]:
    """``(big_endian, checksum)`` of index codecs ``bytes`` and an optional ``crc32c``; anything
    else is refused (lazymem parses the index itself)."""
    names = [_name(c) for c in codecs] if isinstance(codecs, list) else None
    if names not in (["bytes"], ["bytes", "crc32c"]):
        raise UnsupportedCodecError(f"{where}: shard index codecs {names if names is not None else codecs!r:.120} "
                                    "are not read by lazymem (it reads 'bytes' and an optional 'crc32c')")
    endian = _config(codecs[0]).get("endian", sys.byteorder)  # zarr's default: this machine's
    if endian not in ("little", "big"):
        raise FormatError(f"{where}: shard index endian {endian!r:.40} is not 'little' or 'big'")
    return endian == "big", len(names) == 2


def _crc32c(data: bytes) -> int:
    try:
        import google_crc32c
    except ImportError:
        raise UnsupportedCodecError("checking a shard index's crc32c needs google-crc32c "
                                    "(pip install google-crc32c, a zarr dependency)") from None
    return int(google_crc32c.value(data))


def check_index(spec: ShardSpec, index: bytes, size: int, where: str) -> np.ndarray:
    """The ``(entries, 2)`` uint64 ``(offset, nbytes)`` of a shard of ``size`` bytes whose index
    is ``index``, every entry checked (see the module docstring).

    Raises
    ------
    CorruptChunkError
        The shard is shorter than its index, the checksum does not match, or an entry lies;
        the message names the shard (``where``) and the first bad entry.
    """
    if size < spec.index_bytes or len(index) != spec.index_bytes:
        raise CorruptChunkError(f"{where}: a shard of {size} bytes cannot hold its {spec.index_bytes}-byte index"
                                + (f" (read {len(index)} bytes of it)" if size >= spec.index_bytes else ""))
    body = index[: 16 * spec.entries]
    if spec.checksum:
        stored = int(np.frombuffer(index[-4:], dtype="<u4")[0])
        if _crc32c(body) != stored:
            raise CorruptChunkError(f"{where}: the shard index's crc32c does not match its entries")
    table = np.frombuffer(body, dtype=">u8" if spec.big_endian else "<u8").reshape(spec.entries, 2)
    offsets, nbytes = table[:, 0], table[:, 1]
    gone_o, gone_n = offsets == MISSING, nbytes == MISSING
    lo, hi = (spec.index_bytes, size) if spec.at_start else (0, size - spec.index_bytes)
    present = ~(gone_o & gone_n)
    # Python-free and overflow-free: offset + nbytes <= hi  <=>  nbytes <= hi and offset <= hi - nbytes
    n_ok = nbytes <= np.uint64(hi)
    bad = present & ((gone_o | gone_n) | (nbytes == 0) | ~n_ok | (offsets < np.uint64(lo))
                     | (offsets > np.uint64(hi) - np.where(n_ok, nbytes, np.uint64(0))))
    if bad.any():
        i = int(np.argmax(bad))
        offset, length = int(offsets[i]), int(nbytes[i])
        local = tuple(int(c) for c in np.unravel_index(i, spec.chunks_per_shard))
        raise CorruptChunkError(f"{where}: index entry {i} (inner chunk {local}) {_lie(offset, length, lo, hi, size)}")
    _check_overlaps(spec, table, present, where)
    return table


def _check_overlaps(spec: ShardSpec, table: np.ndarray, present: np.ndarray, where: str) -> None:
    """Two entries whose bytes overlap without being the same bytes: one of them is another chunk's
    data (or a piece of it). The very same ``(offset, nbytes)`` twice is allowed (shared bytes)."""
    rows = np.unique(table[present], axis=0)  # sorted by offset, then nbytes
    if len(rows) < 2:
        return
    ends = rows[:, 0] + rows[:, 1]  # no overflow: each entry lies inside the shard
    reach = np.maximum.accumulate(ends)[:-1]
    clash = reach > rows[1:, 0]
    if not clash.any():
        return
    k = int(np.argmax(clash)) + 1
    before = int(np.argmax(ends[:k] == reach[k - 1]))  # the earlier range it runs into
    first = [int(np.argmax((table[:, 0] == rows[j, 0]) & (table[:, 1] == rows[j, 1]))) for j in (k, before)]
    i, other = max(first), min(first)
    offset, length = (int(v) for v in table[i])
    o_off, o_len = (int(v) for v in table[other])
    local = tuple(int(c) for c in np.unravel_index(i, spec.chunks_per_shard))
    raise CorruptChunkError(f"{where}: index entry {i} (inner chunk {local}) places an inner chunk at bytes "
                            f"{offset}..{offset + length}, overlapping entry {other}'s bytes {o_off}..{o_off + o_len}")


def _lie(offset: int, length: int, lo: int, hi: int, size: int) -> str:
    """What is wrong with entry ``(offset, length)`` of a shard whose inner chunks lie in ``[lo, hi)``."""
    if (offset == MISSING) != (length == MISSING):
        return f"is half missing (offset {offset}, nbytes {length}): both or neither must be 2^64-1"
    if length == 0:
        return f"places an inner chunk of 0 bytes at {offset}"
    end = offset + length
    if end > MISSING:
        return f"overflows 64 bits (offset {offset} + nbytes {length})"
    if end > size:
        return f"places an inner chunk at bytes {offset}..{end}, past the shard's end ({size} bytes)"
    return f"places an inner chunk at bytes {offset}..{end}, inside the shard's index (its data is bytes {lo}..{hi})"


class ShardChecker:
    """Checks each shard of one array once (per process) before zarr reads from it."""

    def __init__(self, spec: ShardSpec, array: Any, storage_chunks: tuple[int, ...], url: str) -> None:
        self.spec, self.array, self.storage_chunks, self.url = spec, array, storage_chunks, url
        self._lock = threading.Lock()
        self._checked: OrderedDict[str, None] = OrderedDict()
        self._running: dict[str, threading.Event] = {}

    def shard_of(self, coords: tuple[int, ...]) -> tuple[int, ...]:
        """The shard holding storage chunk ``coords``: zarr's chunk grid is the inner chunks' for
        an array whose only codec is the sharding codec, the shards' otherwise."""
        return tuple(c * n // s for c, n, s in zip(coords, self.storage_chunks, self.spec.shard_shape, strict=True))

    def check(self, coords: tuple[int, ...]) -> None:
        """Check (once) the shard holding storage chunk ``coords``; raise if its index lies."""
        key = self.array.metadata.encode_chunk_key(self.shard_of(coords))
        while True:
            with self._lock:
                if key in self._checked:
                    self._checked.move_to_end(key)
                    return
                running = self._running.get(key)
                if running is None:
                    done = self._running[key] = threading.Event()
                    break
            running.wait()  # another thread is checking it: its outcome, or our own try if it failed
        try:
            self._fetch_and_check(key)
            with self._lock:
                self._checked[key] = None
                while len(self._checked) > SHARDS_KEPT:
                    self._checked.popitem(last=False)
        finally:
            with self._lock:
                del self._running[key]
            done.set()

    def _fetch_and_check(self, key: str) -> None:
        from zarr.core.sync import sync

        where = f"{self.url}: shard {key}"
        try:
            found = sync(self._fetch(self.array.store_path / key))
        except LazymemError:
            raise
        except OSError as exc:
            raise FetchError(f"{where}: cannot fetch its index: {type(exc).__name__}: {exc}") from exc
        if found is not None:
            check_index(self.spec, *found, where)

    async def _fetch(self, path: Any) -> tuple[bytes, int] | None:
        """The shard's index and size, or None if the shard is missing (zarr reads the fill value)."""
        import asyncio

        from zarr.abc.store import RangeByteRequest, SuffixByteRequest
        from zarr.core.buffer import default_buffer_prototype

        n = self.spec.index_bytes
        request = RangeByteRequest(0, n) if self.spec.at_start else SuffixByteRequest(n)
        results: tuple[Any, Any] = await asyncio.gather(
            path.store.getsize(path.path), path.get(prototype=default_buffer_prototype(), byte_range=request),
            return_exceptions=True)
        size, index = results
        if isinstance(size, FileNotFoundError) and (index is None or isinstance(index, FileNotFoundError)):
            return None
        if isinstance(size, BaseException):
            raise size
        if int(size) < n:  # the index read may have failed on so short an object: the size says it all
            return b"", int(size)
        if isinstance(index, BaseException):
            raise index
        if index is None:
            raise FetchError(f"{path}: the shard has {size} bytes but reading its index found nothing")
        return index.to_bytes(), int(size)


def check_shard_of(source: Any, coords: tuple[int, ...]) -> None:
    """Before zarr reads storage chunk ``coords`` of a :class:`~lazymem.sources.zarr_array.ZarrSource`:
    check the index of the shard holding it (a no-op for an array without shards). The checker
    lives in the source, per process (a forked child gets its own: locks do not survive a fork)."""
    pid, checker = source.__dict__.get("_shard_checker", (0, None))
    if pid != os.getpid():
        with _LOCK:
            pid, checker = source.__dict__.get("_shard_checker", (0, None))
            if pid != os.getpid():
                spec = ShardSpec.of(source._zarr_doc, source.url)
                checker = None if spec is None else ShardChecker(spec, source.array, source.storage_chunks,
                                                                 source.url)
                source.__dict__["_shard_checker"] = (os.getpid(), checker)
    if checker is not None:
        checker.check(coords)

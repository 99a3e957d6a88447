"""HDF5 filter pipelines, decoded without the HDF5 library (pure functions, no I/O).

A chunked HDF5 dataset stores each chunk through its pipeline of filters (deflate, shuffle,
fletcher32...), applied in order when written; reading undoes them in reverse order. Each chunk's
*filter mask* says which filters were skipped for it (bit ``i`` set: filter ``i`` was not applied,
as HDF5 does when an optional filter fails to compress). The monitor decodes chunks here, with
zlib, zstandard and numpy (numcodecs for blosc and lz4), never with h5py: its global lock would
serialize every fault behind one thread.

The byte layouts follow the filters' C sources: ``H5Zshuffle.c``, ``H5Zfletcher32.c``,
``H5checksum.c`` (HDF5), ``lzf_filter.c`` (h5py), ``bshuf_h5filter.c`` (bitshuffle), the zstd and
blosc plugins of hdf5plugin.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lazymem.errors import UnsupportedCodecError

try:  # ISA-L's inflate: the same deflate streams, about 4x faster than zlib (measured: 13 ms vs 63 ms
    # for 4 MiB of shuffled float32 at level 1), which makes gzip'd HDF5 scans faster than h5py's
    from isal import isal_zlib

    _inflate: Any = isal_zlib
except ImportError:  # pip install isal (in the hdf5 extra)
    _inflate = zlib

_INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error, _inflate.error)

DEFLATE, SHUFFLE, FLETCHER32, SZIP, NBIT, SCALEOFFSET = 1, 2, 3, 4, 5, 6
LZF, BLOSC, BSHUF, ZSTD, LZ4, BLOSC2 = 32000, 32001, 32008, 32015, 32004, 32026

KNOWN_NAMES = {
    DEFLATE: "deflate (gzip)", SHUFFLE: "shuffle", FLETCHER32: "fletcher32", SZIP: "szip", NBIT: "nbit",
    SCALEOFFSET: "scaleoffset", LZF: "lzf", BLOSC: "blosc", BSHUF: "bitshuffle", ZSTD: "zstd", LZ4: "lz4",
    BLOSC2: "blosc2",
}
"""Names of registered filter ids (https://github.com/HDFGroup/hdf5_plugins/blob/master/docs/RegisteredFilterPlugins.md)."""


@dataclass(frozen=True)
class Filter:
    """One filter of a dataset's pipeline, as its creation property list records it."""

    id: int
    flags: int
    cd_values: tuple[int, ...]
    name: str = ""

    def label(self) -> str:
        known = KNOWN_NAMES.get(self.id)
        return f"{self.id} ({known or self.name or 'unregistered'})"


class CorruptFilterInput(ValueError):
    """Raised by a decoder whose input is damaged (turned into a CorruptChunkError naming the chunk)."""


def _unshuffle(data: bytes | memoryview, cd_values: tuple[int, ...], itemsize: int) -> bytes:
    # H5Z_filter_shuffle: the bytes of n elements of size s stored as s planes of n bytes; the
    # bytes past the last whole element (none, for chunks) are stored as they are.
    size = cd_values[0] if cd_values else itemsize
    raw = np.frombuffer(data, dtype=np.uint8)
    n = len(raw) // size if size > 1 else 0
    if n <= 1:
        return bytes(raw)
    if n * size == len(raw):
        try:  # numcodecs' C loop: twice numpy's transpose (11 ms -> 5.6 ms for 4 MiB of float32)
            from numcodecs import Shuffle
        except ImportError:
            pass
        else:
            return bytes(Shuffle(size).decode(raw))
    body = raw[: n * size].reshape(size, n).T.tobytes()
    return body + bytes(raw[n * size :])


def fletcher32_matches(body: bytes | memoryview, stored: int) -> bool:
    """Whether ``stored`` is HDF5's Fletcher-32 of ``body`` (big-endian 16-bit words, the last odd
    byte as a high byte). HDF5 folds its sums into ``[0, 0xffff]``, where 0 and 0xffff are the same
    residue modulo 65535: sums are compared as residues."""
    raw = np.frombuffer(body, dtype=np.uint8)
    if len(raw) % 2:
        raw = np.concatenate([raw, np.zeros(1, dtype=np.uint8)])
    words = raw.view(">u2").astype(np.uint64)
    n = len(words)
    sum1 = int(words.sum() % 65535)
    weights = (np.arange(n, 0, -1, dtype=np.uint64) % 65535) if n else np.zeros(0, dtype=np.uint64)
    sum2 = int(((words * weights) % 65535).sum() % 65535)
    # HDF5 before 1.6.3 wrote the checksum with the bytes of each half swapped; H5Zfletcher32
    # still accepts that form.
    swapped = ((stored & 0x00FF00FF) << 8) | ((stored >> 8) & 0x00FF00FF)
    for value in (stored, swapped):
        if (value & 0xFFFF) % 65535 == sum1 and (value >> 16) % 65535 == sum2:
            return True
    return False


def _fletcher32(data: bytes | memoryview) -> bytes | memoryview:
    if len(data) < 4:
        raise CorruptFilterInput("fletcher32: fewer than 4 bytes")
    view = memoryview(data)
    body, stored = view[:-4], int.from_bytes(view[-4:], "little")
    if not fletcher32_matches(body, stored):
        raise CorruptFilterInput("fletcher32 checksum mismatch")
    return body


def lzf_decompress(data: bytes | memoryview, size: int) -> bytes:
    """LZF (liblzf's ``lzf_decompress``): literal runs and back references, into ``size`` bytes."""
    src = bytes(data)
    out = bytearray(size)
    ip = op = 0
    end = len(src)
    try:
        while ip < end:
            ctrl = src[ip]
            ip += 1
            if ctrl < 32:  # a literal run of ctrl + 1 bytes
                run = ctrl + 1
                if ip + run > end or op + run > size:
                    raise CorruptFilterInput("lzf: a literal run past the end")
                out[op : op + run] = src[ip : ip + run]
                ip += run
                op += run
                continue
            run = ctrl >> 5
            ref = op - ((ctrl & 0x1F) << 8) - 1
            if run == 7:
                run += src[ip]
                ip += 1
            ref -= src[ip]
            ip += 1
            run += 2
            if ref < 0 or op + run > size:
                raise CorruptFilterInput("lzf: a back reference outside the output")
            if op - ref >= run:
                out[op : op + run] = out[ref : ref + run]
            else:  # overlapping: the pattern of period op - ref repeats
                period = out[ref:op]
                reps = -(-run // len(period))
                out[op : op + run] = (period * reps)[:run]
            op += run
    except IndexError:
        raise CorruptFilterInput("lzf: the stream ends inside an instruction") from None
    if op != size:
        raise CorruptFilterInput(f"lzf: decoded {op} bytes, expected {size}")
    return bytes(out)


def _numcodecs(what: str, filt: Filter) -> object:
    try:
        import numcodecs
    except ImportError:
        raise UnsupportedCodecError(f"HDF5 filter {filt.label()} needs numcodecs to decode {what}: "
                                    "pip install numcodecs") from None
    return numcodecs


def _zstd(data: bytes | memoryview, size: int) -> bytes:
    import zstandard

    try:
        return zstandard.ZstdDecompressor().decompress(bytes(data), max_output_size=max(size, 1))
    except zstandard.ZstdError as exc:
        raise CorruptFilterInput(f"zstd: {exc}") from None


def _blosc(filt: Filter) -> Callable[[bytes | memoryview], bytes]:
    _numcodecs("blosc", filt)
    from numcodecs import blosc

    def decode(data: bytes | memoryview) -> bytes:
        try:
            return bytes(blosc.decompress(bytes(data)))
        except Exception as exc:  # noqa: BLE001 (numcodecs raises RuntimeError, ValueError...)
            raise CorruptFilterInput(f"blosc: {exc}") from None

    return decode


def _lz4_block(data: bytes, size: int, filt: Filter) -> bytes:
    _numcodecs("lz4", filt)
    from numcodecs import lz4

    try:  # numcodecs' LZ4 frames a raw block with its size (4 bytes, little-endian)
        out = bytes(lz4.decompress(size.to_bytes(4, "little") + data))
    except Exception as exc:  # noqa: BLE001
        raise CorruptFilterInput(f"lz4: {exc}") from None
    if len(out) != size:
        raise CorruptFilterInput(f"lz4: decoded {len(out)} bytes, expected {size}")
    return out


def bitunshuffle(data: bytes | memoryview, itemsize: int) -> bytes:
    """Undo bitshuffle's transposition of one block: ``8 * itemsize`` bit planes, plane ``8j + b``
    holding bit ``b`` (little-endian bit order) of byte ``j`` of every element."""
    raw = np.frombuffer(data, dtype=np.uint8)
    n = len(raw) // itemsize
    if n % 8:
        raise CorruptFilterInput(f"bitshuffle: a block of {n} elements (not a multiple of 8)")
    planes = np.unpackbits(raw.reshape(8 * itemsize, n // 8), axis=1, bitorder="little")
    return np.packbits(planes.T.reshape(n, 8 * itemsize), axis=1, bitorder="little").tobytes()


def _bitshuffle(data: bytes | memoryview, size: int, itemsize: int, filt: Filter) -> bytes:
    # bshuf_h5filter.c: cd_values = (major, minor, elem size, block size, compression[, level]).
    cd = filt.cd_values
    itemsize = cd[2] if len(cd) > 2 and cd[2] else itemsize
    compression = cd[4] if len(cd) > 4 else 0
    view = memoryview(bytes(data))
    n = size // itemsize
    if compression:  # a header: total bytes (u64 BE), block bytes (u32 BE); then (u32 BE size, payload)...
        if len(view) < 12:
            raise CorruptFilterInput("bitshuffle: no header")
        total = int.from_bytes(view[:8], "big")
        block = int.from_bytes(view[8:12], "big") // itemsize
        if total != size:
            raise CorruptFilterInput(f"bitshuffle: the header says {total} bytes, expected {size}")
        pos = 12
    else:
        block = cd[3] if len(cd) > 3 and cd[3] else 0
        pos = 0
    if block <= 0 or block % 8:
        block = _default_block(itemsize) if block <= 0 else block
        if block % 8:
            raise CorruptFilterInput(f"bitshuffle: block of {block} elements")
    parts: list[bytes] = []
    done = 0
    last = n - n % 8  # the last (n % 8) elements are stored as they are
    while done < last:
        count = min(block, last - done)
        count -= count % 8
        nbytes = count * itemsize
        if compression:
            if pos + 4 > len(view):
                raise CorruptFilterInput("bitshuffle: the stream ends inside a block header")
            stored = int.from_bytes(view[pos : pos + 4], "big")
            payload = bytes(view[pos + 4 : pos + 4 + stored])
            if len(payload) != stored:
                raise CorruptFilterInput("bitshuffle: the stream ends inside a block")
            pos += 4 + stored
            if compression == 2:
                shuffled = _lz4_block(payload, nbytes, filt)
            elif compression == 3:
                shuffled = _zstd(payload, nbytes)
            else:
                raise UnsupportedCodecError(f"HDF5 filter {filt.label()}: compression {compression} unknown")
        else:
            shuffled = bytes(view[pos : pos + nbytes])
            pos += nbytes
        if len(shuffled) != nbytes:
            raise CorruptFilterInput("bitshuffle: a block of the wrong size")
        parts.append(bitunshuffle(shuffled, itemsize))
        done += count
    rest = (n - done) * itemsize
    parts.append(bytes(view[pos : pos + rest]))
    out = b"".join(parts)
    if len(out) != size:
        raise CorruptFilterInput(f"bitshuffle: decoded {len(out)} bytes, expected {size}")
    return out


def _default_block(itemsize: int) -> int:
    # bshuf_default_block_size: ~8 KiB per block, a multiple of 8 elements (at least 128).
    block = max((8192 // itemsize) // 8 * 8, 128)
    return block


SUPPORTED = (DEFLATE, SHUFFLE, FLETCHER32, LZF, ZSTD, BLOSC, BSHUF)


def check_pipeline(filters: Sequence[Filter]) -> None:
    """Refuse at open a pipeline holding a filter this module cannot undo (UnsupportedCodecError)."""
    for filt in filters:
        if filt.id not in SUPPORTED:
            hint = {SZIP: "szip (its decoder is not free to redistribute in lazymem)",
                    SCALEOFFSET: "a lossy transform of the stored values",
                    NBIT: "a bit-packing transform"}.get(filt.id, "no decoder in lazymem")
            raise UnsupportedCodecError(
                f"HDF5 filter {filt.label()} is not supported ({hint}); lazymem decodes "
                + ", ".join(f"{KNOWN_NAMES[i]} ({i})" for i in SUPPORTED)
                + ". Rewrite the dataset with one of those (h5repack -f GZIP=1)")
        if filt.id == BLOSC:
            _numcodecs("blosc", filt)
        if filt.id == BSHUF and len(filt.cd_values) > 4 and filt.cd_values[4] == 2:
            _numcodecs("lz4", filt)


def decode_chunk(stored: bytes | memoryview, filters: Sequence[Filter], mask: int, size: int,
                 itemsize: int) -> bytes | memoryview:
    """Undo ``filters`` (in reverse order, skipping those set in ``mask``) on one stored chunk.

    Returns the decoded bytes (``size`` of them; checked by the caller).

    Raises
    ------
    CorruptFilterInput
        The stored bytes do not decode.
    UnsupportedCodecError
        A filter this module does not run.
    """
    data: bytes | memoryview = stored
    for k in range(len(filters) - 1, -1, -1):
        if mask >> k & 1:
            continue
        filt = filters[k]
        if filt.id == DEFLATE:
            try:
                decoder = _inflate.decompressobj()
                data = decoder.decompress(data, size + 1)
                if not decoder.eof:
                    raise CorruptFilterInput("deflate: the stream is cut short or longer than the chunk")
            except _INFLATE_ERRORS as exc:
                raise CorruptFilterInput(f"deflate: {exc}") from None
        elif filt.id == SHUFFLE:
            data = _unshuffle(data, filt.cd_values, itemsize)
        elif filt.id == FLETCHER32:
            data = _fletcher32(data)
        elif filt.id == LZF:
            data = lzf_decompress(data, size)
        elif filt.id == ZSTD:
            data = _zstd(data, size)
        elif filt.id == BLOSC:
            data = _blosc(filt)(data)
        elif filt.id == BSHUF:
            data = _bitshuffle(data, size, itemsize, filt)
        else:
            check_pipeline([filt])
    return data

"""Write arrays in the native format: a seekable zstd file holding a ``.npy`` stream.

Layout: frame 0 holds the ``.npy`` header alone; then each chunk of ``chunk_bytes`` data bytes
(the last may be shorter) is stored as a few frames of ``frame_bytes`` (the last of a chunk may be
shorter); a layout frame naming ``chunk_bytes`` and indexing the seek table
(:mod:`lazymem.sources.layout_frame`) and the zstd seek table end the file. Because both sizes are
multiples of the page size and the data starts a frame, every frame maps onto whole pages of the
array, which is what the lazy loader installs: a
chunk at a time, waking a reader as soon as the frame it waits for is decoded. All-zero frames are
stored as RLE zero blocks (:mod:`lazymem.sources.zero_frames`), which readers recognise without
decompressing.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

import fsspec
import numpy as np
import zstandard

from lazymem.config import parse_size
from lazymem.errors import UnsupportedDtypeError
from lazymem.sources.layout_frame import layout_frame
from lazymem.sources.npy_header import npy_header_bytes
from lazymem.sources.seekable_zstd import MAX_FRAMES, SEEK_TABLE_MAGIC, SEEKABLE_MAGIC
from lazymem.sources.zero_frames import zero_frame
from lazymem.storage import is_local_file, storage_errors

__all__ = ["DEFAULT_CHUNK_BYTES", "save", "seek_table_bytes"]

DEFAULT_CHUNK_BYTES = 4 << 20
"""Decompressed bytes per chunk, the unit a fault installs: big enough to amortise a fault round
trip (see DESIGN.md)."""
FRAME_TARGET = 512 << 10
"""Most decompressed bytes per frame by default: a reader waits for its own frame only. On these
VMs one frame of the benchmark field decodes in ~1 ms (512 KiB), ~2 ms (1 MiB), ~9 ms (4 MiB);
smaller frames even compress a little better (0.322, 0.327, 0.333 of the data) and scan as fast."""
TABLE_FRAMES = 1 << 18
"""Chunks split into frames only while the seek table, read by every ``open``, stays within this
many entries (2 MiB): a 1 TiB array keeps one frame per 4 MiB chunk."""

_U32_MAX = 0xFFFFFFFF


def _check_size(name: str, value: int | str) -> int:
    if isinstance(value, str):
        value = parse_size(value)  # "4MiB", as max_resident takes
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    page = mmap.PAGESIZE
    if value <= 0 or value % page:
        raise ValueError(
            f"{name} must be a positive multiple of the page size ({page} bytes), got {value}: "
            "chunks are installed as whole pages"
        )
    if value > _U32_MAX:
        raise ValueError(f"{name} must be below 4 GiB (the seek table stores u32 sizes), got {value}")
    return value


def _frame_bytes(chunk_bytes: int, nbytes: int, requested: int | str | None) -> int:
    """Decompressed bytes per frame: as requested, else chunks cut into equal frames of at most
    FRAME_TARGET, as long as the seek table stays within TABLE_FRAMES entries."""
    if requested is not None:
        frame_bytes = _check_size("frame_bytes", requested)
        if frame_bytes > chunk_bytes:
            raise ValueError(f"frame_bytes ({frame_bytes}) must not exceed chunk_bytes ({chunk_bytes})")
        return frame_bytes
    chunks = max(1, -(-nbytes // chunk_bytes))
    per_chunk = max(1, min(-(-chunk_bytes // FRAME_TARGET), TABLE_FRAMES // chunks))
    page = mmap.PAGESIZE
    return -(-chunk_bytes // per_chunk // page) * page if per_chunk > 1 else chunk_bytes


def seek_table_bytes(compressed_sizes: np.ndarray, decompressed_sizes: np.ndarray) -> bytes:
    """The seek table frame (skippable frame, entries without checksums, footer) for these frames.

    Parameters
    ----------
    compressed_sizes, decompressed_sizes : numpy.ndarray
        Per-frame sizes, each below 4 GiB.

    Returns
    -------
    bytes
        To be appended after the last frame.
    """
    n = len(compressed_sizes)
    if n > MAX_FRAMES:
        raise ValueError(f"{n} frames; the seekable format allows at most {MAX_FRAMES}")
    entries = np.empty((n, 2), dtype="<u4")
    for column, sizes in enumerate((compressed_sizes, decompressed_sizes)):
        sizes = np.asarray(sizes, dtype=np.int64)
        if n and (sizes.min() < 0 or sizes.max() > _U32_MAX):
            raise ValueError("frame sizes must fit in 32 bits")
        entries[:, column] = sizes
    body = entries.tobytes() + struct.pack("<IBI", n, 0, SEEKABLE_MAGIC)
    return struct.pack("<II", SEEK_TABLE_MAGIC, len(body)) + body


# -- turning an array into its data bytes, chunk by chunk ---------------------------------------


def _c_order_pieces(array: np.ndarray, max_bytes: int) -> Iterator[np.ndarray]:
    """Contiguous copies of consecutive parts of ``array`` in C order, each about ``max_bytes``.

    Splits along the first axis, recursing into single rows that are still too big, so a strided
    view of any shape is serialised without copying it whole.
    """
    if array.nbytes <= max_bytes or array.ndim == 0:
        yield np.ascontiguousarray(array)
    elif array.ndim == 1:
        step = max(1, max_bytes // array.itemsize)
        for i in range(0, len(array), step):
            yield np.ascontiguousarray(array[i : i + step])
    else:
        row_bytes = array[0].nbytes
        if row_bytes > max_bytes:
            for row in array:
                yield from _c_order_pieces(row, max_bytes)
        else:
            step = max_bytes // row_bytes
            for i in range(0, len(array), step):
                yield np.ascontiguousarray(array[i : i + step])


def _as_bytes(contiguous: np.ndarray) -> np.ndarray:
    # reshape(-1) of a contiguous array is a view; as 1-D, any dtype (structured too) views as bytes.
    return contiguous.reshape(-1).view(np.uint8)


def _rechunk(pieces: Iterator[np.ndarray], chunk_bytes: int) -> Iterator[np.ndarray]:
    """Cut a series of contiguous pieces into buffers of exactly ``chunk_bytes`` (the last shorter)."""
    buf = np.empty(chunk_bytes, dtype=np.uint8)
    fill = 0
    for piece in pieces:
        data = _as_bytes(piece)
        pos = 0
        while pos < len(data):
            take = min(chunk_bytes - fill, len(data) - pos)
            buf[fill : fill + take] = data[pos : pos + take]
            fill += take
            pos += take
            if fill == chunk_bytes:
                yield buf
                # A fresh buffer: the previous one may still be compressing on another thread.
                buf = np.empty(chunk_bytes, dtype=np.uint8)
                fill = 0
    if fill:
        yield buf[:fill]


def _data_chunks(array: np.ndarray, fortran_order: bool, chunk_bytes: int) -> Iterator[Any]:
    """The array's data bytes in stored order, as buffers of ``chunk_bytes``."""
    if array.nbytes == 0:
        return
    if array.flags.c_contiguous or fortran_order:
        # Zero copy: the compressor reads straight from the array's memory.
        flat = _as_bytes(array.T if fortran_order else array)
        for start in range(0, len(flat), chunk_bytes):
            yield flat[start : start + chunk_bytes]
    else:
        yield from _rechunk(_c_order_pieces(array, chunk_bytes), chunk_bytes)


# -- compression ---------------------------------------------------------------------------------

_local = threading.local()


def _compress(data: Any, level: int) -> bytes:
    # One compressor per thread and level: a ZstdCompressor must not be shared between threads.
    compressors = getattr(_local, "compressors", None)
    if compressors is None:
        compressors = _local.compressors = {}
    cctx = compressors.get(level)
    if cctx is None:
        cctx = compressors[level] = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    return cctx.compress(data)


_ZERO_CHECK_BELOW = 1 << 10
"""Only chunks that compress below this can be all zeros (4 MiB of zeros: ~150 bytes), so ordinary
data never pays for the check."""


def _all_zeros(chunk: Any) -> bool:
    data = np.frombuffer(chunk, dtype=np.uint8)
    words = len(data) // 8
    # As u64 numpy compares 8 bytes per step; the few bytes past the last whole word separately.
    return not data[: words * 8].view(np.uint64).any() and not data[words * 8 :].any()


def _compress_chunk(chunk: Any, level: int) -> bytes:
    """A data chunk's frame; all-zero chunks as the zero frame readers recognise without decoding."""
    frame = _compress(chunk, level)
    if len(frame) < _ZERO_CHECK_BELOW and _all_zeros(chunk):
        return zero_frame(len(chunk))
    return frame


def _frames(chunks: Iterator[Any], frame_bytes: int) -> Iterator[Any]:
    """Each chunk's frames: pieces of ``frame_bytes`` (views, no copy), the last of a chunk shorter."""
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        for start in range(0, len(view), frame_bytes):
            yield view[start : start + frame_bytes]


def _write_frames(
    out: BinaryIO, header: bytes, chunks: Iterator[Any], level: int, threads: int
) -> tuple[list[int], list[int]]:
    """Compress and write frame 0 (header) and the data frames in order; return the frame sizes."""
    compressed_sizes: list[int] = []
    decompressed_sizes: list[int] = []

    def emit(frame: bytes, size: int) -> None:
        out.write(frame)
        compressed_sizes.append(len(frame))
        decompressed_sizes.append(size)

    emit(_compress(header, level), len(header))
    if threads <= 1:
        for chunk in chunks:
            emit(_compress_chunk(chunk, level), len(chunk))
        return compressed_sizes, decompressed_sizes
    # Bounded in flight: memory stays O(threads x chunk_bytes) however big the array.
    pending: deque[tuple[Future[bytes], int]] = deque()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lazymem-save") as pool:
        try:
            for chunk in chunks:
                pending.append((pool.submit(_compress_chunk, chunk, level), len(chunk)))
                if len(pending) >= 2 * threads:
                    future, size = pending.popleft()
                    emit(future.result(), size)
            while pending:
                future, size = pending.popleft()
                emit(future.result(), size)
        finally:
            for future, _ in pending:
                future.cancel()
    return compressed_sizes, decompressed_sizes


# -- destinations --------------------------------------------------------------------------------


@contextlib.contextmanager
def _local_target(path: str) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path`` and rename it into place only on success."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)  # as the README's first example needs (data/temp.npy.zst)
    temp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.partial")
    # 0o666 through the umask, like a normally created file (mkstemp would give 0o600).
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot create {path}: {exc.strerror}") from exc
    try:
        with open(fd, "wb") as f:
            yield f
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def _remote_target(fs: Any, path: str) -> Iterator[BinaryIO]:
    """Write through fsspec, committing only on success (object stores: no half-written object)."""
    with storage_errors(path, "writing"):
        f = fs.open(path, "wb", autocommit=False)
    try:
        yield f
        with storage_errors(path, "writing"):
            f.close()
            commit = getattr(f, "commit", None)
            if commit is not None and getattr(f, "autocommit", True) is False:
                commit()
    except BaseException:
        with contextlib.suppress(Exception):
            f.discard()
        with contextlib.suppress(Exception):
            f.closed = True  # discarded buffers must not be flushed later by __del__
        raise


def save(
    url: str,
    array: Any,
    *,
    chunk_bytes: int | str = DEFAULT_CHUNK_BYTES,
    frame_bytes: int | str | None = None,
    level: int = 3,
    storage_options: dict[str, Any] | None = None,
    threads: int | None = None,
) -> None:
    """Save an array in the native format (seekable zstd holding a ``.npy`` stream).

    ``zstd -d`` turns the file into a valid ``.npy``; ``np.load(pyzstd.SeekableZstdFile(path))``
    reads it; :func:`lazymem.load` and ``lazymem.open`` read it fast.

    Parameters
    ----------
    url : str
        Destination, anything fsspec writes (local path, ``s3://``, ``memory://``...). Local files
        appear atomically (written beside the target, then renamed).
    array : array_like
        Anything ``np.asanyarray`` accepts. C-contiguous data is stored as is, F-contiguous data in
        Fortran order (as ``np.save`` does), anything else in C order, without a whole copy.
    chunk_bytes : int or str
        Decompressed bytes per chunk (``4194304`` or ``"4MiB"``), the unit ``lazymem.open``
        fetches and installs on a fault; a positive multiple of the page size, below 4 GiB.
    frame_bytes : int or str, optional
        Decompressed bytes per zstd frame within a chunk (bytes or a size such as ``"512KiB"``;
        the last frame of a chunk may be shorter), the unit decoded and checksummed: a reader
        that faults waits for its own frame only. A multiple of the page size, at most
        ``chunk_bytes``. Default: chunks cut into equal frames of at most 512 KiB, or fewer
        frames per chunk (down to one) where the seek table, read by every ``open``, would
        otherwise pass 262,144 entries (2 MiB).
    level : int
        zstd compression level.
    storage_options : dict, optional
        Passed to the filesystem.
    threads : int, optional
        Compression threads (default: one per CPU). Memory use is O(threads x chunk_bytes).

    Raises
    ------
    UnsupportedDtypeError
        The dtype holds Python objects.
    ValueError
        ``chunk_bytes`` or ``frame_bytes`` is not a positive multiple of the page size below
        4 GiB, ``frame_bytes`` exceeds ``chunk_bytes``, or the array needs more frames than the
        seekable format allows.
    FetchError
        Writing to storage failed.
    """
    array = np.asanyarray(array)
    if array.dtype.hasobject:
        raise UnsupportedDtypeError(f"cannot save dtype {array.dtype!r}: it holds Python objects (pointers), not data")
    chunk_bytes = _check_size("chunk_bytes", chunk_bytes)
    data = array.view(np.ndarray)  # subclasses (matrix, masked) are saved as their data, like np.save
    frame_bytes = _frame_bytes(chunk_bytes, data.nbytes, frame_bytes)
    whole, rest = divmod(data.nbytes, chunk_bytes)
    n_frames = 2 + whole * -(-chunk_bytes // frame_bytes) + -(-rest // frame_bytes)  # + header, layout
    if n_frames > MAX_FRAMES:
        raise ValueError(
            f"{data.nbytes} bytes in frames of {frame_bytes} need {n_frames} frames; the seekable format "
            f"allows at most {MAX_FRAMES}: use a larger chunk_bytes or frame_bytes"
        )
    if threads is None:
        threads = os.cpu_count() or 1
    threads = max(1, min(int(threads), n_frames - 2))
    # np.save's rule: Fortran order only for arrays that are F- but not C-contiguous.
    fortran_order = bool(data.flags.f_contiguous and not data.flags.c_contiguous)
    header = npy_header_bytes(data.dtype, data.shape, fortran_order)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    target = _local_target(path) if is_local_file(fs) else _remote_target(fs, path)
    with target as out:
        chunks = _data_chunks(data, fortran_order, chunk_bytes)
        compressed, decompressed = _write_frames(out, header, _frames(chunks, frame_bytes), level, threads)
        with storage_errors(path, "writing"):
            layout = layout_frame(chunk_bytes, np.array(compressed), np.array(decompressed))
            out.write(layout)
            compressed.append(len(layout))
            decompressed.append(0)
            out.write(seek_table_bytes(np.array(compressed), np.array(decompressed)))

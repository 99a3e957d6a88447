"""Read any zstd *seekable format* file whose decompressed stream is a ``.npy`` file.

The format (``contrib/seekable_format/zstd_seekable_compression_format.md`` in the zstd repository)
is a run of independent zstd frames followed by one skippable frame holding the seek table::

    [frame 0][frame 1]...[frame n-1][0x184D2A5E][table size][n x (csize u32, dsize u32[, xxh32])]
                                                            [n u32][descriptor u8][0x8F92EAB1]

All integers are little-endian. Everything read from the file is checked before it is used: the
table against the file size, each frame's structure against the table before decompression, and the
decompressed size against the table while decompressing (a frame never writes past its slot).
"""

from __future__ import annotations

import importlib
import struct
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import zstandard

from lazymem.errors import (
    CorruptChunkError,
    FormatError,
    SeekTableError,
    TruncatedFileError,
    UnverifiableDataWarning,
    user_stacklevel,
)
from lazymem.storage import StoredObject

from .frames import BLOCK, FramedSource, FrameTable, block_sums, byte_view
from .layout_frame import LAYOUT_FRAME_SIZE, MAX_LAYOUT_FRAME_SIZE, Layout, parse_layout_frame, rows_crcs
from .npy_header import NpyHeader, npy_header_length, parse_npy_header
from .positions import ProvenPositions, Trust
from .zero_frames import ZSTD_MAGIC, is_zero_frame, parse_frame_header

__all__ = [
    "FOOTER_SIZE",
    "SEEKABLE_MAGIC",
    "SEEK_TABLE_MAGIC",
    "ZSTD_MAGIC",
    "FrameTable",
    "SeekableZstdReader",
    "parse_seek_table",
    "seek_table_size",
]

SKIPPABLE_MAGIC_MASK = 0xFFFFFFF0
SKIPPABLE_MAGIC_BASE = 0x184D2A50
"""Skippable frames start with any of 0x184D2A50..0x184D2A5F."""
SEEK_TABLE_MAGIC = 0x184D2A5E
"""Skippable-frame magic of the seek table frame."""
SEEKABLE_MAGIC = 0x8F92EAB1
"""Last four bytes of a seekable file."""
FOOTER_SIZE = 9
"""Frame count (u32), descriptor (u8), seekable magic (u32)."""
SKIPPABLE_HEADER_SIZE = 8
MAX_FRAMES = 0x8000000
"""zstd's reference implementation refuses more frames than this (ZSTD_SEEKABLE_MAXFRAMES)."""

CHECKSUM_FLAG = 0x80
RESERVED_BITS = 0x7C

TAIL_READ = 1 << 16
"""Bytes read from the end of the file by ``open``: the whole table of files up to ~8000 frames."""
HEADER_PROBE = 1 << 16
"""Decompressed bytes read from the first frame when looking for the ``.npy`` header."""

_CHECKSUM_BIT = 0x04
"""Content checksum flag in a zstd frame header's descriptor byte."""
MAX_FRAME_HEADER = 18
"""Largest zstd frame header: magic, descriptor, window, dictionary id (4), content size (8)."""
PROOF_BATCH = 16 * BLOCK
"""Frames whose sizes are proven together (see positions): their headers' reads are coalesced."""
HEADER_GAP = 1 << 20
"""Stored bytes between two frame headers worth reading (and dropping) to save a request."""
HEADER_RUN = 16 << 20
"""Most stored bytes one request for frame headers spans."""
DECODE_PROOF_BYTES = 16 << 20
"""Most stored bytes of frames fetched at once to prove their sizes by decoding them (a batch of
16,384 pyzstd frames of 1 MiB must not be held in memory together)."""


def _by_stored_bytes(frames: list[int], stored: np.ndarray, lo: int, limit: int) -> list[list[int]]:
    """``frames`` in order, cut into groups of at most ``limit`` stored bytes (or one frame)."""
    groups: list[list[int]] = []
    total = 0
    for i in frames:
        size = int(stored[i - lo])
        if not groups or total + size > limit:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += size
    return groups

_FOOTER = struct.Struct("<IBI")
_SKIPPABLE_HEADER = struct.Struct("<II")
_U32 = struct.Struct("<I")


def _footer_fields(footer: bytes) -> tuple[int, int]:
    """(frame count, entry size) from the last 9 bytes of a file, after checking magic and flags."""
    if len(footer) < FOOTER_SIZE:
        raise ValueError(f"need the last {FOOTER_SIZE} bytes of the file, got {len(footer)}")
    n_frames, descriptor, magic = _FOOTER.unpack(bytes(footer[-FOOTER_SIZE:]))
    if magic != SEEKABLE_MAGIC:
        raise SeekTableError(
            f"no zstd seek table at the end of the file (last 4 bytes are 0x{magic:08X}, not "
            f"0x{SEEKABLE_MAGIC:08X}): it is not a seekable zstd file, or it was truncated"
        )
    if descriptor & RESERVED_BITS:
        raise SeekTableError(
            f"seek table descriptor 0x{descriptor:02X} sets reserved bits (a newer, incompatible format?)"
        )
    if n_frames > MAX_FRAMES:
        raise SeekTableError(f"seek table claims {n_frames} frames; more than {MAX_FRAMES} is refused")
    return n_frames, 12 if descriptor & CHECKSUM_FLAG else 8


def seek_table_size(footer: bytes) -> int:
    """Size of the whole seek table frame, from the footer (the file's last 9 bytes).

    Lets a caller that read too short a tail make one exact second request.

    Parameters
    ----------
    footer : bytes
        At least the last 9 bytes of the file (only the last 9 are used).

    Returns
    -------
    int
        Bytes of the skippable frame holding the table, headers and footer included.

    Raises
    ------
    SeekTableError
        No seekable magic, reserved descriptor bits set, or an absurd frame count.
    """
    n_frames, entry_size = _footer_fields(footer)
    return SKIPPABLE_HEADER_SIZE + n_frames * entry_size + FOOTER_SIZE


def parse_seek_table(tail: bytes, file_size: int) -> FrameTable:
    """Parse and validate the seek table at the end of a seekable zstd file.

    Parameters
    ----------
    tail : bytes
        The last bytes of the file; must hold the whole seek table frame (see
        :func:`seek_table_size`).
    file_size : int
        Size of the whole file, to check that the frames cover exactly the bytes before the table.

    Returns
    -------
    FrameTable

    Raises
    ------
    SeekTableError
        Missing or inconsistent table: bad magic numbers, reserved bits, a frame count that
        disagrees with the table frame's size, frames that do not cover the bytes before it.
    TruncatedFileError
        The frames the table lists need more bytes than precede it.
    ValueError
        ``tail`` is too short to hold the table (the message says how many bytes are needed) or
        longer than ``file_size``.
    """
    if len(tail) > file_size:
        raise ValueError(f"tail holds {len(tail)} bytes, more than the file size {file_size}")
    if file_size < SKIPPABLE_HEADER_SIZE + FOOTER_SIZE:
        raise SeekTableError(
            f"{file_size} bytes is too small for a seekable zstd file "
            f"(its seek table alone takes at least {SKIPPABLE_HEADER_SIZE + FOOTER_SIZE})"
        )
    if len(tail) < FOOTER_SIZE:
        raise ValueError(f"tail holds {len(tail)} bytes; pass at least the last {FOOTER_SIZE} bytes")
    n_frames, entry_size = _footer_fields(tail[-FOOTER_SIZE:])
    table_size = SKIPPABLE_HEADER_SIZE + n_frames * entry_size + FOOTER_SIZE
    if table_size > file_size:
        raise SeekTableError(
            f"seek table footer claims {n_frames} frames, a {table_size}-byte table, "
            f"but the file has only {file_size} bytes"
        )
    if len(tail) < table_size:
        raise ValueError(
            f"tail holds {len(tail)} bytes but the seek table needs the last {table_size} bytes of the file"
        )
    table = memoryview(tail)[len(tail) - table_size :]
    magic, frame_size = _SKIPPABLE_HEADER.unpack_from(table, 0)
    if magic != SEEK_TABLE_MAGIC or frame_size != table_size - SKIPPABLE_HEADER_SIZE:
        raise SeekTableError(
            f"seek table footer claims {n_frames} frames ({table_size} bytes), but no seek table frame "
            f"starts there (magic 0x{magic:08X}, frame size {frame_size}): the frame count or the table "
            "is corrupt"
        )
    words = entry_size // 4
    entries = np.frombuffer(table, dtype="<u4", count=n_frames * words, offset=SKIPPABLE_HEADER_SIZE)
    entries = entries.reshape(n_frames, words)
    # Views of the bytes read, no copies (a 1 TiB array's table is 2 MiB; see FrameTable). The
    # block sums are computed once, here, and travel with the table to the monitor.
    sums = (block_sums(entries[:, 0]), block_sums(entries[:, 1]))
    _check_coverage(int(sums[0].sum()), file_size - table_size, n_frames)
    _check_entries(entries, 0)
    return FrameTable.from_entries(entries.view(np.uint32), sums=sums)


def _check_coverage(covered: int, available: int, n_frames: int) -> None:
    """The frames must cover exactly the bytes before the seek table."""
    if covered > available:
        raise TruncatedFileError(
            f"seek table lists {covered} bytes of frames but only {available} bytes precede it: "
            "the file is truncated or the table is corrupt"
        )
    if covered < available:
        raise SeekTableError(
            f"{available} bytes precede the seek table but its {n_frames} frames cover only {covered}: "
            "the table is corrupt or data was appended"
        )


MAX_CONTENT_PER_STORED_BYTE = 1 << 15
"""No zstd frame decodes to more than this many bytes per stored byte: a block holds at most
128 KiB of content and takes at least 4 stored bytes (3 of header and one of an RLE block)."""


def _check_entries(entries: np.ndarray, first: int) -> None:
    """Each entry (rows from ``first``) must be possible: no content without stored bytes, and no
    more content than a frame of its stored size can decode to. Checked before any size is used,
    so that no buffer is ever sized from an impossible entry."""
    compressed = entries[:, 0].astype(np.int64)
    decompressed = entries[:, 1]
    impossible = decompressed > compressed * MAX_CONTENT_PER_STORED_BYTE
    if impossible.any():  # rare: only then say which
        index = int(np.argmax(impossible))
        if compressed[index] == 0:
            raise SeekTableError(
                f"seek table entry {first + index} has no stored bytes but {decompressed[index]} of content"
            )
        raise SeekTableError(
            f"seek table entry {first + index} says {compressed[index]} stored bytes decode to "
            f"{decompressed[index]}, more than any zstd frame can (at most {MAX_CONTENT_PER_STORED_BYTE} "
            "per stored byte): the table is corrupt"
        )


def _check_against_layout(entries: np.ndarray, sums: tuple[np.ndarray, np.ndarray], layout: Layout) -> bool:
    """Check a whole-parsed table against the layout frame's index: its block sums, and (version 3)
    the CRC of each block's rows. True if the rows are proven (CRCs), False if only their sums are."""
    assert layout.block_sums is not None
    for ours, theirs, what in zip(sums, layout.block_sums, ("stored", "decompressed")):
        if len(ours) != len(theirs) or not np.array_equal(ours, theirs):
            block = int(np.argmax(ours != theirs)) if len(ours) == len(theirs) else 0
            raise SeekTableError(
                f"seek table entries {block * BLOCK}..{min((block + 1) * BLOCK, len(entries)) - 1} sum to other "
                f"{what} sizes than the layout frame's index says: the table or its index is corrupt"
            )
    if layout.row_crcs is None:
        return False
    bad = np.flatnonzero(rows_crcs(entries) != layout.row_crcs)
    if len(bad):
        block = int(bad[0])
        raise SeekTableError(
            f"seek table entries {block * BLOCK}..{min((block + 1) * BLOCK, len(entries)) - 1} do not match "
            "the CRC the layout frame keeps of them: the table is corrupt"
        )
    return True


class SeekTableRows:
    """The rows of a big seek table, read block by block (1024 entries) on first use.

    Files written by :func:`lazymem.save` index their seek table in the layout frame (see
    :mod:`lazymem.sources.layout_frame`): with it ``open`` reads the first block and the last
    bytes only, whatever the array's size, and a fault reads the 8 KiB block of its chunk's
    frames if no fault read it before. Each block is checked against the index when read (and
    for entries that store nothing), so a damaged table is an error where it is used, never
    wrong offsets. Safe to use from several threads; pickles the blocks read so far.
    """

    def __init__(self, storage: StoredObject, start: int, n_frames: int, entry_size: int,
                 sums: tuple[np.ndarray, np.ndarray], crcs: np.ndarray | None = None) -> None:
        self.storage = storage  # the source's own: pickled once with it, one descriptor per process
        self.start = start  # where entry 0 lies in the object
        self.entry_size = entry_size
        self.sums = sums
        self.crcs = crcs  # per block, from a version 3 layout frame: rows proven when read
        # Untouched pages of np.zeros cost nothing: only the blocks read take memory.
        self.entries = np.zeros((n_frames, entry_size // 4), dtype=np.uint32)
        self.loaded = np.zeros(len(sums[0]), dtype=bool)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        blocks = np.flatnonzero(self.loaded)
        rows = [self.entries[b * BLOCK : (b + 1) * BLOCK] for b in blocks]
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "entries", "loaded")}
        return {**state, "n_frames": len(self.entries), "blocks": blocks,
                "rows": np.concatenate(rows) if rows else self.entries[:0]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        blocks, rows = state.pop("blocks"), state.pop("rows")
        n_frames = state.pop("n_frames")
        self.__dict__.update(state)
        self.entries = np.zeros((n_frames, self.entry_size // 4), dtype=np.uint32)
        self.loaded = np.zeros(len(self.sums[0]), dtype=bool)
        self._lock = threading.Lock()
        at = 0
        for block in blocks:
            lo, hi = block * BLOCK, min((block + 1) * BLOCK, n_frames)
            self.entries[lo:hi] = rows[at : at + hi - lo]
            self.loaded[block] = True
            at += hi - lo

    def need(self, lo: int, hi: int) -> None:
        """Read the blocks holding rows ``[lo, hi)`` that are not read yet, in one request."""
        first, last = lo // BLOCK, (max(hi, lo + 1) - 1) // BLOCK
        if self.loaded[first : last + 1].all():
            return
        with self._lock:
            missing = first + np.flatnonzero(~self.loaded[first : last + 1])
            if not len(missing):
                return
            first, last = int(missing[0]), int(missing[-1])
            lo, hi = first * BLOCK, min((last + 1) * BLOCK, len(self.entries))
            data = self.storage.read(self.start + lo * self.entry_size, self.start + hi * self.entry_size)
            rows = np.frombuffer(data, dtype="<u4").reshape(hi - lo, -1)
            for block in range(first, last + 1):
                if not self.loaded[block]:
                    at = block * BLOCK - lo
                    self.add(block, rows[at : at + BLOCK])

    def add(self, block: int, rows: np.ndarray) -> None:
        """Check the rows of ``block`` against the index and keep them."""
        got = (int(rows[:, 0].sum(dtype=np.int64)), int(rows[:, 1].sum(dtype=np.int64)))
        expected = (int(self.sums[0][block]), int(self.sums[1][block]))
        if got != expected:
            raise SeekTableError(
                f"{self.storage.path}: seek table entries {block * BLOCK}..{block * BLOCK + len(rows) - 1} sum to "
                f"{got[0]} stored and {got[1]} decompressed bytes, but the layout frame's index says "
                f"{expected[0]} and {expected[1]}: the table or its index is corrupt"
            )
        if self.crcs is not None and int(rows_crcs(rows)[0]) != int(self.crcs[block]):
            raise SeekTableError(
                f"{self.storage.path}: seek table entries {block * BLOCK}..{block * BLOCK + len(rows) - 1} "
                "do not match the CRC the layout frame keeps of them: the table is corrupt"
            )
        _check_entries(rows, block * BLOCK)
        self.entries[block * BLOCK : block * BLOCK + len(rows)] = rows
        self.loaded[block] = True


def _find_native_frame_size() -> Callable[[Any], int] | None:
    # libzstd's ZSTD_findFrameCompressedSize, where a binding exposes it (the standard library from
    # Python 3.14, or the backports.zstd package): ~4x faster than walking the blocks in Python.
    for name in ("compression.zstd", "backports.zstd"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        function = getattr(module, "get_frame_size", None)
        if function is not None:
            return cast("Callable[[Any], int]", function)
    return None


_native_frame_size = _find_native_frame_size()


def _frame_extent(frame: memoryview) -> tuple[int, int | None, bool, bool]:
    """Walk a zstd frame's headers: (stored size, declared content size or None, is skippable,
    carries a content checksum).

    Knowing where the frame really ends lets :meth:`SeekableZstdReader.decompress_into` refuse
    trailing bytes and frames cut short, which a streaming decompressor cannot tell apart from a
    clean end (it then silently skips the content checksum). Costs one step per 128 KiB block.
    """
    n = len(frame)
    if n < 4:
        raise ValueError(f"{n} bytes cannot hold a frame")
    magic = int.from_bytes(frame[:4], "little")
    if magic & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC_BASE:
        if n < SKIPPABLE_HEADER_SIZE:
            raise ValueError("skippable frame cut inside its header")
        stored = SKIPPABLE_HEADER_SIZE + int.from_bytes(frame[4:8], "little")
        if stored > n:
            raise ValueError(f"skippable frame cut short: it needs {stored} bytes, it has {n}")
        return stored, 0, True, False
    header = parse_frame_header(frame)
    pos, content_size = header.size, header.content_size
    if _native_frame_size is not None:
        try:
            return _native_frame_size(frame), content_size, False, header.checksummed
        except Exception as exc:  # noqa: BLE001 - its ZstdError class depends on the module found
            raise ValueError(f"zstd frame cut short or malformed ({exc})") from None
    # The hot loop (level 3 splits 4 MiB of floats into ~600 blocks): unpack_from, no slicing.
    unpack = _U32.unpack_from
    while True:
        if pos + 4 <= n:
            block = unpack(frame, pos)[0] & 0xFFFFFF
        elif pos + 3 <= n:
            block = int.from_bytes(frame[pos : pos + 3], "little")
        else:
            raise ValueError("zstd frame cut inside a block header")
        block_type = (block >> 1) & 3
        if block_type == 1:
            pos += 4  # an RLE block stores one byte
        elif block_type == 3:
            raise ValueError("zstd block of reserved type")
        else:
            pos += 3 + (block >> 3)
        if block & 1:
            break
    if header.checksummed:
        pos += 4
    if pos > n:
        raise ValueError(f"zstd frame cut short: its blocks need {pos} bytes, it has {n}")
    return pos, content_size, False, header.checksummed


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    # One per thread: a ZstdDecompressor must not be used by two threads at once.
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


DISCARD_BYTES = 1 << 20
"""Scratch for the decoded bytes of a frame that nobody wants (outside the range asked for): a
frame is decoded through it piece by piece, so no buffer ever grows with a size read from the file."""


def decode_frame_into(compressed: Any, out: memoryview, *, expected: int | None = None, skip: int = 0,
                      require_checksum: bool = False) -> bool:
    """Decode one zstd frame of ``expected`` content bytes (default ``len(out)``), putting content
    bytes ``[skip, skip + len(out))`` into ``out`` and checking the rest without keeping it.

    Everything is checked before a byte is written: the frame's stored extent (no trailing bytes,
    not cut short), its header's content size (when present) against ``expected``, and its content
    checksum flag when ``require_checksum``. Then the frame must decode to exactly ``expected``
    bytes, verifying its checksum. Memory beyond ``out`` is bounded by :data:`DISCARD_BYTES`,
    whatever the sizes claim. Returns whether the frame's content checksum was verified (skippable
    frames hold no content: True). Raises ``ValueError`` (or ``zstandard.ZstdError``); the caller
    adds context.
    """
    frame = memoryview(compressed)
    expected = len(out) if expected is None else expected
    if not 0 <= skip <= skip + len(out) <= expected:
        raise ValueError(f"content bytes [{skip}, {skip + len(out)}) are outside the frame's {expected}")
    stored, content_size, skippable, checksummed = _frame_extent(frame)
    if stored < len(frame):
        raise ValueError(f"the frame ends after {stored} bytes, followed by garbage up to {len(frame)}")
    if skippable:
        if expected:
            raise ValueError(f"a skippable frame cannot hold the {expected} bytes the table says")
        return True
    if content_size is not None and content_size != expected:
        # Caught before decompressing: a lying header never gets to allocate or write.
        raise ValueError(f"frame header declares {content_size} bytes of content, the seek table {expected}")
    if require_checksum and not checksummed:
        raise ValueError("the frame carries no content checksum, but every frame of this file must")
    reader = _decompressor().stream_reader(frame, read_across_frames=False)
    done = 0
    scratch: memoryview | None = None
    stop = skip + len(out)
    while done < expected:
        if skip <= done < stop:
            target = out[done - skip :]
        else:
            if scratch is None:
                scratch = memoryview(bytearray(min(DISCARD_BYTES, expected)))
            target = scratch[: min(len(scratch), (skip if done < skip else expected) - done)]
        count = reader.readinto(target)
        if count == 0:
            raise ValueError(f"frame decompressed to {done} bytes, the seek table says {expected}")
        done += count
    # Drive the decoder to the frame's end: this verifies the content checksum, and any byte still
    # coming means the frame holds more than declared (a bomb or a lying table), not written anywhere.
    if reader.read(1):
        raise ValueError(f"frame decompresses to more than the {expected} bytes the seek table says")
    return checksummed


def _layout_frame_size(tail: bytes) -> int:
    """Stored size of the layout frame the seek table lists last, read from the table's last entry
    in ``tail`` (0 if that entry is not a plausible layout frame, or ``tail`` does not hold it)."""
    n_frames, entry_size = _footer_fields(tail[-FOOTER_SIZE:])
    if not n_frames or len(tail) < FOOTER_SIZE + entry_size:
        return 0
    stored, content = struct.unpack_from("<II", tail, len(tail) - FOOTER_SIZE - entry_size)
    return stored if content == 0 and LAYOUT_FRAME_SIZE <= stored <= MAX_LAYOUT_FRAME_SIZE else 0


def _layout(table: FrameTable, tail: bytes, table_bytes: int) -> Layout | None:
    """What a layout frame right before the seek table says, if there is one and the bytes
    already read hold it."""
    n = len(table)
    if not n or table.decompressed_size(n - 1) != 0:
        return None
    size = table.compressed_size(n - 1)
    end = len(tail) - table_bytes
    if not LAYOUT_FRAME_SIZE <= size <= min(end, MAX_LAYOUT_FRAME_SIZE):
        return None
    return parse_layout_frame(memoryview(tail)[end - size : end], n)


class _FrameRangeFile:
    """File-like view of one stored frame, fetched piece by piece (for reading just a prefix)."""

    def __init__(self, source: SeekableZstdReader, index: int) -> None:
        self._source = source
        self._pos = self._start = source.table.compressed_offset(index)
        self._end = self._pos + source.table.compressed_size(index)

    def read(self, size: int = -1) -> bytes:
        stop = self._end if size < 0 else min(self._end, self._pos + size)
        if stop <= self._pos:
            return b""
        first = self._pos == self._start
        data = self._source.storage.read(self._pos, stop)
        if first:
            self._source._note_checksum(data)
        self._pos = stop
        return data


class SeekableZstdReader(FramedSource):
    """A seekable zstd file holding a ``.npy`` stream, read through fsspec.

    Build with :meth:`open`. Pickles cheaply (filesystem, path, numpy arrays) and works after
    unpickling in another process. Safe to use from several threads at once.
    """

    checksummed: bool | None = None
    """Whether the frame read at open carries a content checksum (None: not known)."""
    require_checksums: bool = False
    """Whether a frame without a content checksum is corrupt (files written by lazymem.save)."""
    positions: ProvenPositions
    """Which frames' places in the stream are proven (see :mod:`lazymem.sources.positions`)."""

    format_name = "seekable zstd"

    @classmethod
    def open(cls, fs: Any, path: str, size: int | None = None, *, tail: bytes | None = None) -> SeekableZstdReader:
        """Read the seek table and the ``.npy`` header of ``path``.

        Costs one request for the last 64 KiB (a second only if the table is bigger) and one for
        the first frame (more only if the header does not fit in it), plus ``fs.size`` if ``size``
        is not given.

        Parameters
        ----------
        fs : fsspec.AbstractFileSystem
            Filesystem holding the object.
        path : str
            Path on ``fs``.
        size : int, optional
            Size of the object, if already known.
        tail : bytes, optional
            The object's last bytes, if already read (saves a request).

        Returns
        -------
        SeekableZstdReader

        Raises
        ------
        ArrayNotFoundError, FetchError
            Storage errors.
        FormatError
            Empty object, or a stream that is not a ``.npy`` file (subclasses say more:
            :class:`SeekTableError`, :class:`TruncatedFileError`, :class:`HeaderError`,
            :class:`UnsupportedDtypeError`).
        CorruptChunkError
            The frame holding the header does not decode.
        """
        return cls.from_storage(StoredObject.open(fs, path, size), tail=tail)

    @classmethod
    def from_storage(cls, storage: StoredObject, *, tail: bytes | None = None) -> SeekableZstdReader:
        """Like :meth:`open`, for an object already opened (``open_source`` read its tail through it)."""
        path, size = storage.path, storage.size
        # A placeholder until the table is known: reads need only the storage.
        self = cls.__new__(cls)
        self.storage = storage
        if tail is None or len(tail) < min(size, FOOTER_SIZE):
            tail_len = min(size, TAIL_READ)
            tail = self.storage.read(size - tail_len, size)
        try:
            needed = seek_table_size(tail[-FOOTER_SIZE:]) if len(tail) >= FOOTER_SIZE else FOOTER_SIZE
        except SeekTableError as exc:
            raise SeekTableError(f"{path}: {exc}") from None
        layout_bytes = _layout_frame_size(tail) if len(tail) >= FOOTER_SIZE else 0
        table: FrameTable | None = None
        layout: Layout | None = None
        try:
            if len(tail) < needed <= size:
                if layout_bytes:  # an index of the table, maybe: read only the blocks needed
                    table, layout = self._lazy_table(tail, needed, layout_bytes)
                if table is None:  # the whole table, with the layout frame before it: no third request
                    tail = self.storage.read(size - min(size, needed + layout_bytes), size)
            trust: Trust = "none"
            if table is None:
                table = parse_seek_table(tail, size)
                layout = _layout(table, tail, needed)
                if layout is not None and layout.block_sums is not None:
                    rows = table.entries
                    assert rows is not None
                    trust = "rows" if _check_against_layout(rows, table.block_sums, layout) else "blocks"
            elif layout is not None and layout.block_sums is not None:  # a lazy table checks each block read
                trust = "rows" if layout.row_crcs is not None else "blocks"
        except (SeekTableError, TruncatedFileError) as exc:
            raise type(exc)(f"{path}: {exc}") from None
        self.table = table
        self.positions = ProvenPositions(len(table), trust)
        self.chunk_bytes_hint = layout.chunk_bytes if layout is not None else None
        self.stream_size = table.decompressed_total
        self.checksummed = None  # _note_checksum sets it from the first frame read
        # Files with a layout frame are lazymem.save's, which checksums every frame.
        self.require_checksums = layout is not None
        self.header = self._read_header()
        end = self.header.data_offset + self.header.nbytes
        if end != self.stream_size:  # a .npy stream ends with its data; anything else is a lying table
            raise SeekTableError(
                f"{path}: the seek table sums to a {self.stream_size}-byte stream, but the .npy header "
                f"ends the data at byte {end}: the table is corrupt"
            )
        if self.checksummed is False:
            warnings.warn(
                f"{path}: its zstd frames carry no content checksums, so corruption of the stored bytes "
                "cannot be detected (it may decode to other values). Files written by lazymem.save always "
                "carry checksums; pyzstd writes them with level_or_option={CParameter.checksumFlag: 1}.",
                UnverifiableDataWarning,
                stacklevel=user_stacklevel(),
            )
        return self

    def _lazy_table(self, tail: bytes, needed: int, layout_bytes: int) -> tuple[FrameTable | None, Layout | None]:
        """A table read block by block, if the layout frame indexes it: one request for the layout
        frame and the table's first block (which holds the header's frame). Only that block is
        kept, even if ``tail`` holds others: every block kept is pickled to the monitor."""
        n_frames, entry_size = _footer_fields(tail[-FOOTER_SIZE:])
        table_start = self.size - needed
        if layout_bytes > table_start:  # the entry lies: parse_seek_table says how
            return None, None
        first_rows = min(n_frames, BLOCK)
        head = self.storage.read(table_start - layout_bytes,
                                 table_start + SKIPPABLE_HEADER_SIZE + first_rows * entry_size)
        layout = parse_layout_frame(memoryview(head)[:layout_bytes], n_frames)
        if layout is None or layout.block_sums is None:
            return None, layout
        magic, frame_size = _SKIPPABLE_HEADER.unpack_from(head, layout_bytes)
        if magic != SEEK_TABLE_MAGIC or frame_size != needed - SKIPPABLE_HEADER_SIZE:
            raise SeekTableError(
                f"seek table footer claims {n_frames} frames ({needed} bytes), but no seek table frame "
                f"starts there (magic 0x{magic:08X}, frame size {frame_size}): the frame count or the table "
                "is corrupt"
            )
        sums = layout.block_sums
        _check_coverage(int(sums[0].sum()), table_start, n_frames)
        rows = SeekTableRows(self.storage, table_start + SKIPPABLE_HEADER_SIZE, n_frames,
                             entry_size, sums, layout.row_crcs)
        words = entry_size // 4
        rows.add(0, np.frombuffer(head, dtype="<u4", offset=layout_bytes + SKIPPABLE_HEADER_SIZE).reshape(-1, words))
        return FrameTable.from_entries(rows.entries, sums=sums, loader=rows), layout

    def _read_header(self) -> NpyHeader:
        if self.stream_size == 0:
            raise FormatError(f"{self.path}: the seekable zstd file decompresses to nothing (no .npy header)")
        table = self.table
        first = table.frame_at(0)  # the first frame with content (the stream is not empty)
        # Enough for the fixed part of any header, and the whole first frame if that is cheap: native
        # files hold exactly the header in frame 0, pyzstd's put header and data together.
        probe = min(self.stream_size, max(16, min(table.decompressed_size(first), HEADER_PROBE)))
        prefix = self._read_prefix(probe)
        try:
            length = npy_header_length(prefix)
            if length > len(prefix):
                if length > self.stream_size:
                    raise TruncatedFileError(
                        f".npy header is {length} bytes long but the stream holds only {self.stream_size}"
                    )
                prefix = self._read_prefix(length)
            header = parse_npy_header(prefix)
        except FormatError as exc:
            raise type(exc)(f"{self.path}: {exc}") from None
        end = header.data_offset + header.nbytes
        if end > self.stream_size:
            raise TruncatedFileError(
                f"{self.path}: the .npy header describes {header.nbytes} bytes of data (shape {header.shape}, "
                f"dtype {header.dtype}), ending at {end}, but the stream holds only {self.stream_size} bytes"
            )
        return header

    def _read_prefix(self, length: int) -> bytes:
        """The first ``length`` bytes of the stream, decoding as few frames as possible."""
        out = bytearray()
        for index in range(len(self.table)):
            if len(out) >= length:
                break
            frame_size = self.table.decompressed_size(index)
            if frame_size == 0:
                continue
            take = min(length - len(out), frame_size)
            if take == frame_size:
                buf = bytearray(frame_size)
                self.decompress_into(index, self._cat_frame(index), buf)
                out += buf
            else:
                out += self._read_frame_prefix(index, take)
        return bytes(out)

    def _cat_frame(self, index: int) -> bytes:
        start = self.table.compressed_offset(index)
        blob = self.storage.read(start, start + self.table.compressed_size(index))
        self._note_checksum(blob)
        return blob

    def _note_checksum(self, frame_start: bytes) -> None:
        """Remember whether the first frame read at open carries a content checksum (descriptor bit 2)."""
        if getattr(self, "checksummed", None) is None and len(frame_start) >= 5 and (
            int.from_bytes(frame_start[:4], "little") == ZSTD_MAGIC
        ):
            self.checksummed = bool(frame_start[4] & 0x04)

    def _read_frame_prefix(self, index: int, length: int) -> bytes:
        """First ``length`` bytes of a big frame, fetching its stored bytes piece by piece.

        The content checksum cannot be checked on a prefix; the header is parsed strictly instead,
        and the data is verified when the frame is decoded in full.
        """
        read_size = min(self.table.compressed_size(index), 1 << 18)
        try:
            reader = _decompressor().stream_reader(
                _FrameRangeFile(self, index),  # type: ignore[arg-type]  # anything with read() will do
                read_size=read_size,
                read_across_frames=False,
            )
            out = bytearray()
            while len(out) < length:
                piece = reader.read(length - len(out))
                if not piece:
                    break
                out += piece
        except zstandard.ZstdError as exc:
            raise self._corrupt(index, str(exc)) from exc
        if len(out) < length:
            raise self._corrupt(index, f"frame decompressed to {len(out)} bytes, the seek table says more")
        return bytes(out)

    def _corrupt(self, index: int, reason: str) -> CorruptChunkError:
        offset = self.table.compressed_offset(index)
        return CorruptChunkError(f"{self.path}: frame {index} (stored at byte {offset}) is corrupt: {reason}")

    def is_zero_frame(self, index: int, compressed: bytes | memoryview) -> bool:
        """Whether frame ``index`` is a frame of RLE zeros, decoding to exactly its declared size.

        See :func:`lazymem.sources.zero_frames.is_zero_frame`: corrupt frames are never zero frames,
        nor, in a file that promises checksums, frames without one.
        """
        size = self.table.decompressed_size(index)
        if len(compressed) != self.table.compressed_size(index) or not is_zero_frame(compressed, size):
            return False
        return not self.require_checksums or bool(compressed[4] & _CHECKSUM_BIT)

    def decompress_into(self, index: int, compressed: bytes | memoryview, out: Any) -> None:
        """Decompress frame ``index`` straight into ``out``.

        Never writes more than the frame's declared size; verifies the content checksum if the
        frame has one (every frame must, in a file whose first frame or layout frame says so);
        refuses trailing bytes and short frames. Releases the GIL while decompressing. A frame of
        RLE zeros (what :func:`lazymem.save` writes for all-zero chunks) is recognised from its
        block headers and filled with zeros without decoding.

        Parameters
        ----------
        index : int
            Frame index.
        compressed : bytes or memoryview
            The frame's stored bytes (from :meth:`fetch`).
        out : writable buffer
            Exactly ``table.decompressed_sizes[index]`` bytes long.

        Raises
        ------
        ValueError
            ``out`` has the wrong length.
        CorruptChunkError
            The frame does not decode to exactly its declared content (names path and frame).
        """
        view = byte_view(out)
        expected = self.table.decompressed_size(index)
        if len(view) != expected:
            raise ValueError(f"frame {index} holds {expected} bytes, the output buffer has {len(view)}")
        self._decode(index, compressed, view, 0)

    def decompress_part(self, index: int, compressed: bytes | memoryview, skip: int, out: memoryview) -> None:
        """Like :meth:`decompress_into`, keeping content bytes ``[skip, skip + len(out))`` only: the
        rest is decoded and checked in a small scratch, whatever size the frame claims."""
        expected = self.table.decompressed_size(index)
        if not 0 <= skip <= skip + len(out) <= expected:
            raise ValueError(f"bytes [{skip}, {skip + len(out)}) are outside frame {index}'s {expected}")
        self._decode(index, compressed, out, skip)

    def _decode(self, index: int, compressed: bytes | memoryview, view: memoryview, skip: int) -> None:
        expected = self.table.decompressed_size(index)
        stored = self.table.compressed_size(index)
        if len(compressed) != stored:
            raise self._corrupt(index, f"got {len(compressed)} stored bytes, the seek table says {stored}")
        if self.is_zero_frame(index, compressed):
            np.frombuffer(view, dtype=np.uint8).fill(0)
            return
        try:
            verified = decode_frame_into(compressed, view, expected=expected, skip=skip,
                                         require_checksum=self.require_checksums)
        except (ValueError, zstandard.ZstdError) as exc:
            raise self._corrupt(index, str(exc)) from exc
        if not verified and self.checksummed and not self.__dict__.get("_warned_unverified"):
            # A foreign file whose first frame had a checksum (so open did not warn) but this one has none.
            self.__dict__["_warned_unverified"] = True
            warnings.warn(
                f"{self.path}: frame {index} carries no content checksum (its first frame did), so corruption "
                "of its stored bytes cannot be detected; other frames may lack one too",
                UnverifiableDataWarning,
                stacklevel=user_stacklevel(),
            )

    # -- proving where frames lie (see positions) -----------------------------------------------

    def prove_before(self, index: int) -> None:
        """Prove the sizes of the frames before frame ``index``, as far as the table's trust
        needs (see :mod:`lazymem.sources.positions`), so that frame ``index`` is placed right.

        Raises
        ------
        SeekTableError
            An entry disagrees with its frame (the table is corrupt).
        CorruptChunkError, FetchError, ...
            As for :meth:`fetch` and :meth:`decompress_into`.
        """
        positions = self.positions
        if positions.trust == "rows" or not positions.pending(index):
            return
        with positions.lock:  # one prover at a time; the others find the work done
            for lo, hi in positions.pending(index):
                for at in range(lo, hi, PROOF_BATCH):
                    self.prove_frames(at, min(hi, at + PROOF_BATCH))
                    positions.mark(at, min(hi, at + PROOF_BATCH))

    def prove_needed(self, index: int) -> bool:
        return self.positions.trust != "rows" and not self.positions.proven(index)

    def note_proven(self, lo: int, hi: int) -> None:
        with self.positions.lock:
            self.positions.mark(lo, hi)

    def prove_frames(self, lo: int, hi: int, have: dict[int, memoryview] | None = None,
                     deferred: Sequence[int] = ()) -> list[int]:
        """Check that frames ``[lo, hi)`` hold the sizes their entries say, from their headers'
        content sizes (the stored bytes in ``have``, or reads of their headers), or, for frames
        whose headers carry none, by decoding them. Frames in ``deferred`` that need decoding are
        not decoded here but returned: the caller decodes them anyway (and that checks them)."""
        have = have or {}
        stored, stream, offsets = self.table.rows_between(lo, hi)
        frames = [lo + k for k in np.flatnonzero(stored).tolist()]  # entries of no bytes hold nothing
        heads = self._read_headers([i for i in frames if i not in have], stored, offsets, lo)
        undeclared = []
        for i in frames:
            declared = self._declared_size(i, have[i] if i in have else heads[i])
            expected = int(stream[i - lo])
            if declared is None:
                undeclared.append(i)
            elif declared != expected:
                raise SeekTableError(
                    f"{self.path}: seek table entry {i} says frame {i} holds {expected} bytes, but the frame's "
                    f"header says {declared}: the table is corrupt (frames after it would land in the wrong place)"
                )
        deferred_set = set(deferred)
        now = [i for i in undeclared if i not in deferred_set]
        for group in _by_stored_bytes(now, stored, lo, DECODE_PROOF_BYTES):  # fetched a bounded group at a time
            for i, blob in zip(group, self.fetch_views(group)):  # decoded in full, kept nowhere
                self.decompress_part(i, blob, int(stream[i - lo]), memoryview(bytearray(0)))
        return [i for i in undeclared if i in deferred_set]

    def _read_headers(self, frames: list[int], stored: np.ndarray, offsets: np.ndarray,
                      lo: int) -> dict[int, memoryview]:
        """The first bytes of each frame (its header), in as few requests as sensible: headers
        less than ``HEADER_GAP`` apart share a request (small frames are read whole), so a file
        of 141-byte zero frames costs a few requests, not one per frame."""
        ranges = [(int(offsets[i - lo]), int(offsets[i - lo]) + min(int(stored[i - lo]), MAX_FRAME_HEADER))
                  for i in frames]
        views = self.storage.read_ranges(ranges, max_gap=HEADER_GAP, max_run_bytes=HEADER_RUN)
        return dict(zip(frames, views))

    def _declared_size(self, index: int, head: memoryview) -> int | None:
        """The content size frame ``index``'s header declares (0 for a skippable frame), or None."""
        magic = int.from_bytes(head[:4], "little") if len(head) >= 4 else None
        if magic is not None and magic & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC_BASE:
            return 0
        try:
            return parse_frame_header(head).content_size
        except ValueError as exc:
            raise self._corrupt(index, str(exc)) from None

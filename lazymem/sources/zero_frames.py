"""zstd frames of zeros: written in one canonical layout, recognised from their block headers alone.

python-zstandard compresses 4 MiB of zeros into a ~150-byte frame of *compressed* blocks, which only
a full decode reveals as zeros. The writer stores an all-zero chunk as a frame of RLE blocks of the
byte 0 instead, which a reader recognises without decoding: it can then fill zeros with a memset, or
let the kernel map zero pages, instead of decompressing.

Recognition is strict. A frame passes only if zstd itself decodes it to exactly ``size`` zeros with a
matching content checksum; anything else (corrupt, truncated, unusual) goes to the decoder as usual,
which raises on corruption. So damage to a stored zero frame never turns into silent zeros.

Layout (RFC 8878, section 3.1.1)::

    magic u32 | descriptor u8 | [window descriptor u8] | [dictionary id] | [content size]
    | block header u24 + RLE byte, ... | [XXH64 of the content, low 32 bits]
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np
import zstandard

__all__ = ["BLOCK_MAXIMUM_SIZE", "ZSTD_MAGIC", "FrameHeader", "is_zero_frame", "parse_frame_header", "zero_frame"]

ZSTD_MAGIC = 0xFD2FB528
"""First four bytes (little-endian) of a zstd frame."""
BLOCK_MAXIMUM_SIZE = 128 << 10
"""No block decodes to more than this (nor to more than the frame's window)."""
DECODER_WINDOW_LIMIT = 1 << 27
"""zstd's decoders refuse windows above this by default (ZSTD_WINDOWLOG_LIMIT_DEFAULT = 27)."""

# Frame header descriptor bits.
_SINGLE_SEGMENT = 0x20
_UNUSED_BIT = 0x10
_RESERVED_BIT = 0x08
_CHECKSUM = 0x04
_WINDOW_128K = 0x38
"""Window descriptor of a 128 KiB window: exponent 7 (2**(10 + 7)), mantissa 0."""

# A block header is 3 bytes (bit 0: last block, bits 1-2: type, bits 3-23: size); an RLE block then
# stores its one byte. Read as a little-endian u32, that byte is the top 8 bits.
_RLE = 1 << 1
_LAST = 1
_TYPE_LAST_AND_BYTE = 0xFF000007


class FrameHeader(NamedTuple):
    """The fields of a zstd frame header that locate and size its content."""

    size: int
    """Bytes of the header; the first block header follows."""
    descriptor: int
    """The frame header descriptor byte."""
    window_size: int | None
    """Window size in bytes (the content size for single-segment frames; None if unknown)."""
    dictionary_id: int
    """0 when the frame needs no dictionary."""
    content_size: int | None
    """Declared decompressed size, or None if the header leaves it out."""

    @property
    def checksummed(self) -> bool:
        """Whether the frame ends with a 4-byte content checksum."""
        return bool(self.descriptor & _CHECKSUM)


def parse_frame_header(frame: Any) -> FrameHeader:
    """Parse the header of the zstd frame at the start of ``frame``.

    Parameters
    ----------
    frame : bytes or memoryview
        At least the frame's header.

    Returns
    -------
    FrameHeader

    Raises
    ------
    ValueError
        Not a zstd frame, a header cut short, or the reserved bit set.
    """
    n = len(frame)
    magic = int.from_bytes(frame[:4], "little") if n >= 4 else None
    if magic != ZSTD_MAGIC:
        raise ValueError(f"not a zstd frame (magic 0x{magic:08X})" if magic is not None else "no zstd magic")
    if n < 5:
        raise ValueError("zstd frame cut inside its header")
    descriptor = frame[4]
    if descriptor & _RESERVED_BIT:
        raise ValueError("zstd frame header sets its reserved bit")
    single_segment = bool(descriptor & _SINGLE_SEGMENT)
    did_size = (0, 1, 2, 4)[descriptor & 3]
    fcs_size = (int(single_segment), 2, 4, 8)[descriptor >> 6]
    pos = 5 + (0 if single_segment else 1)
    if pos + did_size + fcs_size > n:
        raise ValueError("zstd frame cut inside its header")
    window_size = None
    if not single_segment:
        exponent, mantissa = frame[5] >> 3, frame[5] & 7
        base = 1 << (10 + exponent)
        window_size = base + (base >> 3) * mantissa
    dictionary_id = int.from_bytes(frame[pos : pos + did_size], "little")
    pos += did_size
    content_size = None
    if fcs_size:
        content_size = int.from_bytes(frame[pos : pos + fcs_size], "little") + (256 if fcs_size == 2 else 0)
        if single_segment:
            window_size = content_size
    return FrameHeader(pos + fcs_size, descriptor, window_size, dictionary_id, content_size)


@functools.lru_cache(maxsize=8)
def _zero_checksum(size: int) -> bytes:
    """Content checksum of ``size`` zeros: from zstd itself, which saves depending on an XXH64 package."""
    cobj = zstandard.ZstdCompressor(level=1, write_checksum=True).compressobj(size=size)
    zeros = memoryview(bytes(min(size, 1 << 20)))  # streamed: a 1 GiB chunk does not allocate 1 GiB
    tail = b""
    for start in range(0, size, len(zeros)):
        tail = (tail + cobj.compress(zeros[: min(len(zeros), size - start)]))[-4:]
    return (tail + cobj.flush())[-4:]


@functools.lru_cache(maxsize=8)
def zero_frame(size: int) -> bytes:
    """The canonical zstd frame holding ``size`` zero bytes, made of RLE blocks.

    Single-segment with its content size (so no window descriptor) and a content checksum, like the
    frames :func:`lazymem.save` writes; above 128 MiB a 128 KiB window instead, because a
    single-segment frame's window is its content size, which zstd's decoders refuse past 128 MiB.

    Parameters
    ----------
    size : int
        Content size, positive.

    Returns
    -------
    bytes
        About ``4 * size / 128 KiB + 20`` bytes (141 for 4 MiB).
    """
    if size <= 0:
        raise ValueError(f"a zero frame holds at least one byte (got size={size})")
    single_segment = size <= DECODER_WINDOW_LIMIT
    if single_segment and size < 256:
        fcs_flag, fcs = 0, size.to_bytes(1, "little")
    elif single_segment and size < 256 + (1 << 16):
        fcs_flag, fcs = 1, (size - 256).to_bytes(2, "little")
    elif size < 1 << 32:
        fcs_flag, fcs = 2, size.to_bytes(4, "little")
    else:
        fcs_flag, fcs = 3, size.to_bytes(8, "little")
    descriptor = fcs_flag << 6 | _CHECKSUM | (_SINGLE_SEGMENT if single_segment else 0)
    window = b"" if single_segment else bytes([_WINDOW_128K])
    full, rest = divmod(size, BLOCK_MAXIMUM_SIZE)
    sizes = [BLOCK_MAXIMUM_SIZE] * full + ([rest] if rest else [])
    blocks = np.array(sizes, dtype="<u4") << 3 | _RLE
    blocks[-1] |= _LAST
    head = ZSTD_MAGIC.to_bytes(4, "little") + bytes([descriptor]) + window + fcs
    return head + blocks.astype("<u4").tobytes() + _zero_checksum(size)


def is_zero_frame(frame: Any, size: int) -> bool:
    """Whether ``frame`` is exactly one zstd frame that decodes to ``size`` zero bytes.

    True only for frames made of RLE blocks of the byte 0 whose sizes add up to ``size``, with a
    content size (if declared) of ``size``, no dictionary, a window zstd decodes by default, nothing
    after the frame, and a content checksum (if present) that matches. Any header layout passes, not
    only :func:`zero_frame`'s. Reads block headers, never content: ~40 us for a 4 MiB zero frame
    (decoding it takes ~0.7 ms), a few us to turn down an ordinary compressed frame.

    Parameters
    ----------
    frame : bytes or memoryview
        The stored bytes of one frame, exactly.
    size : int
        The decompressed size the frame should have.

    Returns
    -------
    bool
        False for anything else, corrupt frames included (the decoder then says what is wrong).
    """
    view = memoryview(frame)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if size <= 0 or len(view) < 4 or int.from_bytes(view[:4], "little") != ZSTD_MAGIC:
        return False
    try:
        header = parse_frame_header(view)
    except ValueError:
        return False
    window = header.window_size
    if (
        header.descriptor & _UNUSED_BIT  # ignored by today's decoders, but a future format may use it
        or header.dictionary_id
        or header.content_size not in (None, size)
        or window is None
        or window > DECODER_WINDOW_LIMIT
    ):
        return False
    blocks_end = len(view) - (4 if header.checksummed else 0)
    count, rest = divmod(blocks_end - header.size, 4)
    if count <= 0 or rest:
        return False
    # First and last block headers first: an ordinary compressed frame fails here, before numpy
    # looks at a u32 per 4 stored bytes.
    first = int.from_bytes(view[header.size : header.size + 4], "little")
    last = int.from_bytes(view[blocks_end - 4 : blocks_end], "little")
    if first & _TYPE_LAST_AND_BYTE != (_RLE | _LAST if count == 1 else _RLE):
        return False
    if last & _TYPE_LAST_AND_BYTE != _RLE | _LAST:
        return False
    blocks = np.frombuffer(view, dtype="<u4", count=count, offset=header.size)
    if count > 1 and not np.all(blocks[:-1] & _TYPE_LAST_AND_BYTE == _RLE):
        return False
    sizes = blocks >> 3  # the RLE bytes, the top 8 bits, are zero by now
    if int(sizes.max()) > min(window, BLOCK_MAXIMUM_SIZE) or int(sizes.sum(dtype=np.int64)) != size:
        return False
    return not header.checksummed or view[blocks_end:] == _zero_checksum(size)

"""Which frames' places in the stream are proven, before a frame is served on its own.

A frame's place in the decompressed stream is the sum of the decompressed sizes the seek table
lists for the frames before it. Each frame is checked against its *own* entry where it is decoded
(its header's content size, its decoded length, its content checksum), but that proves nothing
about the entries before it: a table that says frame 5 holds 0x5000 bytes where it holds 0x4000
places every later frame 4 KiB too far, and each of them still decodes and passes its checksum.
A random read, or a ``prefetch`` of a later chunk alone, would then install shifted values. So
before a frame is served, the sizes of the frames before it must be proven, by one of:

``rows``
    The rows are under a CRC (a version 3 layout frame, :func:`lazymem.save`'s files), checked
    when they are read: nothing more to do. Plain ``.npy`` files (synthetic frames) too.
``blocks``
    The rows are under block sums only (a version 2 layout frame): the sums, checked against the
    rows, place each block's first frame; the frames before the wanted one *in its block* (at most
    1023) are proven one by one.
``none``
    Nothing vouches for the rows (version 1 or no layout frame: older and foreign files): every
    frame before the wanted one is proven one by one, once per process.

A frame's size is proven by its header's content size (a read of its first bytes; local reads
cost microseconds, remote ones are sent together), or, where the header carries none (pyzstd
writes none), by decoding it in bounded memory and counting. This class only keeps the books:
the source does the reading (:meth:`SeekableZstdReader.prove_positions`).
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import numpy as np

from .frames import BLOCK

Trust = Literal["rows", "blocks", "none"]


class ProvenPositions:
    """Per block, how many of its leading frames have proven sizes; thread-safe; pickles."""

    def __init__(self, n_frames: int, trust: Trust) -> None:
        self.n_frames = n_frames
        self.trust: Trust = trust
        self.done = np.zeros(-(-n_frames // BLOCK), dtype=np.int32)
        self.leading = 0  # blocks proven whole from the start: a fault never walks them again
        if trust == "rows":
            self.done[:] = BLOCK
            self.leading = len(self.done)
        self.lock = threading.RLock()  # held by the prover across its reads: others wait, then find it done

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.RLock()

    def _block_len(self, block: int) -> int:
        return min(BLOCK, self.n_frames - block * BLOCK)

    def pending(self, index: int) -> list[tuple[int, int]]:
        """Ranges ``[lo, hi)`` of frames still to prove before frame ``index`` may be placed."""
        if self.trust == "rows" or index <= 0:
            return []
        block, within = divmod(index, BLOCK)
        first = block if self.trust == "blocks" else min(self.leading, block)
        ranges = []
        for b in range(first, block + 1):
            end = within if b == block else self._block_len(b)
            if self.done[b] < end:
                ranges.append((b * BLOCK + int(self.done[b]), b * BLOCK + end))
        return ranges

    def mark(self, lo: int, hi: int) -> None:
        """Frames ``[lo, hi)`` are proven; only progress contiguous with what is proven counts."""
        for b in range(lo // BLOCK, (max(hi, lo + 1) - 1) // BLOCK + 1):
            start = b * BLOCK
            if self.done[b] >= lo - start:
                self.done[b] = max(int(self.done[b]), min(hi - start, self._block_len(b)))
        while self.leading < len(self.done) and self.done[self.leading] >= self._block_len(self.leading):
            self.leading += 1

    def proven(self, index: int) -> bool:
        """Whether frame ``index``'s place is proven (every size before it, as far as trust needs)."""
        return not self.pending(index)

"""Which N-d boxes a flat run of elements is made of (pure arithmetic, no I/O).

An install unit is a run of bytes of the array's image, so a run of elements in memory order;
an N-d source reads N-d selections. A run ``[a, b)`` of a C-order array of shape ``(n0, ..., nk)``
is a few partial rows climbing up to the first whole row of the outermost dimension it spans, a
box of whole rows, then partial rows climbing down to ``b``: at most ``2 * ndim - 1`` boxes, each
contiguous in memory and in order. (F order is the same with the dimensions reversed.)
"""

from __future__ import annotations

import math

Box = tuple[slice, ...]


def _unravel(flat: int, shape: tuple[int, ...]) -> list[int]:
    index = []
    for n in reversed(shape):
        flat, i = divmod(flat, n)
        index.append(i)
    return index[::-1]


def _c_boxes(shape: tuple[int, ...], a: int, b: int) -> list[tuple[int, Box]]:
    if a >= b:
        return []
    if len(shape) <= 1:
        return [(a, (slice(a, b),) if shape else ())]
    inner = math.prod(shape[1:])
    first, within = divmod(a, inner)
    last, end_within = divmod(b, inner)
    out: list[tuple[int, Box]] = []
    if first == last:  # inside one row of dimension 0: recurse into it
        return [(first * inner + start, (slice(first, first + 1), *box))
                for start, box in _c_boxes(shape[1:], within, end_within)]
    if within:  # the tail of row `first`
        out += [(first * inner + start, (slice(first, first + 1), *box))
                for start, box in _c_boxes(shape[1:], within, inner)]
        first += 1
    if first < last:  # whole rows
        out.append((first * inner, (slice(first, last), *(slice(0, n) for n in shape[1:]))))
    if end_within:  # the head of row `last`
        out += [(last * inner + start, (slice(last, last + 1), *box))
                for start, box in _c_boxes(shape[1:], 0, end_within)]
    return out


def flat_run_boxes(shape: tuple[int, ...], start: int, stop: int, order: str = "C") -> list[tuple[int, Box]]:
    """The boxes making up elements ``[start, stop)`` of an array of ``shape`` in memory ``order``.

    Returns
    -------
    list of (int, tuple of slice)
        For each box in memory order, the flat index of its first element and its selection
        (one slice per dimension, step 1); the boxes' sizes add up to ``stop - start``.
    """
    size = math.prod(shape)
    if not 0 <= start <= stop <= size:
        raise ValueError(f"elements [{start}, {stop}) are outside an array of {size}")
    if order == "F":
        return [(first, box[::-1]) for first, box in _c_boxes(tuple(reversed(shape)), start, stop)]
    return _c_boxes(tuple(shape), start, stop)


def box_shape(box: Box) -> tuple[int, ...]:
    """The shape a box selects."""
    return tuple(s.stop - s.start for s in box)


def intersect(a: Box, b: Box) -> Box | None:
    """The box both ``a`` and ``b`` select, or None if they do not meet."""
    out = []
    for x, y in zip(a, b, strict=True):
        start, stop = max(x.start, y.start), min(x.stop, y.stop)
        if start >= stop:
            return None
        out.append(slice(start, stop))
    return tuple(out)


def shift(box: Box, origin: tuple[int, ...]) -> Box:
    """``box`` in coordinates relative to ``origin`` (the corner of an enclosing box)."""
    return tuple(slice(s.start - o, s.stop - o) for s, o in zip(box, origin, strict=True))


def chunk_ranges(box: Box, chunks: tuple[int, ...]) -> tuple[range, ...]:
    """Per dimension, the chunk indices a (non-empty) box meets on a regular grid of ``chunks``."""
    return tuple(range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(box, chunks, strict=True))

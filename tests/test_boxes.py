"""The boxes of a flat run of elements: property tests against numpy's own indexing."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymem.sources.boxes import box_shape, flat_run_boxes


@st.composite
def runs(draw: st.DrawFn) -> tuple[tuple[int, ...], int, int, str]:
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=0, max_size=4)))
    size = math.prod(shape)
    a = draw(st.integers(0, size))
    b = draw(st.integers(a, size))
    return shape, a, b, draw(st.sampled_from(["C", "F"]))


@settings(max_examples=200, deadline=None)
@given(runs())
def test_boxes_cover_the_run_in_memory_order(run: tuple[tuple[int, ...], int, int, str]) -> None:
    shape, a, b, order = run
    flat = np.arange(math.prod(shape)).reshape(shape, order=order)  # each element holds its memory index
    boxes = flat_run_boxes(shape, a, b, order)
    assert len(boxes) <= max(1, 2 * len(shape) - 1)
    at = a
    for first, box in boxes:
        assert first == at
        values = flat[box]
        assert values.shape == box_shape(box)
        # Contiguous in memory and in order: the box's elements are first, first + 1, ...
        assert values.reshape(-1, order=order).tolist() == list(range(first, first + values.size))
        at += values.size
    assert at == b

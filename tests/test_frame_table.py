"""Frame tables answer lookups without building full offset columns: check them against numpy."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymem.sources.frames import BLOCK as _BLOCK
from lazymem.sources.frames import FrameTable, _Prefix, block_sums

# Sizes around the block length, with runs of empty frames (skippable frames have no stream bytes).
sizes_lists = st.lists(st.sampled_from([0, 0, 1, 3, 4096, 1 << 20, (1 << 32) - 1]), max_size=3 * _BLOCK + 5)


def _reference(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes.astype(np.int64))])


@settings(max_examples=150, deadline=None)
@given(sizes_lists, st.data())
def test_prefix_matches_cumsum(values: list[int], data: st.DataObject) -> None:
    sizes = np.array(values, dtype=np.uint32)
    reference = _reference(sizes)
    prefix = _Prefix(sizes, block_sums(sizes))
    for index in [*data.draw(st.lists(st.integers(0, len(sizes)), max_size=20)), 0, len(sizes)]:
        assert prefix.at(index) == reference[index]
    total = int(reference[-1])
    probes = [*data.draw(st.lists(st.integers(0, total + 1), max_size=20)), 0, total]
    probes += [int(v) for v in reference[:: max(1, len(reference) // 7)]]  # exact boundaries
    for value in probes:
        for side in ("left", "right"):
            assert prefix.search(value, side) == np.searchsorted(reference, value, side=side)


@settings(max_examples=150, deadline=None)
@given(sizes_lists, st.data())
def test_frame_lookups_match_full_columns(values: list[int], data: st.DataObject) -> None:
    sizes = np.array(values, dtype=np.uint32)
    table = FrameTable.from_sizes(sizes[::-1].copy(), sizes)
    fresh = FrameTable.from_sizes(sizes[::-1].copy(), sizes)  # lookups before any full column exists
    reference = _reference(sizes)
    total = int(reference[-1])
    assert table.decompressed_total == total
    for index in data.draw(st.lists(st.integers(0, max(len(sizes) - 1, 0)), max_size=10)) if len(sizes) else []:
        assert fresh.compressed_offset(index) == table.compressed_offsets[index]
        assert fresh.decompressed_offset(index) == table.decompressed_offsets[index]
    if len(sizes) > 64:
        indices = list(range(0, len(sizes), 3))
        assert fresh.compressed_offsets_of(indices) == [int(table.compressed_offsets[i]) for i in indices]
    if len(sizes):  # a few frames close together (a chunk's), in any order, from one cumsum
        lo = data.draw(st.integers(0, len(sizes) - 1))
        near = data.draw(st.lists(st.integers(lo, min(len(sizes) - 1, lo + 2 * _BLOCK)), min_size=1, max_size=9))
        again = FrameTable.from_sizes(sizes[::-1].copy(), sizes)
        assert again.decompressed_offsets_of(near) == [int(table.decompressed_offsets[i]) for i in near]
        assert again.compressed_offsets_of(near) == [int(table.compressed_offsets[i]) for i in near]
    for _ in range(10):
        start = data.draw(st.integers(0, total))
        stop = data.draw(st.integers(start, total))
        expected = range(0) if start == stop else range(
            int(np.searchsorted(reference[1:], start, side="right")),
            int(np.searchsorted(reference[:-1], stop, side="left")),
        )
        assert fresh.frames_for(start, stop) == expected


class _RowsFromMemory:
    """A row loader over rows already in memory, recording the blocks asked for."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.entries = np.zeros_like(rows)
        self.blocks: set[int] = set()

    def need(self, lo: int, hi: int) -> None:
        for block in range(lo // _BLOCK, (max(hi, lo + 1) - 1) // _BLOCK + 1):
            self.entries[block * _BLOCK : (block + 1) * _BLOCK] = self.rows[block * _BLOCK : (block + 1) * _BLOCK]
            self.blocks.add(block)


@settings(max_examples=100, deadline=None)
@given(sizes_lists, st.data())
def test_a_lazy_table_answers_as_the_whole_one_reading_only_the_blocks_it_needs(values: list[int],
                                                                                 data: st.DataObject) -> None:
    sizes = np.array(values, dtype=np.uint32)
    rows = np.stack([sizes[::-1], sizes], axis=1)
    whole = FrameTable.from_entries(rows.copy())
    loader = _RowsFromMemory(rows)
    lazy = FrameTable.from_entries(loader.entries, sums=(block_sums(rows[:, 0]), block_sums(rows[:, 1])), loader=loader)
    assert lazy.decompressed_total == whole.decompressed_total and lazy.compressed_total == whole.compressed_total
    assert not loader.blocks  # the totals come from the block sums
    total = whole.decompressed_total
    for index in data.draw(st.lists(st.integers(0, max(len(sizes) - 1, 0)), max_size=10)) if len(sizes) else []:
        loader.blocks.clear()
        assert lazy.compressed_offset(index) == whole.compressed_offsets[index]
        assert lazy.decompressed_offset(index) == whole.decompressed_offsets[index]
        assert lazy.compressed_size(index) == whole.compressed_sizes[index]
        assert loader.blocks <= {index // _BLOCK}
    for _ in range(10):
        start = data.draw(st.integers(0, total))
        stop = data.draw(st.integers(start, total))
        loader.blocks.clear()
        frames = lazy.frames_for(start, stop)
        assert frames == whole.frames_for(start, stop)
        assert len(loader.blocks) <= 2
    assert np.array_equal(lazy.compressed_sizes, whole.compressed_sizes)  # whole columns: every block

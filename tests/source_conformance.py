"""The conformance suite every source passes (as zarr-python's ``StoreTests``).

A format's test module subclasses :class:`SourceTests` and provides two fixtures: ``source`` (an
open :class:`~lazymem.sources.base.Source`) and ``expected`` (the array it must read, as numpy
reads it). Every test compares bytes, exactly.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from lazymem.sources.base import PAGE_SIZE, Source, UnitGrid


def _image(expected: np.ndarray) -> bytes:
    """The array's bytes in its memory order (what a mapping of it holds)."""
    order = "F" if expected.flags.f_contiguous and not expected.flags.c_contiguous else "C"
    return expected.tobytes(order=order)


class SourceTests:
    """Subclass and provide the ``source`` and ``expected`` fixtures."""

    def test_describes_the_array(self, source: Source, expected: np.ndarray) -> None:
        assert source.shape == expected.shape
        assert source.dtype == expected.dtype
        assert source.nbytes == expected.nbytes
        if expected.ndim > 1 and min(expected.shape) > 1:
            assert source.order == ("F" if expected.flags.f_contiguous and not expected.flags.c_contiguous else "C")
        assert all(c >= 1 for c in source.storage_chunks)

    @pytest.mark.parametrize("unit_bytes", [None, PAGE_SIZE, 3 * PAGE_SIZE])
    def test_the_grid_tiles_the_image(self, source: Source, unit_bytes: int | None) -> None:
        grid = source.unit_grid(unit_bytes)
        assert grid.unit_bytes % PAGE_SIZE == 0 and grid.nbytes == source.nbytes
        end = 0
        for unit in range(len(grid)):
            offset, length = grid.span(unit)
            assert offset == end and offset % PAGE_SIZE == 0 and 0 < length <= grid.unit_bytes
            assert grid.unit_at(offset) == unit and grid.unit_at(offset + length - 1) == unit
            end = offset + length
        assert end == source.nbytes
        assert list(grid.units_for(0, source.nbytes)) == list(range(len(grid)))

    @pytest.mark.parametrize("unit_bytes", [None, PAGE_SIZE, 3 * PAGE_SIZE])
    def test_every_unit_reads_as_numpy_does(self, source: Source, expected: np.ndarray, unit_bytes: int | None) -> None:
        image = _image(expected)
        grid = source.unit_grid(unit_bytes)
        for unit in range(len(grid)):
            offset, length = grid.span(unit)
            out = bytearray(b"\xa5" * length)  # not zeros: a unit left untouched must say so
            result = source.read_unit(grid, unit, memoryview(out))
            got = bytes(length) if result.zeros else bytes(out)
            assert got == image[offset : offset + length], f"unit {unit}"
            if result.zeros:
                assert out == b"\xa5" * length, "a zeros unit was written to"
            assert result.bytes_fetched is None or result.bytes_fetched >= 0

    def test_the_urgent_piece_is_final_when_announced(self, source: Source, expected: np.ndarray) -> None:
        image = _image(expected)
        grid = source.unit_grid(None)
        rng = np.random.default_rng(0)
        for unit in rng.permutation(len(grid))[:6]:
            offset, length = grid.span(int(unit))
            lo = int(rng.integers(0, length)) // PAGE_SIZE * PAGE_SIZE
            urgent = (lo, min(lo + PAGE_SIZE, length))
            out = bytearray(length)
            seen: list[tuple[int, int, bytes]] = []

            def announced(a: int, b: int, out: bytearray = out, seen: list[tuple[int, int, bytes]] = seen) -> None:
                seen.append((a, b, bytes(out[a:b])))

            result = source.read_unit(grid, int(unit), memoryview(out), urgent=urgent, on_urgent=announced)
            assert len(seen) <= 1, "on_urgent is called at most once"
            for a, b, piece in seen:
                assert a <= urgent[0] and urgent[1] <= b, "the announced range holds the urgent bytes"
                assert piece == image[offset + a : offset + b], "announced bytes were final"
            if not result.zeros:
                assert bytes(out) == image[offset : offset + length]

    def test_reads_the_whole_array_eagerly(self, source: Source, expected: np.ndarray) -> None:
        out = np.empty(expected.shape, dtype=expected.dtype, order=source.order)
        out[...] = 0
        source.read_all_into(out)
        assert out.tobytes(order="A") == _image(expected)

    def test_reads_the_whole_array_into_a_new_one(self, source: Source, expected: np.ndarray) -> None:
        got = source.read_all()
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert got.tobytes(order="A") == _image(expected)

    def test_pickles_and_reads_the_same_after(self, source: Source, expected: np.ndarray) -> None:
        clone = pickle.loads(pickle.dumps(source))
        assert clone.shape == source.shape and clone.dtype == source.dtype
        grid = clone.unit_grid(None)
        unit = len(grid) - 1
        offset, length = grid.span(unit)
        out = bytearray(length)
        result = clone.read_unit(grid, unit, memoryview(out))
        assert (bytes(length) if result.zeros else bytes(out)) == _image(expected)[offset : offset + length]

    def test_a_grid_refuses_what_it_cannot_be(self, source: Source) -> None:
        with pytest.raises(ValueError):
            UnitGrid(source.nbytes, PAGE_SIZE + 1)
        grid = source.unit_grid(None)
        with pytest.raises(IndexError):
            grid.span(len(grid))
        with pytest.raises(ValueError):
            source.read_unit(grid, 0, memoryview(bytearray(grid.span(0)[1] + 1)))

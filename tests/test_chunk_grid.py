"""The N-d chunk engine (``sources.chunk_grid``) over a source whose chunks are slices of a numpy
array: which chunks a unit meets, how many it decodes, the cache, missing chunks, the urgent piece.

The subclass here is a real implementation of the interface (its chunks are copies of an array's
blocks), so every count below is what the engine asked for; the zarr tests do the same over real
stores (``test_zarr_engine.py``).
"""

from __future__ import annotations

import math
import pickle
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lazymem.errors import CorruptChunkError
from lazymem.sources.base import PAGE_SIZE, Order, SourceHints
from lazymem.sources.boxes import box_shape
from lazymem.sources.chunk_grid import BASE_UNIT_BYTES, MAX_UNIT_BYTES, ChunkGridSource, ChunkRead

from .source_conformance import SourceTests


class BlockSource(ChunkGridSource):
    """An array served chunk by chunk: each chunk a copy of its block (``missing`` ones absent)."""

    def __init__(self, data: np.ndarray, chunks: tuple[int, ...], *, fill: Any = 0,
                 missing: Iterable[tuple[int, ...]] | None = None, known_missing: bool = False,
                 lie: tuple[int, ...] | None = None) -> None:
        self.url = "blocks://test"
        self.data = data
        self.chunks = chunks
        self.fill = fill
        self.missing = set(missing or ())
        self.known_missing = known_missing
        self.lie = lie  # a chunk that decodes to the wrong shape
        self.decodes: Counter[tuple[int, ...]] = Counter()
        self.lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.data.dtype

    @property
    def order(self) -> Order:
        return "F" if self.data.flags.f_contiguous and not self.data.flags.c_contiguous else "C"

    @property
    def storage_chunks(self) -> tuple[int, ...]:
        return self.chunks

    @property
    def hints(self) -> SourceHints:
        return SourceHints(remote=False, max_in_flight=None, local_path=None, unit_bytes=None)

    @property
    def fill_value(self) -> Any:
        return self.fill

    def chunk_present(self, coords: tuple[int, ...]) -> bool | None:
        return coords not in self.missing if self.known_missing else None

    def read_chunks(self, coords: Sequence[tuple[int, ...]]) -> Iterator[ChunkRead]:
        for c in reversed(list(coords)):  # any order
            with self.lock:
                self.decodes[c] += 1
            if c in self.missing:
                yield ChunkRead(c, None, 0)
                continue
            block = self.data[self.chunk_box(c)].copy(order="K")
            if c == self.lie:
                block = block[..., :-1]
            yield ChunkRead(c, block, block.nbytes // 3)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        del state["lock"]
        # numpy 2.4 unpickles a non-native byte order as native: carry the bytes and the dtype.
        data = state.pop("data")
        state["raw"] = (data.tobytes(order="A"), data.dtype, data.shape, self.order)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        raw, dtype, shape, order = state.pop("raw")
        super().__setstate__(state)
        self.data = np.frombuffer(raw, dtype=dtype).reshape(shape, order=order)
        self.lock = threading.Lock()


RNG = np.random.default_rng(17)
FIELD = RNG.standard_normal((37, 29, 23)).astype(np.float32)


def with_missing(data: np.ndarray, chunks: tuple[int, ...], missing: Iterable[tuple[int, ...]],
                 fill: Any) -> np.ndarray:
    out = data.copy(order="K")
    probe = BlockSource(data, chunks)
    for c in missing:
        out[probe.chunk_box(c)] = fill
    return out


class TestThreeDimensions(SourceTests):
    @pytest.fixture
    def expected(self) -> np.ndarray:
        return FIELD

    @pytest.fixture
    def source(self) -> BlockSource:
        return BlockSource(FIELD, (5, 7, 6))


class TestFortranOrder(SourceTests):
    @pytest.fixture
    def expected(self) -> np.ndarray:
        return np.asfortranarray(FIELD[:, :, 0].astype(">f8"))

    @pytest.fixture
    def source(self, expected: np.ndarray) -> BlockSource:
        return BlockSource(expected, (10, 4))


class TestMissingChunksNonZeroFill(SourceTests):
    MISSING = frozenset({(0, 0), (1, 1), (2, 0), (3, 1)})

    @pytest.fixture
    def expected(self) -> np.ndarray:
        return with_missing(np.arange(300 * 40, dtype="<i2").reshape(300, 40), (80, 20), self.MISSING, -3)

    @pytest.fixture
    def source(self) -> BlockSource:
        return BlockSource(np.arange(300 * 40, dtype="<i2").reshape(300, 40), (80, 20), fill=-3,
                           missing=self.MISSING)


class TestMissingChunksZeroFillKnown(SourceTests):
    MISSING = frozenset({(0,), (1,), (2,), (5,)})

    @pytest.fixture
    def expected(self) -> np.ndarray:
        return with_missing(np.arange(9000, dtype="<u8"), (1024,), self.MISSING, 0)

    @pytest.fixture
    def source(self) -> BlockSource:
        return BlockSource(np.arange(9000, dtype="<u8"), (1024,), missing=self.MISSING, known_missing=True)


class TestOddItemSize(SourceTests):
    @pytest.fixture
    def data(self) -> np.ndarray:
        data = np.zeros((500, 3), dtype=[("a", "<i4"), ("b", "<f8")])
        data["a"] = np.arange(1500).reshape(500, 3)
        data["b"] = np.linspace(0, 1, 1500).reshape(500, 3)
        return data

    @pytest.fixture
    def expected(self, data: np.ndarray) -> np.ndarray:
        return with_missing(data, (64, 2), {(2, 1)}, np.zeros((), data.dtype)[()])

    @pytest.fixture
    def source(self, data: np.ndarray) -> BlockSource:
        return BlockSource(data, (64, 2), missing={(2, 1)}, fill=np.zeros((), data.dtype)[()])


# --- which chunks, how many decodes --------------------------------------------------------------
def read_units(source: ChunkGridSource, units: Sequence[int], unit_bytes: int | None = None) -> bytes:
    grid = source.unit_grid(unit_bytes)
    got = []
    for unit in units:
        out = bytearray(grid.span(unit)[1])
        result = source.read_unit(grid, unit, memoryview(out))
        got.append(bytes(len(out)) if result.zeros else bytes(out))
    return b"".join(got)


def test_a_wide_array_gets_small_units_meeting_few_chunks() -> None:
    # (200, 100_000) float32, chunks (100, 1000): a row of 100 chunks, a band of 40 MB.
    data = np.zeros((200, 100_000), dtype=np.float32)
    source = BlockSource(data, (100, 1000))
    unit = source.default_unit_bytes()
    assert unit < 100_000 * 4, "a unit narrower than one row"
    grid = source.unit_grid()
    middle = len(grid) // 2 + 1
    read_units(source, [middle])
    chunk_bytes = 100 * 1000 * 4
    assert len(source.decodes) * chunk_bytes <= max(32 << 20, 4 * unit)
    assert len(source.decodes) < 100  # never the whole band


def test_a_narrow_array_gets_whole_bands() -> None:
    data = np.zeros((1000, 500), dtype=np.float32)  # bands of 100 rows: 200 KB, 5 chunks
    source = BlockSource(data, (100, 100))
    assert source.default_unit_bytes() >= 1 << 20


def test_a_scan_decodes_each_chunk_once() -> None:
    data = RNG.standard_normal((40, 64, 1000)).astype(np.float32)  # 10 MB, chunks (8, 16, 100): 320 chunks
    source = BlockSource(data, (8, 16, 100))
    grid = source.unit_grid(2 * PAGE_SIZE)  # units much smaller than a chunk's rows span
    assert read_units(source, range(len(grid)), 2 * PAGE_SIZE) == data.tobytes()
    assert set(source.decodes.values()) == {1}
    assert len(source.decodes) == math.prod(source.chunk_grid_shape)
    assert source.cached_bytes() == 0, "every chunk was dropped once used up"


def test_a_scan_with_a_cache_below_a_band_decodes_again_but_reads_right() -> None:
    data = RNG.standard_normal((40, 64, 1000)).astype(np.float32)
    source = BlockSource(data, (8, 16, 100))  # a band: 8 * 64 * 1000 * 4 = 2 MB
    source.limit_cache(source.band_bytes())  # the cache gets half a band
    grid = source.unit_grid(2 * PAGE_SIZE)
    assert read_units(source, range(len(grid)), 2 * PAGE_SIZE) == data.tobytes()
    assert sum(source.decodes.values()) > len(source.decodes)
    assert source.cached_bytes() <= source.band_bytes() // 2


def test_cached_parts_are_used_by_later_units_in_any_order() -> None:
    data = RNG.standard_normal((30, 500)).astype(np.float64)
    source = BlockSource(data, (7, 60))
    grid = source.unit_grid(PAGE_SIZE)
    order = list(RNG.permutation(len(grid)))
    got = {}
    for unit in order:
        got[unit] = read_units(source, [unit], PAGE_SIZE)
    assert b"".join(got[u] for u in range(len(grid))) == data.tobytes()


def test_a_unit_of_missing_chunks_with_fill_zero_is_zeros_without_a_fetch() -> None:
    data = np.zeros((64, 2048), dtype=np.float32)
    data[32:] = 1
    source = BlockSource(data, (16, 512), missing={(0, j) for j in range(4)} | {(1, j) for j in range(4)},
                         known_missing=True)
    grid = source.unit_grid(PAGE_SIZE)
    out = bytearray(b"\x5a" * PAGE_SIZE)
    result = source.read_unit(grid, 0, memoryview(out))
    assert result.zeros and result.bytes_fetched == 0 and out == b"\x5a" * PAGE_SIZE
    assert not source.decodes, "known missing: nothing asked of read_chunks"
    last = len(grid) - 1
    out = bytearray(grid.span(last)[1])
    result = source.read_unit(grid, last, memoryview(out))
    assert not result.zeros and result.bytes_fetched and bytes(out) == data.tobytes()[-len(out):]


def test_missing_chunks_found_on_read_are_zeros_too() -> None:
    data = np.zeros((64, 64), dtype=np.float32)
    source = BlockSource(data, (16, 64), missing={(0, 0), (1, 0)})
    out = bytearray(b"\x5a" * PAGE_SIZE)
    result = source.read_unit(source.unit_grid(PAGE_SIZE), 0, memoryview(out))
    assert result.zeros and out == b"\x5a" * PAGE_SIZE


def test_the_urgent_piece_comes_first_and_is_final() -> None:
    data = RNG.standard_normal((16, 4096)).astype(np.float32)  # rows of 4 chunks
    source = BlockSource(data, (16, 1024))
    grid = source.unit_grid(4 * PAGE_SIZE)  # a unit of 4 rows meets all 4 chunks; one page 1 chunk
    out = bytearray(grid.span(1)[1])
    seen: list[tuple[int, int, int]] = []

    def announced(lo: int, hi: int) -> None:
        seen.append((lo, hi, sum(source.decodes.values())))
        assert bytes(out[lo:hi]) == data.tobytes()[grid.span(1)[0] + lo : grid.span(1)[0] + hi]

    source.read_unit(grid, 1, memoryview(out), urgent=(2 * PAGE_SIZE, 3 * PAGE_SIZE), on_urgent=announced)
    assert seen == [(2 * PAGE_SIZE, 3 * PAGE_SIZE, 1)], "announced after decoding its one chunk"
    assert bytes(out) == data.tobytes()[grid.span(1)[0] : grid.span(1)[0] + len(out)]


def test_a_chunk_of_the_wrong_shape_raises() -> None:
    source = BlockSource(FIELD, (5, 7, 6), lie=(0, 0, 0))
    with pytest.raises(CorruptChunkError, match=r"\(0, 0, 0\)"):
        read_units(source, [0], PAGE_SIZE)
    with pytest.raises(CorruptChunkError):
        source.read_all()


def test_concurrent_units_decode_a_shared_chunk_once() -> None:
    data = RNG.standard_normal((8, 8192)).astype(np.float32)
    source = BlockSource(data, (8, 8192))  # one chunk, 64 pages of units
    grid = source.unit_grid(PAGE_SIZE)
    results: dict[int, bytes] = {}

    def worker(units: range) -> None:
        for u in units:
            results[u] = read_units(source, [u], PAGE_SIZE)

    threads = [threading.Thread(target=worker, args=(range(k, len(grid), 4),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b"".join(results[u] for u in range(len(grid))) == data.tobytes()
    assert source.decodes == Counter({(0, 0): 1})


def test_pickles_without_its_cache() -> None:
    source = BlockSource(FIELD, (5, 7, 6))
    read_units(source, [0], PAGE_SIZE)
    assert source.cached_bytes() > 0
    clone = pickle.loads(pickle.dumps(source))
    assert clone.cached_bytes() == 0 and read_units(clone, [0], PAGE_SIZE) == read_units(source, [0], PAGE_SIZE)


def test_the_grid_arithmetic() -> None:
    source = BlockSource(FIELD, (5, 7, 6))
    assert source.chunk_grid_shape == (8, 5, 4)
    assert box_shape(source.chunk_box((7, 4, 3))) == (2, 1, 5)
    # One element in the middle meets one chunk; one row of the last dimension meets all 4 along it.
    assert source.chunks_for(29 * 23 * 6 + 23 * 8 + 13, 29 * 23 * 6 + 23 * 8 + 14) == [(1, 1, 2)]
    assert len(source.chunks_for(23 * 8, 23 * 9)) == 4
    assert source.describe()["chunk_grid"] == [8, 5, 4]


def test_a_unit_that_fails_midway_leaves_no_chunk_claimed() -> None:
    data = RNG.standard_normal((16, 4096)).astype(np.float32)
    source = BlockSource(data, (16, 1024))
    grid = source.unit_grid(4 * PAGE_SIZE)

    def broken(lo: int, hi: int) -> None:
        raise RuntimeError("the installer failed")

    with pytest.raises(RuntimeError, match="the installer failed"):  # the caller's error, untouched
        source.read_unit(grid, 1, memoryview(bytearray(grid.span(1)[1])), urgent=(0, PAGE_SIZE), on_urgent=broken)
    # The chunks it had claimed and not decoded are free again: the next read decodes them (no wait).
    assert read_units(source, [1], 4 * PAGE_SIZE) == data.tobytes()[grid.span(1)[0] : sum(grid.span(1))]


def test_a_waiter_gets_the_decoders_error() -> None:
    from lazymem.sources.chunk_cache import ChunkCache

    cache: ChunkCache[str] = ChunkCache(1 << 20)
    first, second = cache.claim(["x"]), cache.claim(["x"])
    assert first.mine == ["x"] and list(second.waits) == ["x"]
    cache.fail(["x"], CorruptChunkError("chunk x"))
    with pytest.raises(CorruptChunkError):
        second.waits["x"].result(timeout=5)
    assert cache.claim(["x"]).mine == ["x"], "claimable again"
    from lazymem.sources.chunk_cache import RELEASED

    waiter = cache.claim(["x"])
    cache.release(["x"])  # its claimer failed for reasons of its own: the waiter decodes it itself
    assert waiter.waits["x"].result(timeout=5) is RELEASED


def test_the_budget_counts_what_the_source_holds() -> None:
    from lazymem.monitor.budget import ResidentSet

    held = [0]
    rs = ResidentSet(4 << 20, 1 << 20, lambda: held[0])
    for unit in range(3):
        rs.installed(unit, 1 << 20)
    assert rs.victims(1 << 20, 0, lambda u: False) == []
    held[0] = 2 << 20  # decoded chunks kept: two units must go
    assert rs.victims(1 << 20, 0, lambda u: False) == [0, 1]
    source = BlockSource(FIELD, (5, 7, 6))
    source.limit_cache(1 << 20)
    assert source._cache().limit == 1 << 19, "half the budget at most"


@st.composite
def layouts(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], set[tuple[int, ...]], Any, int, list[int]]:
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
    chunks = tuple(draw(st.integers(1, n + 3)) for n in shape)
    dtype = np.dtype(draw(st.sampled_from(["<f4", ">i2", "<u8", "u1", "<c8", "S3", "S12"])))  # S: cut by units
    order = draw(st.sampled_from(["C", "F"]))
    data = np.arange(math.prod(shape), dtype=np.int64).astype(dtype).reshape(shape, order=order)
    grid = tuple(-(-n // c) for n, c in zip(shape, chunks, strict=True))
    coords = list(np.ndindex(*grid))
    missing = set(draw(st.lists(st.sampled_from(coords), max_size=len(coords), unique=True)))
    fill = draw(st.sampled_from([0, 7]))
    unit_bytes = PAGE_SIZE * draw(st.integers(1, 3))
    nunits = -(-data.nbytes // unit_bytes)
    units = draw(st.permutations(list(range(nunits))))
    return data, chunks, missing, fill, unit_bytes, units


@settings(max_examples=150, deadline=None)
@given(layouts(), st.booleans())
def test_units_in_any_order_read_as_numpy_does(layout: Any, known: bool) -> None:
    data, chunks, missing, fill, unit_bytes, units = layout
    source = BlockSource(data, chunks, fill=fill, missing=missing, known_missing=known)
    want = with_missing(data, chunks, missing, fill).tobytes(order="A")
    grid = source.unit_grid(unit_bytes)
    got: dict[int, bytes] = {}
    for unit in units:
        offset, length = grid.span(unit)
        out = bytearray(b"\xa5" * length)
        result = source.read_unit(grid, unit, memoryview(out), urgent=(0, min(PAGE_SIZE, length)),
                                  on_urgent=lambda lo, hi: None)
        got[unit] = bytes(length) if result.zeros else bytes(out)
        assert got[unit] == want[offset : offset + length]
    assert source.cached_bytes() == 0, "every chunk used up and dropped"
    assert all(n == 1 for c, n in source.decodes.items()), "each chunk decoded once"


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("chunks", [(1, 1), (3, 5)])
def test_an_element_cut_by_a_unit_boundary_is_taken_by_both_units(chunks: tuple[int, int], reverse: bool) -> None:
    # 12-byte items: element 341 holds bytes 4092..4104, in units 0 and 1 (found by hypothesis:
    # its chunk was dropped after one unit and decoded again, then kept for ever).
    data = np.arange(40 * 23).astype("S12").reshape(40, 23)
    source = BlockSource(data, chunks)
    grid = source.unit_grid(PAGE_SIZE)
    units = list(range(len(grid)))[:: -1 if reverse else 1]
    got = {u: read_units(source, [u], PAGE_SIZE) for u in units}
    assert b"".join(got[u] for u in range(len(grid))) == data.tobytes()
    assert source.cached_bytes() == 0 and set(source.decodes.values()) == {1}


def test_a_budget_keeps_a_few_units() -> None:
    source = BlockSource(np.zeros((2048, 3072)), (64, 3072))  # 48 MiB, bands of 1.5 MiB: 4 MiB units
    assert source.default_unit_bytes() == BASE_UNIT_BYTES == 4 << 20
    assert source.unit_bytes_within(2 << 20) == 512 << 10 and source.unit_bytes_within(1 << 30) == 4 << 20
    wide = BlockSource(np.zeros((2048, 3072)), (512, 3072))  # bands of 12 MiB: 16 MiB units, a band each
    assert wide.default_unit_bytes() == MAX_UNIT_BYTES == 16 << 20
    assert source.unit_bytes_within(1000) == PAGE_SIZE

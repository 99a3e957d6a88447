"""The N-d engine serving real zarr stores through the monitor: which chunks a touch decodes, a scan
decoding each chunk once, missing chunks and inner chunks costing nothing, shard indexes fetched
once, all under a budget too. Decodes are counted by the bytes the monitor reports fetched
(``stats().bytes_fetched``) against the sizes of the chunk objects on disk, and by the source's
own counter where the source is read directly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lazymem
from lazymem.sources.base import PAGE_SIZE

from .conftest import assert_same_array, wait_for_exit

zarr = pytest.importorskip("zarr")

from lazymem.sources.zarr_array import ZarrSource  # noqa: E402

RNG = np.random.default_rng(1616)


def stored(url: str, coords: list[tuple[int, ...]] | None = None) -> int:
    """Bytes of the chunk (or shard) objects of the array at ``url``: all, or those of ``coords``
    (coordinates of the store's own grid: shards for a sharded array)."""
    root = Path(url)
    if coords is None:
        return sum(f.stat().st_size for f in root.rglob("*") if f.is_file() and not f.name.startswith(".")
                   and f.name != "zarr.json")
    meta = zarr.open_array(url, mode="r").metadata
    return sum((root / meta.encode_chunk_key(c)).stat().st_size for c in coords
               if (root / meta.encode_chunk_key(c)).exists())


def write(path: Path, data: np.ndarray, **kwargs: Any) -> str:
    z = zarr.create_array(store=str(path), shape=data.shape, dtype=data.dtype, **kwargs)
    z[...] = data
    return str(path)


def element_unit(a: np.ndarray, index: tuple[int, ...], unit_bytes: int) -> tuple[int, int]:
    """Elements ``[lo, hi)`` (memory order) of the unit holding ``a[index]``."""
    flat = int(np.ravel_multi_index(index, a.shape, order="F" if a.flags.f_contiguous and a.ndim > 1 else "C"))
    offset = flat * a.itemsize // unit_bytes * unit_bytes
    return offset // a.itemsize, min(offset + unit_bytes, a.nbytes) // a.itemsize


def test_one_element_of_a_wide_array_decodes_the_few_chunks_of_its_unit(tmp_path: Path) -> None:
    # 10,000 x 100,000 float32 (4 GB) in chunks of 1000 x 1000: a band of 100 chunks is 400 MB.
    # Only a 1000 x 3000 block is stored (3 chunks); the rest is missing.
    z = zarr.create_array(store=str(tmp_path / "w.zarr"), shape=(10_000, 100_000), dtype="<f4",
                          chunks=(1000, 1000), fill_value=0)
    z[4000:5000, 40_000:43_000] = np.broadcast_to(np.arange(3000, dtype="<f4") + 1, (1000, 3000))
    url = str(tmp_path / "w.zarr")
    source = ZarrSource(url)
    unit = source.default_unit_bytes()
    assert unit < 100_000 * 4, "a unit is narrower than one row, let alone a band"
    a = lazymem.open(url, readahead=0)
    assert a[4500, 41_500] == 1501
    s = lazymem.stats(a)
    assert s.chunks_installed == 1
    lo, hi = element_unit(a, (4500, 41_500), s.chunk_bytes)
    met = source.chunks_for(lo, hi)
    assert 1 <= len(met) <= 8 and len(met) * 4_000_000 <= max(32 << 20, 4 * unit)
    assert s.bytes_fetched == stored(url, met), "exactly the chunks its unit meets, each once"
    assert a[4500, 90_000] == 0  # a missing chunk: zero pages, nothing fetched
    s2 = lazymem.stats(a)
    assert s2.zero_chunks == 1 and s2.bytes_fetched == s.bytes_fetched
    # The source itself: one unit decodes exactly the chunks it meets.
    grid = source.unit_grid()
    target = grid.unit_at(lo * 4)
    out = bytearray(grid.span(target)[1])
    source.read_unit(grid, target, memoryview(out))
    assert source.chunks_decoded() == len(met)


def scan_field(tmp_path: Path, **kwargs: Any) -> tuple[str, np.ndarray]:
    data = np.cumsum(RNG.standard_normal((16, 64, 4096)), axis=2).astype(np.float32)  # 16 MiB
    return write(tmp_path / "scan.zarr", data, chunks=(4, 16, 512), **kwargs), data  # 128 KiB chunks, bands of 4 MiB


def test_a_scan_fetches_and_decodes_each_chunk_once(tmp_path: Path) -> None:
    url, data = scan_field(tmp_path)
    # Units of 64 KiB: 4 rows of 4096, meeting 8 chunks each; a chunk serves 16 units.
    a = lazymem.open(url, chunk_bytes=65536)
    assert float(np.sum(a, dtype=np.float64)) == float(np.sum(data, dtype=np.float64))
    assert_same_array(np.asarray(a), data)
    assert lazymem.stats(a).bytes_fetched == stored(url), "every chunk fetched once"
    source = ZarrSource(url)  # the same counted directly: each of the 512 chunks decoded once
    grid = source.unit_grid(65536)
    for unit in range(len(grid)):
        source.read_unit(grid, unit, memoryview(bytearray(grid.span(unit)[1])))
    assert source.chunks_decoded() == 4 * 4 * 8 and source.cached_bytes() == 0


def test_a_scan_under_a_budget_smaller_than_a_band_reads_right(tmp_path: Path) -> None:
    url, data = scan_field(tmp_path)
    # 2 MiB: half a band; the decoded-chunk cache gets half of that (8 chunks of 128 KiB).
    a = lazymem.open(url, chunk_bytes=65536, max_resident="2MiB")
    assert_same_array(np.asarray(a[:8]), data[:8])
    assert float(np.sum(a, dtype=np.float64)) == float(np.sum(data, dtype=np.float64))
    s = lazymem.stats(a)
    assert s.resident_bytes <= 2 << 20 and s.evictions > 0
    # Below a band, chunks are decoded again: more fetched than stored (but every value right).
    assert s.bytes_fetched > stored(url)


def test_a_narrow_array_is_read_in_whole_bands(tmp_path: Path) -> None:
    data = RNG.integers(0, 1000, (2000, 300), dtype="<i4")  # bands of 100 rows: 3 chunks, 120 KB
    url = write(tmp_path / "n.zarr", data, chunks=(100, 128))
    assert ZarrSource(url).default_unit_bytes() >= 1 << 20
    a = lazymem.open(url, readahead=0)
    assert a[1234, 5] == data[1234, 5] and lazymem.stats(a).chunks_installed == 1
    assert_same_array(np.asarray(a), data)


@pytest.mark.parametrize("location", ["end", "start"])
@pytest.mark.parametrize("fill", [0, -9])
def test_sharded_with_missing_shards_and_inner_chunks(tmp_path: Path, location: str, fill: int) -> None:
    codecs = zarr.codecs
    z = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=(300, 1000), dtype="<i4", chunks=(10, 100),
                          shards=(50, 500), fill_value=fill, compressors=None,
                          serializer=codecs.ShardingCodec(chunk_shape=(10, 100), index_location=location,
                                                          codecs=[codecs.BytesCodec(), codecs.ZstdCodec()]))
    z[20:60, 150:420] = RNG.integers(-100, 100, (40, 270), dtype="<i4")  # parts of 2 shards
    z[280:, 990:] = 5  # one inner chunk of the last shard
    url = str(tmp_path / "s.zarr")
    want = zarr.open_array(url, mode="r")[...]
    a = lazymem.open(url, chunk_bytes=PAGE_SIZE)  # 1 row a unit: 10 inner chunks, most missing
    assert_same_array(np.asarray(a), want)
    s = lazymem.stats(a)
    # Each shard's index once, and only the inner chunks that are stored.
    assert s.bytes_fetched == stored(url)
    if fill == 0:
        assert s.zero_chunks > 0, "units of missing chunks only: zero pages"


def test_missing_chunks_cost_no_fetch(tmp_path: Path) -> None:
    z = zarr.create_array(store=str(tmp_path / "m.zarr"), shape=(64, 8192), dtype="<f8", chunks=(16, 1024),
                          fill_value=0)
    z[16:32, 2048:3072] = 2.5  # one chunk of 32
    url = str(tmp_path / "m.zarr")
    a = lazymem.open(url, chunk_bytes=PAGE_SIZE, readahead=0)
    assert a[0, 0] == 0 and a[40, 5000] == 0
    s = lazymem.stats(a)
    assert s.zero_chunks == 2 and s.bytes_fetched == 0
    assert a[20, 2500] == 2.5 and lazymem.stats(a).bytes_fetched == stored(url)
    assert_same_array(np.asarray(a), zarr.open_array(url, mode="r")[...])


def test_v2_fortran_order_with_chunks_that_do_not_divide(tmp_path: Path) -> None:
    data = np.asfortranarray(RNG.standard_normal((301, 77, 5)))
    url = write(tmp_path / "f.zarr", data, chunks=(64, 10, 2), zarr_format=2, order="F")
    a = lazymem.open(url, chunk_bytes=2 * PAGE_SIZE)
    assert a.flags.f_contiguous
    assert a[300, 76, 4] == data[300, 76, 4]
    assert_same_array(np.asarray(a), data)
    assert lazymem.stats(a).bytes_fetched == stored(url)


def test_concurrent_readers_of_a_wide_array_read_right(tmp_path: Path) -> None:
    url, data = scan_field(tmp_path)
    a = lazymem.open(url, chunk_bytes=PAGE_SIZE)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda t: np.array(a[t]), range(16)))
    assert_same_array(np.stack(parts), data)


def test_the_reader_is_woken_once_its_own_chunks_are_in(tmp_path: Path) -> None:
    # Units of 64 KiB (4 rows of 4096 float32) meet 8 chunks; the reader's page meets one: it is
    # installed and the reader woken before the other 7 are decoded (units this small get no
    # other early wake from the installer: see installer.FIRST_PIECE).
    url, data = scan_field(tmp_path)
    a = lazymem.open(url, chunk_bytes=65536, readahead=0)
    assert a[5, 21, 700] == data[5, 21, 700]
    s = lazymem.stats(a)
    assert s.chunks_installed == 1 and s.early_wakes == 1
    assert_same_array(np.asarray(a[5, 20:24]), data[5, 20:24])  # the whole unit went in after


def test_a_forked_child_reads_eagerly_through_its_own_threads(tmp_path: Path) -> None:
    import os
    import signal

    url, data = scan_field(tmp_path)
    source = ZarrSource(url)
    assert_same_array(source.read_all(), data)  # the parent's reader threads exist now
    pid = os.fork()
    if pid == 0:  # the child: the parent's threads are not here; a read must not wait for them
        ok = np.array_equal(source.read_all(), data)
        os._exit(0 if ok else 1)
    exited = wait_for_exit(pid, 60)
    if not exited:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert exited, "the child's read hung"
    assert os.waitstatus_to_exitcode(status) == 0

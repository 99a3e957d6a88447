"""lazymem.open end to end on local files: values, dtypes, shapes, views, stats, threads."""

from __future__ import annotations

import copy
import itertools
import os
import pickle
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lazymem
from lazymem import LazyArray

from .conftest import PAGE, assert_same_array, resident_pages, run_python

DTYPES = [
    np.dtype("f4"), np.dtype(">f8"), np.dtype("i1"), np.dtype("<u2"), np.dtype(">i8"), np.dtype("c16"),
    np.dtype("?"), np.dtype("U3"), np.dtype("S5"), np.dtype("M8[s]"),
    np.dtype([("a", "<i4"), ("b", ">f8"), ("c", "S3")]),
]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(DTYPES),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40),
    order=st.sampled_from(["C", "F"]),
    chunk_pages=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_through_lazy_open(tmp_path: Path, dtype, shape, order, chunk_pages, seed) -> None:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * dtype.itemsize, dtype=np.uint8)
    src = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape, order=order)
    if dtype.kind == "M":
        src = src.view("i8").copy().clip(-(2**40), 2**40).view(dtype)
    path = str(tmp_path / f"rt-{seed}.npy.zst")
    lazymem.save(path, src, chunk_bytes=chunk_pages * PAGE)
    a = lazymem.open(path)
    assert isinstance(a, LazyArray)
    assert a.dtype == src.dtype and a.shape == src.shape
    assert a.flags.f_contiguous == (order == "F" and src.ndim > 1 and src.size > 1) or a.flags.c_contiguous
    assert a.tobytes(order="A") == src.tobytes(order="A")
    assert_same_array(a, src)


def test_random_slices_equal_the_source(field) -> None:
    path, src = field
    a = lazymem.open(path)
    rng = np.random.default_rng(1)
    for _ in range(200):
        i, j = sorted(rng.integers(0, src.shape[0], 2))
        k = int(rng.integers(1, 5))
        assert np.array_equal(a[i:j + 1:k, ::k], src[i:j + 1:k, ::k])
    rows = rng.integers(0, src.shape[0], 50)
    assert np.array_equal(a[rows], src[rows])


def test_scalar_elements_and_reductions(field) -> None:
    path, src = field
    a = lazymem.open(path)
    assert a[123, 45] == src[123, 45]
    assert a[-1, -1] == src[-1, -1]
    assert float(np.sum(a, dtype=np.float64)) == float(np.sum(src, dtype=np.float64))
    assert a[1000:2000].mean() == src[1000:2000].mean()


def test_header_only_open_touches_no_chunk(field) -> None:
    path, _ = field
    a = lazymem.open(path)
    s = lazymem.stats(a)
    assert (s.faults, s.chunks_installed, s.bytes_fetched, s.resident_bytes) == (0, 0, 0, 0)
    assert s.chunks_total == 10
    a[0, 0]
    s = lazymem.stats(a)
    assert s.chunks_installed >= 1 and s.resident_bytes >= 2**20 and s.bytes_fetched > 0


def test_stats_count_what_a_full_scan_loads(field) -> None:
    path, src = field
    a = lazymem.open(path)
    assert np.array_equal(a, src)
    s = lazymem.stats(a)
    assert s.chunks_present == s.chunks_total == 10
    assert s.resident_bytes == s.bytes_decompressed == src.nbytes
    assert 0 < s.bytes_fetched < Path(path).stat().st_size


def test_views_results_and_flags(field) -> None:
    path, src = field
    a = lazymem.open(path)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a.flags.writeable = True  # the mapping is read-only: numpy must refuse, never segfault
    with pytest.raises(ValueError):
        a[0, 0] = 1
    view = a[10:20]
    assert type(view) is LazyArray and lazymem.stats(view).chunks_total == 10
    assert type(a + 1) is np.ndarray and np.array_equal(a + 1, src + 1)
    assert type(a.sum()) is np.float32
    assert type(a.copy()) is np.ndarray or not np.may_share_memory(a.copy(), a)
    assert type(a[[1, 2, 3]]) is np.ndarray and np.array_equal(a[[1, 2, 3]], src[[1, 2, 3]])
    deep = copy.deepcopy(a)  # a lazy, writeable copy since issue 14 (tests/test_cow.py)
    assert deep.flags.writeable and not np.may_share_memory(deep, a) and np.array_equal(deep, src)
    assert np.array_equal(pickle.loads(pickle.dumps(a[5:9])), src[5:9])
    with pytest.raises(TypeError):
        lazymem.stats(src)


def test_view_keeps_the_mapping_alive(field) -> None:
    import gc

    path, src = field
    a = lazymem.open(path)
    view = a[100:200, ::3]
    del a
    gc.collect()
    assert np.array_equal(view, src[100:200, ::3])


def test_eight_threads_fault_at_once(field) -> None:
    path, src = field
    a = lazymem.open(path, readahead=0)
    barrier = threading.Barrier(8)
    results: list[bool] = [False] * 8

    def reader(k: int) -> None:
        barrier.wait()
        rows = slice(k * 37 % src.shape[0], None, 7)
        results[k] = bool(np.array_equal(a[rows], src[rows]))

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results)
    s = lazymem.stats(a)
    assert s.chunks_installed == s.chunks_present == 10  # concurrent faults on a chunk: one install


def test_sequential_scan_reads_ahead(field) -> None:
    path, src = field
    a = lazymem.open(path, readahead=4)
    for row in range(0, src.shape[0], 64):
        assert np.array_equal(a[row], src[row])
    s = lazymem.stats(a)
    # Most chunks came ahead of the reader (counting faults would not tell: a demand install wakes
    # the reader after the first piece of its chunk, so it may fault there again).
    demanded = s.chunks_installed - s.readahead_chunks
    assert s.readahead_chunks > 0 and demanded < s.chunks_total // 2


def test_chunks_under_any_index_cover_the_elements_numpy_selects(field) -> None:
    from lazymem.array import _chunks_under

    path, src = field
    a = lazymem.open(path, readahead=0)
    element = np.arange(src.size, dtype=np.int64).reshape(src.shape)  # oracle: element numbers
    rng = np.random.default_rng(9)
    rows = rng.integers(-src.shape[0], src.shape[0], 7)
    mask = np.zeros(src.shape[0], bool)
    mask[[3, 1500, 2559]] = True
    exact = [rows, (rows, 5), mask, (np.array([[1, 2], [2000, 2001]]), 0), (rows, rows % 1024),
             np.array([], dtype=int)]
    spans = [(rows, slice(10, 20)), (slice(None, None, 700), rows % 1024), (mask, slice(None)),
             (Ellipsis, np.array([0, 1023]))]
    for key in exact + spans:
        want = sorted({int(e) * 4 // 2**20 for e in np.ravel(element[key])})
        got = _chunks_under(a, key, a._lazy)
        if any(k is key for k in exact):
            assert got == want, key
        else:  # slices are folded into spans: a superset, never less
            assert set(want) <= set(got), key
    with pytest.raises(IndexError):
        a.prefetch(np.array([src.shape[0]]))


def test_prefetch_installs_exactly_the_chunks_under_a_key(field) -> None:
    path, src = field
    a = lazymem.open(path, readahead=0)
    rows_per_chunk = 2**20 // src[0].nbytes
    assert a.prefetch(np.s_[rows_per_chunk: 3 * rows_per_chunk]) == 2
    s = lazymem.stats(a)
    assert s.chunks_present == 2 and s.faults == 0
    assert a.prefetch(np.s_[rows_per_chunk: 3 * rows_per_chunk]) == 0
    assert a.prefetch(([0, 9 * rows_per_chunk], [5, 6])) == 2  # advanced index: chunks 0 and 9
    assert lazymem.stats(a).chunks_present == 4
    assert np.array_equal(a, src) and lazymem.stats(a).faults > 0


def test_evict_frees_memory_and_reloads_correctly(field) -> None:
    path, src = field
    a = lazymem.open(path)
    assert np.array_equal(a, src)
    assert a.evict() == 10
    assert lazymem.stats(a).resident_bytes == 0
    assert np.array_equal(a, src)
    assert lazymem.stats(a).chunks_installed == 20


def test_close_and_context_manager(field) -> None:
    path, src = field
    with lazymem.open(path) as a:
        view = a[2:]
        assert np.array_equal(a[:5], src[:5])
        before = lazymem.stats(a)
        assert before.resident_bytes > 0
    # Closed: explicit calls say so, on the array and on its views; closing again is harmless.
    for arr in (a, view):
        with pytest.raises(lazymem.ClosedArrayError, match="closed"):
            lazymem.stats(arr)
        with pytest.raises(lazymem.ClosedArrayError):
            arr.prefetch()
        with pytest.raises(lazymem.ClosedArrayError):
            arr.evict()
        arr.close()
    assert isinstance(lazymem.ClosedArrayError("x"), ValueError)
    again = lazymem.open(path)  # the file is still there: a new array reads it
    assert np.array_equal(again[:5], src[:5])


def test_touching_a_closed_array_is_sigbus_with_a_message_never_a_reload(field) -> None:
    path, src = field
    result = run_python(
        f"""
        import faulthandler, lazymem
        faulthandler.disable()
        a = lazymem.open({path!r}, readahead=0)
        print("before", float(a[0, 0]) == {float(src[0, 0])!r}, flush=True)
        a.close()
        print("NEVER", a[0, 0], flush=True)
        """
    )
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "before True" in result.stdout and "NEVER" not in result.stdout
    assert "was closed" in result.stderr and path in result.stderr
    forked = run_python(  # a child forked after close inherits a closed array
        f"""
        import faulthandler, os, lazymem
        faulthandler.disable()
        a = lazymem.open({path!r}, readahead=0)
        a.close()
        pid = os.fork()
        if pid == 0:
            print("NEVER", a[5, 5], flush=True)
            os._exit(0)
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
        """
    )
    assert forked.returncode == 0, forked.stderr
    assert f"child {-signal.SIGBUS}" in forked.stdout and "NEVER" not in forked.stdout, forked


def test_a_relative_path_is_opened_as_absolute_and_pickles_for_a_worker_elsewhere(field, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    path, src = field
    monkeypatch.chdir(os.path.dirname(path))
    a = lazymem.open(os.path.basename(path))
    assert a.url == path
    data = pickle.dumps(a[3:9])
    monkeypatch.chdir(tmp_path.parent)  # a worker that changed directory
    assert np.array_equal(pickle.loads(data), src[3:9])


def test_empty_and_zero_dimensional(tmp_path: Path) -> None:
    for shape in [(0,), (3, 0), ()]:
        src = np.arange(int(np.prod(shape)), dtype="i4").reshape(shape)
        path = str(tmp_path / f"a{len(shape)}.npy.zst")
        lazymem.save(path, src)
        a = lazymem.open(path)
        assert isinstance(a, LazyArray) and a.shape == shape and a.dtype == src.dtype
        assert np.array_equal(a, src)


@pytest.mark.slow  # ~5 s
def test_huge_virtual_array_opens_instantly_and_costs_only_what_is_touched(tmp_path: Path) -> None:
    # 4 GiB of zeros compresses to a few hundred KiB; opening it maps 4 GiB of address space only.
    path = str(tmp_path / "zeros.npy.zst")
    big = np.broadcast_to(np.float32(0), (2**30,))
    lazymem.save(path, big, chunk_bytes=64 * 2**20)
    a = lazymem.open(path)
    assert a.shape == (2**30,) and a[2**29] == 0 and a[-1] == 0
    assert lazymem.stats(a).resident_bytes == 2 * 64 * 2**20
    # An index array costs what it selects, not the axis length (2**30 elements).
    assert a.prefetch(np.array([5, -5])) == 1  # chunk 0 loads; chunk 63 is there already
    assert a.prefetch(np.array([2**28])) == 1
    assert a.evict(np.array([2**28, 2**28 + 1])) == 1


def test_open_missing_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        lazymem.open(str(tmp_path / "nope.npy.zst"))
    with pytest.raises(lazymem.ArrayNotFoundError):
        lazymem.open(str(tmp_path / "nope.npy.zst"))


def test_open_garbage_raises_format_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.npy.zst"
    path.write_bytes(b"not a zstd file at all" * 100)
    with pytest.raises(lazymem.FormatError):
        lazymem.open(str(path))


def test_chunk_bytes_must_be_page_multiple(field) -> None:
    path, _ = field
    with pytest.raises(ValueError, match="multiple"):
        lazymem.open(path, chunk_bytes=1000)


def test_files_written_by_pyzstd_open_lazily(tmp_path: Path) -> None:
    import io

    pyzstd = pytest.importorskip("pyzstd")
    src = np.random.default_rng(3).standard_normal((300, 500))
    buf = io.BytesIO()
    np.save(buf, src)
    path = tmp_path / "pyzstd.npy.zst"
    with pyzstd.SeekableZstdFile(str(path), "w", max_frame_content_size=100_003) as f:
        f.write(buf.getvalue())
    a = lazymem.open(str(path), chunk_bytes=4 * PAGE)
    assert np.array_equal(a[::7], src[::7])
    assert np.array_equal(a, src)


def test_uncompressed_npy_local_is_a_kernel_memmap_and_remote_style_lazy(tmp_path: Path) -> None:
    src = np.random.default_rng(4).standard_normal((500, 300))
    np.save(tmp_path / "plain.npy", src)
    a = lazymem.open(str(tmp_path / "plain.npy"))
    assert isinstance(a, np.memmap) and not a.flags.writeable and np.array_equal(a, src)
    assert np.array_equal(lazymem.load(str(tmp_path / "plain.npy")), src)


def test_a_plain_local_npy_has_the_lazy_array_extras(tmp_path: Path) -> None:
    src = np.random.default_rng(5).standard_normal((1000, 300))  # 2.4 MB, about 586 pages
    np.save(tmp_path / "plain.npy", src)
    a = lazymem.open(str(tmp_path / "plain.npy"))
    assert isinstance(a, lazymem.MappedArray) and isinstance(a, np.memmap)
    pages = lazymem.stats(a).chunks_total
    assert lazymem.stats(a).chunk_bytes == PAGE and pages * PAGE >= src.nbytes
    assert a.evict() > 0 and lazymem.stats(a).chunks_present == 0  # mincore: no page mapped in
    assert a.prefetch(np.s_[500:]) > 0
    present = lazymem.stats(a).chunks_present
    assert 0 < present < pages
    assert a.prefetch() > 0 and lazymem.stats(a).resident_bytes >= src.nbytes
    view = a[10:20, ::3]
    assert type(view) is lazymem.MappedArray and np.array_equal(view, src[10:20, ::3])
    assert type(a + 1) is np.ndarray and type(a.sum()) is np.float64
    back = pickle.loads(pickle.dumps(view))  # by reference, as a LazyArray
    assert len(pickle.dumps(view)) < 1000 and type(back) is lazymem.MappedArray
    assert np.array_equal(back, src[10:20, ::3]) and not back.flags.writeable
    a.close()
    for arr in (a, view):
        with pytest.raises(lazymem.ClosedArrayError):
            lazymem.stats(arr)
        with pytest.raises(lazymem.ClosedArrayError):
            arr.prefetch()
    assert np.array_equal(back, src[10:20, ::3])  # another mapping, still open
    result = run_python(
        f"""
        import faulthandler, lazymem
        faulthandler.disable()
        a = lazymem.open({str(tmp_path / "plain.npy")!r})
        a.close()
        print("NEVER", a[0, 0], flush=True)
        """
    )
    assert result.returncode == -signal.SIGSEGV and "NEVER" not in result.stdout, result


def test_a_demand_install_copies_the_readers_piece_first_and_everything_arrives() -> None:
    from lazymem.monitor.installer import FIRST_PIECE
    from lazymem.monitor.installer import pieces as _pieces

    chunk = 4 * FIRST_PIECE
    for lo, hi in ((0, chunk), (4096, chunk - 8192), (FIRST_PIECE + 4096, chunk)):
        for fault_at in (lo, lo + 1, FIRST_PIECE - 1, FIRST_PIECE, 2 * FIRST_PIECE + 5, hi - 1):
            if not lo <= fault_at < hi:
                continue
            pieces = _pieces(lo, hi, fault_at)
            assert pieces[0][0] <= fault_at < pieces[0][1]
            assert sum(b - a for a, b in pieces) == hi - lo
            covered = sorted(pieces)
            assert covered[0][0] == lo and covered[-1][1] == hi
            assert all(x[1] == y[0] for x, y in itertools.pairwise(covered))
    assert _pieces(0, chunk, -1) == [(0, chunk)]
    assert _pieces(0, FIRST_PIECE, 7) == [(0, FIRST_PIECE)]
    assert _pieces(0, FIRST_PIECE + 4096, FIRST_PIECE) == [(FIRST_PIECE, FIRST_PIECE + 4096), (0, FIRST_PIECE)]
    assert _pieces(4096, chunk, 5000) == [(4096, FIRST_PIECE), (FIRST_PIECE, chunk)]


@pytest.mark.parametrize("frame_bytes", [None, 2**18, 3 * PAGE])
def test_elements_anywhere_in_a_chunk_read_first_are_right(field, frame_bytes, tmp_path) -> None:
    # Each read below is the first touch of its chunk: its frame is decoded first and its piece
    # arrives (and wakes the reader) before the rest of the chunk; then the rest of the chunk must
    # be there too, byte for byte. Frames of 3 pages do not divide the chunk: the last is shorter.
    path, src = field
    if frame_bytes is not None:
        path = str(tmp_path / "frames.npy.zst")
        lazymem.save(path, src, chunk_bytes=2**20, frame_bytes=frame_bytes)
    a = lazymem.open(path, readahead=0)
    flat, expected = a.reshape(-1), src.reshape(-1)
    per_chunk = 2**20 // src.itemsize
    positions = [0, 1, per_chunk // 2, per_chunk - 1, 65536 + 3, 65535, 3 * PAGE // 4 - 1, 3 * PAGE // 4, 200_000]
    for chunk, within in enumerate(positions):
        index = chunk * per_chunk + within
        assert flat[index] == expected[index]
        s = lazymem.stats(a)
        assert s.chunks_installed == chunk + 1 and s.resident_bytes == (chunk + 1) * 2**20
        assert np.array_equal(flat[chunk * per_chunk:(chunk + 1) * per_chunk],
                              expected[chunk * per_chunk:(chunk + 1) * per_chunk])
    assert np.array_equal(a, src)


@pytest.mark.parametrize("frames_per_chunk", [1, 4])
def test_a_fault_wakes_its_reader_once_its_own_frame_is_in(tmp_path: Path, frames_per_chunk: int) -> None:
    # Chunks of 64 KiB fit in one first piece (FIRST_PIECE): only a frame decoded ahead of the rest
    # of its chunk can wake the reader early. One frame per chunk: the whole chunk comes at once.
    chunk = 16 * PAGE
    src = np.random.default_rng(4).integers(0, 1 << 30, 8 * chunk // 4, dtype=np.int32)
    path = str(tmp_path / "frames.npy.zst")
    lazymem.save(path, src, chunk_bytes=chunk, frame_bytes=chunk // frames_per_chunk)
    a = lazymem.open(path, readahead=0)
    for i, within in enumerate([0, chunk // 4 - 1, chunk // 2 + 5, chunk - 1]):  # bytes into chunk i
        index = (i * chunk + within) // 4
        assert a[index] == src[index]
    s = lazymem.stats(a)
    assert s.chunks_installed == 4
    assert s.early_wakes == (4 if frames_per_chunk > 1 else 0)
    assert a.tobytes() == src.tobytes()


def test_a_sequential_reader_trips_the_window_and_prefetch_leaves_no_page_held_back(field) -> None:
    path, src = field
    a = lazymem.open(path, readahead=8)
    per_chunk_rows = 2**20 // (src.shape[1] * src.itemsize)
    for row in range(0, 6 * per_chunk_rows):  # a reader going through chunk after chunk
        assert np.array_equal(a[row], src[row])
    s = lazymem.stats(a)
    assert s.readahead_chunks > 0
    a.prefetch()  # every chunk, every page: a page held back as a tripwire goes in too
    assert resident_pages(a).all()
    assert np.array_equal(a, src)
    assert lazymem.stats(a).chunks_present == lazymem.stats(a).chunks_total

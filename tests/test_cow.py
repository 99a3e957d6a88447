"""Lazy copy-on-write copies (``a.copy()``, ``np.copy``, ``copy.copy``, ``open(mode="c")``): numpy's
semantics, lazily. Real files, real userfaultfd, real forks; compared with numpy on eager arrays."""

from __future__ import annotations

import copy
import gc
import os
import pickle
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import lazymem
from lazymem import cow

from .conftest import PAGE, ROOT, assert_same_array, report_from_forked_child, run_python, wait_for_exit
from .test_huge_pages import pool as pool  # the fixture


def _is_lazy_copy(x: object) -> bool:
    return isinstance(x, lazymem.LazyArray) and x._lazy is not None and x._lazy.copy is not None


def test_a_copy_is_lazy_writeable_and_private(field) -> None:
    path, src = field
    a = lazymem.open(path)
    b = a.copy()
    assert _is_lazy_copy(b) and b.flags.writeable and b.flags.owndata is False
    assert lazymem.stats(a).chunks_installed == 0  # the copy cost nothing
    b[3, 5] = -1.0
    b[2000:2010] = 7.0
    want = src.copy()
    want[3, 5] = -1.0
    want[2000:2010] = 7.0
    assert_same_array(b, want)
    assert_same_array(a, src)  # the array never sees the copy's writes
    c = a.copy()
    assert_same_array(c, src)  # nor does another copy
    stats = lazymem.stats(b)
    # Two pages written (row 3 lies in one page; rows 2000..2009 are 40 KiB, 10 pages).
    assert stats.private_bytes == 11 * PAGE
    assert lazymem.stats(c).private_bytes == 0
    assert lazymem.stats(a).private_bytes == 11 * PAGE and lazymem.stats(a).copies == 2
    # Reads went through the array's cache: each chunk was installed once for a, b and c.
    assert stats.chunks_installed == stats.chunks_total == lazymem.stats(a).chunks_installed
    assert stats.readahead_chunks > 0  # the copy's sequential faults read ahead, as the array's do


def test_cached_chunks_appear_in_a_copy_without_a_fault(field) -> None:
    path, src = field
    a = lazymem.open(path, readahead=0)
    assert np.array_equal(a, src)
    before = lazymem.stats(a)
    b = a.copy()
    assert np.array_equal(b, src)
    after = lazymem.stats(a)
    assert (after.chunks_installed, after.bytes_fetched) == (before.chunks_installed, before.bytes_fetched)
    if not a._lazy.region.zero_copy:  # zero copy: a minor fault per chunk, mapped by UFFDIO_CONTINUE
        assert after.faults == before.faults


def test_every_way_of_copying(field) -> None:
    path, src = field
    a = lazymem.open(path)
    for made in (a.copy(), a.copy(order="K"), copy.copy(a), copy.deepcopy(a), np.copy(a), np.copy(a, order="A"),
                 a[100:700].copy(), a.T.copy(order="F"), a.ravel().copy()):
        assert _is_lazy_copy(made), made.shape
    eager = np.array(a, copy=True)  # numpy copies in C without asking the subclass: eager, plain
    assert type(eager) is np.ndarray and eager.flags.writeable
    assert_same_array(eager, src)
    assert_same_array(np.copy(a[::-1]), src[::-1].copy())  # strided: numpy's compact copy
    assert type(np.copy(a[::2])) is np.ndarray
    assert type(a[:, :10].copy()) is np.ndarray  # not contiguous
    assert type(a.copy(order="F")) is np.ndarray  # another layout
    assert type(a[0, :8].copy()) is np.ndarray  # smaller than one install unit: eager


def test_numpy_routines_that_copy_then_work_in_place(field) -> None:
    path, src = field
    a = lazymem.open(path)
    assert_same_array(np.sort(a), np.sort(src))
    assert_same_array(np.sort(a, axis=0), np.sort(src, axis=0))
    assert_same_array(np.sort(a[100:200], axis=None), np.sort(src[100:200], axis=None))
    assert_same_array(np.partition(a[5], 3), np.partition(src[5], 3))
    b = a.copy()
    np.random.default_rng(0).shuffle(b)
    want = src.copy()
    np.random.default_rng(0).shuffle(want)
    assert_same_array(b, want)
    assert_same_array(a, src)
    with pytest.raises(ValueError, match="cannot resize a lazily loaded array"):
        b.resize((10, 10))
    with pytest.raises(ValueError, match="cannot resize a lazily loaded array"):
        a.resize((10, 10))
    assert_same_array(np.resize(b, (3, 3)), np.resize(want, (3, 3)))


def test_results_of_arithmetic_stay_plain_ndarrays(field) -> None:
    path, src = field
    b = lazymem.open(path).copy()
    for result in (b + 1, b * b, np.sqrt(np.abs(b)), b.sum(axis=0), b[b > 0], b.astype(np.float64)):
        assert type(result) is np.ndarray
    assert type(b.sum()) is np.float32
    b += 1  # in place: still the copy
    assert _is_lazy_copy(b)
    assert_same_array(b, src + 1)


def test_open_mode_c_is_a_lazy_private_copy(field, tmp_path: Path) -> None:
    path, src = field
    c = lazymem.open(path, mode="c")
    d = lazymem.open(path, mode="c")
    assert _is_lazy_copy(c) and lazymem.stats(c).chunks_installed == 0
    c[:] = 0
    assert_same_array(d, src)
    assert not c.any()
    assert_same_array(lazymem.open(path), src)
    with pytest.raises(ValueError, match=r"mode must be one of \('r', 'c'\) \(got 'w'\)"):
        lazymem.open(path, mode="w")
    np.save(tmp_path / "plain.npy", src)  # a local .npy: numpy's own copy-on-write memmap
    m = lazymem.open(str(tmp_path / "plain.npy"), mode="c")
    assert isinstance(m, np.memmap) and m.mode == "c"
    m[0] = 1
    assert_same_array(np.load(tmp_path / "plain.npy"), src)


def test_a_copy_outlives_its_array(field) -> None:
    path, src = field
    b = lazymem.open(path, readahead=0).copy()  # the array itself is garbage at once
    gc.collect()
    b[0, 0] = 5
    want = src.copy()
    want[0, 0] = 5
    assert_same_array(b, want)
    view = b[10:20]
    del b
    gc.collect()
    assert_same_array(view, src[10:20])


def test_copies_of_copies(field) -> None:
    path, src = field
    a = lazymem.open(path)
    b = a.copy()
    c = b.copy()  # nothing written yet: lazy too, served by the array
    assert _is_lazy_copy(c)
    b[1] = 3
    d = b.copy()  # b holds writes: only an eager copy has them
    assert type(d) is np.ndarray
    want = src.copy()
    want[1] = 3
    assert_same_array(d, want)
    assert_same_array(c, src)


def test_closing_a_copy_leaves_the_array_alone(field) -> None:
    path, src = field
    a = lazymem.open(path)
    b = a.copy()
    b[0] = 1
    b.close()
    with pytest.raises(lazymem.ClosedArrayError):
        lazymem.stats(b)
    assert_same_array(a, src)
    assert lazymem.stats(a).private_bytes == 0  # its written pages were freed


def test_pickling_a_copy(field) -> None:
    path, src = field
    a = lazymem.open(path)
    b = a.copy()
    by_reference = pickle.dumps(b[100:200])
    assert len(by_reference) < 2000  # nobody wrote to it: the URL and the view, as for the array
    back = pickle.loads(by_reference)
    assert _is_lazy_copy(back) and back.flags.writeable
    assert_same_array(back, src[100:200])
    b[150] = 9
    by_value = pickle.dumps(b[100:200])  # written: its data, or the writes would be lost
    assert len(by_value) > b[100:200].nbytes
    back = pickle.loads(by_value)
    assert type(back) is np.ndarray
    assert_same_array(back, b[100:200])
    # Only the view's own pages count: rows 1000.. were not written, so they still go by reference.
    assert _is_lazy_copy(pickle.loads(pickle.dumps(b[1000:1100])))
    assert len(pickle.dumps(b[1000:1100])) < 2000


def test_evictions_under_budget_pressure_never_lose_written_pages(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    src = rng.standard_normal(2**20)  # 8 MiB, 32 chunks of 256 KiB, budget of 3 chunks
    path = str(tmp_path / "x.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**18)
    a = lazymem.open(path, max_resident=3 * 2**18)
    b = a.copy()
    want = src.copy()
    written = np.arange(0, src.size, 3 * PAGE // 8 + 1)  # about one page in three, in every chunk
    b[written] = -written
    want[written] = -written
    for _ in range(2):
        assert_same_array(b, want)
        assert_same_array(a, src)
    stats = lazymem.stats(a)
    assert stats.evictions > 0 and stats.resident_bytes <= 3 * 2**18
    assert stats.private_bytes == len(np.unique(written * 8 // PAGE)) * PAGE
    a.evict()  # every clean page of the copy goes; the written ones stay
    assert lazymem.stats(a).chunks_present == 0
    assert_same_array(b, want)


def test_a_forked_child_keeps_its_own_copy_on_write_semantics(field) -> None:
    path, src = field
    a = lazymem.open(path, readahead=0)
    b = a.copy()
    b[0] = 1.0  # written before the fork: the child inherits it
    a[100, 0]  # chunk 0 in the cache
    want = src.copy()
    want[0] = 1.0

    def in_child() -> str:
        ok = np.array_equal(b, want)  # untouched chunks fault in the child and are served
        b[1] = 2.0  # the child's write: never in the parent
        mine = want.copy()
        mine[1] = 2.0
        c = a.copy()  # and a new copy in the child
        c[2] = 3.0
        return f"{ok} {np.array_equal(b, mine)} {np.array_equal(a, src)} {lazymem.stats(b).private_bytes > 0}"

    assert report_from_forked_child(in_child) == "True True True True"
    assert_same_array(b, want)
    assert_same_array(a, src)


def test_a_copy_survives_a_monitor_restart(field) -> None:
    from lazymem.monitor.client import get_client

    path, src = field
    a = lazymem.open(path, readahead=0)
    b = a.copy()
    b[0] = 4.0
    assert np.array_equal(b[:300], np.concatenate([[np.full(1024, 4.0, np.float32)], src[1:300]]))
    worker = get_client().monitor_pid
    os.kill(worker, signal.SIGKILL)
    assert wait_for_exit(worker)
    want = src.copy()
    want[0] = 4.0
    assert_same_array(b, want)  # served by the new worker (the supervisor handed it the copy)
    assert lazymem.stats(b).private_bytes == PAGE
    c = a.copy()
    assert_same_array(c, src)


@pytest.mark.parametrize("order", ["C", "F"])
def test_lazy_order_agrees_with_numpy_layouts(order: str) -> None:
    x = np.zeros((4, 6), order=order)
    for view in (x, x.T, x[1:3], x[:, 1:3], x[::2], x.ravel(order="K")):
        for how in "CFAK":
            if cow.lazy_order(view, how):
                got = view.copy(order=how)
                assert got.strides == view.strides or got.size <= 1 or view.ndim == 1, (view.strides, how)


@pytest.mark.slow  # ~15 s: a pytest session of its own in a child
def test_the_same_in_zero_copy_mode() -> None:
    # The client picks MINOR faults and UFFDIO_CONTINUE once per process: run these in a child.
    # A copy's minor faults are answered by UFFDIO_CONTINUE on its private mapping (read-only
    # there: a write copies the page).
    chosen = ("lazy_writeable or cached_chunks or budget_pressure or forked_child or monitor_restart "
              "or numpy_routines or pickling")
    result = run_python(f"""
import sys, pytest
from lazymem.monitor.client import get_client
assert get_client().zero_copy
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "{ROOT}/tests/test_cow.py", "-k", "{chosen}"]))
""", env={"LAZYMEM_ZERO_COPY": "1"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout, result.stdout


# --- property tests: any view, any order, any dtype, against numpy on eager arrays --------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_OPENED: dict[tuple[str, tuple[int, ...], str], tuple[np.ndarray, np.ndarray]] = {}
_DIR: list[Path] = []


def _opened(tmp_factory: pytest.TempPathFactory, dtype: str, shape: tuple[int, ...],
            order: str) -> tuple[np.ndarray, np.ndarray]:
    """One saved array per (dtype, shape, order), opened once for every example that draws it."""
    key = (dtype, shape, order)
    if key not in _OPENED:
        if not _DIR:
            _DIR.append(tmp_factory.mktemp("cow"))
        n = int(np.prod(shape))
        raw = np.random.default_rng(n).integers(0, 256, n * np.dtype(dtype).itemsize, dtype=np.uint8)
        src = np.asarray(raw.view(dtype).reshape(shape), order=order)
        if src.dtype.kind == "b":
            src = src.view(np.uint8) & 1 == 1
            src = np.asarray(src, order=order)
        path = str(_DIR[0] / f"{np.dtype(dtype).str}-{'x'.join(map(str, shape))}-{order}.npy.zst")
        lazymem.save(path, src, chunk_bytes=PAGE)
        _OPENED[key] = (lazymem.open(path), src)
    return _OPENED[key]


_axis_slice = st.tuples(st.integers(-5, 5) | st.none(), st.integers(-5, 5) | st.none(),
                        st.sampled_from([None, 1, 1, 2, -1, -3])).map(lambda t: slice(*t))
_COPIERS: dict[str, Callable[[np.ndarray, str], np.ndarray]] = {
    "method": lambda x, order: x.copy(order=order),
    "np.copy": lambda x, order: np.copy(x, order=order),
    "copy.copy": lambda x, order: copy.copy(x),
    "deepcopy": lambda x, order: copy.deepcopy(x),
    "astype": lambda x, order: x.astype(x.dtype, order=order),
    "np.array": lambda x, order: np.array(x, copy=True, order=order),
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(["u1", "<i2", ">i4", "<f4", "<f8", "<c16", "?"]),
       shape=st.sampled_from([(5000,), (64, 64), (100, 37), (3, 7, 200)]),
       order=st.sampled_from("CF"), copier=st.sampled_from(sorted(_COPIERS)), copy_order=st.sampled_from("CFAK"),
       transpose=st.booleans(), data=st.data())
def test_copies_equal_numpys_and_stay_private(tmp_path_factory: pytest.TempPathFactory, dtype: str,
                                              shape: tuple[int, ...], order: str, copier: str, copy_order: str,
                                              transpose: bool, data: st.DataObject) -> None:
    a, src = _opened(tmp_path_factory, dtype, shape, order)
    index = tuple(data.draw(_axis_slice) for _ in shape) if data.draw(st.booleans()) else ()
    view, want_view = a[index], src[index]
    if transpose:
        view, want_view = view.T, want_view.T
    got = _COPIERS[copier](view, copy_order)
    if copier == "np.array" and copy_order == "A":
        # numpy's own quirk: np.array(x, order="A") of a non-contiguous *subclass* instance keeps
        # F order where a base ndarray gets C (checked with a bare ndarray subclass): compare with
        # what numpy does for a subclass.
        want_view = want_view.view(type("Sub", (np.ndarray,), {}))
    want = _COPIERS[copier](want_view, copy_order)
    assert_same_array(got, want)
    assert got.strides == want.strides and got.flags.writeable
    # Laziness where the copy has the view's own layout (and is at least one unit), eager otherwise.
    how = {"copy.copy": "K", "deepcopy": "K"}.get(copier, copy_order)
    expect_lazy = (copier != "np.array" and view.size > 0 and view.nbytes >= PAGE and cow.lazy_order(view, how))
    assert _is_lazy_copy(got) == expect_lazy, (view.shape, view.strides, how)
    if got.size:
        where = data.draw(st.lists(st.integers(0, got.size - 1), min_size=1, max_size=20))
        value = np.zeros((), got.dtype) if got.dtype.kind == "b" else np.array(7, got.dtype)
        got.reshape(-1, order="A")[where] = value  # order A: a view of the copy's memory, no copy
        want.reshape(-1, order="A")[where] = value
        assert_same_array(got, want)
    assert_same_array(a, src)  # nothing reached the array


# --- cost: a copy of a huge array is free; dask's from_array copies its input ------------------------

def _virtual_16_gib(tmp_path: Path) -> str:
    """A 16 GiB zarr array with no chunk written (all fill value): created in milliseconds."""
    zarr = pytest.importorskip("zarr")
    path = str(tmp_path / "big.zarr")
    zarr.create_array(path, shape=(2**31,), chunks=(2**23,), dtype="f8", fill_value=1.5)
    return path


def test_a_copy_of_a_16_gib_array_fetches_and_installs_nothing(tmp_path: Path) -> None:
    a = lazymem.open(_virtual_16_gib(tmp_path))
    assert a.nbytes == 16 * 2**30
    b = a.copy()
    c = np.copy(a[2**30:])
    stats = lazymem.stats(a)
    assert (stats.faults, stats.chunks_installed, stats.bytes_fetched, stats.resident_bytes) == (0, 0, 0, 0)
    assert stats.copies == 2 and stats.private_bytes == 0
    b[2**31 - 1] = -1.0  # one page written at the far end: one unit installed, one page copied
    assert b[2**31 - 1] == -1.0 and a[2**31 - 1] == 1.5 and c[-1] == 1.5
    stats = lazymem.stats(b)
    assert stats.chunks_installed == 1 and stats.private_bytes == PAGE


def test_dask_from_array_of_a_16_gib_array_fetches_nothing(tmp_path: Path) -> None:
    da = pytest.importorskip("dask.array")
    a = lazymem.open(_virtual_16_gib(tmp_path))
    # name=False: no token is computed from the data (hashing 16 GiB would read it all, until a
    # tokenizer for lazy arrays is registered with dask).
    x = da.from_array(a, chunks=2**27, name=False)  # from_array calls a.copy()
    assert x.shape == a.shape
    assert lazymem.stats(a).chunks_installed == 0 and lazymem.stats(a).bytes_fetched == 0
    assert float(x[2**30: 2**30 + 10].sum().compute()) == 15.0
    assert lazymem.stats(a).chunks_installed == 1


# --- the monitor killed with kill -9 while a copy's reader waits --------------------------------------

SCAN_COPY = """
import sys, numpy as np, lazymem
from lazymem.monitor.client import get_client
a = lazymem.open(sys.argv[1], readahead=0)
b = a.copy()
b[:4096] = 2.0  # written before the monitor dies: private pages, nothing to serve
client = get_client()
print("worker", client.monitor_pid, flush=True)
sys.stdin.readline()  # the test is ready
total = 0.0
for i in range(0, b.shape[0], 4096):  # one element per 32 KiB: every chunk faults, GIL held
    total += float(b[i])
print("total", repr(total), flush=True)
print("first", repr(float(a[0])), repr(float(b[0])), flush=True)
"""


@pytest.mark.parametrize("zero_copy", ["0", "1"])
def test_a_copys_reader_survives_a_monitor_killed_with_its_faults_queued(tmp_path: Path, zero_copy: str) -> None:
    import subprocess
    import sys

    src = np.random.default_rng(8).standard_normal(2**21)  # 16 MiB, 64 chunks of 256 KiB
    path = str(tmp_path / "x.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**18)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LAZYMEM_ZERO_COPY": zero_copy}
    app = subprocess.Popen([sys.executable, "-c", SCAN_COPY, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)
    assert app.stdin is not None and app.stdout is not None
    try:
        worker = int(app.stdout.readline().split()[1])
        os.kill(worker, signal.SIGSTOP)  # the copy's faults queue up unread in the userfaultfd
        app.stdin.write("go\n")
        app.stdin.flush()
        os.kill(worker, signal.SIGKILL)  # a new worker must read and serve them
        out, err = app.communicate(timeout=120)
    finally:
        app.kill()
    assert app.returncode == 0, err
    want = src.copy()
    want[:4096] = 2.0
    lines = dict(line.split(maxsplit=1) for line in out.splitlines() if line)
    assert float(lines["total"]) == sum(float(want[i]) for i in range(0, want.shape[0], 4096))
    assert lines["first"].split() == [repr(float(src[0])), "2.0"]


# --- huge pages: a copy reserves its own pages from the pool (a write copies 2 MiB) -----------------

def test_huge_page_copies_reserve_from_the_pool_or_are_eager(tmp_path: Path, pool) -> None:
    from lazymem.kernel import userfaultfd as uffd

    from .test_huge_pages import HUGE, NR_HUGEPAGES, _set_pool

    pool(4)  # the array's 2 huge pages, and 2 for one copy
    src = np.arange(2 * HUGE // 4, dtype=np.float32)
    path = str(tmp_path / "h.npy.zst")
    lazymem.save(path, src, chunk_bytes=HUGE)
    a = lazymem.open(path, huge_pages=True)
    b = a.copy()
    assert _is_lazy_copy(b) and lazymem.stats(a).chunks_installed == 0
    assert_same_array(b, src)
    b[5] = -1.0
    assert lazymem.stats(b).private_bytes == HUGE  # one written page: a whole huge page copied
    assert a[5] == 5.0 and b[5] == -1.0
    # Empty the pool of free pages (again: it is system-wide, another process may have grown it).
    _set_pool(int(NR_HUGEPAGES.read_text()) - uffd.huge_pages()[1])
    c = a.copy()  # the pool is empty: numpy's eager copy, in ordinary memory
    assert type(c) is np.ndarray
    assert_same_array(c, src)
    del b
    gc.collect()
    assert uffd.huge_pages()[1] >= 2  # b's reservation went back to the pool with it
    d = a.copy()
    assert _is_lazy_copy(d)
    assert_same_array(d, src)


def test_closing_the_array_keeps_a_copys_written_pages_and_poisons_the_rest(field) -> None:
    path, _src = field
    result = run_python(f"""
import faulthandler, numpy as np, lazymem
faulthandler.disable()
a = lazymem.open({path!r})
b = a.copy()
b[0] = 1.0
a.close()
print("written", float(b[0, 0]), flush=True)
print("unread", float(b[2000, 0]), flush=True)  # never loaded, never zeros: SIGBUS
""")
    assert result.returncode == -signal.SIGBUS, result.stderr
    assert result.stdout.splitlines() == ["written 1.0"]
    assert "was closed (LazyArray.close) and then touched" in result.stderr


def test_a_copys_reader_is_woken_early(field) -> None:
    # 1 MiB chunks of 512 KiB frames: the frame holding the copy's faulting page goes in first and
    # the copy's thread is woken (it re-faults onto the cached page) while the rest is decoded.
    path, src = field
    a = lazymem.open(path, readahead=0)
    b = a.copy()
    assert b[300, 5] == src[300, 5]
    assert lazymem.stats(a).early_wakes == 1 and lazymem.stats(a).chunks_installed == 1


def test_a_copy_is_handed_to_the_monitor_the_app_starts_when_both_monitor_processes_died(field) -> None:
    from lazymem.monitor.client import get_client

    from .test_monitor_recovery import _kill

    path, src = field
    a = lazymem.open(path, readahead=0)
    b = a.copy()
    b[0] = 6.0
    assert b[300, 0] == src[300, 0]
    client = get_client()
    generation = client.generation
    _kill(client.supervisor_pid, client.monitor_pid)
    # Idle: the watcher starts a new monitor (the standby) and hands it the array, then the copy.
    assert client.wait_for_generation(generation + 1, timeout=120)
    want = src.copy()
    want[0] = 6.0
    assert_same_array(b, want)
    assert lazymem.stats(b).private_bytes == PAGE and lazymem.stats(a).copies == 1
    assert_same_array(a.copy(), src)


_POOL_COPY: np.ndarray | None = None


def _write_then_sum(row: int) -> float:
    assert _POOL_COPY is not None
    _POOL_COPY[row] += 1  # in the worker's own copy (fork: copy-on-write), never the parent's
    return float(_POOL_COPY[row].sum(dtype=np.float64))


def test_a_multiprocessing_fork_pool_works_on_its_own_copies(field) -> None:
    import multiprocessing

    path, src = field
    global _POOL_COPY
    _POOL_COPY = lazymem.open(path).copy()  # inherited by the forked workers, not pickled
    _POOL_COPY[0] = 0.0  # a page written before the fork: the workers see it
    want = src.copy()
    want[0] = 0.0
    rows = list(range(0, src.shape[0], 97))
    try:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            sums = pool.map(_write_then_sum, rows)
        assert_same_array(_POOL_COPY, want)  # the workers' writes stayed theirs
    finally:
        _POOL_COPY = None
    assert sums == [float((want[i] + 1).sum(dtype=np.float64)) for i in rows]

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

from .conftest import PAGE, ROOT, assert_same_array, run_python, wait_for_exit


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


def _in_forked_child(work: Callable[[], str]) -> str:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_fd, work().encode())
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001 - a forked child must never return into pytest
            os.write(write_fd, repr(exc).encode())
            os._exit(1)
    os.close(write_fd)
    report = os.read(read_fd, 1000).decode()
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
    return report


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

    assert _in_forked_child(in_child) == "True True True True"
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

"""Lifetimes: no leaked fds or mappings, no orphaned monitor, forks never read zeros."""

from __future__ import annotations

import gc
import os
import signal
import subprocess

import numpy as np
import pytest

import lazymem
from lazymem.monitor.client import get_client
from lazymem.region import live_regions

from .conftest import report_from_forked_child, run_python, wait_for_exit


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def _memfds(pid: int | str, name: str) -> int:
    """Descriptors process ``pid`` holds on the memfds of arrays opened from ``name``."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed since the listing (the listing's own descriptor)
            continue
        count += target.startswith("/memfd:lazymem:") and name in target
    return count


def _memfd_maps(pid: int | str, name: str) -> int:
    """Mappings in process ``pid`` of the memfds of arrays opened from ``name``."""
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for line in f if "/memfd:lazymem:" in line and name in line)


def _held(name: str) -> dict[str, int]:
    """What this process and the monitor hold of arrays opened from ``name`` (the monitor maps a
    region's memfd while it installs into it, and keeps the memfd until the region is closed)."""
    monitor = get_client().monitor_pid
    return {"app fds": _memfds("self", name), "app maps": _memfd_maps("self", name),
            "monitor fds": _memfds(monitor, name), "monitor maps": _memfd_maps(monitor, name),
            "app regions": sum(r.memfd >= 0 and name in os.readlink(f"/proc/self/fd/{r.memfd}")
                               for r in live_regions())}


NOTHING = {"app fds": 0, "app maps": 0, "monitor fds": 0, "monitor maps": 0, "app regions": 0}


@pytest.mark.slow  # ~2-10 s, 1,000 opens
def test_opening_and_dropping_1000_arrays_leaks_nothing(field) -> None:
    path, src = field
    a = lazymem.open(path)  # start the monitor before counting
    a[0, 0]
    del a
    gc.collect()
    assert _held(path) == NOTHING
    fds, maps = _fds(), _mappings()
    for i in range(1000):
        a = lazymem.open(path, readahead=0)
        if i % 100 == 0:
            assert a[i, 3] == src[i, 3]
            held = _held(path)  # the counters see an open array (so they can see a leaked one)
            assert (held["app fds"], held["app maps"], held["monitor fds"]) == (1, 1, 1), held
        del a
    gc.collect()
    assert _held(path) == NOTHING
    assert _fds() == fds
    assert _mappings() <= maps + 2  # allocator arenas may come and go; regions may not


@pytest.mark.slow  # ~4.5 s
def test_many_arrays_open_at_once(field) -> None:
    path, src = field
    arrays = [lazymem.open(path, readahead=0) for _ in range(1000)]
    for i, a in enumerate(arrays):
        assert a[i, i] == src[i, i]
    assert _held(path)["monitor fds"] == 1000
    del arrays, a
    gc.collect()
    assert _held(path) == NOTHING


def test_monitor_exits_when_the_app_exits_normally() -> None:
    result = run_python(
        """
        import numpy as np, lazymem, tempfile, os
        from lazymem.monitor.client import get_client
        d = tempfile.mkdtemp()
        lazymem.save(d + "/x.npy.zst", np.arange(100000))
        a = lazymem.open(d + "/x.npy.zst")
        assert a[99999] == 99999
        print(get_client().monitor_pid)
        """
    )
    assert result.returncode == 0, result.stderr
    assert wait_for_exit(int(result.stdout.split()[-1]))


def test_monitor_exits_when_the_app_is_killed() -> None:
    proc = subprocess.Popen(
        ["python3", "-c", "import numpy as np, lazymem, tempfile, sys\n"
         "from lazymem.monitor.client import get_client\n"
         "d = tempfile.mkdtemp(); lazymem.save(d + '/x.npy.zst', np.arange(10000))\n"
         "a = lazymem.open(d + '/x.npy.zst'); a[5]\n"
         "print(get_client().monitor_pid, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(lazymem.__file__))},
    )
    assert proc.stdout is not None
    monitor_pid = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    assert wait_for_exit(monitor_pid)


def test_forked_child_never_reads_zeros(field) -> None:
    # Issue-level guarantee for now: untouched pages are not inherited (MADV_DONTFORK), so the
    # child cannot read silent zeros; it dies loudly instead. Installed pages are not inherited either.
    path, src = field
    a = lazymem.open(path)
    assert a[0, 0] == src[0, 0]
    pid = os.fork()
    if pid == 0:  # child: touching the array must never yield a value
        import faulthandler

        faulthandler.disable()  # the expected SIGSEGV needs no traceback dump
        try:
            value = a[2000, 7]
            os._exit(0 if value == src[2000, 7] else 3)  # correct data is fine too; zeros are not
        finally:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV) or os.WEXITSTATUS(status) == 0
    assert np.array_equal(a, src)  # the parent is unaffected


def test_child_of_a_fork_can_open_its_own_arrays(field) -> None:
    path, src = field
    a = lazymem.open(path)
    a[0, 0]
    pid = os.fork()
    if pid == 0:
        try:
            b = lazymem.open(path)
            os._exit(0 if np.array_equal(b, src) else 3)
        except BaseException:  # noqa: BLE001 - a forked child must never return into pytest
            os._exit(5)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert np.array_equal(a, src)


def test_forked_child_reads_untouched_chunks_and_shares_installed_ones(field) -> None:
    path, src = field
    a = lazymem.open(path, readahead=0)
    assert np.array_equal(a[:256], src[:256])  # chunk 0 installed by the parent
    def in_child() -> str:
        ok = np.array_equal(a, src)  # every other chunk faults in the child
        # The child installed the 9 chunks the parent had not; chunk 0 came from the page cache.
        return f"{ok} {lazymem.stats(a).chunks_installed}"

    assert report_from_forked_child(in_child) == "True 9"
    # Chunks the child installed are in the shared page cache: the parent maps them (with no fault
    # at all after UFFDIO_COPY installs, or a minor fault and UFFDIO_CONTINUE after zero-copy ones)
    # without fetching or decompressing anything again.
    before = lazymem.stats(a)
    assert np.array_equal(a, src)
    after = lazymem.stats(a)
    assert after.chunks_installed == before.chunks_installed == 1
    assert after.bytes_fetched == before.bytes_fetched


def test_multiprocessing_fork_pool_reads_correct_values(field) -> None:
    import multiprocessing

    path, src = field
    global _INHERITED
    _INHERITED = lazymem.open(path)  # inherited by the forked workers, not pickled
    ctx = multiprocessing.get_context("fork")
    try:
        with ctx.Pool(2) as pool:
            sums = pool.map(_row_sum, range(0, src.shape[0], 97))
    finally:
        _INHERITED = None
    assert sums == [float(src[i].sum(dtype=np.float64)) for i in range(0, src.shape[0], 97)]


_INHERITED = None


def _row_sum(i: int) -> float:
    assert _INHERITED is not None
    return float(_INHERITED[i].sum(dtype=np.float64))


def test_pickling_is_by_reference_and_lazy(field) -> None:
    import pickle

    path, src = field
    a = lazymem.open(path)
    for view, want in [(a, src), (a[10:20, ::-3], src[10:20, ::-3]), (a.T[5], src.T[5]),
                       (a[::-1, ::2][3:7], src[::-1, ::2][3:7])]:
        data = pickle.dumps(view)
        assert len(data) < 1000
        installed = lazymem.stats(a).chunks_installed
        back = pickle.loads(data)  # in this process: a view of a's own memory (lazymem.reopened)
        assert isinstance(back, lazymem.LazyArray)
        assert (back.shape, back.strides, back.dtype) == (view.shape, view.strides, view.dtype)
        assert lazymem.stats(back).chunks_installed == installed  # unpickling read nothing
        assert np.array_equal(back, want)


def _spawned_sum(arr: np.ndarray) -> float:
    return float(arr.sum(dtype=np.float64))


@pytest.mark.slow  # ~1.5 s of interpreter starts
def test_spawn_and_forkserver_receive_lazy_views(field) -> None:
    import multiprocessing

    path, src = field
    a = lazymem.open(path)
    views = [a[i: i + 300] for i in range(0, src.shape[0], 700)]
    want = [float(src[i: i + 300].sum(dtype=np.float64)) for i in range(0, src.shape[0], 700)]
    for method in ("spawn", "forkserver"):
        with multiprocessing.get_context(method).Pool(2) as pool:
            assert pool.map(_spawned_sum, views) == want, method


def test_evict_while_other_threads_fault(field) -> None:
    import threading

    path, src = field
    a = lazymem.open(path, readahead=2)
    stop = threading.Event()
    errors: list[int] = []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            row = int(rng.integers(0, src.shape[0]))
            if not np.array_equal(a[row], src[row]):
                errors.append(row)

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for i in range(30):  # memory pulled away under the readers, again and again
        if i % 2:
            a.evict()
        else:
            a.evict(np.s_[: src.shape[0] // 2])
        a.prefetch(np.s_[i * 80: i * 80 + 10])
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert np.array_equal(a, src)


def test_a_region_the_parent_released_after_the_fork_is_gone_for_the_child_not_an_error(field) -> None:
    """The race behind a fork Pool that hung: the parent garbage-collects an array between the fork
    and its child's fork request. The monitor must answer with the regions that are gone (the child
    unmaps those, garbage there too) instead of refusing the whole request (the child then gave up
    on every array, a pool worker died on SIGSEGV and Pool.map waited for ever)."""
    path, src = field
    a = lazymem.open(path)
    assert a[0, 0] == src[0, 0]
    parent_key = get_client().uffd_key

    def in_child() -> str:
        child = get_client()
        gone = child.request("fork", client=child.uffd_key, parent=parent_key, region_ids=[10**9])
        return f"{gone} {np.array_equal(a, src)}"  # the regions the child did get still serve it

    assert report_from_forked_child(in_child) == "[1000000000] True"



"""Lifetimes: no leaked fds or mappings, no orphaned monitor, forks never read zeros."""

from __future__ import annotations

import gc
import os
import signal
import subprocess

import numpy as np

import lazymem

from .conftest import run_python, wait_for_exit


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_opening_and_dropping_1000_arrays_leaks_nothing(field) -> None:
    path, src = field
    a = lazymem.open(path)  # start the monitor before counting
    a[0, 0]
    del a
    gc.collect()
    fds, maps = _fds(), _mappings()
    for i in range(1000):
        a = lazymem.open(path, readahead=0)
        if i % 100 == 0:
            assert a[i, 3] == src[i, 3]
        del a
    gc.collect()
    assert _fds() == fds
    assert _mappings() <= maps + 2  # allocator arenas may come and go; regions may not


def test_many_arrays_open_at_once(field) -> None:
    path, src = field
    arrays = [lazymem.open(path, readahead=0) for _ in range(200)]
    for i, a in enumerate(arrays):
        assert a[i, i] == src[i, i]
    del arrays
    gc.collect()


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

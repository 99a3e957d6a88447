"""The opt-in zero-copy install path (LAZYMEM_ZERO_COPY=1: MINOR faults and UFFDIO_CONTINUE).

The client picks its install path once per process, so each scenario runs in a child process
of its own: the prelude saves a 16 MiB array and checks that the zero-copy path is on.
"""

from __future__ import annotations

from .conftest import run_python

PRELUDE = """
import os, signal, select, tempfile
import numpy as np, lazymem
from lazymem.monitor.client import get_client

d = tempfile.mkdtemp()
src = np.cumsum(np.random.default_rng(1).standard_normal(2**21)).reshape(2048, 1024)  # 16 MiB
path = d + "/x.npy.zst"
lazymem.save(path, src, chunk_bytes=2**20)
assert get_client().zero_copy
"""


def _run_zero_copy(scenario: str) -> None:
    result = run_python(PRELUDE + scenario + '\nprint("scenario ok")\n', env={"LAZYMEM_ZERO_COPY": "1"})
    assert result.returncode == 0, result.stderr
    assert "scenario ok" in result.stdout


def test_zero_copy_reads_give_the_saved_values() -> None:
    _run_zero_copy("""
a = lazymem.open(path, readahead=4)
assert np.array_equal(a[::3, 5], src[::3, 5]) and np.array_equal(a, src)
""")


def test_zero_copy_eviction_punches_the_page_cache_the_monitor_filled() -> None:
    _run_zero_copy("""
b = lazymem.open(path, max_resident="4MiB")  # a budget a quarter of the array
assert float(np.sum(b)) == float(np.sum(src)) and lazymem.stats(b).evictions > 0
""")


def test_zero_copy_forked_child_maps_the_parents_chunks_and_installs_the_rest_for_both() -> None:
    _run_zero_copy("""
c = lazymem.open(path, readahead=0)
assert np.array_equal(c[:100], src[:100])
pid = os.fork()
if pid == 0:
    os._exit(0 if np.array_equal(c, src) else 3)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
before = lazymem.stats(c).chunks_installed
assert np.array_equal(c, src) and lazymem.stats(c).chunks_installed == before
""")


def test_zero_copy_monitor_death_reloads_on_demand() -> None:
    # Half-written chunks cannot be trusted, so the new monitor reloads on demand.
    _run_zero_copy("""
e = lazymem.open(path, readahead=0)
e[0, 0]
worker = get_client().monitor_pid
fd = os.pidfd_open(worker)  # before the kill: once reaped, the pid is gone (ProcessLookupError)
os.kill(worker, signal.SIGKILL)
select.select([fd], [], [])
lazymem.stats(e)
assert np.array_equal(e, src)
""")

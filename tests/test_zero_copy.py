"""The opt-in zero-copy install path (LAZYMEM_ZERO_COPY=1: MINOR faults and UFFDIO_CONTINUE).

The client picks its install path once per process, so these run in child processes.
"""

from __future__ import annotations

from .conftest import run_python

SCRIPT = """
import os, signal, select, tempfile
import numpy as np, lazymem
from lazymem.monitor.client import get_client

d = tempfile.mkdtemp()
src = np.cumsum(np.random.default_rng(1).standard_normal(2**21)).reshape(2048, 1024)  # 16 MiB
path = d + "/x.npy.zst"
lazymem.save(path, src, chunk_bytes=2**20)

a = lazymem.open(path, readahead=4)
assert get_client().zero_copy
assert np.array_equal(a[::3, 5], src[::3, 5]) and np.array_equal(a, src)

# A budget a quarter of the array: eviction punches the page cache the monitor filled.
b = lazymem.open(path, max_resident="4MiB")
assert float(np.sum(b)) == float(np.sum(src)) and lazymem.stats(b).evictions > 0

# Fork: the child maps the parent's chunks (minor faults), installs the rest for both.
c = lazymem.open(path, readahead=0)
assert np.array_equal(c[:100], src[:100])
pid = os.fork()
if pid == 0:
    os._exit(0 if np.array_equal(c, src) else 3)
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
before = lazymem.stats(c).chunks_installed
assert np.array_equal(c, src) and lazymem.stats(c).chunks_installed == before

# Monitor death: half-written chunks cannot be trusted, so the new monitor reloads on demand.
e = lazymem.open(path, readahead=0)
e[0, 0]
worker = get_client().monitor_pid
fd = os.pidfd_open(worker)  # before the kill: once reaped, the pid is gone (ProcessLookupError)
os.kill(worker, signal.SIGKILL)
select.select([fd], [], [])
lazymem.stats(e)
assert np.array_equal(e, src)
print("zero-copy ok")
"""


def test_zero_copy_path_end_to_end() -> None:
    result = run_python(SCRIPT, env={"LAZYMEM_ZERO_COPY": "1"})
    assert result.returncode == 0, result.stderr
    assert "zero-copy ok" in result.stdout

"""The monitor dies mid-scan: a new one takes over and the data stays right.

The faulting thread is a Python loop doing ``a[i]``: it blocks in the kernel holding its GIL, so
the app can do nothing to recover; the supervisor must.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lazymem

from .conftest import ROOT, wait_for_exit
from .servers import range_server

SCAN = """
import sys, numpy as np, lazymem
from lazymem.monitor.client import get_client
a = lazymem.open(sys.argv[1], readahead=0)
client = get_client()
print("worker", client.monitor_pid, flush=True)
sys.stdin.readline()  # the test is ready
total = 0.0
for i in range(0, a.shape[0], 4096):  # one element per 32 KiB: every chunk faults, GIL held
    total += float(a[i])
print("total", repr(total), flush=True)
print("worker", client.monitor_pid, flush=True)
"""


def _start_app(url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", SCAN, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _finish(app: subprocess.Popen[str], src: np.ndarray) -> tuple[str, str]:
    """Wait for the scanning app; check it exited cleanly with the right total."""
    out, err = app.communicate(timeout=120)
    assert app.returncode == 0, err
    lines = dict(line.split(maxsplit=1) for line in out.splitlines() if line)
    assert float(lines["total"]) == _expected(src)
    return out, err


def _expected(src: np.ndarray) -> float:
    total = 0.0
    for i in range(0, src.shape[0], 4096):
        total += float(src[i])
    return total


@pytest.mark.slow  # ~2 s
def test_monitor_killed_while_serving_a_fault_is_replaced(tmp_path: Path) -> None:
    src = np.random.default_rng(7).standard_normal(2**21)  # 16 MiB, 64 chunks of 256 KiB
    lazymem.save(str(tmp_path / "x.npy.zst"), src, chunk_bytes=2**18)
    with range_server(tmp_path) as server:
        app = _start_app(f"{server.url}/x.npy.zst")
        assert app.stdin is not None and app.stdout is not None
        try:
            first_worker = int(app.stdout.readline().split()[1])
            server.stall = True  # the next fetch hangs: the worker has read the fault, not served it
            app.stdin.write("go\n")
            app.stdin.flush()
            assert server.stalled.wait(60)
            os.kill(first_worker, signal.SIGKILL)
            assert wait_for_exit(first_worker)
            server.stall = False
            server.released.set()
            out, err = _finish(app, src)
        finally:
            app.kill()
    assert int(out.splitlines()[-1].split()[1]) != first_worker
    assert "died (signal 9); starting a new one" in err


def test_monitor_killed_with_faults_queued_is_replaced(tmp_path: Path) -> None:
    src = np.random.default_rng(8).standard_normal(2**21)
    path = str(tmp_path / "x.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**18)
    app = _start_app(path)
    assert app.stdin is not None and app.stdout is not None
    try:
        worker = int(app.stdout.readline().split()[1])
        os.kill(worker, signal.SIGSTOP)  # faults queue up unread in the userfaultfd
        app.stdin.write("go\n")
        app.stdin.flush()
        os.kill(worker, signal.SIGKILL)  # a new worker must read them
        _finish(app, src)
    finally:
        app.kill()


def test_in_process_requests_survive_a_monitor_restart(field) -> None:
    from lazymem.monitor.client import get_client

    path, src = field
    a = lazymem.open(path, readahead=0)
    a[0, 0]
    client = get_client()
    worker = client.monitor_pid
    os.kill(worker, signal.SIGKILL)
    assert wait_for_exit(worker)
    lazymem.stats(a)  # answered by the new worker, so it has taken over
    assert np.array_equal(a, src)  # faults served by the new worker
    assert lazymem.stats(a).chunks_present == 10  # requests reach the new worker too
    b = lazymem.open(path)
    assert np.array_equal(b, src)
    assert client.monitor_pid != worker

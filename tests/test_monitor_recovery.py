"""Any monitor process may die at any moment: the supervisor, the worker, both at once.

The worker's death is the supervisor's to repair (``test_monitor_death``); the supervisor's is
the worker's (it starts a new one, which adopts it); the death of both is the app's (its watcher
thread, or the next request, starts a new monitor and hands it every live region). Real
``kill -9``, real faults; values are compared with the source arrays byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

import lazymem
from lazymem.monitor.client import get_client

from .conftest import ROOT, run_python, wait_for_exit

CHUNK_ROWS = 256  # the field fixture: 1024 float32 per row, 1 MiB chunks


def _kill(*pids: int) -> None:
    """SIGKILL ``pids`` at once: stopped first, none can react to another's death (a worker
    killed a moment after its supervisor may have started a new one meanwhile)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    for pid in pids:
        assert wait_for_exit(pid)


def test_supervisor_killed_later_opens_and_restarts_work(field) -> None:
    path, src = field
    a = lazymem.open(path, readahead=0)
    assert a[0, 0] == src[0, 0]
    client = get_client()
    supervisor, worker = client.supervisor_pid, client.monitor_pid
    _kill(supervisor)
    # The worker has started a new supervisor: every later open works (it used to raise
    # BrokenPipeError, for ever, once the worker journaled to its dead supervisor).
    b = lazymem.open(path, readahead=0)
    assert b[300, 5] == src[300, 5]
    new_supervisor, same_worker = client.supervisor_pid, client.monitor_pid
    assert (same_worker, new_supervisor != supervisor) == (worker, True)
    # ...and that supervisor, which adopted the worker, restarts it with everything it serves.
    _kill(worker)
    assert np.asarray(a).tobytes() == src.tobytes()
    assert np.asarray(b).tobytes() == src.tobytes()
    c = lazymem.open(path)
    assert np.asarray(c).tobytes() == src.tobytes()
    assert client.monitor_pid != worker


def test_supervisor_killed_again_and_again(field) -> None:
    path, src = field
    a = lazymem.open(path, readahead=0)
    client = get_client()
    for round_ in range(3):
        supervisor = client.supervisor_pid
        _kill(supervisor)
        assert client.supervisor_pid != supervisor
        rows = slice(round_ * CHUNK_ROWS, (round_ + 1) * CHUNK_ROWS)
        assert np.asarray(a[rows]).tobytes() == src[rows].tobytes()
        assert lazymem.open(path)[-1, -1] == src[-1, -1]
    _kill(client.monitor_pid)  # the third supervisor restarts a worker, too
    assert np.asarray(a).tobytes() == src.tobytes()


def test_both_killed_while_idle_the_next_touch_is_served(field) -> None:
    path, src = field
    a = lazymem.open(path, readahead=0)
    assert a[0, 0] == src[0, 0]
    client = get_client()
    generation = client.generation
    _kill(client.supervisor_pid, client.monitor_pid)
    # The app is idle: its watcher thread gets the GIL and starts a new monitor before anything
    # touches the array (the touch would hang for ever without it: nothing serves the fault).
    assert client.wait_for_generation(generation + 1, timeout=120)
    assert a[9 * CHUNK_ROWS + 1, 7] == src[9 * CHUNK_ROWS + 1, 7]
    assert np.asarray(a).tobytes() == src.tobytes()
    assert lazymem.stats(a).chunks_present == 10


def test_both_killed_then_requests_start_a_new_monitor(field) -> None:
    """The next request finds the control socket dead and starts the monitor itself (racing
    with the watcher thread, whichever comes first)."""
    path, src = field
    a = lazymem.open(path, readahead=0)
    a.prefetch(np.s_[:CHUNK_ROWS])
    client = get_client()
    old = {client.supervisor_pid, client.monitor_pid}
    _kill(*old)
    assert lazymem.stats(a).chunks_present == 1  # the new monitor kept the chunk in the memfd
    b = lazymem.open(path)
    assert np.asarray(b).tobytes() == src.tobytes()
    assert np.asarray(a).tobytes() == src.tobytes()
    assert {client.supervisor_pid, client.monitor_pid}.isdisjoint(old)


def test_both_killed_while_a_reader_waits_without_the_gil(field) -> None:
    """A reader blocked in a fault that does not hold the GIL (hashlib releases it): the
    watcher starts a new monitor, which wakes the reader; its fault is served again."""
    path, src = field
    a = lazymem.open(path, readahead=0)
    a[0, 0]
    client = get_client()
    supervisor, worker = client.supervisor_pid, client.monitor_pid
    rows = slice(5 * CHUNK_ROWS, 7 * CHUNK_ROWS)
    digest: list[str] = []
    os.kill(worker, signal.SIGSTOP)  # the reader's fault is read by nobody, or never served
    reader = threading.Thread(target=lambda: digest.append(hashlib.sha256(a[rows]).hexdigest()), daemon=True)
    reader.start()
    _kill(supervisor, worker)
    reader.join(timeout=120)
    assert not reader.is_alive()
    assert digest == [hashlib.sha256(src[rows]).hexdigest()]
    assert np.asarray(a).tobytes() == src.tobytes()


def test_no_monitor_can_be_started_raises_monitor_error(field) -> None:
    """Nothing from the control socket escapes as a bare BrokenPipeError/ConnectionError."""
    path, _src = field
    result = run_python(
        f"""
        import os, select, signal, sys, lazymem
        from lazymem.monitor.client import get_client
        a = lazymem.open({path!r})
        a[0, 0]
        client = get_client()
        pids = client.supervisor_pid, client.monitor_pid, client._standby[0].pid
        sys.executable = "/nonexistent/python"  # every new monitor fails to start
        for pid in pids:  # the standby monitor too: it would take over
            os.kill(pid, signal.SIGSTOP)  # all at once: none can repair another's death
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:  # dead and reaped already (the standby is our child)
                continue
            select.select([fd], [], [])
        try:
            lazymem.open({path!r})
        except lazymem.MonitorError as exc:
            print("MonitorError", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("MonitorError the lazymem monitor died and 5 new ones could not take over")
    assert "BrokenPipeError" not in result.stdout + result.stderr


POOL_EXITS_MID_READ = """
import hashlib, multiprocessing, sys, numpy as np, lazymem
src = np.load(sys.argv[1])
A = lazymem.open(sys.argv[2])
A[0]

def task(i):
    start = int(np.random.default_rng(i).integers(0, len(A) - 2**18))
    return start, hashlib.sha256(A[start:start + 2**17]).hexdigest()  # sequential: readahead

wrong = 0
for round_ in range(12):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        result = pool.map_async(task, range(round_ * 8, round_ * 8 + 8))
        result.wait(0.05 * (round_ % 4))  # then the pool exits, terminating workers mid-read
    if result.ready():
        wrong += sum(h != hashlib.sha256(src[s:s + 2**17]).hexdigest() for s, h in result.get())
    A.evict()
print("same" if wrong == 0 and np.asarray(A).tobytes() == src.tobytes() else "DIFFERENT", flush=True)
"""


def test_pool_workers_exiting_mid_read_are_dropped_quietly(tmp_path: Path) -> None:
    """A fork pool that exits while its workers' chunks are fetched or installed: the monitor
    drops them; no "cannot load chunk", no poisoning, no SIGBUS sent to a pid that may be
    another process's by now (it used to print all three for an ordinary pool exit)."""
    src = np.random.default_rng(5).standard_normal(2**24)  # 128 MiB, 1 MiB chunks
    np.save(tmp_path / "x.npy", src)
    lazymem.save(str(tmp_path / "x.npy.zst"), src, chunk_bytes=2**20)
    result = subprocess.run([sys.executable, "-c", POOL_EXITS_MID_READ, str(tmp_path / "x.npy"),
                             str(tmp_path / "x.npy.zst")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (result.returncode, result.stdout.split()[-1:]) == (0, ["same"]), result.stderr
    assert "lazymem" not in result.stderr


def test_both_killed_a_forked_child_starts_its_own_monitor(field) -> None:
    """Parent and forked child share one monitor; when it dies whole, each process's watcher
    starts a monitor of its own and hands it its mappings of the same memfds."""
    path, src = field
    a = lazymem.open(path, readahead=0)
    assert a[0, 0] == src[0, 0]
    client = get_client()
    pids = (client.supervisor_pid, client.monitor_pid)
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(go_w)
            os.read(go_r, 1)  # idle (GIL released) while the test kills the monitor
            mine = get_client()
            assert mine.wait_for_generation(1, timeout=120)
            same = np.asarray(a).tobytes() == src.tobytes()
            ours = (mine.supervisor_pid, mine.monitor_pid)
            os.write(done_w, f"{same} {ours[0]} {ours[1]}".encode())
            os._exit(0)
        except BaseException:  # noqa: BLE001 - a forked child never returns into pytest
            import traceback

            os.write(done_w, traceback.format_exc().encode()[-3000:])
            os._exit(1)
    os.close(go_r)
    os.close(done_w)
    try:
        generation = client.generation
        _kill(*pids)
        os.write(go_w, b"x")
        report = os.read(done_r, 4000).decode()
    finally:
        os.close(go_w)
        os.close(done_r)
        _, status = os.waitpid(child, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
    same, *child_pids = report.split()
    assert same == "True", report
    assert client.wait_for_generation(generation + 1, timeout=120)
    assert np.asarray(a).tobytes() == src.tobytes()
    child_monitor = {int(pid) for pid in child_pids}
    assert child_monitor.isdisjoint({client.supervisor_pid, client.monitor_pid, *pids})
    assert all(wait_for_exit(pid) for pid in child_monitor)  # the child's monitor left with it


def test_a_killed_standby_is_replaced_and_restarts_still_work(field) -> None:
    """The standby (the next monitor, started ahead of need) holds nothing: killing it costs a
    new one, and a restart without it starts a monitor from scratch."""
    path, src = field
    a = lazymem.open(path, readahead=0)
    a[0, 0]
    client = get_client()
    assert client._standby is not None
    standby = client._standby[0].pid
    generation = client.generation
    _kill(standby)
    _kill(client.supervisor_pid, client.monitor_pid)  # maybe before the watcher replaced the standby
    assert client.wait_for_generation(generation + 1, timeout=120)
    assert np.asarray(a).tobytes() == src.tobytes()
    assert client._standby is not None and client._standby[0].pid != standby


def test_every_monitor_process_leaves_with_a_killed_app(field) -> None:
    path, _src = field
    app = subprocess.Popen(
        [sys.executable, "-c", "import sys, lazymem\nfrom lazymem.monitor.client import get_client\n"
         f"a = lazymem.open({path!r}); a[5, 5]\nc = get_client()\n"
         "print(c.supervisor_pid, c.monitor_pid, c._standby[0].pid, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert app.stdout is not None
    pids = [int(pid) for pid in app.stdout.readline().split()]
    app.kill()
    app.wait()
    assert len(pids) == 3 and all(wait_for_exit(pid) for pid in pids)

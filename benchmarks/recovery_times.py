"""How long each repair takes after a SIGKILL: the window in which a second death finds no
monitor process to repair it (and falls to the app, which cannot while a reader holds its GIL).

    python3 benchmarks/recovery_times.py [--reps 5]

* worker killed: until a new worker (forked by the supervisor) answers a request;
* supervisor killed: until the worker has started a new one and journaled its state to it
  (``supervisor_pid`` waits for that);
* both killed: until the app's watcher thread has started a new monitor and handed it the array
  (through the standby monitor, which is waited for: it imports for ~0.3 s after each restart).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import tempfile
import time

import numpy as np

import lazymem
from lazymem.monitor.client import get_client


def _wait_for_exit(pid: int) -> None:
    fd = os.pidfd_open(pid)
    try:
        select.select([fd], [], [])
    finally:
        os.close(fd)


def _wait_for_standby(client: object) -> None:
    """Until the standby monitor has imported everything (it names itself then), as it has
    long before any death outside a benchmark that kills every few milliseconds."""
    standby = getattr(client, "_standby", None)
    if standby is None:
        return
    comm = f"/proc/{standby[0].pid}/comm"
    while open(comm).read().strip() != "lazymem-standby":
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="lazymem-recovery-")
    src = np.arange(2**22, dtype=np.float64)
    lazymem.save(f"{directory}/x.npy.zst", src, chunk_bytes=2**20)
    a = lazymem.open(f"{directory}/x.npy.zst")
    a[0]
    client = get_client()
    times: dict[str, list[float]] = {"worker": [], "supervisor": [], "both": []}
    for _ in range(args.reps):
        worker = client.monitor_pid
        t0 = time.perf_counter()
        os.kill(worker, signal.SIGKILL)
        _wait_for_exit(worker)
        assert client.monitor_pid != worker
        times["worker"].append(time.perf_counter() - t0)

        supervisor = client.supervisor_pid
        t0 = time.perf_counter()
        os.kill(supervisor, signal.SIGKILL)
        _wait_for_exit(supervisor)
        assert client.supervisor_pid != supervisor
        times["supervisor"].append(time.perf_counter() - t0)

        pids = (client.supervisor_pid, client.monitor_pid)
        generation = client.generation
        _wait_for_standby(client)
        t0 = time.perf_counter()
        for pid in pids:  # stopped first: neither can repair the other's death
            os.kill(pid, signal.SIGSTOP)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert client.wait_for_generation(generation + 1, timeout=60)
        times["both"].append(time.perf_counter() - t0)
    assert np.asarray(a).tobytes() == src.tobytes()
    for name, values in times.items():
        print(f"{name:10s} killed: repaired in {statistics.median(values) * 1e3:6.0f} ms median "
              f"[{', '.join(f'{v * 1e3:.0f}' for v in values)}]")


if __name__ == "__main__":
    main()

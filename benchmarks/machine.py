"""The machine a benchmark runs on: what it is (for the results), and what else is using its CPUs.

The VM the figures come from is shared and noisy, so every timed run also records the CPU time other
processes and the host took meanwhile (``/proc/stat``), and the monitor's own CPU time.
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

import lazymem


def source_fingerprint() -> str:
    """SHA-256 of lazymem's Python sources: which version of the code the numbers belong to."""
    digest = hashlib.sha256()
    root = Path(lazymem.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def machine_info() -> dict[str, Any]:
    """CPU, memory, kernel and library versions, for the ``machine`` entry of the results."""
    import zstandard

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zstandard": zstandard.__version__,
        "lazymem": getattr(lazymem, "__version__", "?"),
        "lazymem_source_sha256": source_fingerprint(),
    }
    try:
        from lazymem.monitor.client import get_client

        info["lazymem_zero_copy"] = bool(getattr(get_client(), "zero_copy", False))
    except Exception:  # noqa: BLE001 - informative only
        pass
    try:
        import zarr

        info["zarr"] = zarr.__version__
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def monitor_cpu_seconds() -> float | None:
    """CPU time (user + system) used so far by the lazymem monitor process, if it is running."""
    try:
        from lazymem.monitor.client import get_client

        pid = get_client().monitor_pid
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except Exception:  # noqa: BLE001 - purely informative
        return None


def cpu_jiffies() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def background_load(seconds: float = 2.0) -> float:
    """CPUs kept busy by other processes (this one sleeps meanwhile)."""
    busy0, _ = cpu_jiffies()
    time.sleep(seconds)
    busy1, _ = cpu_jiffies()
    return (busy1 - busy0) / seconds


def warm_memory(nbytes: int) -> None:
    """Touch fresh memory once: the VM's first touch of never-used memory is ~10x slower (DESIGN.md)."""
    block = np.ones(nbytes // 8, dtype=np.float64)
    block[::512] += 1.0
    del block

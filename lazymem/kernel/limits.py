"""What the kernel lets us have: resource limits the design needs raised, and memory (/proc/meminfo)."""

from __future__ import annotations

import resource


def raise_open_file_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit.

    Every open array holds a memfd in the app, the monitor and its supervisor: a thousand open
    arrays pass the usual soft limit of 1024 while the hard limit is far higher.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` as numbers: sizes in bytes (``MemAvailable``), counts as they are
    (``HugePages_Free``)."""
    fields: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, value = line.partition(":")
            number, *unit = value.split()
            fields[name] = int(number) * (1024 if unit == ["kB"] else 1)
    return fields

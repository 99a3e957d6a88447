"""Size the kernel's huge page pool (``/proc/sys/vm/nr_hugepages``) for a run, and give it back after.

``lazymem.open(url, huge_pages=True)`` reserves the whole array from the pool at open. The benchmark
opens one such array at a time, so the pool needs the array's pages plus a few spare; one untimed
scan (``warm_huge_pages``) then pays the pool's first-use cost outside the timings.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import lazymem
from lazymem.kernel import userfaultfd as uffd

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
SPARE_PAGES = 16


def _pool_pages() -> int:
    try:
        return int(NR_HUGEPAGES.read_text())
    except (OSError, ValueError):
        return 0


def describe() -> dict[str, Any]:
    """The pool as it is, for a run that does not use huge pages."""
    size, free = uffd.huge_pages()
    return {"used": False, "page_bytes": size, "pool_pages": _pool_pages(), "free_pages": free}


@contextlib.contextmanager
def huge_page_pool(nbytes: int, log: Callable[..., None]) -> Iterator[dict[str, Any]]:
    """Inside, the pool has free pages for ``nbytes`` plus ``SPARE_PAGES`` (raised if we are root).

    Yields a description for the results; ``used`` is False (with a ``reason``) if the pool could
    not be made big enough, and the caller then skips its huge page contenders. The previous pool
    size comes back on the way out, exceptions and Ctrl-C included.
    """
    info = describe()
    size, free = info["page_bytes"], info["free_pages"]
    before = info["pool_pages_before"] = info["pool_pages"]
    changed = False
    try:
        if not size:
            info["reason"] = "this kernel offers no huge pages (no hugetlbfs)"
        else:
            need = info["pages_needed"] = -(-nbytes // size) + SPARE_PAGES
            if free < need and os.geteuid() != 0:
                info["reason"] = f"the pool has {free} free huge pages, {need} needed, and only root can raise it"
            elif free < need:
                try:
                    NR_HUGEPAGES.write_text(f"{before + need - free}\n")
                    changed = True
                except OSError as exc:
                    info["reason"] = f"cannot raise {NR_HUGEPAGES}: {exc}"
                free = info["free_pages"] = uffd.huge_pages()[1]
                info["pool_pages"] = _pool_pages()
            if "reason" not in info and free < need:
                info["reason"] = f"the kernel gave {free} free huge pages, {need} needed (memory fragmented?)"
            info["used"] = "reason" not in info
        if info["used"]:
            log(f"huge pages: pool {before} -> {info['pool_pages']} pages of {size >> 20} MiB, {free} free")
        else:
            log(f"huge pages: not used, {info['reason']}; skipping the huge page contenders")
            if changed:
                NR_HUGEPAGES.write_text(f"{before}\n")
                changed = False
                info["pool_pages"], info["free_pages"] = _pool_pages(), uffd.huge_pages()[1]
        yield info
    finally:
        if changed:
            NR_HUGEPAGES.write_text(f"{before}\n")
            log(f"huge pages: pool restored to {_pool_pages()} pages")


def warm_huge_pages(url: str, pool: dict[str, Any], log: Callable[..., None]) -> bool:
    """One untimed lazy scan on huge pages: this VM's first use of pool pages is slow (host backing).

    False (and the reason in ``pool``) if the pool cannot hold the array after all.
    """
    t = time.perf_counter()
    try:
        a = lazymem.open(url, huge_pages=True)
    except lazymem.HugePagesUnavailableError as exc:
        log(f"huge pages: not used, {exc}; skipping the huge page contenders")
        pool.update(used=False, reason=str(exc))
        return False
    np.sum(a, dtype=np.float64)
    a.close()
    log(f"huge pages: warm-up scan {time.perf_counter() - t:.2f} s")
    return True

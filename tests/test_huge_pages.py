"""Arrays backed by hugetlbfs huge pages (``huge_pages=True``): same bytes, same failure semantics.

The pool is the kernel's (``/proc/sys/vm/nr_hugepages``); these tests reserve what they need
(root only, as in CI) and give it back. Without root or huge pages they are skipped.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import lazymem
from lazymem.kernel import userfaultfd as uffd

from .conftest import run_python, wait_for_exit
from .test_failures import _corrupt_chunk

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")
HUGE = uffd.huge_pages()[0]


def _set_pool(pages: int) -> int:
    """Ask for ``pages`` huge pages in the pool; return how many the kernel gave."""
    NR_HUGEPAGES.write_text(f"{pages}\n")
    return int(NR_HUGEPAGES.read_text())


@pytest.fixture
def pool() -> Iterator[object]:
    """Set the pool's size for one test (``pool(n)``), and restore it afterwards."""
    if not HUGE or not os.access(NR_HUGEPAGES, os.W_OK):
        pytest.skip("needs huge pages and root (to size /proc/sys/vm/nr_hugepages)")
    before = int(NR_HUGEPAGES.read_text())

    def resize(free_pages: int) -> None:
        in_use = before - uffd.huge_pages()[1]  # other users' pages stay theirs
        if _set_pool(in_use + free_pages) < in_use + free_pages:
            pytest.skip(f"the kernel could not set aside {free_pages} huge pages (memory fragmented?)")

    try:
        yield resize
    finally:
        _set_pool(before)


@pytest.fixture
def field8(tmp_path: Path) -> tuple[str, np.ndarray]:
    """16 MiB of float64 in 4 MiB chunks: 4 chunks, 8 huge pages."""
    src = np.cumsum(np.random.default_rng(3).standard_normal(2**21)).reshape(-1, 512)
    path = str(tmp_path / "field.npy.zst")
    lazymem.save(path, src, chunk_bytes=4 << 20)
    return path, src


def _page_size_of_mapping(address: int) -> int:
    """The kernel page size of the mapping holding ``address`` in this process (smaps)."""
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "KernelPageSize:":
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no mapping holds {address:#x}")


def test_huge_page_array_reads_every_byte_right(pool, field8) -> None:
    pool(16)
    path, src = field8
    a = lazymem.open(path, huge_pages=True)
    assert _page_size_of_mapping(a.ctypes.data) == HUGE
    rng = np.random.default_rng(0)
    for i in rng.integers(0, src.shape[0], 40):  # demand faults anywhere in a chunk
        assert np.array_equal(a[i], src[i])
    assert np.array_equal(a, src)
    s = lazymem.stats(a)
    assert s.chunk_bytes % HUGE == 0 and s.chunks_installed == s.chunks_total == 4
    assert s.resident_bytes == src.nbytes


def test_chunks_grow_to_whole_huge_pages_and_odd_sizes_are_padded(pool, tmp_path: Path) -> None:
    pool(8)
    src = np.arange(1_000_003, dtype=np.int32)  # 4 MB, not a multiple of anything
    path = str(tmp_path / "odd.npy.zst")
    lazymem.save(path, src, chunk_bytes=1 << 20)  # 1 MiB frames: two per 2 MiB chunk
    a = lazymem.open(path, huge_pages=True)
    assert np.array_equal(a[::-1], src[::-1])
    assert lazymem.stats(a).chunk_bytes == HUGE
    with pytest.raises(ValueError, match="multiple"):
        lazymem.open(path, huge_pages=True, chunk_bytes=1 << 20)


def test_a_pool_too_small_is_a_clear_error_at_open(pool, field8) -> None:
    pool(2)  # the array needs 8
    path, _ = field8
    with pytest.raises(lazymem.HugePagesUnavailableError, match=r"needs 8 free huge pages.*has 2 free and unreserved"):
        lazymem.open(path, huge_pages=True)
    assert isinstance(lazymem.HugePagesUnavailableError("x"), MemoryError)


def test_evicted_huge_pages_load_again(pool, field8) -> None:
    pool(8)
    path, src = field8
    a = lazymem.open(path, huge_pages=True)
    assert np.array_equal(a, src)
    assert a.evict() == 4
    assert lazymem.stats(a).resident_bytes == 0
    assert np.array_equal(a[100:3000], src[100:3000])
    assert np.array_equal(a, src)


def test_evict_keeps_the_reservation_so_another_array_cannot_take_the_pool(pool, field8, tmp_path: Path) -> None:
    # Punching huge pages out of a hugetlbfs file gives their reservation back: another array could
    # then take the pool, and touching this one found no page to load into (it hung).
    pool(12)
    path, src = field8
    other = str(tmp_path / "other.npy.zst")
    lazymem.save(other, src[::-1], chunk_bytes=4 << 20)
    a = lazymem.open(path, huge_pages=True)
    assert np.array_equal(a, src)
    assert a.evict() == 4
    assert lazymem.stats(a).resident_bytes == 0
    assert uffd.huge_pages()[1] == 4  # 12 - 8 still reserved for `a`
    with pytest.raises(lazymem.HugePagesUnavailableError, match="needs 8 free huge pages"):
        lazymem.open(other, huge_pages=True)
    assert a.prefetch() == 4
    assert np.array_equal(a, src)
    a.evict(np.s_[: src.shape[0] // 2])
    assert np.array_equal(a, src)  # chunk by chunk, with readahead and its held-back pages
    a.close()  # closed for good: its pages and their reservation go back to the pool now
    assert uffd.huge_pages()[1] == 12
    b = lazymem.open(other, huge_pages=True)
    assert np.array_equal(b, src[::-1])


def test_a_punched_hugetlbfs_range_is_reserved_again_or_enomem(pool) -> None:
    # The kernel facts evict relies on: a punch gives back the reservation of the pages it frees,
    # a shared mapping of the range (even one unmapped at once) takes it again, or fails with ENOMEM.
    import errno

    pool(6)
    fd = os.memfd_create("resv", os.MFD_HUGETLB)
    other = os.memfd_create("other", os.MFD_HUGETLB)
    try:
        os.ftruncate(fd, 4 * HUGE)
        address = uffd.map_shared(fd, 4 * HUGE, prot=uffd.PROT_READ | uffd.PROT_WRITE, reserve=True)
        ctypes.memset(address, 7, 4 * HUGE)  # all four pages allocated
        assert uffd.huge_pages()[1] == 2
        uffd.punch_hole(fd, 0, 2 * HUGE)
        assert uffd.huge_pages()[1] == 4  # two pages back in the pool, unreserved
        uffd.reserve_huge_pages(fd, 0, 2 * HUGE)
        assert uffd.huge_pages()[1] == 2  # reserved for this file again
        uffd.punch_hole(fd, 0, 2 * HUGE)  # holes only: nothing freed, the reservation stays
        assert uffd.huge_pages()[1] == 2
        uffd.punch_hole(fd, 2 * HUGE, 2 * HUGE)
        os.ftruncate(other, 4 * HUGE)
        taken = uffd.map_shared(other, 4 * HUGE, reserve=True)  # another user takes the free pages
        with pytest.raises(OSError) as failure:
            uffd.reserve_huge_pages(fd, 2 * HUGE, 2 * HUGE)
        assert failure.value.errno == errno.ENOMEM
        uffd.unmap(taken, 4 * HUGE)
        uffd.unmap(address, 4 * HUGE)
    finally:
        os.close(fd)
        os.close(other)


def test_the_environment_variable_turns_huge_pages_on_and_a_forked_child_reads_them(pool, field8) -> None:
    pool(8)
    path, src = field8
    result = run_python(
        f"""
        import os, numpy as np, lazymem
        from tests.test_huge_pages import _page_size_of_mapping
        a = lazymem.open({path!r})
        print("page", _page_size_of_mapping(a.ctypes.data))
        head = float(a[0].sum())
        pid = os.fork()
        if pid == 0:  # the child maps the same huge pages again and reads what is not loaded yet
            os._exit(0 if float(a.sum()) == {float(src.sum())!r} and float(a[0].sum()) == head else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        print("parent", float(a.sum()) == {float(src.sum())!r})
        """,
        env={"LAZYMEM_HUGE_PAGES": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert f"page {HUGE}" in result.stdout and "child 0" in result.stdout and "parent True" in result.stdout


def test_elements_anywhere_in_a_chunk_read_first_on_huge_pages_are_right(pool, field8) -> None:
    # A fault waits for the frames of its huge page only (4 frames of 512 KiB), which go in whole
    # before the rest of the 4 MiB chunk: then the whole chunk must be right, byte for byte.
    pool(8)
    path, src = field8
    a = lazymem.open(path, huge_pages=True, readahead=0)
    flat, expected = a.reshape(-1), src.reshape(-1)
    per_chunk = (4 << 20) // src.itemsize
    for chunk, within in enumerate([0, per_chunk - 1, per_chunk // 2 - 1, per_chunk // 2 + 3]):
        index = chunk * per_chunk + within
        assert flat[index] == expected[index]
        part = slice(chunk * per_chunk, (chunk + 1) * per_chunk)
        assert np.array_equal(flat[part], expected[part])
    assert lazymem.stats(a).chunks_installed == 4


def test_a_corrupt_chunk_in_huge_pages_raises_or_gets_sigbus(pool, field8) -> None:
    pool(8)
    path, src = field8
    _corrupt_chunk(path, 2)
    a = lazymem.open(path, huge_pages=True, readahead=0)
    with pytest.raises(lazymem.CorruptChunkError):
        a.prefetch()
    rows = src.shape[0] // 4
    assert np.array_equal(a[: 2 * rows], src[: 2 * rows]) and np.array_equal(a[3 * rows:], src[3 * rows:])
    del a  # the last view: its huge pages and reservations go back to the pool now
    gc.collect()  # the CorruptChunkError's traceback held `a` in a cycle
    assert uffd.huge_pages()[1] == 8
    result = run_python(
        f"""
        import faulthandler, lazymem
        faulthandler.disable()
        a = lazymem.open({path!r}, huge_pages=True, readahead=0)
        print("NEVER", a[{2 * rows + 7}, 3], flush=True)
        """
    )
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "NEVER" not in result.stdout and "chunk 2" in result.stderr


def test_a_new_monitor_serves_huge_pages_the_old_one_installed(pool, field8) -> None:
    from lazymem.monitor.client import get_client

    pool(8)
    path, src = field8
    a = lazymem.open(path, huge_pages=True, readahead=0)
    assert np.array_equal(a[:10], src[:10])  # chunk 0 installed by this monitor
    worker = get_client().monitor_pid
    os.kill(worker, signal.SIGKILL)
    assert wait_for_exit(worker)
    lazymem.stats(a)  # answered by the new worker
    # It cannot tell which huge pages are there (no SEEK_HOLE on hugetlbfs): it installs around them.
    assert a.prefetch() >= 3
    assert np.array_equal(a, src)


def test_zero_chunks_in_huge_pages_are_copied_zeros(pool, tmp_path: Path) -> None:
    pool(8)
    src = np.random.default_rng(4).standard_normal(2**21)  # 16 MiB, 4 chunks
    src[2**19:2**20] = 0.0  # chunk 1 is all zeros (hugetlbfs has no UFFDIO_ZEROPAGE)
    path = str(tmp_path / "z.npy.zst")
    lazymem.save(path, src, chunk_bytes=4 << 20)
    a = lazymem.open(path, huge_pages=True, readahead=0)
    assert a[2**19 + 12345] == 0.0
    assert np.array_equal(a, src)
    s = lazymem.stats(a)
    assert s.zero_chunks == 1 and s.chunks_installed == 4

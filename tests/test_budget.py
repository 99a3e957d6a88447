"""Memory budgets: arrays larger than their budget scan correctly within it."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import lazymem
from lazymem.config import parse_size
from lazymem.monitor.budget import ResidentSet

from .conftest import run_python

MiB = 2**20


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """64 MiB of float32 in 1 MiB chunks."""
    src = np.cumsum(np.random.default_rng(5).standard_normal(16 * MiB, dtype=np.float32))
    path = str(tmp_path_factory.mktemp("budget") / "big.npy.zst")
    lazymem.save(path, src, chunk_bytes=MiB)
    return path, src


def test_parse_size() -> None:
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5 GB") == 1_500_000_000
    assert parse_size("512m") == 512_000_000
    assert parse_size(4096) == 4096
    for bad in ("lots", "-1", "5 parsecs", 0, -3):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_resident_set_evicts_oldest_unprotected_first() -> None:
    rs = ResidentSet(budget=4 * MiB, chunk_size=MiB)
    for chunk in range(4):
        rs.installed(chunk, MiB)
    rs.touched(0)  # a fault refreshed chunk 0
    assert rs.victims(MiB, 0, protected=lambda c: False) == [1]
    assert rs.victims(2 * MiB, 0, protected=lambda c: c == 1) == [2, 3]
    assert rs.victims(MiB, 0, protected=lambda c: True) is None
    assert rs.victims(MiB, 2 * MiB, protected=lambda c: False) == [1, 2, 3]
    assert ResidentSet(None, MiB).victims(10**12, 0, lambda c: False) == []


def test_full_scan_of_an_array_four_times_its_budget_stays_within_it(big) -> None:
    path, src = big
    result = run_python(
        f"""
        import numpy as np, lazymem

        def status(field):
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))

        a = lazymem.open({path!r}, max_resident="16MiB")
        a[0]  # start the monitor and import everything before measuring
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        base = status("VmRSS")
        total = float(np.sum(a, dtype=np.float64))
        peak = status("VmHWM") - base
        s = lazymem.stats(a)
        print(total, peak, s.resident_bytes, s.evictions, s.chunks_installed)
        """
    )
    assert result.returncode == 0, result.stderr
    total, peak, resident, evictions, installed = result.stdout.split()
    assert float(total) == float(np.sum(src, dtype=np.float64))
    assert int(resident) <= 16 * MiB
    assert int(evictions) >= 64 - 16 and int(installed) >= 64
    # The budget, plus what workers install at once beyond it, plus numpy's small buffers.
    assert int(peak) <= 16 * MiB + 12 * MiB, f"peak {int(peak) / MiB:.1f} MiB over the starting RSS"


@pytest.mark.slow  # ~2 s
def test_values_stay_right_when_threads_touch_evicted_and_resident_chunks(big) -> None:
    path, src = big
    a = lazymem.open(path, max_resident=4 * MiB, readahead=2)
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        barrier.wait()
        for _ in range(150):
            start = int(rng.integers(0, src.size - 70_000))
            if not np.array_equal(a[start:start + 70_000:7], src[start:start + 70_000:7]):
                errors.append(f"mismatch at {start}")

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    s = lazymem.stats(a)
    assert s.evictions > 0
    assert s.resident_bytes <= 4 * MiB + 8 * MiB  # demand installs may overshoot by the workers in flight


def test_sequential_scan_with_readahead_under_a_tight_budget(big) -> None:
    path, src = big
    a = lazymem.open(path, max_resident=3 * MiB, readahead=8)
    step = MiB // 4 // 8
    for start in range(0, src.size, step):
        assert a[start] == src[start]
    assert np.array_equal(a[-1000:], src[-1000:])


def test_explicit_evict_under_a_key(big) -> None:
    path, src = big
    a = lazymem.open(path, readahead=0)
    a.prefetch(np.s_[: 4 * MiB // 4])  # chunks 0..3
    assert lazymem.stats(a).chunks_present == 4
    assert a.evict(np.s_[: MiB // 4]) == 1
    assert lazymem.stats(a).chunks_present == 3
    assert np.array_equal(a[: MiB // 4], src[: MiB // 4])


def test_default_budget_precedence(big, monkeypatch: pytest.MonkeyPatch) -> None:
    from lazymem import config

    monkeypatch.setenv("LAZYMEM_MAX_RESIDENT", "8MiB")
    assert config.default_max_resident() == 8 * MiB
    lazymem.set_max_resident("2MiB")
    try:
        assert config.default_max_resident() == 2 * MiB
        path, src = big
        a = lazymem.open(path)
        assert np.array_equal(a[::1000], src[::1000])
        assert lazymem.stats(a).resident_bytes <= 2 * MiB + 8 * MiB
    finally:
        lazymem.set_max_resident(None)
    monkeypatch.delenv("LAZYMEM_MAX_RESIDENT")
    assert 0 < config.default_max_resident() <= config.available_memory()


def test_a_bad_environment_variable_is_named(big, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAZYMEM_MAX_RESIDENT", "lots")
    with pytest.raises(ValueError, match=r"^\$LAZYMEM_MAX_RESIDENT='lots': cannot read 'lots' as a size"):
        lazymem.open(big[0])


@pytest.mark.slow  # ~18 s
def test_huge_array_open_costs_only_what_is_touched(tmp_path: Path) -> None:
    path = str(tmp_path / "zeros16.npy.zst")
    lazymem.save(path, np.broadcast_to(np.float64(0), (2**31,)), chunk_bytes=64 * MiB)  # 16 GiB
    a = lazymem.open(path)
    assert a.nbytes == 16 * 2**30
    assert a[2**30] == 0.0
    assert lazymem.stats(a).resident_bytes == 64 * MiB

"""Arrays over HTTP(S): a real Range server in its own process (tests/remote.py), no mocks.

The server counts requests and the most in flight at once, adds latency, and fails on demand
(503 for the next N requests, or some status for all). Counts, never seconds, are asserted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import lazymem
from lazymem.storage.retry import RETRY_DELAYS

from .conftest import ROOT, assert_same_array

CHUNK = 2**18  # 256 KiB: many chunks from a small array
PER_CHUNK = CHUNK // 4  # float32 elements per chunk


def _walk(n: int, seed: int = 0) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).standard_normal(n, dtype=np.float32)).astype(np.float32)


def _gets(state: dict) -> list[list]:
    return [r for r in state["requests"] if r[0] == "GET"]


def test_open_load_and_prefetch_give_the_saved_bytes(http_store) -> None:
    src = _walk(16 * PER_CHUNK).reshape(-1, 256)  # 16 chunks
    url = http_store.put("a.npy.zst", src, chunk_bytes=CHUNK)
    a = lazymem.open(url, readahead=0)
    assert float(a[1000, 7]) == float(src[1000, 7])  # a single element: the faulting thread holds its GIL
    assert a.prefetch(np.s_[1024:]) == 12  # 256 rows a chunk: chunks 4..15 (row 1000 is in chunk 3)
    assert_same_array(a, src)
    assert lazymem.stats(a).chunks_present == 16
    assert_same_array(lazymem.load(url), src)


def test_fortran_order_and_raw_npy_over_http(http_store) -> None:
    src = np.asfortranarray(_walk(8 * PER_CHUNK, seed=1).reshape(512, -1))
    assert_same_array(lazymem.open(http_store.put("f.npy.zst", src, chunk_bytes=CHUNK)), src)
    plain = _walk(3 * PER_CHUNK, seed=2)
    np.save(http_store.dir / "plain.npy", plain)
    assert_same_array(lazymem.open(f"{http_store.url}/plain.npy"), plain)


def test_open_costs_two_requests_and_no_head(http_store) -> None:
    url = http_store.put("two.npy.zst", _walk(16 * PER_CHUNK), chunk_bytes=CHUNK)
    http_store.server.control(reset=1)
    lazymem.open(url)
    requests = http_store.server.control()["requests"]
    # The seek table with a suffix range (its Content-Range gives the size), then the header frame.
    assert [(method, byte_range) for method, _, byte_range in requests] == [
        ("GET", "bytes=-65536"),
        ("GET", requests[1][2]),
    ]
    assert requests[1][2].startswith("bytes=0-")


def test_sequential_scan_keeps_several_requests_in_flight(http_store) -> None:
    src = _walk(32 * PER_CHUNK)
    url = http_store.put("scan.npy.zst", src, chunk_bytes=CHUNK)
    a = lazymem.open(url, readahead=8)
    http_store.server.control(latency=0.05, reset=1)  # every request takes 50 ms: overlap shows
    total = sum(float(a[i]) for i in range(0, len(a), PER_CHUNK // 4))  # element by element, GIL held
    assert total == sum(float(src[i]) for i in range(0, len(src), PER_CHUNK // 4))
    state = http_store.server.control()
    assert len(_gets(state)) == 32, state  # every chunk once, nothing twice
    assert 4 <= state["max_in_flight"] <= 9, state  # readahead: up to the window (8) plus the demanded chunk


def test_max_in_flight_bounds_concurrent_requests(http_store) -> None:
    src = _walk(32 * PER_CHUNK)
    url = http_store.put("bounded.npy.zst", src, chunk_bytes=CHUNK)
    a = lazymem.open(url, readahead=8, max_in_flight=2)
    http_store.server.control(latency=0.05, reset=1)
    assert a.prefetch() == 32
    assert http_store.server.control()["max_in_flight"] == 2
    assert_same_array(a, src)


def test_a_sparse_reader_fetches_only_what_it_touches(http_store) -> None:
    src = _walk(64 * PER_CHUNK)
    url = http_store.put("sparse.npy.zst", src, chunk_bytes=CHUNK)
    a = lazymem.open(url)  # readahead on (the default): random faults must not trigger it
    http_store.server.control(reset=1)
    touched = [50, 3, 41, 17, 29, 60]
    for chunk in touched:
        assert float(a[chunk * PER_CHUNK + 7]) == float(src[chunk * PER_CHUNK + 7])
    assert len(_gets(http_store.server.control())) == len(touched)
    assert lazymem.stats(a).chunks_present == len(touched)


@pytest.mark.slow  # ~2 s of retry delays
def test_transient_503s_are_retried_for_open_load_and_faults(http_store) -> None:
    src = _walk(4 * PER_CHUNK)
    url = http_store.put("flaky.npy.zst", src, chunk_bytes=CHUNK)
    http_store.server.control(fail_next=2, reset=1)
    a = lazymem.open(url, readahead=0)
    assert len(_gets(http_store.server.control())) == 4  # the tail read three times, then the header
    http_store.server.control(fail_next=2, reset=1)
    assert float(a[PER_CHUNK + 3]) == float(src[PER_CHUNK + 3])
    gets = _gets(http_store.server.control())
    assert len(gets) == 3 and len({byte_range for _, _, byte_range in gets}) == 1  # one chunk, sent 3 times
    http_store.server.control(fail_next=2)
    assert_same_array(lazymem.load(url), src)
    assert lazymem.stats(a).failures == 0


def test_dropped_connections_are_retried(http_store) -> None:
    src = _walk(4 * PER_CHUNK)
    url = http_store.put("dropped.npy.zst", src, chunk_bytes=CHUNK)
    a = lazymem.open(url, readahead=0)
    http_store.server.control(drop_next=2, reset=1)  # the server hangs up without answering, twice
    assert float(a[3 * PER_CHUNK + 1]) == float(src[3 * PER_CHUNK + 1])
    assert len(_gets(http_store.server.control())) == 3
    http_store.server.control(drop_next=1)
    assert_same_array(lazymem.load(url), src)


@pytest.mark.slow  # ~2.5 s of retry delays
def test_prefetch_raises_once_retries_are_spent_and_at_once_for_4xx(http_store) -> None:
    url = http_store.put("down.npy.zst", _walk(4 * PER_CHUNK), chunk_bytes=CHUNK)
    a = lazymem.open(url, readahead=0)
    http_store.server.control(fail_status=500, reset=1)
    with pytest.raises(lazymem.FetchError, match="500"):
        a.prefetch(np.s_[:10])
    assert len(_gets(http_store.server.control())) == 1 + len(RETRY_DELAYS)
    http_store.server.control(fail_status=403, reset=1)
    with pytest.raises(lazymem.FetchError, match="403"):
        a.prefetch(np.s_[:10])
    assert len(_gets(http_store.server.control())) == 1  # a 4xx is not retried
    http_store.server.control(fail_status=0)
    assert a.prefetch(np.s_[:10]) == 1  # storage is back: the chunk loads


def test_open_of_a_missing_url_raises_array_not_found(http_store) -> None:
    with pytest.raises(lazymem.ArrayNotFoundError):
        lazymem.open(f"{http_store.url}/nothing.npy.zst")
    with pytest.raises(FileNotFoundError):
        lazymem.load(f"{http_store.url}/nothing.npy.zst")
    (http_store.dir / "empty.npy.zst").write_bytes(b"")
    with pytest.raises(lazymem.FormatError, match="empty"):
        lazymem.open(f"{http_store.url}/empty.npy.zst")  # the suffix range gets 416 "bytes */0"


@pytest.mark.parametrize("failure", ["404", pytest.param("503 for ever", marks=pytest.mark.slow)])  # retry delays
def test_a_permanent_failure_during_transparent_access_is_sigbus_with_a_message(http_store, failure) -> None:
    src = _walk(4 * PER_CHUNK)
    url = http_store.put("gone.npy.zst", src, chunk_bytes=CHUNK)
    code = textwrap.dedent(f"""
        import faulthandler, sys, lazymem
        faulthandler.disable()
        a = lazymem.open({url!r}, readahead=0)
        print("before", float(a[5]), flush=True)
        sys.stdin.readline()
        print("NEVER", float(a[{2 * PER_CHUNK + 5}]), flush=True)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == f"before {float(src[5])!r}\n"
        if failure == "404":
            os.unlink(http_store.dir / "gone.npy.zst")
        else:
            http_store.server.control(fail_status=503)
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGBUS, (child.returncode, out, err)
    assert "NEVER" not in out
    assert "chunk 2" in err and url in err
    assert ("ArrayNotFoundError" if failure == "404" else "FetchError") in err


def test_chained_caches_work_for_open_and_load(http_store) -> None:
    src = _walk(8 * PER_CHUNK)
    url = http_store.put("cached.npy.zst", src, chunk_bytes=CHUNK)
    for chained in (f"simplecache::{url}", f"blockcache::{url}"):
        assert_same_array(lazymem.open(chained), src)
        assert_same_array(lazymem.load(chained), src)


def test_simplecache_downloads_the_object_once_for_the_app_and_the_monitor(http_store) -> None:
    src = _walk(8 * PER_CHUNK, seed=5)
    url = http_store.put("once.npy.zst", src, chunk_bytes=CHUNK)
    http_store.server.control(reset=1)

    def downloads() -> int:  # GETs of the whole object (fsspec's download may abort one and retry)
        return len([r for r in _gets(http_store.server.control()) if r[2] is None])

    a = lazymem.open(f"simplecache::{url}", readahead=0)  # the app downloads it to read the header
    by_open = downloads()
    assert by_open > 0
    assert_same_array(a, src)  # the monitor reads the same cached file: no download of its own
    assert lazymem.stats(a).chunks_installed == 8
    assert downloads() == by_open, http_store.server.control()["requests"]
    assert len(_gets(http_store.server.control())) == by_open  # and no range request either


def test_memory_urls_load_and_save_but_cannot_be_opened_lazily() -> None:
    src = _walk(2 * PER_CHUNK)
    lazymem.save("memory://lazymem-test/m.npy.zst", src, chunk_bytes=CHUNK)
    assert_same_array(lazymem.load("memory://lazymem-test/m.npy.zst"), src)
    for url in ("memory://lazymem-test/m.npy.zst", "simplecache::memory://lazymem-test/m.npy.zst"):
        with pytest.raises(lazymem.UnsupportedStorageError, match=r"memory://.*monitor process.*lazymem\.load"):
            lazymem.open(url)

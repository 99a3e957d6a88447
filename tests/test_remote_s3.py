"""Arrays on S3: moto's real S3 server in its own process, behind a proxy that counts requests,
adds latency and fails on demand (tests/remote.py). No mocks: s3fs talks HTTP to it, from the
test process and from the monitor process, with the endpoint given in ``storage_options``.
"""

from __future__ import annotations

import numpy as np
import pytest

import lazymem

from .conftest import assert_same_array

CHUNK = 2**18
PER_CHUNK = CHUNK // 8  # float64 elements per chunk


def _data(n_chunks: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n_chunks * PER_CHUNK)


def _gets(state: dict) -> list[list]:
    return [r for r in state["requests"] if r[0] == "GET"]


def test_save_open_load_and_prefetch_through_s3(s3_store) -> None:
    options = s3_store.storage_options
    src = _data(16).reshape(-1, 128)
    lazymem.save("s3://test/a.npy.zst", src, chunk_bytes=CHUNK, storage_options=options)
    a = lazymem.open("s3://test/a.npy.zst", storage_options=options, readahead=0)
    assert float(a[700, 3]) == float(src[700, 3])  # the monitor reaches moto with the same options
    assert a.prefetch() == 15
    assert_same_array(a, src)
    assert_same_array(lazymem.load("s3://test/a.npy.zst", storage_options=options), src)


def test_open_costs_two_requests(s3_store) -> None:
    options = s3_store.storage_options
    lazymem.save("s3://test/two.npy.zst", _data(8), chunk_bytes=CHUNK, storage_options=options)
    s3_store.control(reset=1)
    lazymem.open("s3://test/two.npy.zst", storage_options=options)
    requests = s3_store.control()["requests"]
    assert [(method, path) for method, path, _ in requests] == [("GET", "/test/two.npy.zst")] * 2
    assert requests[0][2] == "bytes=-65536" and requests[1][2].startswith("bytes=0-")


def test_sequential_scan_keeps_several_requests_in_flight(s3_store) -> None:
    options = s3_store.storage_options
    src = _data(24)
    lazymem.save("s3://test/scan.npy.zst", src, chunk_bytes=CHUNK, storage_options=options)
    a = lazymem.open("s3://test/scan.npy.zst", storage_options=options, readahead=8)
    s3_store.control(latency=0.05, reset=1)
    assert float(np.sum(a[::1000])) == float(np.sum(src[::1000]))
    state = s3_store.control()
    assert len(_gets(state)) == 24, state
    assert 4 <= state["max_in_flight"] <= 9, state


@pytest.mark.slow  # ~4 s of retry delays
def test_transient_errors_are_retried(s3_store) -> None:
    options = s3_store.storage_options
    src = _data(4)
    lazymem.save("s3://test/flaky.npy.zst", src, chunk_bytes=CHUNK, storage_options=options)
    s3_store.control(fail_next=1, reset=1)
    a = lazymem.open("s3://test/flaky.npy.zst", storage_options=options, readahead=0)
    s3_store.control(fail_next=2, reset=1)
    assert float(a[2 * PER_CHUNK + 1]) == float(src[2 * PER_CHUNK + 1])
    gets = _gets(s3_store.control())
    assert len(gets) == 3 and len({byte_range for _, _, byte_range in gets}) == 1
    s3_store.control(fail_next=2)
    assert_same_array(lazymem.load("s3://test/flaky.npy.zst", storage_options=options), src)


def test_access_denied_is_not_retried_and_reaches_prefetch(s3_store) -> None:
    options = s3_store.storage_options
    lazymem.save("s3://test/denied.npy.zst", _data(4), chunk_bytes=CHUNK, storage_options=options)
    a = lazymem.open("s3://test/denied.npy.zst", storage_options=options, readahead=0)
    s3_store.control(fail_status=403, reset=1)
    with pytest.raises(lazymem.FetchError, match=r"PermissionError") as failure:
        a.prefetch(np.s_[:5])
    assert "s3://test/denied.npy.zst" in str(failure.value)  # named as the user wrote it
    assert len(_gets(s3_store.control())) == 1


def test_missing_objects_and_buckets(s3_store) -> None:
    options = s3_store.storage_options
    with pytest.raises(lazymem.ArrayNotFoundError, match=r"^s3://test/nothing\.npy\.zst: "):
        lazymem.open("s3://test/nothing.npy.zst", storage_options=options)
    with pytest.raises(lazymem.ArrayNotFoundError, match=r"^s3://no-such-bucket/x\.npy\.zst: "):
        lazymem.load("s3://no-such-bucket/x.npy.zst", storage_options=options)
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True, **options).pipe("test/empty.npy.zst", b"")
    with pytest.raises(lazymem.FormatError, match=r"^s3://test/empty\.npy\.zst: .*empty"):
        lazymem.open("s3://test/empty.npy.zst", storage_options=options)


def test_chained_cache_with_per_protocol_options(s3_store) -> None:
    options = s3_store.storage_options
    src = _data(6)
    lazymem.save("s3://test/c.npy.zst", src, chunk_bytes=CHUNK, storage_options=options)
    chained = {"s3": options}  # fsspec's way to pass options to one layer of a chained URL
    assert_same_array(lazymem.open("simplecache::s3://test/c.npy.zst", storage_options=chained), src)
    assert_same_array(lazymem.load("simplecache::s3://test/c.npy.zst", storage_options=chained), src)

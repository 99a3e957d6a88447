"""dask.distributed with real worker processes (a LocalCluster, workers forked and spawned) reading
an array from a real HTTP Range server that counts the bytes it serves.

Each worker must fetch only its own tasks' units: together about the stored size, once; the
client, which holds the array, fetches nothing (views travel by reference).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
import dask
from distributed import Client, LocalCluster

import lazymem
from lazymem.integrations import dask as lazymem_dask

UNIT = 2**18  # 256 KiB: 32 units in the 8 MiB array
ROWS_PER_UNIT = UNIT // (256 * 4)


@pytest.fixture(params=["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def client(request: pytest.FixtureRequest):
    """Two worker processes of two threads, started by ``fork`` or ``spawn``."""
    with dask.config.set({"distributed.worker.multiprocessing-method": request.param}), \
            LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as c:
        c.wait_for_workers(2)
        yield c


@pytest.fixture
def served(http_store) -> tuple[str, np.ndarray, int, object]:
    """An 8 MiB float32 random walk on the HTTP server: (url, array, stored bytes, server)."""
    src = np.cumsum(np.random.default_rng(3).standard_normal(2**21, dtype=np.float32)).astype(np.float32)
    src = src.reshape(-1, 256)
    url = http_store.put("walk.npy.zst", src, chunk_bytes=UNIT)
    return url, src, os.path.getsize(http_store.dir / "walk.npy.zst"), http_store.server


def _bytes_served(server) -> int:
    """Bytes the server sent for GETs since its last reset (from the Range headers it answered)."""
    total = 0
    for method, _path, byte_range in server.control()["requests"]:
        if method != "GET" or not byte_range:
            continue
        first, last = byte_range.split("=")[1].split("-")
        total += int(last) if not first else int(last) - int(first) + 1
    return total


def _per_worker(client: Client, url: str) -> dict[str, lazymem.Stats]:
    return {worker: stats[url] for worker, stats in client.run(lazymem_dask.opened_here).items() if url in stats}


def test_a_full_reduction_fetches_each_unit_about_once_and_never_in_the_client(client: Client, served) -> None:
    url, src, stored, server = served
    a = lazymem.open(url)
    server.reset()
    with dask.config.set({"array.chunk-size": "1MiB"}):  # 8 blocks of 4 units
        x = lazymem.to_dask(a)
    mean = x.mean(axis=0).compute()
    assert type(mean) is np.ndarray
    np.testing.assert_allclose(mean, src.mean(axis=0, dtype=np.float64), rtol=1e-4)
    served_bytes = _bytes_served(server)
    assert served_bytes <= 1.3 * stored, (served_bytes, stored)
    s = lazymem.stats(a)
    assert (s.faults, s.chunks_installed, s.bytes_fetched) == (0, 0, 0)  # the client sent references only
    workers = _per_worker(client, a.url)
    assert len(workers) == 2  # both took part, each opened the array once
    total = s.chunks_total
    for stats in workers.values():
        assert 0 < stats.chunks_installed < total, stats  # no process held the whole array
    assert sum(stats.chunks_installed for stats in workers.values()) <= 1.3 * total


def test_client_map_over_views_fetches_each_view_once(client: Client, served) -> None:
    url, src, stored, server = served
    a = lazymem.open(url)
    rows = 2 * ROWS_PER_UNIT
    views = [a[i * rows:(i + 1) * rows] for i in range(len(src) // rows)]  # 16 views of 2 units
    server.reset()
    sums = client.gather(client.map(np.sum, views))  # pure: keys hash the views (by reference)
    assert [float(s) for s in sums] == [float(np.sum(src[i * rows:(i + 1) * rows])) for i in range(len(views))]
    served_bytes = _bytes_served(server)
    assert served_bytes <= 1.3 * stored, (served_bytes, stored)  # readahead stayed inside each view
    # The whole array, submitted: a reference too, summed in a worker.
    total = client.submit(np.sum, a, dtype=np.float64).result()
    assert float(total) == float(np.sum(src, dtype=np.float64))
    assert lazymem.stats(a).chunks_installed == 0  # the client fetched nothing, ever


def _die_once(block: np.ndarray, marker: str) -> np.ndarray:
    """The first call anywhere kills its own worker process (kill -9) while its other thread, and
    the other worker, are busy with their blocks."""
    if block.size == 0:  # dask's meta probe, in the client
        return block
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return block * 2
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def test_a_worker_killed_mid_computation_leaves_the_result_right(client: Client, served, tmp_path: Path) -> None:
    url, src, _, _ = served
    with dask.config.set({"array.chunk-size": "1MiB"}):
        x = lazymem.to_dask(url)
    marker = str(tmp_path / "killed")
    doubled = x.map_blocks(_die_once, marker, meta=np.empty((0, 0), x.dtype))
    total = doubled.sum(axis=1).compute()
    assert os.path.exists(marker)  # a worker did die
    np.testing.assert_allclose(total, (src * 2).sum(axis=1), rtol=1e-4)


def test_an_array_whose_object_disappeared_is_an_error_in_the_task(client: Client, served, http_store) -> None:
    url, src, _, _ = served
    with dask.config.set({"array.chunk-size": "1MiB"}):
        x = lazymem.to_dask(url)
    half = x.shape[0] // 2
    np.testing.assert_allclose(x[:half].sum(axis=0).compute(), src[:half].sum(axis=0), rtol=1e-4)
    (http_store.dir / "walk.npy.zst").unlink()
    # Workers that opened it: the units not loaded yet cannot be fetched. Workers that did not:
    # the array cannot be opened. Either way an exception in the task, naming the URL.
    with pytest.raises(lazymem.LazymemError, match=r"walk\.npy\.zst"):
        x[half:].sum(axis=0).compute()
    with pytest.raises(lazymem.LazymemError, match=r"walk\.npy\.zst"):
        x.sum().compute()

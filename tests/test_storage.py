"""The storage layer on its own: which filesystems are plain local files, exact reads, coalesced
range reads and the mapping of storage errors, against real files and the real HTTP server."""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem

from lazymem.errors import ArrayNotFoundError, FetchError, TruncatedFileError
from lazymem.storage import StoredObject, is_local_file, plan_runs
from lazymem.storage.errors import network_errors

from .conftest import CountingFileSystem

DATA = bytes(range(256)) * 4096  # 1 MiB whose every byte says where it is (mod 256)


@pytest.fixture
def data_file(tmp_path: Path) -> str:
    path = tmp_path / "data.bin"
    path.write_bytes(DATA)
    return str(path)


@pytest.fixture
def http_object(http_store) -> tuple[StoredObject, object]:
    """``DATA`` served over HTTP, opened as a stored object, the server's counters reset."""
    (http_store.dir / "data.bin").write_bytes(DATA)
    fs, path = fsspec.core.url_to_fs(f"{http_store.url}/data.bin", skip_instance_cache=True)
    stored = StoredObject.open(fs, path)
    http_store.server.control(reset=1)
    return stored, http_store.server


def _gets(server) -> list[str | None]:  # type: ignore[no-untyped-def]
    return [byte_range for method, _, byte_range in server.control()["requests"] if method == "GET"]


# -- is this a plain local file ---------------------------------------------------------------------


def test_a_plain_local_file_is_recognised_however_it_is_named(data_file: str, http_store) -> None:
    named = [fsspec.core.url_to_fs(data_file)[0], fsspec.core.url_to_fs(f"file://{data_file}")[0], LocalFileSystem()]
    assert [is_local_file(fs) for fs in named] == [True, True, True]
    others = [
        fsspec.filesystem("memory"),
        fsspec.core.url_to_fs(f"{http_store.url}/x")[0],
        CountingFileSystem(),  # a subclass may do more than read: it must be asked
    ]
    assert [is_local_file(fs) for fs in others] == [False, False, False]


def test_a_subclass_of_the_local_filesystem_sees_every_read(data_file: str) -> None:
    CountingFileSystem.requests = []
    stored = StoredObject.open(CountingFileSystem(), data_file)
    assert stored.read(10, 20) == DATA[10:20]
    assert CountingFileSystem.requests == [(10, 20)]  # not read past it with pread


# -- exact reads and coalescing -----------------------------------------------------------------------


def test_plan_runs_joins_ranges_a_small_gap_apart_and_splits_big_requests() -> None:
    ranges = [(300, 400), (0, 100), (150, 200), (1000, 1100), (0, 100)]
    runs = plan_runs(ranges, max_gap=50)
    assert [(run.start, run.end, run.members) for run in runs] == [(0, 200, (1, 4, 2)), (300, 400, (0,)),
                                                                  (1000, 1100, (3,))]
    assert [(run.start, run.end) for run in plan_runs(ranges, max_gap=1000)] == [(0, 1100)]
    assert [(run.start, run.end) for run in plan_runs(ranges, max_gap=1000, max_run_bytes=400)] == [
        (0, 400), (1000, 1100)]
    assert plan_runs([]) == []


def test_local_reads_are_exact_and_come_back_in_the_order_asked(data_file: str) -> None:
    stored = StoredObject.open(LocalFileSystem(), data_file)
    assert stored.size == len(DATA)
    assert stored.read(5, 4101) == DATA[5:4101]
    ranges = [(9000, 9100), (0, 10), (5000, 5001), (0, 10)]
    assert [bytes(v) for v in stored.read_ranges(ranges, max_gap=1 << 16)] == [DATA[a:b] for a, b in ranges]


def test_http_ranges_a_small_gap_apart_share_one_request(http_object) -> None:
    stored, server = http_object
    ranges = [(200_000, 200_100), (0, 100), (1000, 2000), (900_000, 900_010)]
    views = stored.read_ranges(ranges, max_gap=4096)
    assert [bytes(v) for v in views] == [DATA[a:b] for a, b in ranges]
    assert sorted(_gets(server)) == ["bytes=0-1999", "bytes=200000-200099", "bytes=900000-900009"]


def test_http_requests_stop_growing_at_max_run_bytes(http_object) -> None:
    stored, server = http_object
    ranges = [(k * 1000, k * 1000 + 1000) for k in range(10)]
    views = stored.read_ranges(ranges, max_gap=0, max_run_bytes=4000)
    assert b"".join(bytes(v) for v in views) == DATA[:10_000]
    assert sorted(_gets(server)) == ["bytes=0-3999", "bytes=4000-7999", "bytes=8000-9999"]


def test_a_short_read_is_a_truncated_file(tmp_path: Path, http_store) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(DATA)
    stored = StoredObject.open(LocalFileSystem(), str(path))
    (http_store.dir / "short.bin").write_bytes(DATA)
    fs, url = fsspec.core.url_to_fs(f"{http_store.url}/short.bin", skip_instance_cache=True)
    remote = StoredObject.open(fs, url)
    stored.read(0, 1)  # the descriptor is open: truncating in place shortens what it reads
    os.truncate(path, 1000)
    (http_store.dir / "short.bin").write_bytes(DATA[:1000])
    for obj in (stored, remote):
        with pytest.raises(TruncatedFileError, match=r"asked storage for bytes \[900, 2000\) and got 100 bytes"):
            obj.read(900, 2000)
        with pytest.raises(TruncatedFileError):
            obj.read_ranges([(0, 10), (900, 2000)])  # two requests: the second comes back short
        assert obj.read(0, 1000) == DATA[:1000]


# -- errors -------------------------------------------------------------------------------------------


def test_a_missing_object_is_array_not_found(tmp_path: Path, http_store) -> None:
    with pytest.raises(ArrayNotFoundError):
        StoredObject.open(LocalFileSystem(), str(tmp_path / "nothing.bin"))
    gone = tmp_path / "gone.bin"
    gone.write_bytes(DATA)
    stored = StoredObject.open(LocalFileSystem(), str(gone))
    gone.unlink()  # before the first read: no descriptor yet
    with pytest.raises(ArrayNotFoundError):
        stored.read(0, 10)
    fs, url = fsspec.core.url_to_fs(f"{http_store.url}/nothing.bin", skip_instance_cache=True)
    with pytest.raises(ArrayNotFoundError):
        StoredObject(fs, url, 100).read(0, 10)


def test_http_errors_are_fetch_errors_and_only_transient_ones_are_sent_again(http_object, monkeypatch) -> None:
    monkeypatch.setattr("lazymem.storage.retry.RETRY_DELAYS", (0.0, 0.0, 0.0))  # count requests, not seconds
    stored, server = http_object
    server.control(fail_next=2)  # two 503s, then the answer
    assert stored.read(10, 20) == DATA[10:20]
    assert len(_gets(server)) == 3
    server.control(reset=1, fail_status=403)  # permanent: once, and a FetchError
    with pytest.raises(FetchError, match="403"):
        stored.read(10, 20)
    assert len(_gets(server)) == 1
    server.control(reset=1, fail_status=0, fail_next=1)  # a failed range of several is sent again, alone
    views = stored.read_ranges([(0, 10), (500_000, 500_010)])
    assert [bytes(v) for v in views] == [DATA[0:10], DATA[500_000:500_010]]
    assert len(_gets(server)) == 3


def test_an_unreachable_server_is_a_fetch_error(monkeypatch) -> None:
    monkeypatch.setattr("lazymem.storage.retry.RETRY_DELAYS", ())
    with socket.socket() as sock:  # a port nobody listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        fs, url = fsspec.core.url_to_fs(f"http://127.0.0.1:{port}/x.bin", skip_instance_cache=True)
        with pytest.raises(FetchError) as caught:
            StoredObject(fs, url, 100).read(0, 10)
    assert isinstance(caught.value.__cause__, network_errors())


def test_one_list_of_network_errors_serves_retries_and_error_mapping() -> None:
    import aiohttp
    import botocore.exceptions

    types = network_errors()
    for kind in (OSError, aiohttp.ClientError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        assert kind in types


# -- pickling and descriptors -------------------------------------------------------------------------


def test_a_local_object_reads_one_inode_and_pickles_without_it(tmp_path: Path) -> None:
    path = tmp_path / "swap.bin"
    path.write_bytes(DATA)
    stored = StoredObject.open(LocalFileSystem(), str(path))
    assert stored.read(0, 4) == DATA[:4]
    replacement = tmp_path / "new.bin"
    replacement.write_bytes(b"\xff" * len(DATA))
    replacement.rename(path)  # as lazymem.save replaces a file
    assert stored.read(0, 4) == DATA[:4]  # still the file opened first, like np.memmap
    data = pickle.dumps(stored)
    assert len(data) < 500
    clone = pickle.loads(data)
    assert "_local" not in clone.__dict__
    # Another process opens the file by name again, and must find the one the original read.
    with pytest.raises(ArrayNotFoundError, match="replaced or changed"):
        clone.read(0, 4)
    fresh = StoredObject.open(LocalFileSystem(), str(path))  # opened anew: the new file
    assert fresh.read(0, 4) == b"\xff" * 4

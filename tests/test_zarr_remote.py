"""Zarr stores over HTTP (the Range server) and S3 (moto's server): ``open`` costs at most 4
requests, counted by the servers themselves (app and monitor together); values equal zarr's
(issue #16 item 6)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lazymem

from .conftest import assert_same_array

zarr = pytest.importorskip("zarr")

RNG = np.random.default_rng(6)
FIELD = np.cumsum(RNG.standard_normal((64, 40, 20)), axis=0).astype("<f4")  # 200 KiB
OPEN_BUDGET = 4


def _write(store: Any, path: str = "", **kwargs: Any) -> None:
    """``FIELD`` as array ``path`` of a group at ``store`` (a local directory or an fsspec mapper)."""
    group = zarr.open_group(store, mode="a", zarr_format=kwargs.pop("zarr_format", 3))
    z = group.create_array(path, shape=FIELD.shape, dtype=FIELD.dtype, **kwargs)
    z[...] = FIELD


LAYOUTS = {
    "v2": {"zarr_format": 2, "chunks": (10, 20, 20)},
    "v3": {"zarr_format": 3, "chunks": (10, 20, 20)},
    "v3-sharded": {"zarr_format": 3, "chunks": (4, 20, 10), "shards": (16, 40, 20)},
}


def _requests(server: Any) -> list[tuple[str, str]]:
    return [(method, path) for method, path, _ in server.control()["requests"]]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_open_over_http_costs_at_most_4_requests(http_store, layout: str) -> None:
    _write(str(http_store.dir / "s.zarr"), "t2m", **LAYOUTS[layout])
    url = f"{http_store.url}/s.zarr"
    http_store.server.control(reset=1)
    a = lazymem.open(url, path="t2m", readahead=0)
    opened = _requests(http_store.server)
    assert len(opened) <= OPEN_BUDGET, opened
    assert all(method == "GET" and path.startswith("/" + url.rsplit("/", 2)[-2]) for method, path in opened)
    assert lazymem.stats(a).chunks_installed == 0
    assert float(a[33, 7, 3]) == float(FIELD[33, 7, 3])
    assert_same_array(np.array(a), FIELD)
    a.close()


def test_an_array_url_inside_a_store_over_http(http_store) -> None:
    _write(str(http_store.dir / "s.zarr"), "sub/x", **LAYOUTS["v2"])
    http_store.server.control(reset=1)
    a = lazymem.open(f"{http_store.url}/s.zarr/sub/x")
    assert len(_requests(http_store.server)) <= OPEN_BUDGET
    assert_same_array(np.array(a), FIELD)
    assert_same_array(lazymem.load(f"{http_store.url}/s.zarr", path="sub/x"), FIELD)


def test_a_group_over_http_needs_consolidated_metadata(http_store) -> None:
    """Plain HTTP cannot list: a group's arrays are found through its consolidated metadata."""
    _write(str(http_store.dir / "g.zarr"), "a", **LAYOUTS["v3"])
    _write(str(http_store.dir / "g.zarr"), "sub/b", **LAYOUTS["v3"])
    zarr.consolidate_metadata(str(http_store.dir / "g.zarr"))
    g = lazymem.open_group(f"{http_store.url}/g.zarr")
    assert sorted(g) == ["a", "sub/b"]
    assert_same_array(np.array(g["sub/b"]), FIELD)
    with pytest.raises(lazymem.ArrayNotFoundError, match="2 arrays: a, sub/b"):
        lazymem.open(f"{http_store.url}/g.zarr", path="c")


def _s3_mapper(s3_store: Any, root: str) -> Any:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, asynchronous=True, **s3_store.storage_options)
    return zarr.storage.FsspecStore(fs, path=root, read_only=False)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_open_over_s3_costs_at_most_4_requests(s3_store, layout: str) -> None:
    options = s3_store.storage_options
    _write(_s3_mapper(s3_store, "test/s.zarr"), "t2m", **LAYOUTS[layout])
    s3_store.control(reset=1)
    a = lazymem.open("s3://test/s.zarr", path="t2m", storage_options=options, readahead=0)
    opened = _requests(s3_store)
    assert len(opened) <= OPEN_BUDGET, opened
    assert a.prefetch(np.s_[:3]) >= 1  # the monitor reaches moto with the same options
    assert float(a[60, 39, 19]) == float(FIELD[60, 39, 19])
    assert_same_array(np.array(a), FIELD)
    assert_same_array(lazymem.load("s3://test/s.zarr", path="t2m", storage_options=options), FIELD)


def test_a_group_on_s3_is_listed_without_consolidated_metadata(s3_store) -> None:
    options = s3_store.storage_options
    store = _s3_mapper(s3_store, "test/g.zarr")
    _write(store, "a", **LAYOUTS["v2"])
    _write(store, "deep/er/b", **LAYOUTS["v2"])
    g = lazymem.open_group("s3://test/g.zarr", storage_options=options)
    assert sorted(g) == ["a", "deep/er/b"] and g.format == "zarr"
    assert_same_array(np.array(g["deep/er/b"]), FIELD)
    with pytest.raises(lazymem.ArrayNotFoundError, match="a, deep/er/b"):
        lazymem.open("s3://test/g.zarr", path="deep", storage_options=options)
    with pytest.raises(lazymem.ArrayNotFoundError):
        lazymem.open("s3://test/nothing.zarr", path="x", storage_options=options)


def test_missing_chunks_over_s3_cost_no_data_fetch(s3_store) -> None:
    options = s3_store.storage_options
    store = _s3_mapper(s3_store, "test/m.zarr")
    group = zarr.open_group(store, mode="a")
    z = group.create_array("x", shape=(64, 1024), dtype="<f8", chunks=(8, 1024), fill_value=0)
    z[:8] = 1.0  # one chunk of eight stored
    a = lazymem.open("s3://test/m.zarr", path="x", storage_options=options, readahead=0)
    s3_store.control(reset=1)
    assert float(a[40:48].sum()) == 0.0
    gets = [r for r in s3_store.control()["requests"] if r[0] == "GET" and "/c/" in r[1]]
    # a missing chunk costs at most a failed GET (404): never data
    assert len(gets) <= 1, gets
    assert_same_array(np.array(a), zarr.open_array(store, path="x", mode="r")[...])


def test_describe_on_s3_counts_the_chunks_with_a_listing(s3_store) -> None:
    from lazymem.sources.formats import open_array_source

    options = s3_store.storage_options
    store = _s3_mapper(s3_store, "test/d.zarr")
    group = zarr.open_group(store, mode="a")
    z = group.create_array("x", shape=(64, 100), dtype="<i4", chunks=(16, 50))
    z[:32] = 5  # 4 of 8 chunks
    source = open_array_source("s3://test/d.zarr", "x", options)
    s3_store.control(reset=1)
    facts = source.describe()
    assert facts["chunks_total"] == 8 and facts["chunks_present"] == 4 and facts["stored_bytes"] > 0
    lists = [r for r in s3_store.control()["requests"] if "list-type=2" in r[1]]
    assert 1 <= len(lists) <= 2, lists  # a listing, not a request per chunk


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_open_without_the_suffix_over_http_stays_within_4_requests(http_store, zarr_format: int) -> None:
    """Detection from content: the URL is read as a file first (one failed GET), then as a store."""
    z = zarr.create_array(store=str(http_store.dir / "plain"), shape=FIELD.shape, dtype=FIELD.dtype,
                          chunks=(16, 40, 20), zarr_format=zarr_format)
    z[...] = FIELD
    http_store.server.control(reset=1)
    a = lazymem.open(f"{http_store.url}/plain")
    assert len(_requests(http_store.server)) <= OPEN_BUDGET, _requests(http_store.server)
    assert_same_array(np.array(a), FIELD)

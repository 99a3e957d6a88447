"""Preview of zarr in ``lazymem.open`` (issue #16 builds on it): a zarr array served lazily by the
monitor through the source interface, values equal to zarr-python's, locally and over HTTP."""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

import numpy as np
import pytest

import lazymem

from .conftest import run_python

zarr = pytest.importorskip("zarr")

RNG = np.random.default_rng(7)
FIELD = np.cumsum(RNG.standard_normal((120, 90, 40)), axis=0).astype(np.float32)  # 1.7 MB


def _store(root: Path) -> str:
    group = zarr.open_group(str(root / "era.zarr"), mode="w")
    t2m = group.create_array("t2m", shape=FIELD.shape, dtype=FIELD.dtype, chunks=(10, 45, 40))
    t2m[...] = FIELD
    sparse = group.create_array("sub/mask", shape=(500, 300), dtype="<i2", chunks=(64, 64), fill_value=-1)
    sparse[100:200, 50:60] = 7
    return str(root / "era.zarr")


def test_a_zarr_array_opens_lazily_and_reads_as_zarr_does(tmp_path: Path) -> None:
    url = _store(tmp_path)
    a = lazymem.open(url, path="t2m", readahead=0)
    assert isinstance(a, lazymem.LazyArray) and a.shape == FIELD.shape and a.dtype == FIELD.dtype
    assert lazymem.stats(a).chunks_installed == 0  # nothing read at open
    assert a[37, 12, 5] == FIELD[37, 12, 5]
    assert lazymem.stats(a).chunks_installed == 1  # one unit for one element
    assert np.array_equal(a, FIELD)
    m = lazymem.open(url + "/sub/mask")  # an array's own URL works too
    assert np.array_equal(m, zarr.open_array(url, path="sub/mask", mode="r")[...])
    a.evict()
    assert lazymem.stats(a).chunks_present == 0 and np.array_equal(a[100:110], FIELD[100:110])
    a.prefetch(np.s_[:5])
    clone = pickle.loads(pickle.dumps(a[3:9, 4]))  # by reference: URL and path travel
    assert np.array_equal(clone, FIELD[3:9, 4])


def test_a_zarr_array_over_http(http_store) -> None:
    _store(http_store.dir)
    a = lazymem.open(f"{http_store.url}/era.zarr", path="t2m")
    assert np.array_equal(a[::7, 3], FIELD[::7, 3]) and np.array_equal(a, FIELD)


def test_a_failed_unit_is_sigbus_with_a_message(tmp_path: Path) -> None:
    url = _store(tmp_path)
    for chunk in (Path(url) / "t2m").rglob("c/5/*/*"):  # the chunks of time steps 50..59
        chunk.write_bytes(b"not a chunk")
    a = lazymem.open(url, path="t2m", readahead=0, chunk_bytes=65536)  # units of ~4 time steps
    with pytest.raises(lazymem.LazymemError):
        a.prefetch(np.s_[55])
    result = run_python(
        f"""
        import faulthandler, lazymem
        faulthandler.disable()
        a = lazymem.open({url!r}, path="t2m", readahead=0, chunk_bytes=65536)
        print("before", float(a[0, 0, 0]) == {float(FIELD[0, 0, 0])!r}, flush=True)
        print("NEVER", a[55, 0, 0], flush=True)
        """
    )
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "before True" in result.stdout and "NEVER" not in result.stdout
    assert url in result.stderr and "cannot load" in result.stderr


def test_open_group_maps_every_array_path_and_keeps_the_attributes(tmp_path: Path) -> None:
    url = _store(tmp_path)
    zarr.open_group(url, mode="a").attrs["title"] = "reanalysis"
    g = lazymem.open_group(url, readahead=0)
    assert sorted(g) == ["sub/mask", "t2m"] and len(g) == 2 and g.attrs == {"title": "reanalysis"}
    assert np.array_equal(g["t2m"][5], FIELD[5])
    assert np.array_equal(g["sub/mask"], zarr.open_array(url, path="sub/mask", mode="r")[...])
    with pytest.raises(KeyError):
        g["sub"]  # a group, not an array
    with pytest.raises(lazymem.FormatError, match=r"2 arrays \(sub/mask, t2m\): name one with path="):
        lazymem.open(url)  # several arrays: which one must be said


def test_a_group_with_one_array_opens_without_a_path(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "one.zarr"), mode="w")
    group.create_array("only/x", shape=(50, 7), dtype="<u2", chunks=(8, 7))[...] = np.arange(350).reshape(50, 7)
    a = lazymem.open(str(tmp_path / "one.zarr"))
    assert np.array_equal(a, np.arange(350, dtype="<u2").reshape(50, 7))

"""Preview of zarr in ``lazymem.open`` (issue #16 builds on it): a zarr array served lazily by the
monitor through the source interface, values equal to zarr-python's, locally and over HTTP."""

from __future__ import annotations

import pickle
import signal
from pathlib import Path

import numpy as np
import pytest

import lazymem

from .conftest import assert_same_array, run_python

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


# -- item 1: detection from content, v2 and v3, arrays and nested groups --------------------------------


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_arrays_and_nested_groups_of_either_format(tmp_path: Path, zarr_format: int) -> None:
    root = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=zarr_format)  # no .zarr suffix
    root.attrs["source"] = "model"
    leaves = {"a": FIELD[:10], "x/b": np.ascontiguousarray(FIELD[10:20, :5]), "x/y/z/c": FIELD[0, 0].astype(">f8")}
    for name, data in leaves.items():
        root.create_array(name, shape=data.shape, dtype=data.dtype, chunks=tuple(max(1, n // 3) for n in data.shape))
        root[name][...] = data
    root.create_group("x/empty")
    g = lazymem.open_group(str(tmp_path / "g"))
    assert sorted(g) == ["a", "x/b", "x/y/z/c"] and g.attrs == {"source": "model"}
    for name, data in leaves.items():
        got = g[name]
        want = zarr.open_array(str(tmp_path / "g"), path=name, mode="r")[...]  # v3 dtypes are native-endian
        assert isinstance(got, lazymem.LazyArray) and np.array_equal(want, data)
        assert_same_array(np.array(got), want)
        assert_same_array(np.array(lazymem.open(str(tmp_path / "g"), path=name)), want)
    # the group below has one array: it opens without a path; a group of several names them
    only = zarr.open_array(str(tmp_path / "g"), path="x/y/z/c", mode="r")[...]
    assert_same_array(np.array(lazymem.open(str(tmp_path / "g" / "x" / "y"))), only)
    with pytest.raises(lazymem.FormatError, match=r"3 arrays \(a, x/b, x/y/z/c\): name one with path="):
        lazymem.open(str(tmp_path / "g"))
    with pytest.raises(lazymem.ArrayNotFoundError, match=r"no zarr array at path 'x/q'.*a, x/b, x/y/z/c"):
        lazymem.open(str(tmp_path / "g"), path="x/q")
    with pytest.raises(lazymem.ArrayNotFoundError, match="a, x/b, x/y/z/c"):
        lazymem.open(str(tmp_path / "g"), path="x/empty")
    with pytest.raises(lazymem.ArrayNotFoundError):
        lazymem.open_group(str(tmp_path / "nothing"))


def test_zarr_missing_gives_the_install_hint(tmp_path: Path) -> None:
    url = _store(tmp_path)
    result = run_python(f"""
        import sys
        sys.modules["zarr"] = None  # as if not installed
        import lazymem
        try:
            lazymem.open({url!r}, path="t2m")
        except ImportError as exc:
            print("HINT", exc)
        """)
    assert "HINT" in result.stdout and "pip install 'lazymem[zarr]'" in result.stdout, (result.stdout, result.stderr)


# -- item 2: the same array semantics as the native format ---------------------------------------------

STEPS = np.cumsum(RNG.standard_normal((120, 64, 32)), axis=0).astype(np.float32)  # a time step: 2 pages
STEP = 64 * 32 * 4


def _aligned(root: Path) -> str:
    """``STEPS`` as a v3 array whose time steps are whole pages: units of whole steps."""
    z = zarr.create_array(store=str(root / "steps.zarr"), shape=STEPS.shape, dtype=STEPS.dtype, chunks=(10, 32, 32))
    z[...] = STEPS
    return str(root / "steps.zarr")


def test_stats_prefetch_evict_and_close(tmp_path: Path) -> None:
    a = lazymem.open(_aligned(tmp_path), readahead=0, chunk_bytes=4 * STEP)  # units of 4 time steps
    s = lazymem.stats(a)
    assert s.chunks_total == 30 and s.chunks_present == 0 and s.chunk_bytes == 4 * STEP
    assert a.prefetch(np.s_[8:16]) == 2 and lazymem.stats(a).chunks_present == 2
    assert lazymem.stats(a).faults == 0  # prefetch installs without a fault
    assert_same_array(np.array(a[8:16]), STEPS[8:16])
    assert lazymem.stats(a).faults == 0
    a.evict(np.s_[8:12])
    assert lazymem.stats(a).chunks_present == 1
    assert_same_array(np.array(a[8:12]), STEPS[8:12])  # evicted: loads again, same bytes
    assert lazymem.stats(a).chunks_installed == 3
    view = a[100:]
    a.close()
    with pytest.raises(lazymem.ClosedArrayError):
        a.prefetch()
    with pytest.raises(lazymem.ClosedArrayError):
        lazymem.stats(view)


def test_max_resident_and_readahead(tmp_path: Path) -> None:
    unit = 2 * STEP
    a = lazymem.open(_aligned(tmp_path), chunk_bytes=unit, max_resident=6 * unit, readahead=4)
    sums = [float(a[t].sum(dtype=np.float64)) for t in range(STEPS.shape[0])]  # a sequential scan
    assert sums == [float(STEPS[t].sum(dtype=np.float64)) for t in range(STEPS.shape[0])]
    s = lazymem.stats(a)
    assert s.resident_bytes <= 6 * unit and s.evictions >= 50
    assert s.readahead_chunks > 0  # the scan was read ahead of the reader
    assert_same_array(np.array(a), STEPS)  # everything evicted loads again, right


def test_pickling_by_reference_and_fork_sharing(tmp_path: Path) -> None:
    import os

    url = _store(tmp_path)
    a = lazymem.open(url, path="t2m", readahead=0)
    blob = pickle.dumps(a)
    assert len(blob) < 4096  # the URL and path travel, not the data
    b = pickle.loads(blob)
    assert isinstance(b, lazymem.LazyArray) and b.shape == FIELD.shape
    assert_same_array(np.array(b), FIELD)
    assert float(a[0, 0, 0]) == float(FIELD[0, 0, 0])
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = np.array_equal(a, FIELD)  # the child faults in what the parent never touched
            os.write(write_fd, b"ok" if ok else b"different")
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001 - a forked child must never return into pytest
            os.write(write_fd, repr(exc).encode()[:500])
            os._exit(1)
    os.close(write_fd)
    report = os.read(read_fd, 1000).decode()
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and report == "ok", report
    assert_same_array(np.array(a), FIELD)


def test_huge_pages(tmp_path: Path) -> None:
    from lazymem.kernel import userfaultfd as uffd

    huge = uffd.huge_pages()
    if not huge or huge[1] < 4:
        pytest.skip("needs at least 4 free huge pages (see test_huge_pages for the pool fixture)")
    url = _store(tmp_path)
    try:
        a = lazymem.open(url, path="t2m", huge_pages=True)
    except lazymem.HugePagesUnavailableError as exc:
        pytest.skip(f"the shared pool is busy: {exc}")
    assert_same_array(np.array(a), FIELD)
    a.close()


def test_typed_errors_at_open(tmp_path: Path) -> None:
    url = _store(tmp_path)
    with pytest.raises(lazymem.ArrayNotFoundError):
        lazymem.open(str(tmp_path / "none.zarr"))
    (tmp_path / "era.zarr" / "t2m" / "zarr.json").write_text("{broken")
    with pytest.raises(lazymem.FormatError, match="not JSON"):
        lazymem.open(url, path="t2m")
    with pytest.raises(ValueError):  # FormatError is the built-in a caller catches too
        lazymem.load(url, path="t2m")

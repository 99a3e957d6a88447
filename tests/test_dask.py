"""dask, in one process: lazy arrays are named, sized and sent by reference, never read to do so.

Every "fetches nothing" is checked with ``lazymem.stats``; every result against numpy on the
eager array.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

import lazymem  # noqa: E402
from lazymem import reopened  # noqa: E402
from lazymem.integrations import dask as lazymem_dask  # noqa: E402
from lazymem.monitor.readahead import Readahead  # noqa: E402

from .conftest import ROOT, assert_same_array, run_python  # noqa: E402

MiB = 2**20
UNIT = MiB


@pytest.fixture(autouse=True)
def _registered():
    # What the `dask.sizeof` entry point does once lazymem is installed (it is not, in a checkout:
    # test_the_entry_point_registers_without_any_import checks that path on its own).
    lazymem_dask.register_now()
    yield
    reopened.forget_all()


@pytest.fixture
def walk(tmp_path: Path) -> tuple[str, np.ndarray]:
    """16 MiB of float32 in 16 units of 1 MiB: 16384 rows of 1 KiB, 1024 rows a unit."""
    src = np.cumsum(np.random.default_rng(7).standard_normal(4 * MiB, dtype=np.float32)).astype(np.float32)
    path = str(tmp_path / "walk.npy.zst")
    lazymem.save(path, src.reshape(-1, 256), chunk_bytes=UNIT)
    return path, src.reshape(-1, 256)


@pytest.fixture
def zeros_256mib(tmp_path: Path) -> str:
    path = str(tmp_path / "zeros.npy.zst")
    lazymem.save(path, np.broadcast_to(np.float64(0), (2**15, 2**10)), chunk_bytes=4 * MiB)
    return path


def _untouched(a: np.ndarray) -> None:
    s = lazymem.stats(a)
    assert (s.faults, s.chunks_installed, s.bytes_fetched) == (0, 0, 0), s


def _copy_is_lazy() -> bool:
    """Whether ``LazyArray.copy`` is the copy-on-write copy of issue 14 (until then it copies all)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "probe.npy.zst")
        lazymem.save(path, np.zeros(4096, np.uint8))
        a = lazymem.open(path)
        b = a.copy()
        lazy = isinstance(b, lazymem.LazyArray) and b._lazy is not None and lazymem.stats(a).chunks_installed == 0
        del a, b
        return lazy


needs_lazy_copy = pytest.mark.skipif(not _copy_is_lazy(), reason="da.from_array calls a.copy(), which copies "
                                     "the whole array until LazyArray.copy is copy-on-write (issue 14)")


def test_tokenize_names_a_view_by_reference_without_reading_it(walk) -> None:
    from dask.tokenize import tokenize

    path, _ = walk
    a = lazymem.open(path)
    token = tokenize(a[10:20])
    assert token == tokenize(a[10:20])  # deterministic
    assert len({token, tokenize(a[10:21]), tokenize(a[11:21]), tokenize(a[10:20, ::2]), tokenize(a),
                tokenize(a.T), tokenize(a.view(np.int32))}) == 7  # offset, shape, strides, dtype all count
    assert tokenize(pickle.loads(pickle.dumps(a[10:20]))) == token  # the same view, received
    assert tokenize(lazymem.open(path, readahead=0)[10:20]) != token  # other open options: another array
    _untouched(a)
    # In another process (a worker): the same name for the same view.
    out = run_python(f"""
        import dask, lazymem
        from dask.tokenize import tokenize
        print(tokenize(lazymem.open({path!r})[10:20]))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == token


def test_a_file_rewritten_at_the_same_path_gets_another_name(walk, tmp_path: Path) -> None:
    from dask.tokenize import tokenize

    path, src = walk
    before = tokenize(lazymem.open(path))
    lazymem.save(path, src[::-1].copy(), chunk_bytes=UNIT)  # same size, same dtype and shape
    assert tokenize(lazymem.open(path)) != before


def test_results_tokenize_by_value_as_numpy_arrays_do(walk) -> None:
    from dask.tokenize import tokenize

    path, src = walk
    a = lazymem.open(path)
    total = a[:8] + 1  # its own memory: a plain ndarray
    assert type(total) is np.ndarray and tokenize(total) == tokenize(src[:8] + 1)


def test_sizeof_counts_the_reference_not_the_virtual_size(zeros_256mib) -> None:
    from dask.sizeof import sizeof

    a = lazymem.open(zeros_256mib)
    assert sizeof(a) == sizeof(a[5:]) == lazymem_dask.REFERENCE_BYTES
    _untouched(a)
    assert sizeof(np.asarray(a[:4]) + 0) == 4 * 2**10 * 8  # a result: its own memory


def test_distributed_serializes_a_view_as_its_reference(walk) -> None:
    pytest.importorskip("distributed")
    from dask.sizeof import sizeof
    from distributed.protocol import deserialize, serialize

    path, src = walk
    a = lazymem.open(path)
    view = a[100:3000:3, 7:]
    sizeof(view)  # as distributed does for every result it may send (this registers the serializers)
    header, frames = serialize(view, serializers=["dask"], on_error="raise")
    assert header["serializer"] == "dask" and sum(len(memoryview(f)) for f in frames) < 1000
    back = deserialize(header, frames)
    assert type(back) is lazymem.LazyArray
    _untouched(a)
    assert_same_array(back, src[100:3000:3, 7:])
    assert back.ctypes.data == a[100:3000:3, 7:].ctypes.data  # unpickled here: a's own memory
    # A detached LazyArray (memory of its own) goes as numpy arrays go: raw bytes, out of band.
    own = np.asarray(a[:4]).copy().view(lazymem.LazyArray)
    assert own._lazy is None
    header, frames = serialize(own, serializers=["dask"], on_error="raise")
    assert_same_array(deserialize(header, frames), src[:4])


def test_to_dask_builds_instantly_with_blocks_of_whole_units(zeros_256mib) -> None:
    a = lazymem.open(zeros_256mib)
    x = lazymem.to_dask(a)
    row = 2**10 * 8
    block_rows = x.chunks[0][0]
    assert x.chunks[1] == (2**10,) and (block_rows * row) % lazymem.stats(a).chunk_bytes == 0
    assert x.dtype == a.dtype and x.shape == a.shape
    _untouched(a)
    with dask.config.set({"array.chunk-size": "1MiB"}):  # smaller than a unit: one unit a block
        assert lazymem.to_dask(a).chunks[0][0] * row == 4 * MiB


def test_to_dask_gives_numpy_results_and_fetches_only_what_a_slice_needs(walk) -> None:
    path, src = walk
    with dask.config.set({"array.chunk-size": "2MiB"}):
        x = lazymem.to_dask(path)
    assert x.chunks[0] == (2048,) * 8  # 2 units of 1024 rows
    part = x[600:700].compute()
    assert type(part) is np.ndarray
    assert_same_array(part, src[600:700])
    for got, want in [(x.mean(axis=0), src.mean(axis=0)), (x.sum(), src.sum(dtype=np.float32)),
                      (x[::7, 3].max(), src[::7, 3].max()), (x.map_blocks(np.cumsum, axis=1), np.cumsum(src, axis=1)),
                      (x.T @ x[:, :1], src.T @ src[:, :1])]:
        result = got.compute()
        assert type(result) in (np.ndarray, np.float32, np.float64)
        np.testing.assert_allclose(result, want, rtol=1e-4, atol=1e-2)
    assert_same_array(x.compute(), src)


def test_to_dask_fetches_only_the_units_of_the_blocks_it_computes(walk) -> None:
    path, src = walk
    a = lazymem.open(path, readahead=0)
    with dask.config.set({"array.chunk-size": "2MiB"}):
        x = lazymem.to_dask(a)
    assert_same_array(x[1100:1200].compute(), src[1100:1200])  # in unit 1, block 0 (rows 0..2047)
    assert lazymem.stats(a).chunks_installed == 1  # dask slices in the getter: the slice's unit alone
    np.testing.assert_allclose(x[3000:5000:2].sum(axis=0).compute(), src[3000:5000:2].sum(axis=0), rtol=1e-4)
    assert lazymem.stats(a).chunks_installed == 1 + 3  # units 2, 3, 4: in blocks 1 and 2, nothing else


def test_to_dask_of_a_zarr_array_follows_its_stored_chunks(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    src = np.arange(400 * 300, dtype=np.float64).reshape(400, 300)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=src.shape, chunks=(50, 60), dtype=src.dtype)
    z[...] = src
    x = lazymem.to_dask(str(tmp_path / "a.zarr"))
    assert all(c % 50 == 0 for c in x.chunks[0][:-1]) and all(c % 60 == 0 for c in x.chunks[1][:-1])
    assert_same_array(x.compute(), src)
    np.testing.assert_allclose(x[:, 100:200].sum(axis=0).compute(), src[:, 100:200].sum(axis=0))


def test_to_dask_of_a_plain_npy_maps_it_and_names_it_by_its_file(tmp_path: Path) -> None:
    src = np.arange(3 * 2**20, dtype=np.int32).reshape(-1, 1024)
    path = tmp_path / "plain.npy"
    np.save(path, src)
    x = lazymem.to_dask(str(path))
    assert x.name == lazymem.to_dask(str(path)).name
    assert_same_array(x[5:3000:7].compute(), np.ascontiguousarray(src[5:3000:7]))
    assert int(x.sum(dtype=np.int64).compute()) == int(src.sum(dtype=np.int64))
    np.save(path, src + 1)  # rewritten: another name
    assert lazymem.to_dask(str(path)).name != x.name


def test_a_failed_fetch_is_an_exception_in_the_task_not_a_signal(walk, tmp_path: Path) -> None:
    path, _ = walk
    x = lazymem.to_dask(path)
    Path(path).unlink()
    lazymem.save(path, np.zeros(8, np.float32))  # replaced: the open array's file is another now
    with pytest.raises(lazymem.LazymemError, match="replaced or changed"):
        x.sum().compute()


@needs_lazy_copy
def test_from_array_with_default_arguments_fetches_nothing(zeros_256mib) -> None:
    a = lazymem.open(zeros_256mib)
    x = da.from_array(a)
    _untouched(a)
    assert x.name == da.from_array(a).name  # named by reference, deterministically
    assert float(x[::1000].sum().compute()) == 0.0


@pytest.fixture(scope="module")
def virtual_16gib(tmp_path_factory: pytest.TempPathFactory) -> str:
    """16 GiB of float64 zeros (a few MiB stored): an array no test process could hold."""
    path = str(tmp_path_factory.mktemp("big") / "zeros16.npy.zst")
    lazymem.save(path, np.broadcast_to(np.float64(0), (2**16, 2**15)), chunk_bytes=64 * MiB)
    return path


@pytest.mark.slow  # writing the 16 GiB file takes ~20 s here
@needs_lazy_copy
def test_from_array_of_a_16_gib_array_fetches_nothing(virtual_16gib) -> None:
    a = lazymem.open(virtual_16gib)
    x = da.from_array(a)
    _untouched(a)
    assert x.name == da.from_array(a).name
    assert float(x[::4096, ::4096].sum().compute()) == 0.0


@pytest.mark.slow
def test_to_dask_of_a_16_gib_array_fetches_nothing_and_then_only_its_slice(virtual_16gib) -> None:
    from dask.tokenize import tokenize

    a = lazymem.open(virtual_16gib)
    x = lazymem.to_dask(a)
    tokenize(a), tokenize(x)
    _untouched(a)
    assert float(x[40_000:40_010].sum().compute()) == 0.0
    assert lazymem.stats(a).chunks_installed == 1


def test_from_array_slices_reduce_and_map_blocks_like_numpy(walk) -> None:
    # With a copy of its own (until issue 14): the values are what count here.
    path, src = walk
    x = da.from_array(lazymem.open(path), chunks=(1000, 100))
    np.testing.assert_allclose(x.mean(axis=1).compute(), src.mean(axis=1), rtol=1e-3)
    assert_same_array(x[17:2000:3, ::-1].compute(), np.ascontiguousarray(src[17:2000:3, ::-1]))
    assert_same_array(x.map_blocks(lambda b: b * 2).compute(), src * 2)


def test_the_entry_point_registers_without_any_import(tmp_path: Path, zeros_256mib) -> None:
    # The installed package's metadata, as pip writes it: `import dask` loads the group.
    dist = tmp_path / "site" / "lazymem_entry-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lazymem-entry\nVersion: 0\n")
    section = (ROOT / "pyproject.toml").read_text().split('[project.entry-points."dask.sizeof"]')[1]
    line = section.strip().splitlines()[0].replace('"', "")
    (dist / "entry_points.txt").write_text(f"[dask.sizeof]\n{line}\n")
    for first, second in [("lazymem", "dask"), ("dask", "lazymem"), ("lazymem", "distributed")]:
        out = run_python(f"""
            import sys
            import {first}, {second}
            import lazymem, dask
            from dask.tokenize import tokenize
            from dask.sizeof import sizeof
            a = lazymem.open({zeros_256mib!r})
            tokenize(a), tokenize(a[3:]), sizeof(a)
            s = lazymem.stats(a)
            print(s.chunks_installed, s.bytes_fetched, sizeof(a))
        """, env={"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(ROOT)])})
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["0", "0", str(lazymem_dask.REFERENCE_BYTES)], (first, second, out.stdout)


def test_a_view_received_by_reference_reads_ahead_only_inside_itself(walk) -> None:
    path, src = walk
    a = lazymem.open(path)  # readahead 8 units
    data = pickle.dumps(a[2048:6144])  # units 2..5
    reopened.forget_all()
    del a
    view = pickle.loads(data)  # as a worker receives it: opened here, to unpickle
    assert float(view.sum(dtype=np.float64)) == float(src[2048:6144].sum(dtype=np.float64))
    assert lazymem.stats(view).chunks_installed == 4  # a sequential read, and no unit past the view's
    # Another view of the same array maps the same memory: nothing loads twice.
    again = pickle.loads(pickle.dumps(view[:10]))
    assert again.ctypes.data == view.ctypes.data and lazymem.stats(view).chunks_installed == 4


def test_the_readahead_window_stops_at_the_latest_extent_holding_the_fault() -> None:
    policy = Readahead(max_units=8, units=100)
    policy.add_extent(10, 13)
    policy.add_extent(40, 79)
    assert list(policy.on_fault(10)) == []
    assert list(policy.on_fault(11)) == [12, 13]  # the window would be 12..13 anyway
    assert list(policy.on_fault(14)) == list(range(15, 19))  # outside every extent: unclipped
    assert list(policy.on_fault(19)) == list(range(20, 28))
    assert list(policy.on_fault(76)) == []  # random: no window
    assert list(policy.on_fault(77)) == [78, 79]  # clipped at the extent's last unit (79)
    assert list(policy.on_fault(80)) == list(range(81, 85))  # the reader went on: it was sequential


def test_arrays_opened_to_unpickle_stay_open_a_bounded_few(tmp_path: Path) -> None:
    paths = []
    for i in range(reopened.KEEP_OPEN + 2):
        paths.append(str(tmp_path / f"{i}.npy.zst"))
        lazymem.save(paths[-1], np.full(1024, i, np.int32))
    blobs = [pickle.dumps(lazymem.open(p)[1:]) for p in paths]
    reopened.forget_all()
    first = [pickle.loads(b) for b in blobs[:1]]
    assert pickle.loads(blobs[0]).ctypes.data == first[0].ctypes.data  # kept: the same memory
    del first
    for b in blobs[1:]:
        pickle.loads(b)
    assert len(reopened.opened_here()) == reopened.KEEP_OPEN
    assert lazymem.open(paths[0]).url not in reopened.opened_here()  # the least recently used went
    assert int(pickle.loads(blobs[0])[0]) == 0  # opened again, correct

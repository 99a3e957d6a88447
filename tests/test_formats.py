"""Format detection from content (``lazymem.sources.formats``): a URL's bytes choose its source,
not its name; what is no array lazymem reads gets a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lazymem
from lazymem.sources.formats import open_array_source

zarr = pytest.importorskip("zarr")

DATA = np.arange(6000, dtype="<f8").reshape(60, 100)


def _zarr_store(where: Path, *, zarr_format: int = 3) -> str:
    z = zarr.open_array(str(where), mode="w", shape=DATA.shape, chunks=(16, 30), dtype=DATA.dtype,
                        zarr_format=zarr_format)
    z[...] = DATA
    return str(where)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_a_zarr_store_without_the_suffix_is_found_by_its_metadata(tmp_path: Path, zarr_format: int) -> None:
    url = _zarr_store(tmp_path / "plain_name", zarr_format=zarr_format)
    a = lazymem.open(url)
    assert isinstance(a, lazymem.LazyArray) and np.array_equal(a, DATA)
    assert np.array_equal(lazymem.load(url), DATA)


def test_a_zarr_store_without_the_suffix_over_http(http_store) -> None:
    _zarr_store(http_store.dir / "store")
    assert np.array_equal(lazymem.open(f"{http_store.url}/store"), DATA)


def test_a_group_without_the_suffix_lists_its_arrays(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g"), mode="w")
    group.attrs["title"] = "two arrays"
    for name in ("x", "sub/y"):
        group.create_array(name, shape=DATA.shape, dtype=DATA.dtype, chunks=(20, 20),
                           dimension_names=("time", "lon"))[...] = DATA
    g = lazymem.open_group(str(tmp_path / "g"))
    assert sorted(g) == ["sub/y", "x"] and g.attrs == {"title": "two arrays"}
    assert g.format == "zarr" and g.arrays["sub/y"].dimension_names == ("time", "lon")
    assert g.arrays["x"].shape == DATA.shape and np.array_equal(g["sub/y"], DATA)
    with pytest.raises(lazymem.FormatError, match="sub/y, x"):
        lazymem.open(str(tmp_path / "g"))


def test_the_source_carries_attrs_and_dimension_names(tmp_path: Path) -> None:
    z = zarr.open_array(str(tmp_path / "a"), mode="w", shape=(4, 5), dtype="i4", zarr_format=2,
                        attributes={"_ARRAY_DIMENSIONS": ["y", "x"], "units": "K"})
    z[...] = 1
    source = open_array_source(str(tmp_path / "a"))
    assert source.dimension_names == ("y", "x") and source.attrs["units"] == "K"
    assert source.describe()["shape"] == [4, 5]


def test_what_no_format_claims_is_a_format_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello, not an array\n")
    with pytest.raises(lazymem.FormatError, match=r"neither a seekable zstd file nor a \.npy file"):
        lazymem.open(str(tmp_path / "notes.txt"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(lazymem.ArrayNotFoundError):
        lazymem.open(str(tmp_path / "empty_dir"))
    with pytest.raises(lazymem.ArrayNotFoundError):
        lazymem.open(str(tmp_path / "nothing_here"))


def test_path_on_a_single_array_file_is_refused(tmp_path: Path) -> None:
    lazymem.save(str(tmp_path / "a.npy.zst"), DATA)
    with pytest.raises(lazymem.FormatError, match="holds one array"):
        lazymem.open(str(tmp_path / "a.npy.zst"), path="x")
    with pytest.raises(lazymem.FormatError, match="not a group"):
        lazymem.open_group(str(tmp_path / "a.npy.zst"))

"""Zarr arrays (v2, v3, sharded; C and F order; missing chunks; odd item sizes; over HTTP) pass
the source conformance suite: every install unit reads as zarr-python reads the array."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .source_conformance import SourceTests

zarr = pytest.importorskip("zarr")

from lazymem.errors import ArrayNotFoundError  # noqa: E402
from lazymem.sources.zarr_array import ZarrSource  # noqa: E402

RNG = np.random.default_rng(16)
FIELD = np.cumsum(RNG.standard_normal((61, 47, 13)), axis=0).astype(np.float32)  # 3-D, nothing divides


def _write(path: Path, data: np.ndarray, **kwargs: Any) -> None:
    z = zarr.create_array(store=str(path), shape=data.shape, dtype=data.dtype, **kwargs)
    z[...] = data


def _expected(path: Path) -> np.ndarray:
    return zarr.open_array(str(path), mode="r")[...]


class TestV3(SourceTests):
    @pytest.fixture
    def expected(self, source: ZarrSource, tmp_path: Path) -> np.ndarray:
        return _expected(tmp_path / "a.zarr")

    @pytest.fixture
    def source(self, tmp_path: Path) -> ZarrSource:
        _write(tmp_path / "a.zarr", FIELD, chunks=(8, 10, 5), zarr_format=3)
        return ZarrSource(str(tmp_path / "a.zarr"))


class TestV3ShardedWithMissingChunks(SourceTests):
    """Missing chunks read as the fill value (here not zero), with no object to fetch."""

    @pytest.fixture
    def expected(self, source: ZarrSource, tmp_path: Path) -> np.ndarray:
        return _expected(tmp_path / "s.zarr")

    @pytest.fixture
    def source(self, tmp_path: Path) -> ZarrSource:
        z = zarr.create_array(store=str(tmp_path / "s.zarr"), shape=(200, 90), dtype="<i4", chunks=(10, 9),
                              shards=(40, 45), fill_value=-7, zarr_format=3)
        z[30:70, 10:50] = np.arange(40 * 40, dtype="<i4").reshape(40, 40)
        z[150:, 80:] = 5
        return ZarrSource(str(tmp_path / "s.zarr"))


class TestV3ShardIndexAtStartWithMissingInnerChunks(SourceTests):
    """The index before the inner chunks; missing inner chunks (index entries 2^64-1) and a fill of 0."""

    @pytest.fixture
    def expected(self, source: ZarrSource, tmp_path: Path) -> np.ndarray:
        return _expected(tmp_path / "st.zarr")

    @pytest.fixture
    def source(self, tmp_path: Path) -> ZarrSource:
        codecs = zarr.codecs
        z = zarr.create_array(store=str(tmp_path / "st.zarr"), shape=(120, 2100), dtype="<f8", chunks=(8, 300),
                              shards=(24, 900), fill_value=0, compressors=None,
                              serializer=codecs.ShardingCodec(chunk_shape=(8, 300), index_location="start",
                                                              codecs=[codecs.BytesCodec(), codecs.GzipCodec()]))
        z[10:30, 200:1000] = np.linspace(0, 1, 20 * 800).reshape(20, 800)
        z[100:, 2000:] = -1.5
        return ZarrSource(str(tmp_path / "st.zarr"))


class TestV2FortranOrder(SourceTests):
    @pytest.fixture
    def expected(self, source: ZarrSource, tmp_path: Path) -> np.ndarray:
        return np.asfortranarray(_expected(tmp_path / "f.zarr"))

    @pytest.fixture
    def source(self, tmp_path: Path) -> ZarrSource:
        _write(tmp_path / "f.zarr", FIELD[:, :, 0].astype(">f8"), chunks=(16, 12), zarr_format=2, order="F")
        return ZarrSource(str(tmp_path / "f.zarr"))


class TestV2FortranOrderFillAndMissingChunks(SourceTests):
    """A fill value that is not zero: chunks lying wholly in a unit are decoded in their place."""

    @pytest.fixture
    def expected(self, source: ZarrSource, tmp_path: Path) -> np.ndarray:
        return np.asfortranarray(_expected(tmp_path / "ff.zarr"))

    @pytest.fixture
    def source(self, tmp_path: Path) -> ZarrSource:
        z = zarr.create_array(store=str(tmp_path / "ff.zarr"), shape=(300, 41), dtype="<f4", chunks=(64, 4),
                              zarr_format=2, order="F", fill_value=-1.0)
        z[:200, 5:30] = np.arange(200 * 25, dtype="<f4").reshape(200, 25)
        return ZarrSource(str(tmp_path / "ff.zarr"))


class TestV2OddItemSize(SourceTests):
    """12-byte items: install units cut elements in two."""

    @pytest.fixture
    def expected(self, source: ZarrSource, tmp_path: Path) -> np.ndarray:
        return _expected(tmp_path / "odd.zarr")

    @pytest.fixture
    def source(self, tmp_path: Path) -> ZarrSource:
        data = np.zeros((700, 3), dtype=[("a", "<i4"), ("b", "<f8")])
        data["a"] = np.arange(2100).reshape(700, 3)
        data["b"] = np.linspace(0, 1, 2100).reshape(700, 3)
        _write(tmp_path / "odd.zarr", data, chunks=(64, 2), zarr_format=2, fill_value=None)
        return ZarrSource(str(tmp_path / "odd.zarr"))


class TestV3InAGroupOverHttp(SourceTests):
    @pytest.fixture
    def expected(self) -> np.ndarray:
        return FIELD

    @pytest.fixture
    def source(self, http_store) -> ZarrSource:
        group = zarr.open_group(str(http_store.dir / "g.zarr"), mode="w")
        z = group.create_array("sub/t2m", shape=FIELD.shape, dtype=FIELD.dtype, chunks=(8, 47, 13))
        z[...] = FIELD
        return ZarrSource(f"{http_store.url}/g.zarr", path="sub/t2m")


def test_a_missing_array_is_array_not_found(tmp_path: Path) -> None:
    with pytest.raises(ArrayNotFoundError):
        ZarrSource(str(tmp_path / "nothing.zarr"))

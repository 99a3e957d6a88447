"""Flat sources (.npy.zst, foreign seekable zstd, plain .npy; local and over HTTP) pass the source
conformance suite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lazymem
from lazymem.sources.flat import FlatSource
from lazymem.sources.layout_frame import layout_frame

from .conftest import rewrite_layout_frame, save_with_pyzstd
from .source_conformance import SourceTests

RNG = np.random.default_rng(12)
FIELD = np.cumsum(RNG.standard_normal((300, 97)), axis=0).astype(np.float32)  # 116,400 bytes: not page aligned
WITH_ZEROS = np.concatenate([np.zeros(3 * 4096, dtype="<i8"), np.arange(5000, dtype="<i8")])


class TestNativeFile(SourceTests):
    @pytest.fixture
    def expected(self) -> np.ndarray:
        return FIELD

    @pytest.fixture
    def source(self, tmp_path: Path, expected: np.ndarray) -> FlatSource:
        path = str(tmp_path / "a.npy.zst")
        lazymem.save(path, expected, chunk_bytes=16 << 10, frame_bytes=4 << 10)
        return FlatSource.open(path)


class TestNativeFortranBigEndianWithZeroChunks(SourceTests):
    @pytest.fixture
    def expected(self) -> np.ndarray:
        return np.asfortranarray(WITH_ZEROS.reshape(-1, 8).astype(">i8"))

    @pytest.fixture
    def source(self, tmp_path: Path, expected: np.ndarray) -> FlatSource:
        path = str(tmp_path / "f.npy.zst")
        lazymem.save(path, expected, chunk_bytes=8 << 10)
        return FlatSource.open(path)


class TestOlderFileWithoutIndex(SourceTests):
    """Frames placed only after their predecessors' sizes are proven (positions)."""

    @pytest.fixture
    def expected(self) -> np.ndarray:
        return FIELD

    @pytest.fixture
    def source(self, tmp_path: Path, expected: np.ndarray) -> FlatSource:
        path = str(tmp_path / "old.npy.zst")
        lazymem.save(path, expected, chunk_bytes=16 << 10, frame_bytes=4 << 10)
        rewrite_layout_frame(path, layout_frame(16 << 10))
        return FlatSource.open(path)


class TestPyzstdFile(SourceTests):
    """Frames that cut the header and pages anywhere, without content sizes."""

    @pytest.fixture
    def expected(self) -> np.ndarray:
        return FIELD

    @pytest.fixture
    def source(self, tmp_path: Path, expected: np.ndarray) -> FlatSource:
        path = tmp_path / "p.npy.zst"
        save_with_pyzstd(path, expected, 3001)
        return FlatSource.open(str(path))


class TestPlainNpy(SourceTests):
    @pytest.fixture
    def expected(self) -> np.ndarray:
        return FIELD

    @pytest.fixture
    def source(self, tmp_path: Path, expected: np.ndarray) -> FlatSource:
        path = tmp_path / "a.npy"
        np.save(path, expected)
        return FlatSource.open(str(path))


class TestNativeFileOverHttp(SourceTests):
    @pytest.fixture
    def expected(self) -> np.ndarray:
        return FIELD

    @pytest.fixture
    def source(self, http_store, expected: np.ndarray) -> FlatSource:
        return FlatSource.open(http_store.put("a.npy.zst", expected, chunk_bytes=16 << 10, frame_bytes=4 << 10))

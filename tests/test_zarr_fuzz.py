"""Fuzzing zarr metadata and shard indexes (issue #16 item 7): whatever a store's JSON or a
shard's index says, lazymem raises a :class:`~lazymem.LazymemError` or reads exactly what
zarr-python reads from an intact store; never another exception, never other data."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazymem.errors import FormatError, LazymemError

zarr = pytest.importorskip("zarr")

from lazymem.sources import zarr_meta  # noqa: E402
from lazymem.sources.base import PAGE_SIZE  # noqa: E402
from lazymem.sources.zarr_array import ZarrSource  # noqa: E402

DATA = (np.arange(24 * 20, dtype="<i8").reshape(24, 20) * 2654435761 % 1000).astype("<i4")
MAX_CHECKED_BYTES = 1 << 20  # larger (fuzzed) shapes: only the first and last units are read

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

PLAUSIBLE = {
    "shape": st.lists(st.integers(-2, 40), max_size=3) | JSON,
    "chunks": st.lists(st.integers(-1, 30), max_size=3) | JSON,
    "dtype": st.sampled_from(["<i4", ">i4", "|O", "<U3", "|V4", "<f8", "<i2", [["a", "<i4"]], [["a", "|O"]]]) | JSON,
    "data_type": st.sampled_from(["int32", "float64", "string", "int16", "uint8", "bool"]) | JSON,
    "fill_value": st.sampled_from([0, -1, None, "NaN", 2**40, "x"]) | JSON,
    "compressor": st.sampled_from([None, {"id": "zstd"}, {"id": "pickle"}, {"id": "blosc", "cname": "nope"},
                                   {"id": "gzip", "level": 99}, {"id": "lz4"}, {"id": 3}]) | JSON,
    "filters": st.sampled_from([None, [], [{"id": "delta", "dtype": "<i4"}], [{"id": "vlen-utf8"}]]) | JSON,
    "codecs": st.sampled_from([[], [{"name": "bytes"}], [{"name": "bytes", "configuration": {"endian": "big"}}],
                               [{"name": "zstd"}], ["bytes"], [{"name": "numcodecs.pickle"}]]) | JSON,
    "order": st.sampled_from(["C", "F", "X"]) | JSON,
    "chunk_grid": JSON,
    "chunk_key_encoding": JSON,
    "node_type": st.sampled_from(["array", "group"]) | JSON,
    "zarr_format": st.sampled_from([2, 3, 4]) | JSON,
    "dimension_separator": st.sampled_from([".", "/", "-"]) | JSON,
    "attributes": JSON,
}


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_check_array_metadata_of_any_json(doc: Any) -> None:
    try:
        zarr_meta.check_array_metadata(doc, "fuzz")
    except FormatError:
        pass
    zarr_meta.consolidated_arrays(doc, 2)
    zarr_meta.consolidated_arrays(doc, 3)


def _store(root: Path, zarr_format: int) -> Path:
    z = zarr.create_array(store=str(root / "a.zarr"), shape=DATA.shape, dtype=DATA.dtype, chunks=(7, 9),
                          zarr_format=zarr_format)
    z[...] = DATA
    return root / "a.zarr"


def _reads_as_intact_zarr_or_raises(url: str) -> None:
    """Open and read what the (fuzzed) store claims: a typed error, or bytes zarr-python reads."""
    try:
        source = ZarrSource(url)
    except LazymemError:
        return
    try:
        want = zarr.open_array(url, mode="r")[...] if source.nbytes <= MAX_CHECKED_BYTES else None
    except Exception:  # noqa: BLE001 - zarr failing on the fuzzed store leaves nothing to compare
        want = None
    grid = source.unit_grid(PAGE_SIZE)
    units = range(len(grid)) if want is not None else sorted({0, max(len(grid) - 1, 0)} & set(range(len(grid))))
    image = None if want is None else np.asarray(want, dtype=source.dtype).tobytes(order=source.order)
    for unit in units:
        offset, length = grid.span(unit)
        out = bytearray(length)
        try:
            result = source.read_unit(grid, unit, memoryview(out))
        except LazymemError:
            continue
        if image is not None:
            got = bytes(length) if result.zeros else bytes(out)
            assert got == image[offset : offset + length], (url, unit)


@st.composite
def damaged_documents(draw: Any) -> tuple[int, dict[str, Any]]:
    zarr_format = draw(st.sampled_from([2, 3]))
    keys = draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), min_size=1, max_size=3, unique=True))
    changes = {key: draw(PLAUSIBLE[key]) for key in keys}
    drop = draw(st.lists(st.sampled_from(sorted(PLAUSIBLE)), max_size=1))
    changes.update({key: ... for key in drop})  # ... removes the key
    return zarr_format, changes


def _damage_metadata(zarr_format: int, changes: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp), zarr_format)
        name = ".zarray" if zarr_format == 2 else "zarr.json"
        doc = json.loads((store / name).read_text())
        for key, value in changes.items():
            if value is ...:
                doc.pop(key, None)
            else:
                doc[key] = copy.deepcopy(value)
        (store / name).write_text(json.dumps(doc))
        _reads_as_intact_zarr_or_raises(str(store))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_documents())
def test_damaged_metadata_raises_or_reads_as_zarr(case: tuple[int, dict[str, Any]]) -> None:
    _damage_metadata(*case)


@pytest.mark.slow  # ~1 minute
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_documents())
def test_damaged_metadata_raises_or_reads_as_zarr_long(case: tuple[int, dict[str, Any]]) -> None:
    _damage_metadata(*case)


# -- shard indexes ------------------------------------------------------------------------------------

INNER = 6  # inner chunks per shard: shards (12, 20) of chunks (4, 10)
_TEMPLATE: dict[str, Path] = {}


def _sharded_template(location: str) -> Path:
    """One written sharded store per index location, copied for each example."""
    if location not in _TEMPLATE:
        root = Path(tempfile.mkdtemp(prefix=f"lazymem-shard-{location}-"))
        codec = zarr.codecs.ShardingCodec(chunk_shape=(4, 10), codecs=[zarr.codecs.BytesCodec(),
                                                                       zarr.codecs.ZstdCodec(level=1)],
                                          index_location=location)  # index checksummed (crc32c)
        z = zarr.create_array(store=str(root / "s.zarr"), shape=DATA.shape, dtype=DATA.dtype, chunks=(12, 20),
                              serializer=codec, compressors=None, zarr_format=3)
        z[:20] = DATA[:20]  # the last inner chunk of the second shard stays missing
        _TEMPLATE[location] = root / "s.zarr"
    return _TEMPLATE[location]


@st.composite
def index_damage(draw: Any) -> tuple[str, list[tuple[int, int]]]:
    location = draw(st.sampled_from(["end", "start"]))
    index_bytes = INNER * 16 + 4  # (offset, nbytes) per inner chunk, then the crc32c
    edits = draw(st.lists(st.tuples(st.integers(0, index_bytes - 1), st.integers(0, 255)), min_size=1, max_size=4))
    return location, edits


def _damage_index(location: str, edits: list[tuple[int, int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "s.zarr"
        shutil.copytree(_sharded_template(location), store)
        shard_file = store / "c" / "1" / "0"
        shard = bytearray(shard_file.read_bytes())
        start = len(shard) - (INNER * 16 + 4) if location == "end" else 0
        for at, value in edits:
            shard[start + at] = value
        shard_file.write_bytes(bytes(shard))
        source = ZarrSource(str(store))
        want = zarr.open_array(str(_sharded_template(location)), mode="r")[...]  # the intact store
        image = want.tobytes()
        grid = source.unit_grid(PAGE_SIZE)
        for unit in range(len(grid)):
            offset, length = grid.span(unit)
            out = bytearray(length)
            try:
                result = source.read_unit(grid, unit, memoryview(out))
            except LazymemError:
                continue
            got = bytes(length) if result.zeros else bytes(out)
            assert got == image[offset : offset + length], (location, edits, unit)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index_damage())
def test_a_damaged_shard_index_raises_or_reads_the_intact_data(case: tuple[str, list[tuple[int, int]]]) -> None:
    _damage_index(*case)


@pytest.mark.slow  # ~1 minute
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index_damage())
def test_a_damaged_shard_index_raises_or_reads_the_intact_data_long(case: tuple[str, list[tuple[int, int]]]) -> None:
    _damage_index(*case)


def test_consolidated_metadata_of_any_shape_is_refused_or_listed(tmp_path: Path) -> None:
    """A group whose consolidated metadata is garbage of any kind: a typed error or a listing."""
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=2)
    group.create_array("x", shape=(4,), dtype="<i4")
    zarr.consolidate_metadata(str(tmp_path / "g.zarr"))
    import lazymem

    for garbage in ({"metadata": []}, {"metadata": {"x/.zarray": 7}}, {"metadata": {"x/.zarray": {"zarr_format": 9}}},
                    [], "x", {"metadata": {"x/.zarray": {"zarr_format": 2, "compressor": {"id": "pickle"}}}}):
        (tmp_path / "g.zarr" / ".zmetadata").write_text(json.dumps(garbage))
        try:
            g = lazymem.open_group(str(tmp_path / "g.zarr"))
        except LazymemError:
            continue
        assert set(g) <= {"x"}

"""Shard indexes checked before zarr-python reads from a shard (lazymem/sources/zarr_shards.py).

The parser and checker are fuzzed over index bytes (hypothesis) against a plain per-entry
reference; shards written by zarr-python itself check clean; lies zarr-python would read as other
data (or as the fill value) raise CorruptChunkError naming the shard and the entry, in the app
(``load``), in the monitor (``prefetch``, a touch: SIGBUS with the message), locally and over HTTP.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymem
from lazymem.errors import CorruptChunkError, FormatError, UnsupportedCodecError

from .conftest import assert_same_array, run_python

zarr = pytest.importorskip("zarr")
google_crc32c = pytest.importorskip("google_crc32c")

from lazymem.sources.zarr_array import ZarrSource  # noqa: E402
from lazymem.sources.zarr_shards import MISSING, ShardSpec, check_index  # noqa: E402

DATA = np.arange(400 * 400, dtype="<i4").reshape(400, 400)
INNER = (50, 100)  # 16 inner chunks per (200, 400) shard; 80000 data bytes per shard


def _sharded(where: Path, *, location: str = "end", checksum: bool = False, endian: str = "little",
             compress: bool = False, data: np.ndarray = DATA) -> Path:
    """``data`` in two shards of rows, written by zarr-python; returns the store."""
    index_codecs = [zarr.codecs.BytesCodec(endian=endian)] + ([zarr.codecs.Crc32cCodec()] if checksum else [])
    inner = [zarr.codecs.BytesCodec()] + ([zarr.codecs.ZstdCodec(level=1)] if compress else [])
    codec = zarr.codecs.ShardingCodec(chunk_shape=INNER, codecs=inner, index_codecs=index_codecs,
                                      index_location=location)
    z = zarr.create_array(store=str(where), shape=data.shape, dtype=data.dtype, chunks=(200, 400),
                          serializer=codec, compressors=None, zarr_format=3, fill_value=-7)
    z[...] = data
    return where


def _spec(store: Path) -> ShardSpec:
    spec = ShardSpec.of(json.loads((store / "zarr.json").read_text()))
    assert spec is not None
    return spec


def _index(spec: ShardSpec, shard: bytes) -> bytes:
    n = spec.index_bytes
    return shard[:n] if spec.at_start else shard[len(shard) - n :]


def _rewrite_entry(store: Path, shard: str, entry: int, value: tuple[int, int]) -> None:
    """Give ``entry`` of ``shard`` a new (offset, nbytes), the crc32c (if any) made to match: the
    checksum then proves nothing, the entries must be checked."""
    spec, path = _spec(store), store / "c" / shard
    raw = bytearray(path.read_bytes())
    at = 0 if spec.at_start else len(raw) - spec.index_bytes
    table = np.frombuffer(bytes(raw[at : at + 16 * spec.entries]), dtype=">u8" if spec.big_endian else "<u8").copy()
    table[2 * entry : 2 * entry + 2] = value
    body = table.tobytes()
    raw[at : at + len(body)] = body
    if spec.checksum:
        raw[at + len(body) : at + len(body) + 4] = np.array([google_crc32c.value(body)], dtype="<u4").tobytes()
    path.write_bytes(bytes(raw))


# -- the spec, from the document ----------------------------------------------------------------------


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("checksum", [False, True])
@pytest.mark.parametrize("endian", ["little", "big"])
def test_zarr_written_shards_check_clean(tmp_path: Path, location: str, checksum: bool, endian: str) -> None:
    store = _sharded(tmp_path / "s.zarr", location=location, checksum=checksum, endian=endian, compress=True)
    spec = _spec(store)
    assert (spec.chunks_per_shard, spec.at_start, spec.big_endian, spec.checksum) == \
        ((4, 4), location == "start", endian == "big", checksum)
    assert spec.index_bytes == 16 * 16 + 4 * checksum
    for name in ("0/0", "1/0"):
        shard = (store / "c" / name).read_bytes()
        table = check_index(spec, _index(spec, shard), len(shard), f"shard {name}")
        assert (table[:, 1] > 0).all() and (table != MISSING).all()
        # the entries are where zarr put the inner chunks: decoded by zarr, they are the data
        assert_same_array(lazymem.load(str(store)), DATA)


def test_missing_inner_chunks_are_entries_of_all_ones(tmp_path: Path) -> None:
    data = DATA.copy()
    data[:50, :100] = -7  # the fill value: zarr does not store that inner chunk
    store = _sharded(tmp_path / "s.zarr", data=data)
    spec, shard = _spec(store), (store / "c" / "0" / "0").read_bytes()
    table = check_index(spec, _index(spec, shard), len(shard), "shard 0/0")
    assert tuple(table[0]) == (MISSING, MISSING) and (table[1:] != MISSING).all()
    assert_same_array(lazymem.load(str(store)), data)


@pytest.mark.parametrize(("codecs", "spec"), [
    ([{"name": "sharding_indexed", "configuration": {"chunk_shape": [2, 3], "index_location": "start",
                                                     "index_codecs": ["bytes"]}}],
     ((4, 6), (2, 2), True, False, False)),
    # zarr's defaults: the index at the end, bytes in this machine's order + crc32c
    ([{"name": "sharding_indexed", "configuration": {"chunk_shape": [2, 3]}}], ((4, 6), (2, 2), False, False, True)),
    # a transpose before the shards: the sharding codec sees (and indexes) the shard transposed
    ([{"name": "transpose", "configuration": {"order": [1, 0]}},
      {"name": "sharding_indexed", "configuration": {"chunk_shape": [2, 2], "index_codecs": [
          {"name": "bytes", "configuration": {"endian": "big"}}]}}],
     ((4, 6), (3, 2), False, True, False)),
])
def test_the_spec_read_from_a_document(codecs: list[Any], spec: tuple[Any, ...]) -> None:
    doc = {"zarr_format": 3, "node_type": "array", "chunk_grid": {"name": "regular", "configuration":
                                                                  {"chunk_shape": [4, 6]}}, "codecs": codecs}
    got = ShardSpec.of(doc)
    assert got is not None
    assert (got.shard_shape, got.chunks_per_shard, got.at_start, got.big_endian, got.checksum) == spec


@pytest.mark.parametrize("codecs", [
    [{"name": "bytes"}],  # not sharded
    [{"name": "sharding_indexed", "configuration": {"chunk_shape": [2, 3]}}, {"name": "crc32c"}],  # over whole shards
    [{"name": "sharding_indexed", "configuration": {"chunk_shape": [2, 3]}}, {"name": "zstd"}],
])
def test_arrays_whose_stored_objects_are_not_raw_shards_are_not_checked(codecs: list[Any]) -> None:
    doc = {"zarr_format": 3, "chunk_grid": {"configuration": {"chunk_shape": [4, 6]}}, "codecs": codecs}
    assert ShardSpec.of(doc) is None
    assert ShardSpec.of({**doc, "zarr_format": 2}) is None


@pytest.mark.parametrize("index_codecs", [
    ["crc32c"], ["bytes", "zstd"], [{"name": "bytes"}, {"name": "crc32c"}, {"name": "crc32c"}],
    [{"name": "transpose", "configuration": {"order": [1, 0, 2]}}, "bytes"], [], "bytes",
])
def test_index_codecs_lazymem_does_not_read_are_refused(index_codecs: Any) -> None:
    doc = {"zarr_format": 3, "chunk_grid": {"configuration": {"chunk_shape": [4, 6]}}, "codecs": [
        {"name": "sharding_indexed", "configuration": {"chunk_shape": [2, 3], "index_codecs": index_codecs}}]}
    with pytest.raises(UnsupportedCodecError, match="shard index codecs"):
        ShardSpec.of(doc, "a.zarr")


@pytest.mark.parametrize("config", [
    {"chunk_shape": [3, 3]},  # not a divisor of the shard
    {"chunk_shape": [2]},
    {"chunk_shape": [2, 0]},
    {"chunk_shape": "2,3"},
    {"chunk_shape": [2, 3], "index_location": "middle"},
    {"chunk_shape": [2, 3], "index_codecs": [{"name": "bytes", "configuration": {"endian": "middle"}}]},
])
def test_damaged_sharding_configurations_are_format_errors(config: dict[str, Any]) -> None:
    doc = {"zarr_format": 3, "chunk_grid": {"configuration": {"chunk_shape": [4, 6]}},
           "codecs": [{"name": "sharding_indexed", "configuration": config}]}
    with pytest.raises(FormatError):
        ShardSpec.of(doc)


# -- the checker, fuzzed --------------------------------------------------------------------------------

_U64 = st.integers(0, MISSING)


def _reference(spec: ShardSpec, entries: list[tuple[int, int]], size: int) -> bool:
    """Whether every entry is sane, one at a time in Python integers: the rule, said plainly."""
    lo, hi = (spec.index_bytes, size) if spec.at_start else (0, size - spec.index_bytes)
    for offset, nbytes in entries:
        if (offset, nbytes) == (MISSING, MISSING):
            continue
        if MISSING in (offset, nbytes) or nbytes == 0 or not (lo <= offset and offset + nbytes <= hi):
            return False
    return True


def _overlap(entries: list[tuple[int, int]]) -> bool:
    """Two present entries whose bytes overlap without being the same entry (pairwise, plainly)."""
    ranges = sorted({e for e in entries if e != (MISSING, MISSING)})
    return any(a != b and a[0] < b[0] + b[1] and b[0] < a[0] + a[1] for a in ranges for b in ranges)


@st.composite
def _shards(draw: Any) -> tuple[ShardSpec, list[tuple[int, int]], int]:
    """A spec, index entries near every edge that matters (and anywhere), and a shard size."""
    per = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    spec = ShardSpec(per, per, draw(st.booleans()), draw(st.booleans()), draw(st.booleans()))
    size = spec.index_bytes + draw(st.integers(0, 5000))
    lo, hi = (spec.index_bytes, size) if spec.at_start else (0, size - spec.index_bytes)
    edges = st.sampled_from(sorted({0, 1, lo, hi, hi - 1, hi + 1, size, size - 1, MISSING, MISSING - 1,
                                    2**63, spec.index_bytes - 1} - {-1}))

    def entry() -> Any:
        valid = st.integers(lo, max(lo, hi - 1)).flatmap(
            lambda o: st.tuples(st.just(o), st.integers(1, max(1, hi - o))))
        return st.one_of(st.just((MISSING, MISSING)), valid, st.tuples(edges, edges), st.tuples(_U64, _U64),
                         st.tuples(edges, _U64), st.tuples(_U64, edges))

    entries = draw(st.lists(entry(), min_size=spec.entries, max_size=spec.entries))
    return spec, entries, size


def _index_bytes(spec: ShardSpec, entries: list[tuple[int, int]]) -> bytes:
    body = np.array(entries, dtype=">u8" if spec.big_endian else "<u8").tobytes()
    crc = np.array([google_crc32c.value(body)], dtype="<u4").tobytes() if spec.checksum else b""
    return body + crc


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_shards())
def test_the_checker_accepts_exactly_the_sane_indexes(shard: tuple[ShardSpec, list[tuple[int, int]], int]) -> None:
    spec, entries, size = shard
    index = _index_bytes(spec, entries)
    if _reference(spec, entries, size) and not _overlap(entries):
        table = check_index(spec, index, size, "shard x")
        assert [tuple(int(v) for v in row) for row in table] == entries
    elif _reference(spec, entries, size):
        with pytest.raises(CorruptChunkError, match=r"^shard x: index entry \d+ .* overlapping entry \d+'s bytes"):
            check_index(spec, index, size, "shard x")
    else:
        with pytest.raises(CorruptChunkError, match=r"^shard x: index entry \d+ \(inner chunk \(") as raised:
            check_index(spec, index, size, "shard x")
        first = int(re.search(r"index entry (\d+)", str(raised.value)).group(1))  # type: ignore[union-attr]
        assert not _reference(spec, [entries[first]], size) and _reference(spec, entries[:first], size)


@st.composite
def _sane_shards(draw: Any) -> tuple[ShardSpec, list[tuple[int, int]], int]:
    """What writers write: inner chunks laid end to end in any order, some missing, some sharing bytes."""
    per = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    spec = ShardSpec(per, per, draw(st.booleans()), draw(st.booleans()), draw(st.booleans()))
    lengths = draw(st.lists(st.integers(1, 300), min_size=spec.entries, max_size=spec.entries))
    start = spec.index_bytes if spec.at_start else 0
    pieces, at = [], start
    for n in lengths:
        pieces.append((at, n))
        at += n
    entries = draw(st.permutations(pieces))
    for i in draw(st.lists(st.integers(0, spec.entries - 1), max_size=spec.entries)):
        entries[i] = (MISSING, MISSING)
    for i, j in draw(st.lists(st.tuples(st.integers(0, spec.entries - 1), st.integers(0, spec.entries - 1)),
                              max_size=2)):
        entries[i] = entries[j]
    size = at + draw(st.integers(0, 50)) + (0 if spec.at_start else spec.index_bytes)
    return spec, entries, size


@settings(max_examples=300, deadline=None)
@given(_sane_shards())
def test_what_writers_write_is_accepted(shard: tuple[ShardSpec, list[tuple[int, int]], int]) -> None:
    spec, entries, size = shard
    table = check_index(spec, _index_bytes(spec, entries), size, "shard w")
    assert [tuple(int(v) for v in row) for row in table] == entries


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(0, 2**64), st.booleans(), st.booleans(), st.booleans())
def test_any_bytes_as_an_index_check_or_raise_corrupt_chunk(index: bytes, size: int, at_start: bool, big: bool,
                                                          checksum: bool) -> None:
    """Garbage of any length, any claimed shard size: a table or CorruptChunkError, nothing else."""
    spec = ShardSpec((2, 2), (2, 2), at_start, big, checksum)
    try:
        table = check_index(spec, index, size, "shard g")
    except CorruptChunkError:
        return
    assert len(index) == spec.index_bytes and size >= spec.index_bytes
    entries = [(int(o), int(n)) for o, n in table]
    assert _reference(spec, entries, size) and not _overlap(entries)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, (16 * 4 + 4) * 8 - 1))
def test_any_flipped_bit_of_a_checksummed_index_raises(bit: int) -> None:
    spec = ShardSpec((2, 2), (2, 2), False, False, True)
    entries = [(0, 10), (10, 10), (MISSING, MISSING), (20, 5)]
    index = bytearray(_index_bytes(spec, entries))
    check_index(spec, bytes(index), 25 + spec.index_bytes, "shard c")
    index[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CorruptChunkError, match="shard c"):
        check_index(spec, bytes(index), 25 + spec.index_bytes, "shard c")


def test_a_shard_shorter_than_its_index_raises() -> None:
    spec = ShardSpec((2,), (2,), False, False, False)
    with pytest.raises(CorruptChunkError, match="a shard of 31 bytes cannot hold its 32-byte index"):
        check_index(spec, b"", 31, "shard s")


# -- lies on real stores, through lazymem ---------------------------------------------------------------

SHARD_DATA = 200 * 400 * 4  # bytes of inner chunks in a shard of DATA (uncompressed)
NBYTES = 50 * 100 * 4


def _lie(kind: str, spec: ShardSpec) -> tuple[int, int]:
    """An entry for inner chunk 0 of a shard of ``SHARD_DATA + index`` bytes."""
    index_start = 0 if spec.at_start else SHARD_DATA
    data_lo = spec.index_bytes if spec.at_start else 0
    size = SHARD_DATA + spec.index_bytes
    return {
        # in bounds, its last 8 bytes the index's first: zarr would decode them as data
        "into the index": (index_start + 16 - NBYTES, NBYTES) if not spec.at_start else (8, NBYTES),
        "past the end": (size - NBYTES + 4, NBYTES),
        "overflowing": (MISSING - 4, NBYTES),
        "empty": (data_lo, 0),
        "half missing": (MISSING, NBYTES),
        "into another chunk": (data_lo + NBYTES // 2, NBYTES),  # half of chunk 1's bytes and half of chunk 2's
    }[kind]


LIE_KINDS = ["into the index", "past the end", "overflowing", "empty", "half missing", "into another chunk"]


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("kind", LIE_KINDS)
def test_a_checksummed_lying_index_raises_on_load(tmp_path: Path, location: str, kind: str) -> None:
    """The crc32c matches (rewritten with the lie): only the entries' check stands between zarr and other data."""
    store = _sharded(tmp_path / "s.zarr", location=location, checksum=True)
    _rewrite_entry(store, "1/0", 0, _lie(kind, _spec(store)))
    overlap = r"index entry \d+ \(inner chunk \(\d, \d\)\) .* overlapping entry 0's bytes"  # names both entries
    named = overlap if kind == "into another chunk" else re.escape("index entry 0 (inner chunk (0, 0))")
    with pytest.raises(CorruptChunkError, match=re.escape(f"{store}: shard c/1/0: ") + named):
        lazymem.load(str(store))


@pytest.mark.parametrize("location", ["start", "end"])
@pytest.mark.parametrize("kind", ["into the index", "past the end"])
def test_a_lying_index_raises_on_prefetch_and_the_other_shard_reads(tmp_path: Path, location: str,
                                                                   kind: str) -> None:
    store = _sharded(tmp_path / "s.zarr", location=location)
    _rewrite_entry(store, "1/0", 5, _lie(kind, _spec(store)))  # inner chunk (1, 1): rows 250..299, cols 100..199
    a = lazymem.open(str(store), readahead=0, chunk_bytes=4096)
    assert_same_array(np.asarray(a[:190]), DATA[:190])  # pages of the first shard only
    with pytest.raises(lazymem.LazymemError, match=re.escape("shard c/1/0: index entry 5 (inner chunk (1, 1))")):
        a.prefetch(np.s_[260, 150])
    a.close()


def test_a_touch_of_a_lying_shard_is_sigbus_with_the_message(tmp_path: Path) -> None:
    store = _sharded(tmp_path / "s.zarr")
    _rewrite_entry(store, "1/0", 0, _lie("into the index", _spec(store)))
    result = run_python(f"""
        import faulthandler, lazymem
        faulthandler.disable()
        a = lazymem.open({str(store)!r}, readahead=0, chunk_bytes=4096)
        print("before", int(a[10, 10]), flush=True)
        print("NEVER", a[210, 10], flush=True)
        """)
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "before 4010" in result.stdout and "NEVER" not in result.stdout
    assert "shard c/1/0: index entry 0" in result.stderr and "inside the shard's index" in result.stderr


def test_a_missing_shard_is_the_fill_value(tmp_path: Path) -> None:
    store = _sharded(tmp_path / "s.zarr")
    (store / "c" / "1" / "0").unlink()
    want = DATA.copy()
    want[200:] = -7
    assert_same_array(lazymem.load(str(store)), want)
    a = lazymem.open(str(store), readahead=0, chunk_bytes=4096)
    assert_same_array(np.asarray(a), want)
    a.close()


def test_an_unreadable_index_codec_raises_on_read(tmp_path: Path) -> None:
    store = _sharded(tmp_path / "s.zarr")
    doc = json.loads((store / "zarr.json").read_text())
    doc["codecs"][0]["configuration"]["index_codecs"].append({"name": "zstd", "configuration": {"level": 1}})
    (store / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(UnsupportedCodecError, match="shard index codecs"):
        lazymem.load(str(store))


def test_each_shard_is_checked_once_over_http(http_store: Any) -> None:
    """Per shard: one HEAD (its size) and one suffix GET (its index) from the checker, once per
    process however many reads; zarr-python's own requests come on top."""
    store = _sharded(http_store.dir / "s.zarr")
    source = ZarrSource(f"{http_store.url}/s.zarr")
    http_store.server.reset()
    assert_same_array(source.read_all(), DATA)
    assert_same_array(source.read_all(), DATA)
    requests = http_store.server.control()["requests"]
    for shard in ("c/0/0", "c/1/0"):
        mine = [r for r in requests if r[1].endswith(f"/s.zarr/{shard}")]
        assert [r for r in mine if r[0] == "HEAD"] == [["HEAD", mine[0][1], None]], mine
        suffix = f"bytes=-{16 * 16}"
        assert sum(1 for r in mine if r[0] == "GET" and r[2] == suffix) >= 1
    assert store.is_dir()


def test_a_lying_shard_raises_over_http(http_store: Any) -> None:
    store = _sharded(http_store.dir / "s.zarr", location="start")
    _rewrite_entry(store, "1/0", 3, _lie("past the end", _spec(store)))
    with pytest.raises(CorruptChunkError, match=re.escape("shard c/1/0: index entry 3 (inner chunk (0, 3))")):
        lazymem.load(f"{http_store.url}/s.zarr")


@pytest.mark.filterwarnings("ignore:Combining a `sharding_indexed` codec:UserWarning")
def test_a_transposed_sharded_array_is_checked_on_the_shard_grid(tmp_path: Path) -> None:
    """A transpose before the shards: zarr's chunk grid is then the shards' (whole shards read),
    and the index is laid out over the transposed shard."""
    data = np.arange(40 * 60, dtype="<i4").reshape(40, 60)
    codec = zarr.codecs.ShardingCodec(chunk_shape=(10, 5), codecs=[zarr.codecs.BytesCodec()],
                                      index_codecs=[zarr.codecs.BytesCodec()])
    z = zarr.create_array(store=str(tmp_path / "t.zarr"), shape=data.shape, dtype=data.dtype, chunks=(20, 30),
                          filters=[zarr.codecs.TransposeCodec(order=(1, 0))], serializer=codec, compressors=None,
                          zarr_format=3)
    z[...] = data
    store = tmp_path / "t.zarr"
    assert _spec(store).chunks_per_shard == (3, 4)
    assert_same_array(lazymem.load(str(store)), data)
    shard = store / "c" / "1" / "1"
    _rewrite_entry(store, "1/1", 0, (shard.stat().st_size, 200))
    with pytest.raises(CorruptChunkError, match=re.escape("shard c/1/1: index entry 0 (inner chunk (0, 0)) places "
                                                          "an inner chunk at bytes 2592..2792, past the shard's end")):
        lazymem.load(str(store))


def test_a_lying_shard_raises_over_s3_and_a_missing_one_is_the_fill(s3_store: Any, tmp_path: Path) -> None:
    import s3fs

    store = _sharded(tmp_path / "s.zarr", location="end", checksum=True)
    _rewrite_entry(store, "1/0", 2, _lie("into the index", _spec(store)))
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_store.storage_options)
    for path in sorted(p for p in store.rglob("*") if p.is_file()):
        fs.pipe(f"test/s.zarr/{path.relative_to(store)}", path.read_bytes())
    fs.pipe("test/m.zarr/zarr.json", (store / "zarr.json").read_bytes())  # the metadata, no shard: all fill
    options = s3_store.storage_options
    with pytest.raises(CorruptChunkError, match=re.escape("shard c/1/0: index entry 2 (inner chunk (0, 2))")):
        lazymem.load("s3://test/s.zarr", storage_options=options)
    a = lazymem.open("s3://test/s.zarr", storage_options=options, readahead=0, chunk_bytes=4096)
    assert_same_array(np.asarray(a[:190]), DATA[:190])
    with pytest.raises(lazymem.LazymemError, match=re.escape("shard c/1/0: index entry 2")):
        a.prefetch(np.s_[200:210])
    a.close()
    assert_same_array(lazymem.load("s3://test/m.zarr", storage_options=options), np.full_like(DATA, -7))

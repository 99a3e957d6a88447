"""Hostile files: whatever the bytes, lazymem gives the right array or a LazymemError.

Mutations of valid files (bit flips, overwritten runs, truncations, extensions) go through the
parsers (``open``), the eager reader (``load``) and the lazy path (``prefetch``, which raises).
The property is the one users rely on: never wrong data, never an unexpected exception, no hang.
Files that once broke something are kept in ``tests/corpus`` and replayed.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lazymem
from lazymem.sources import open_source

from .conftest import save_with_pyzstd

CORPUS = Path(__file__).parent / "corpus"
SRC = np.arange(3000, dtype="<i4").reshape(100, 30)


def _valid_file(tmp: Path, chunk: int = 4096) -> bytes:
    path = tmp / "valid.npy.zst"
    lazymem.save(str(path), SRC, chunk_bytes=chunk)
    return path.read_bytes()


@st.composite
def mutations(draw: st.DrawFn, size: int) -> list[tuple[str, int, int]]:
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "zero", "random", "truncate", "extend"]))
        ops.append((kind, draw(st.integers(0, size - 1)), draw(st.integers(1, 64))))
    return ops


def _mutate(data: bytes, ops: list[tuple[str, int, int]], seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for kind, position, length in ops:
        if not out and kind != "extend":
            continue
        position %= max(len(out), 1)
        if kind == "flip":
            out[position] ^= 1 << int(rng.integers(0, 8))
        elif kind == "zero":
            out[position:position + length] = bytes(len(out[position:position + length]))
        elif kind == "random":
            out[position:position + length] = rng.integers(0, 256, len(out[position:position + length]),
                                                           dtype=np.uint8).tobytes()
        elif kind == "truncate":
            del out[position:]
        else:
            out[position:position] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
    return bytes(out)


def _check_never_wrong(path: Path) -> str:
    """Open, load and lazily read ``path``: each gives SRC exactly or raises a LazymemError."""
    outcome = []
    try:
        got = lazymem.load(str(path))
    except lazymem.LazymemError:
        outcome.append("load-error")
    else:
        assert got.dtype == SRC.dtype and got.shape == SRC.shape and got.tobytes() == SRC.tobytes()
        outcome.append("load-ok")
    try:
        a = lazymem.open(str(path), readahead=0)
        a.prefetch()  # raises for a bad chunk instead of SIGBUS on touch
    except lazymem.LazymemError:
        outcome.append("lazy-error")
    else:
        assert a.dtype == SRC.dtype and a.shape == SRC.shape and a.tobytes() == SRC.tobytes()
        outcome.append("lazy-ok")
    return " ".join(outcome)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_mutated_files_give_the_right_array_or_a_lazymem_error(tmp_path: Path, data: st.DataObject,
                                                               seed: int) -> None:
    valid = _valid_file(tmp_path)
    ops = data.draw(mutations(len(valid)))
    path = tmp_path / "mutated.npy.zst"
    path.write_bytes(_mutate(valid, ops, seed))
    _check_never_wrong(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=600))
def test_random_bytes_never_parse_into_an_array(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "random.npy.zst"
    path.write_bytes(blob)
    with pytest.raises(lazymem.LazymemError):
        open_source(str(path))


def _pyzstd_file(tmp: Path) -> bytes:
    path = tmp / "pyzstd.npy.zst"
    # With content checksums: without them zstd cannot tell a flipped literal byte from data, and
    # no reader can (our own files always carry them).
    save_with_pyzstd(path, SRC, 997)
    return path.read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_mutated_foreign_files_with_unaligned_frames(tmp_path: Path, data: st.DataObject, seed: int) -> None:
    valid = _pyzstd_file(tmp_path)
    ops = data.draw(mutations(len(valid)))
    path = tmp_path / "mutated-pyzstd.npy.zst"
    path.write_bytes(_mutate(valid, ops, seed))
    _check_never_wrong(path)


@pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("*.zst")) if CORPUS.exists() else [])
def test_corpus_of_nasty_files(name: str) -> None:
    expected = (CORPUS / (name + ".expect")).read_text().strip()
    assert _check_never_wrong(CORPUS / name) == expected


def test_files_without_checksums_warn_at_open_and_ours_do_not(tmp_path: Path) -> None:
    import warnings

    pyzstd = pytest.importorskip("pyzstd")
    buf = io.BytesIO()
    np.save(buf, SRC)
    plain = tmp_path / "no-checksum.npy.zst"
    with pyzstd.SeekableZstdFile(str(plain), "w", max_frame_content_size=997) as f:  # no checksums
        f.write(buf.getvalue())
    with pytest.warns(lazymem.UnverifiableDataWarning, match="no content checksums"):
        open_source(str(plain))
    ours = tmp_path / "ours.npy.zst"
    lazymem.save(str(ours), SRC)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        open_source(str(ours))
        open_source(str(tmp_path.parent / tmp_path.name / "ours.npy.zst"))

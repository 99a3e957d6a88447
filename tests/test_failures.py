"""Failures during lazy access: never wrong data, never silent zeros.

A corrupt chunk fails loudly for that chunk alone: ``prefetch`` raises the error as an exception;
a transparent access gets SIGBUS after the monitor has written which URL and chunk to stderr.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

import lazymem
from lazymem.sources import open_source

from .conftest import run_python


def _corrupt_chunk(path: str, chunk: int, *, last_frame_only: bool = False) -> None:
    """Flip a byte in the middle of each stored frame of data chunk ``chunk`` (or of its last
    frame only): their checksums no longer match."""
    reader = open_source(path)
    table, chunk_bytes = reader.table, reader.chunk_bytes_hint
    assert chunk_bytes is not None
    start = reader.data_offset + chunk * chunk_bytes
    frames = list(table.frames_for(start, start + chunk_bytes))
    with open(path, "r+b") as f:
        for frame in frames[-1:] if last_frame_only else frames:
            middle = int(table.compressed_offsets[frame]) + int(table.compressed_sizes[frame]) // 2
            f.seek(middle)
            byte = f.read(1)
            f.seek(middle)
            f.write(bytes([byte[0] ^ 0x40]))


@pytest.fixture
def corrupt(tmp_path: Path) -> tuple[str, np.ndarray]:
    src = np.random.default_rng(0).standard_normal(2**20)  # 8 MiB: 8 chunks of 1 MiB
    path = str(tmp_path / "corrupt.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**20)
    _corrupt_chunk(path, 3)
    return path, src


def test_prefetch_raises_for_a_corrupt_chunk_and_other_chunks_still_read(corrupt) -> None:
    path, src = corrupt
    a = lazymem.open(path, readahead=0)
    per_chunk = 2**20 // 8
    with pytest.raises(lazymem.CorruptChunkError, match=r"frame \d+ \(stored at byte \d+\) is corrupt"):
        a.prefetch(np.s_[3 * per_chunk: 3 * per_chunk + 1])
    with pytest.raises(lazymem.CorruptChunkError):
        a.prefetch()
    assert np.array_equal(a[: 3 * per_chunk], src[: 3 * per_chunk])
    assert np.array_equal(a[4 * per_chunk:], src[4 * per_chunk:])
    assert lazymem.stats(a).failures >= 2


def test_eager_load_raises_for_a_corrupt_chunk(corrupt) -> None:
    path, _ = corrupt
    with pytest.raises(lazymem.CorruptChunkError):
        lazymem.load(path)


def test_transparent_access_to_a_corrupt_chunk_gets_sigbus_with_a_message(corrupt) -> None:
    path, src = corrupt
    per_chunk = 2**20 // 8
    result = run_python(
        f"""
        import faulthandler, numpy as np, lazymem
        faulthandler.disable()
        a = lazymem.open({path!r}, readahead=0)
        print("before", float(a[0]) == {float(src[0])!r}, flush=True)
        value = a[{3 * per_chunk + 5}]
        print("NEVER", value, flush=True)
        """
    )
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "before True" in result.stdout and "NEVER" not in result.stdout
    assert "chunk 3" in result.stderr and path in result.stderr and "CorruptChunkError" in result.stderr


def test_a_chunk_whose_last_frame_is_corrupt_shows_the_verified_frame_and_poisons_the_rest(tmp_path: Path) -> None:
    # A fault wakes its reader once the reader's own frame is verified (see layout_frame): that
    # frame reads right; the chunk then fails as a whole, and the rest of it is poisoned.
    src = np.random.default_rng(1).standard_normal(2**20)  # 8 MiB: 8 chunks of 1 MiB, 4 frames each
    path = str(tmp_path / "last-frame.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**20, frame_bytes=2**18)
    _corrupt_chunk(path, 3, last_frame_only=True)
    per_chunk, per_frame = 2**20 // 8, 2**18 // 8
    a = lazymem.open(path, readahead=0)
    with pytest.raises(lazymem.CorruptChunkError):
        a.prefetch(np.s_[3 * per_chunk + 3 * per_frame])
    result = run_python(
        f"""
        import faulthandler, numpy as np, lazymem
        faulthandler.disable()
        a = lazymem.open({path!r}, readahead=0)
        src = np.random.default_rng(1).standard_normal(2**20)
        print("first", float(a[{3 * per_chunk + 5}]) == float(src[{3 * per_chunk + 5}]), flush=True)
        value = a[{4 * per_chunk - 1}]
        print("NEVER", value, flush=True)
        """
    )
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "first True" in result.stdout and "NEVER" not in result.stdout and "chunk 3" in result.stderr


def test_a_missing_object_at_fault_time_fails_loudly(tmp_path: Path) -> None:
    # The object disappears after open: the fetch fails permanently (after retries), SIGBUS.
    src = np.arange(2**18, dtype="f8")
    path = tmp_path / "vanishing.npy.zst"
    lazymem.save(str(path), src, chunk_bytes=2**20)
    result = run_python(
        f"""
        import faulthandler, os, numpy as np, lazymem
        faulthandler.disable()
        a = lazymem.open({str(path)!r}, readahead=0)
        os.unlink({str(path)!r})
        print("NEVER", a[100], flush=True)
        """
    )
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "NEVER" not in result.stdout and str(path) in result.stderr


def test_a_local_file_replaced_after_the_first_read_keeps_serving_the_opened_one(tmp_path: Path) -> None:
    # Like np.memmap: the monitor reads one inode for the array's life, so a writer replacing the
    # file (lazymem.save writes a temporary and renames it) does not mix two arrays into one.
    src = np.random.default_rng(1).standard_normal(2**20)
    path = str(tmp_path / "r.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**18)
    a = lazymem.open(path, readahead=0)
    assert a[0] == src[0]  # the monitor has the file open now
    lazymem.save(path, -src, chunk_bytes=2**18)  # a new file under the same name
    assert np.array_equal(a, src)
    assert np.array_equal(lazymem.open(path), -src)


def test_a_source_pickles_without_its_open_file(tmp_path: Path) -> None:
    import pickle

    src = np.arange(100_000, dtype=np.int64)
    path = str(tmp_path / "p.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**16)
    reader = open_source(path)
    reader.read_into(reader.data_offset, bytearray(1000))
    assert "_local" in reader.storage.__dict__
    clone = pickle.loads(pickle.dumps(reader))
    assert "_local" not in clone.storage.__dict__
    out = bytearray(src.nbytes)
    clone.read_into(clone.data_offset, out)
    assert np.array_equal(np.frombuffer(out, dtype=np.int64), src)


def test_an_eager_load_reads_the_file_its_source_opened_even_if_replaced_since(tmp_path: Path) -> None:
    # The table comes from the file opened first; frames from another file under the same name
    # would be placed by the wrong table (a CorruptChunkError at best).
    from lazymem.eager import read_array

    src = np.random.default_rng(2).standard_normal(2**18)
    path = str(tmp_path / "e.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**16)
    reader = open_source(path)
    lazymem.save(path, np.zeros(2**19), chunk_bytes=2**17)  # renamed over the old one
    assert np.array_equal(read_array(reader), src)


def test_a_file_replaced_after_open_is_refused_not_read_with_the_old_table(tmp_path: Path) -> None:
    """np.memmap keeps the file it opened; a lazy array's monitor opens the file itself, later: it
    must reach the same file, unchanged, or refuse (never the old seek table over new bytes)."""
    src = np.arange(2**18, dtype="<f8")  # 2 MiB: 2 chunks of 1 MiB
    other = np.arange(2**18, dtype="<f8")[::-1].copy()
    path = str(tmp_path / "replaced.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**20)
    a = lazymem.open(path, readahead=0)
    lazymem.save(path, other, chunk_bytes=2**20, level=9)  # written beside it, renamed over it
    with pytest.raises(lazymem.ArrayNotFoundError, match="replaced or changed since the array was opened"):
        a.prefetch(np.s_[0])
    result = run_python(
        f"""
        import faulthandler, lazymem
        faulthandler.disable()
        a = lazymem.open({path!r}, readahead=0)
        import numpy as np
        lazymem.save({path!r}, np.arange(2**18, dtype="<f8") * 2, chunk_bytes=2**20)
        print("value", a[5], flush=True)
        """
    )
    assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout, result.stderr)
    assert "value" not in result.stdout and "replaced or changed" in result.stderr
    b = lazymem.open(path)  # opened again: the newest file
    assert b[:4].tolist() == [0.0, 2.0, 4.0, 6.0]

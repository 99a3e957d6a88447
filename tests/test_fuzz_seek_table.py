"""A seeded fuzz campaign over the seek table and the frames it places (never wrong data).

Every mutant of a valid file is read every way a user can read it: ``load``, ``prefetch`` of the
whole array, ``prefetch`` of single chunks alone in a random order, random reads under a small
``max_resident``, and random touches in child processes (where a bad chunk is a SIGBUS, and the
monitor must first say why on stderr), with and without zero-copy installs. Whatever the bytes,
each read gives the values ``zstd -d`` gives for the file (the source array, unless a mutation
made another valid file), or a ``LazymemError`` / SIGBUS with a message: never other values,
never a hang, never a ``MemoryError``.

The files: ``lazymem.save``'s (layout frame version 3: rows under a CRC), the same with a
version 2 layout frame (rows under block sums), with none (older files), and pyzstd's (frames
that cut the ``.npy`` header and pages anywhere, no content sizes in the frame headers).

Bounded for CI (about a minute); ``LAZYMEM_FUZZ_MUTANTS=N`` runs N mutants per file kind and
family, ``LAZYMEM_FUZZ_SEED`` another campaign.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zstandard

import lazymem
from lazymem.sources.layout_frame import layout_frame
from lazymem.writer import seek_table_bytes

from .conftest import run_python, save_with_pyzstd

SRC = np.arange(128 * 256, dtype="<f4").reshape(128, 256)  # 128 KiB: 32 pages
CHUNK = 16 << 10  # 4 pages a chunk: 8 chunks
FRAME = 4 << 10  # 4 frames a chunk: 32 data frames
MUTANTS = int(os.environ.get("LAZYMEM_FUZZ_MUTANTS", "6"))
SEED = int(os.environ.get("LAZYMEM_FUZZ_SEED", "19"))
KINDS = ["v3", "v2", "bare", "pyzstd"]

pytestmark = pytest.mark.filterwarnings("ignore::lazymem.UnverifiableDataWarning")


# -- the files ---------------------------------------------------------------------------------


def _table(data: bytes) -> tuple[int, int, np.ndarray]:
    """(offset of entry 0, entry size, rows as uint32) of a seekable file's seek table."""
    n, descriptor = struct.unpack_from("<IB", data, len(data) - 9)
    size = 12 if descriptor & 0x80 else 8
    start = len(data) - 9 - n * size
    rows = np.frombuffer(data, dtype="<u4", count=n * size // 4, offset=start).reshape(n, size // 4)
    return start, size, rows.copy()


def _frames(data: bytes) -> list[bytes]:
    rows = _table(data)[2]
    offsets = np.concatenate([[0], np.cumsum(rows[:, 0].astype(np.int64))])
    return [data[offsets[i] : offsets[i + 1]] for i in range(len(rows))]


def _assemble(frames: list[bytes], dsizes: list[int], kind: str) -> bytes:
    """A file of these frames; lazymem kinds get their layout frame rebuilt to match (so that only
    the frames' own checks can catch what was done to them)."""
    if kind in ("v3", "v2"):
        frames = frames[:-1]
        dsizes = dsizes[:-1]
        csizes = np.array([len(f) for f in frames])
        frames = [*frames, layout_frame(CHUNK, csizes, np.array(dsizes), version=int(kind[1]))]
        dsizes = [*dsizes, 0]
    csizes = np.array([len(f) for f in frames])
    return b"".join(frames) + seek_table_bytes(csizes, np.array(dsizes))


def _valid(kind: str, tmp: Path) -> bytes:
    path = tmp / f"valid-{kind}.npy.zst"
    if kind == "pyzstd":
        save_with_pyzstd(path, SRC, 3001)
        return path.read_bytes()
    lazymem.save(str(path), SRC, chunk_bytes=CHUNK, frame_bytes=FRAME)
    data = path.read_bytes()
    if kind == "v3":
        return data
    frames = _frames(data)
    dsizes = [int(d) for d in _table(data)[2][:, 1]]
    if kind == "bare":  # no layout frame at all, as the oldest files
        return b"".join(frames[:-1]) + seek_table_bytes(np.array([len(f) for f in frames[:-1]]),
                                                        np.array(dsizes[:-1]))
    return _assemble(frames, dsizes, kind)


# -- the mutations: each takes the file and a generator, returns the mutant ---------------------


def _set_entry(data: bytes, index: int, column: int, value: int) -> bytes:
    start, size, _ = _table(data)
    out = bytearray(data)
    struct.pack_into("<I", out, start + index * size + 4 * column, value & 0xFFFFFFFF)
    return bytes(out)


def _content_frames(data: bytes) -> list[int]:
    return [i for i, d in enumerate(_table(data)[2][:, 1]) if d > 0]


def flip_entry(data: bytes, rng: np.random.Generator) -> bytes:
    start, size, rows = _table(data)
    out = bytearray(data)
    at = start + int(rng.integers(0, len(rows) * size))
    out[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def grow_entry(data: bytes, rng: np.random.Generator) -> bytes:
    rows = _table(data)[2]
    i = int(rng.choice(_content_frames(data)))
    return _set_entry(data, i, 1, int(rows[i, 1]) + int(rng.choice([1, 8, 4096, 0x1000 * int(rng.integers(1, 9))])))


def compensate(column: int) -> Callable[[bytes, np.random.Generator], bytes]:
    def mutate(data: bytes, rng: np.random.Generator) -> bytes:
        rows = _table(data)[2]
        content = _content_frames(data)
        i, j = sorted(int(x) for x in rng.choice(content, 2, replace=False))
        delta = int(rng.integers(1, max(2, min(int(rows[i, column]), int(rows[j, column])))))
        if rng.integers(0, 2):
            delta = -delta
        data = _set_entry(data, i, column, int(rows[i, column]) + delta)
        return _set_entry(data, j, column, int(rows[j, column]) - delta)

    mutate.__name__ = f"compensate_{'stored' if column == 0 else 'decompressed'}"
    return mutate


def swap_entries(data: bytes, rng: np.random.Generator) -> bytes:
    start, size, rows = _table(data)
    i, j = (int(x) for x in rng.choice(len(rows) - 1, 2, replace=False))
    out = bytearray(data)
    out[start + i * size : start + (i + 1) * size] = rows[j].tobytes()
    out[start + j * size : start + (j + 1) * size] = rows[i].tobytes()
    return bytes(out)


def huge_entry(data: bytes, rng: np.random.Generator) -> bytes:
    rows = _table(data)[2]
    i = int(rng.choice(_content_frames(data)))
    return _set_entry(data, i, 1, int(rows[i, 1]) | 1 << int(rng.integers(20, 32)))


def _rebuild(data: bytes, kind: str, change: Callable[[list[bytes], list[int]], None]) -> bytes:
    frames = _frames(data)
    dsizes = [int(d) for d in _table(data)[2][:, 1]]
    change(frames, dsizes)
    return _assemble(frames, dsizes, kind)


def reencode(checksum: bool) -> Callable[[bytes, np.random.Generator, str], bytes]:
    """A data frame encoded again (another level; with or without a checksum and a content size),
    the table (and layout frame) made to match: a valid file, with one frame lacking its checksum."""

    def mutate(data: bytes, rng: np.random.Generator, kind: str) -> bytes:
        def change(frames: list[bytes], dsizes: list[int]) -> None:
            i = int(rng.choice([k for k in range(1, len(frames)) if dsizes[k] > 0]))
            content = zstandard.ZstdDecompressor().decompress(frames[i], max_output_size=dsizes[i])
            cctx = zstandard.ZstdCompressor(level=int(rng.integers(1, 10)), write_checksum=checksum,
                                            write_content_size=bool(rng.integers(0, 2)))
            frames[i] = cctx.compress(content)

        return _rebuild(data, kind, change)

    mutate.__name__ = "reencode" if checksum else "strip_checksum"
    return mutate


def header_edit(data: bytes, rng: np.random.Generator, kind: str) -> bytes:
    """The .npy header says another dtype of the same size, or Fortran order: another valid file."""

    def change(frames: list[bytes], dsizes: list[int]) -> None:
        first = next(k for k in range(len(frames)) if dsizes[k] > 0)
        content = zstandard.ZstdDecompressor().decompress(frames[first], max_output_size=dsizes[first])
        edits = [(b"'<f4'", b"'<i4'"), (b"'<f4'", b"'>f4'"), (b"False", b"True ")]
        old, new = edits[int(rng.integers(0, len(edits)))]
        content = content.replace(old, new, 1)
        frames[first] = zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(content)

    return _rebuild(data, kind, change)


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def flip_anywhere(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    at = int(rng.integers(0, len(out)))
    out[at] ^= 1 << int(rng.integers(0, 8))
    return bytes(out)


def overwrite(data: bytes, rng: np.random.Generator) -> bytes:
    """A run of 1-64 bytes overwritten with random bytes, or zeros, anywhere."""
    out = bytearray(data)
    at = int(rng.integers(0, len(out)))
    n = min(int(rng.integers(1, 65)), len(out) - at)
    out[at : at + n] = bytes(n) if rng.integers(0, 2) else rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(out)


FAMILIES: dict[str, Callable[..., bytes]] = {
    f.__name__: f
    for f in [flip_entry, grow_entry, compensate(0), compensate(1), swap_entries, huge_entry, reencode(True),
              reencode(False), header_edit, truncate, flip_anywhere, overwrite]
}
NEEDS_KIND = {"reencode", "strip_checksum", "header_edit"}


def _mutant(family: str, data: bytes, rng: np.random.Generator, kind: str) -> bytes:
    mutate = FAMILIES[family]
    return mutate(data, rng, kind) if family in NEEDS_KIND else mutate(data, rng)


# -- the oracle ---------------------------------------------------------------------------------


def _zstd_d(path: Path) -> np.ndarray | None:
    """What ``zstd -d`` and ``np.load`` make of the file (None if either refuses it)."""
    result = subprocess.run(["zstd", "-d", "-c", "-q", str(path)], capture_output=True)
    if result.returncode != 0:
        return None
    try:
        return np.load(io.BytesIO(result.stdout), allow_pickle=False)
    except Exception:  # noqa: BLE001 - np.load raises many kinds; any of them means no array
        return None


def _expected(path: Path) -> np.ndarray:
    """What every successful read must give: ``zstd -d``'s array if it makes one, else SRC (the
    damage left the other frames' values as they were)."""
    truth = _zstd_d(path)
    return SRC if truth is None else truth


def _same(got: np.ndarray, want: np.ndarray) -> bool:
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes(order="A") == want.tobytes(order="A")


# -- the reads ----------------------------------------------------------------------------------


def _read_in_process(path: Path, want: np.ndarray, rng: np.random.Generator) -> list[str]:
    """load, prefetch of everything, prefetch of single chunks alone, random reads under a small
    budget: each gives ``want`` (where it reads) or a LazymemError."""
    outcomes = []
    try:
        got = lazymem.load(str(path))
    except lazymem.LazymemError:
        outcomes.append("load:error")
    else:
        assert _same(got, want), "load gave other values"
        outcomes.append("load:ok")
    try:
        a = lazymem.open(str(path), readahead=0)
    except lazymem.LazymemError:
        return [*outcomes, "open:error"]
    assert a.dtype == want.dtype and a.shape == want.shape, "open described another array"
    flat_want = want.reshape(-1, order="A")
    per_chunk = max(1, CHUNK // want.itemsize)
    n_chunks = -(-want.size // per_chunk)
    # Single chunks alone, each in an array of its own: nothing read before it.
    for chunk in rng.permutation(n_chunks)[:3]:
        b = lazymem.open(str(path), readahead=0)
        flat = b.reshape(-1, order="A")
        lo, hi = int(chunk) * per_chunk, min(int(chunk + 1) * per_chunk, want.size)
        try:
            flat.prefetch(np.s_[lo:hi])
        except lazymem.LazymemError:
            outcomes.append("chunk:error")
        else:
            assert flat[lo:hi].tobytes() == flat_want[lo:hi].tobytes(), f"chunk {chunk} alone gave other values"
            outcomes.append("chunk:ok")
        b.close()
    try:
        a.prefetch()
    except lazymem.LazymemError:
        outcomes.append("all:error")
    else:
        assert _same(np.asarray(a), want), "prefetch of the whole array gave other values"
        outcomes.append("all:ok")
    a.close()
    # Random reads through prefetch under a budget of two chunks: evictions between them.
    c = lazymem.open(str(path), readahead=1, max_resident=2 * CHUNK)
    flat = c.reshape(-1, order="A")
    for at in rng.integers(0, want.size, 6):
        try:
            c.prefetch(_index_of(c, int(at)))
        except lazymem.LazymemError:
            outcomes.append("budget:error")
            continue
        assert flat[int(at)].tobytes() == flat_want[int(at)].tobytes(), f"element {at} under a budget"
        outcomes.append("budget:ok")
    c.close()
    return outcomes


def _index_of(a: np.ndarray, flat_index: int) -> tuple[int, ...]:
    return np.unravel_index(flat_index, a.shape, order="F" if a.flags.f_contiguous and not a.flags.c_contiguous
                            else "C")  # type: ignore[return-value]


_TOUCHER = """
import faulthandler, sys, numpy as np, lazymem
faulthandler.disable()
paths = sys.argv[1:]
for k in range(int({start!r}), len(paths) // 2):
    path, want_path = paths[2 * k], paths[2 * k + 1]
    want = np.load(want_path)
    print("start", k, flush=True)
    try:
        a = lazymem.open(path, readahead={readahead!r})
    except lazymem.LazymemError:
        print("done", k, "open-error", flush=True)
        continue
    order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
    flat, flat_want = a.reshape(-1, order=order), want.reshape(-1, order=order)
    rng = np.random.default_rng(k)
    for at in rng.integers(0, want.size, 8):
        if flat[at].tobytes() != flat_want[at].tobytes():
            print("WRONG", k, int(at), flush=True)
            sys.exit(3)
    print("done", k, "ok", flush=True)
"""


def _touch_in_children(pairs: list[tuple[Path, Path]], zero_copy: bool, readahead: int) -> list[str]:
    """Random touches of each mutant in child processes; a SIGBUS ends a child (after the monitor
    said why), and the next child goes on from the mutant after it."""
    args = [str(p) for pair in pairs for p in pair]
    outcomes: list[str] = []
    start = 0
    while start < len(pairs):
        code = _TOUCHER.replace("int({start!r})", str(start)).replace("{readahead!r}", str(readahead))
        result = run_python(code, env={"LAZYMEM_ZERO_COPY": "1" if zero_copy else "0"}, args=args, timeout=300)
        assert "WRONG" not in result.stdout, (result.stdout, result.stderr)
        done = [line.split() for line in result.stdout.splitlines() if line.startswith("done")]
        outcomes += [f"touch:{d[2]}" for d in done]
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGBUS, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
        started = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("start")]
        died_on = started[-1]
        path = str(pairs[died_on][0])
        assert path in result.stderr and "lazymem" in result.stderr, ("SIGBUS without a message", result.stderr)
        outcomes.append("touch:sigbus")
        start = died_on + 1
    return outcomes


# -- the campaign -------------------------------------------------------------------------------


@pytest.mark.slow  # the campaign: 4-18 s per file kind
@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd command line is the oracle")
@pytest.mark.parametrize("kind", KINDS)
def test_every_mutant_reads_right_or_fails_loudly(tmp_path: Path, kind: str) -> None:
    valid = _valid(kind, tmp_path)
    rng = np.random.default_rng([SEED, KINDS.index(kind)])
    pairs: list[tuple[Path, Path]] = []
    tally: dict[str, dict[str, int]] = {}
    for family in FAMILIES:
        for m in range(MUTANTS):
            path = tmp_path / f"{family}-{m}.npy.zst"
            path.write_bytes(_mutant(family, valid, rng, kind))
            want = _expected(path)
            np.save(tmp_path / f"{family}-{m}.want.npy", want)
            pairs.append((path, tmp_path / f"{family}-{m}.want.npy"))
            try:
                outcomes = _read_in_process(path, want, rng)
            except MemoryError as exc:  # pragma: no cover - one of the failures this suite exists for
                raise AssertionError(f"{family} mutant {m}: MemoryError, not a LazymemError") from exc
            for outcome in outcomes:
                tally.setdefault(family, {}).setdefault(outcome, 0)
                tally[family][outcome] += 1
            if family == "reencode":  # a valid file: every read must succeed
                assert all(o.endswith(":ok") for o in outcomes), (family, m, outcomes)
    # Touches in children: half with zero-copy installs, half without; some with readahead.
    half = len(pairs) // 2
    outcomes = _touch_in_children(pairs[:half], zero_copy=True, readahead=0)
    outcomes += _touch_in_children(pairs[half:], zero_copy=False, readahead=2)
    assert len([o for o in outcomes if o != "touch:sigbus"]) + outcomes.count("touch:sigbus") >= len(pairs)
    print(kind, tally)


def test_a_lazymem_file_with_a_frame_lacking_its_checksum_is_corrupt(tmp_path: Path) -> None:
    """Our files promise checksums: a valid frame without one (table and layout made to match) is
    refused where it is decoded, and only there."""
    data = _valid("v3", tmp_path)

    def strip(frames: list[bytes], dsizes: list[int]) -> None:
        content = zstandard.ZstdDecompressor().decompress(frames[5], max_output_size=dsizes[5])
        frames[5] = zstandard.ZstdCompressor(write_checksum=False, write_content_size=True).compress(content)

    path = tmp_path / "stripped.npy.zst"
    path.write_bytes(_rebuild(data, "v3", strip))
    assert _same(_zstd_d(path), SRC)  # zstd -d sees nothing wrong
    with pytest.raises(lazymem.CorruptChunkError, match=r"frame 5 .*no content checksum"):
        lazymem.load(str(path))
    a = lazymem.open(str(path), readahead=0)
    per_frame = FRAME // 4
    a.prefetch(np.s_[0])  # frames 1-4: chunk 0
    with pytest.raises(lazymem.CorruptChunkError, match="no content checksum"):
        a.prefetch(np.s_[(4 * per_frame) // 256, (4 * per_frame) % 256])  # frame 5 is chunk 1's first
    assert a[0].tobytes() == SRC[0].tobytes()


def test_a_foreign_file_with_a_later_frame_lacking_its_checksum_warns_naming_it(tmp_path: Path) -> None:
    data = _valid("pyzstd", tmp_path)

    def strip(frames: list[bytes], dsizes: list[int]) -> None:
        content = zstandard.ZstdDecompressor().decompress(frames[7], max_output_size=dsizes[7])
        frames[7] = zstandard.ZstdCompressor(write_checksum=False).compress(content)

    path = tmp_path / "stripped.npy.zst"
    path.write_bytes(_rebuild(data, "pyzstd", strip))
    with pytest.warns(lazymem.UnverifiableDataWarning, match="frame 7 carries no content checksum"):
        got = lazymem.load(str(path))
    assert _same(got, SRC)

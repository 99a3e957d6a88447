"""The lazymem command line, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lazymem

from .conftest import ROOT


def _cli(*args: str, module: str = "lazymem.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=ROOT, check=False)


def test_convert_info_verify(tmp_path: Path) -> None:
    src = np.arange(300_000, dtype=">i4").reshape(600, 500)
    np.save(tmp_path / "a.npy", src)
    out = str(tmp_path / "a.npy.zst")
    result = _cli("convert", str(tmp_path / "a.npy"), out, "--chunk-bytes", "65536")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(lazymem.load(out), src)
    info = _cli("info", out)
    assert info.returncode == 0 and "(600, 500)" in info.stdout and ">i4" in info.stdout
    assert "proven by the seek table's CRCs" in info.stdout  # a file convert writes places frames safely
    verify = _cli("verify", out)
    assert verify.returncode == 0 and verify.stdout.startswith("ok:")


def test_verify_reports_corruption(tmp_path: Path) -> None:
    out = tmp_path / "c.npy.zst"
    lazymem.save(str(out), np.random.default_rng(0).standard_normal(100_000), chunk_bytes=65536)
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    result = _cli("verify", str(out))
    assert result.returncode == 1 and "lazymem:" in result.stderr
    missing = _cli("info", str(tmp_path / "missing.npy.zst"))
    assert missing.returncode == 1 and "lazymem:" in missing.stderr


@pytest.mark.slow  # ~2 s of interpreter starts
def test_help_version_and_python_dash_m(tmp_path: Path) -> None:
    for args in (["--help"], ["info", "--help"], ["convert", "--help"], ["verify", "--help"]):
        result = _cli(*args, module="lazymem")
        assert result.returncode == 0 and "usage: lazymem" in result.stdout, result.stderr
        assert "``" not in result.stdout  # no reStructuredText in a terminal
    convert = _cli("convert", "--help").stdout
    for option in ("--chunk-bytes", "--frame-bytes", "--level", "--storage-option"):
        assert option in convert
    assert "(default: 4MiB)" in convert and "(default: 3)" in convert
    version = _cli("--version", module="lazymem")
    assert version.returncode == 0 and version.stdout.strip() == f"lazymem {lazymem.__version__}"


def test_sizes_frames_storage_options_and_missing_directories(tmp_path: Path) -> None:
    src = np.arange(200_000, dtype="<f8")
    np.save(tmp_path / "a.npy", src)
    out = tmp_path / "new" / "dir" / "a.npy.zst"  # parents do not exist yet
    result = _cli("convert", str(tmp_path / "a.npy"), str(out), "--chunk-bytes", "64KiB", "--frame-bytes", "16KiB",
                  "-o", "auto_mkdir=true", "--storage-option", "use_listings_cache=false")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(lazymem.load(str(out)), src)
    from lazymem.sources import open_source

    reader = open_source(str(out))
    assert reader.chunk_bytes_hint == 65536 and int(np.max(reader.table.decompressed_sizes)) == 16384


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(1000))
    for args in (["convert", str(tmp_path / "a.npy"), str(tmp_path / "b.npy.zst"), "--chunk-bytes", "1000"],
                 ["convert", str(tmp_path / "a.npy"), str(tmp_path / "b.npy.zst"), "--chunk-bytes", "4 parsecs"],
                 ["info", str(tmp_path / "a.npy"), "-o", "novalue"]):
        result = _cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2, result.stderr
        assert "lazymem" in result.stderr


def test_verify_without_checksums_says_so_and_fails_unless_sizes_only(tmp_path: Path) -> None:
    np.save(tmp_path / "plain.npy", np.arange(100_000))
    result = _cli("verify", str(tmp_path / "plain.npy"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "cannot verify" in result.stderr and "--sizes-only" in result.stderr
    sizes = _cli("verify", "--sizes-only", str(tmp_path / "plain.npy"))
    assert sizes.returncode == 0 and "sizes only" in sizes.stdout, sizes.stderr


def test_info_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    import os

    out = str(tmp_path / "a.npy.zst")
    lazymem.save(out, np.arange(100_000), chunk_bytes=65536)
    # `lazymem info x | head -1` where head has gone already: its end of the pipe is closed.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "lazymem", "info", out], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, check=False)
    finally:
        os.close(write_end)
    assert result.stderr == "" and result.returncode == 141, result.stderr


# -- zarr and any other source: info and convert ask the source interface ---------------------------


def _zarr_group(root: Path) -> tuple[str, np.ndarray]:
    zarr = pytest.importorskip("zarr")
    data = np.cumsum(np.random.default_rng(3).standard_normal((90, 64, 16)), axis=0).astype("<f4")
    group = zarr.open_group(str(root / "g.zarr"), mode="w")
    group.attrs["title"] = "reanalysis"
    t2m = group.create_array("t2m", shape=data.shape, dtype=data.dtype, chunks=(10, 32, 16), fill_value=0)
    t2m[:60] = data[:60]  # 12 of the 18 chunks stored
    group.create_array("sub/mask", shape=(5,), dtype="|u1")
    return str(root / "g.zarr"), np.where(np.arange(90)[:, None, None] < 60, data, 0).astype("<f4")


def test_info_on_a_zarr_array_text_and_json(tmp_path: Path) -> None:
    import json

    url, _ = _zarr_group(tmp_path)
    text = _cli("info", url, "--path", "t2m")
    assert text.returncode == 0, text.stderr
    for line in ("format          zarr", "shape           (90, 64, 16)", "chunk grid      (9, 2, 1)",
                 "codecs          bytes, zstd", "chunks total    18", "chunks present  12", "ratio"):
        assert line in text.stdout, text.stdout
    facts = json.loads(_cli("info", url + "/t2m", "--json").stdout)
    stored = sorted((Path(url) / "t2m" / "c").rglob("*"))
    chunk_files = [p for p in stored if p.is_file()]
    assert facts["zarr_format"] == 3 and facts["shape"] == [90, 64, 16] and facts["dtype"] == "<f4"
    assert facts["chunks"] == [10, 32, 16] and facts["chunks_present"] == len(chunk_files) == 12
    assert facts["stored_bytes"] == sum(p.stat().st_size for p in chunk_files)
    assert facts["nbytes"] == 90 * 64 * 16 * 4 and facts["codecs"] == ["bytes", "zstd"]


def test_info_on_a_group_lists_its_arrays(tmp_path: Path) -> None:
    url, _ = _zarr_group(tmp_path)
    result = _cli("info", url)
    assert result.returncode == 0, result.stderr
    assert "sub/mask" in result.stdout and "t2m" in result.stdout and "reanalysis" in result.stdout
    wrong = _cli("info", url, "--path", "t2n")
    assert wrong.returncode == 1 and "sub/mask, t2m" in wrong.stderr and "Traceback" not in wrong.stderr


def test_info_on_a_sharded_v2_and_remote_zarr(tmp_path: Path, http_store) -> None:
    import json

    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(store=str(http_store.dir / "s.zarr"), shape=(64, 64), dtype="<i2", chunks=(8, 8),
                          shards=(32, 64), zarr_format=3)
    z[...] = 1
    remote = _cli("info", f"{http_store.url}/s.zarr", "--json")
    assert remote.returncode == 0, remote.stderr
    facts = json.loads(remote.stdout)
    assert facts["shards"] == [32, 64] and facts["shard_grid"] == [2, 1] and facts["chunk_grid"] == [8, 8]
    assert facts["shard_index"]["location"] == "end" and "crc32c" in facts["shard_index"]["codecs"]
    assert facts["shards_present"] is None and facts["stored_bytes"] is None  # plain HTTP cannot list
    assert "cannot list" in facts["listing"]
    text = _cli("info", f"{http_store.url}/s.zarr").stdout
    assert "shards present  unknown" in text
    v2 = zarr.create_array(store=str(tmp_path / "v2.zarr"), shape=(30, 20), dtype=">f8", chunks=(7, 20),
                           zarr_format=2, order="F")
    v2[...] = 2.0
    facts = json.loads(_cli("info", str(tmp_path / "v2.zarr"), "--json").stdout)
    assert facts["zarr_format"] == 2 and facts["order"] == "F" and facts["chunks_present"] == 5


def test_info_json_of_a_native_file_keeps_the_text_output(tmp_path: Path) -> None:
    import json

    out = str(tmp_path / "a.npy.zst")
    lazymem.save(out, np.arange(100_000, dtype="<i8"), chunk_bytes=65536)
    facts = json.loads(_cli("info", out, "--json").stdout)
    assert facts["shape"] == [100_000] and facts["frames"] > 2
    assert facts["frame_places"] == "rows" and facts["nbytes"] == 800_000
    assert "frame places  proven by the seek table's CRCs" in _cli("info", out).stdout


def test_convert_a_zarr_array_with_a_progress_bar(tmp_path: Path) -> None:
    url, want = _zarr_group(tmp_path)
    out = str(tmp_path / "t2m.npy.zst")
    result = _cli("convert", url, out, "--path", "t2m", "--progress", "--max-resident", "1MiB")
    assert result.returncode == 0, result.stderr
    assert np.array_equal(lazymem.load(out), want) and lazymem.load(out).dtype == want.dtype
    assert "100%" in result.stderr and "B/s" in result.stderr and "360k/360k" in result.stderr  # 368,640 bytes
    quiet = _cli("convert", url + "/t2m", str(tmp_path / "q.npy.zst"))  # stderr is no terminal: no bar
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_convert_refuses_what_it_cannot_read_in_one_line(tmp_path: Path) -> None:
    import json

    url, _ = _zarr_group(tmp_path)
    zarray = Path(url) / "t2m" / "zarr.json"
    doc = json.loads(zarray.read_text())
    doc["codecs"].append({"name": "numcodecs.zfpy", "configuration": {"tolerance": 0.1}})
    zarray.write_text(json.dumps(doc))
    for args in (["convert", url, str(tmp_path / "x.npy.zst"), "--path", "t2m"], ["info", url, "--path", "t2m"]):
        result = _cli(*args)
        assert result.returncode == 1, result.stderr
        assert "'numcodecs.zfpy'" in result.stderr and "pip install" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # ~6 s: two conversions of 48 MiB
def test_convert_streams_in_bounded_memory(tmp_path: Path) -> None:
    """The peak RSS of the converting process grows with --max-resident, not with the array."""
    from .conftest import run_python

    zarr = pytest.importorskip("zarr")
    rows = np.cumsum(np.random.default_rng(9).standard_normal((1, 3072)), axis=1).astype("<f8")
    z = zarr.create_array(store=str(tmp_path / "big.zarr"), shape=(2048, 3072), dtype="<f8", chunks=(64, 3072))
    for start in range(0, 2048, 256):
        z[start : start + 256] = rows + np.arange(start, start + 256)[:, None]  # 48 MiB, compressible

    def peak_rss_kib(max_resident: str) -> int:
        # The converting process's own peak (VmHWM), not its children's: the monitor is one.
        result = run_python("""
            import sys
            from lazymem.cli import main
            assert main(sys.argv[1:]) == 0
            print([line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1])
            """, args=["convert", str(tmp_path / "big.zarr"), str(tmp_path / f"{max_resident}.npy.zst"),
                       "--max-resident", max_resident])
        assert result.returncode == 0, result.stderr
        return int(result.stdout.split()[-1])

    bounded, unbounded = peak_rss_kib("4MiB"), peak_rss_kib("1GiB")
    assert unbounded - bounded > 24 * 1024, (bounded, unbounded)  # KiB: half the array stayed out of memory
    got = lazymem.load(str(tmp_path / "4MiB.npy.zst"))
    assert np.array_equal(got, z[...])

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

"""The lazymem command line, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import lazymem

from .conftest import ROOT


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lazymem.cli", *args], capture_output=True, text=True,
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

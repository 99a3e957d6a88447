"""Damaged HDF5 metadata and chunk indexes: whatever h5py makes of a damaged file, lazymem raises
a LazymemError at open or on load, or reads exactly what h5py reads; never other data.

Each case runs in a child process: the HDF5 library itself may crash on some damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import run_python

h5py = pytest.importorskip("h5py")

CHILD = """
import json, sys, numpy as np, h5py, lazymem
from lazymem.sources.formats import open_array_source
path, edits = sys.argv[1], json.loads(sys.argv[2])
data = bytearray(open(path, "rb").read())
for pos, value in edits:
    data[pos % len(data)] = value
damaged = path + ".damaged"
open(damaged, "wb").write(bytes(data))
try:
    with h5py.File(damaged, "r") as f:
        want = f["x"][()]
except Exception:
    want = None
outcome = {}
try:
    got = lazymem.load(damaged, path="x")
except lazymem.LazymemError as exc:
    outcome["raised"] = type(exc).__name__
else:
    outcome["read"] = True
    outcome["same"] = want is not None and got.dtype == want.dtype and got.tobytes() == want.tobytes()
    outcome["h5py_failed"] = want is None
print("OUTCOME", json.dumps(outcome))
"""


def _sample(path: Path) -> int:
    data = np.cumsum(np.random.default_rng(0).standard_normal((40, 30)), axis=0).astype("<f4")
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=data, chunks=(8, 10), compression="gzip", shuffle=True)
        f.attrs["note"] = "fuzz"
    with h5py.File(path, "r") as f:
        d = f["x"]
        return min(d.id.get_chunk_info(i).byte_offset for i in range(d.id.get_num_chunks()))


@pytest.mark.slow  # ~40 child interpreters
def test_damaged_metadata_is_an_error_or_the_same_values(tmp_path: Path) -> None:
    path = tmp_path / "f.h5"
    metadata_end = _sample(path)
    size = path.stat().st_size
    rng = np.random.default_rng(11)
    outcomes = []
    for case in range(40):
        # Damage the metadata (before the first chunk) or, one case in four, the chunk data.
        end = metadata_end if case % 4 else size
        edits = [(int(rng.integers(0, end)), int(rng.integers(0, 256))) for _ in range(int(rng.integers(1, 4)))]
        result = run_python(CHILD, args=[str(path), json.dumps(edits)])
        line = [x for x in result.stdout.splitlines() if x.startswith("OUTCOME ")]
        if not line:  # the HDF5 library crashed on its own: not ours to judge, but no wrong data either
            outcomes.append({"crashed": result.returncode})
            continue
        outcome = json.loads(line[0][8:])
        outcomes.append(outcome)
        if outcome.get("read") and not outcome["h5py_failed"]:
            assert outcome["same"], (edits, outcome)
        # "Traceback" would mean an exception other than a LazymemError escaped
        assert "Traceback" not in result.stderr, (edits, result.stderr[-2000:])
    assert any("raised" in o for o in outcomes)  # the damage did bite somewhere

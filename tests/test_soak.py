"""Stress: several processes read lazy arrays while monitor processes are SIGKILLed at random.

``benchmarks/soak.py`` does the work (the soak runs it for minutes); here it runs briefly. The
chaos lives in the orchestrating process, which never touches lazy memory: a thread there can
never be held up by a reader blocked in a fault with its GIL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_readers_survive_monitor_processes_killed_at_random() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--seconds", "30"],
                            capture_output=True, text=True, env=env, timeout=380)
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["hung"] is False, report
    assert report["wrong_reads"] == 0 and report["arrays_whole_and_right"], report
    assert report["forked_children_bad"] == [] and report["spawned_exit_codes"] == [0, 0], report
    assert report["leaked_processes"] == [] and report["zombies"] == [], report
    assert report["fds_after"] == report["fds_before"], report
    assert report["stderr_other"] == [], report
    assert report["kills"] >= 3 and report["forked_children"] >= 3, report  # the chaos did happen
    assert report["ok"], report

"""Soak: lazy arrays read hard while monitor processes are killed at random.

    python3 benchmarks/soak.py --minutes 5        # the soak (results: benchmarks/RESULTS.md)
    python3 benchmarks/soak.py --seconds 30       # what tests/test_soak.py runs

Three processes' worth of roles:

* this process, the *orchestrator*, never touches lazy memory, so nothing here can block on a
  fault while holding the GIL: it writes the arrays, runs the *chaos* thread and judges;
* the *app* (``--app``) opens three arrays under ``max_resident`` pressure; threads read random
  slices and compare them byte for byte with the ``.npy`` sources; it forks children that read
  on two threads and exit mid-read, and runs spawned processes that unpickle lazy views (each
  with a monitor of its own);
* chaos SIGKILLs one random monitor process (supervisor, worker or idle standby, of any of
  those monitors) every 1-3 s. It first waits until every monitor is whole again (two live processes): killing
  the second process before the first is replaced is the one case nothing can repair when an
  app thread holds its GIL in a fault (README, limits).

Judged: zero wrong values (readers, children, spawned processes, and every array whole at the
end), no hang (the app must finish its run; a stuck thread shows as a join that never ends), no
leaked processes (every monitor process of the run has exited once the app has), no leaked fds
and no zombies in the app. Prints one JSON line; exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

# Bound once, here: numpy loads `np.random` lazily, under an import lock that a reader thread may
# hold at the instant another thread forks; the child would then wait for it for ever.
default_rng = np.random.default_rng
TAG = "LAZYMEM_SOAK_TAG"
ROOT = Path(__file__).resolve().parents[1]
ARRAYS = [  # name, shape, dtype, chunk bytes: three layouts, 80 MiB in all
    ("walk", (2**22,), "f8", 256 << 10),
    ("ints", (2048, 2048), "i4", 512 << 10),
    ("field", (4096, 1024), "f4", 1 << 20),
]
BUDGET_SHARE = 4  # max_resident = a quarter of each array: chunks are evicted all the time


# --- the orchestrator ---------------------------------------------------------------------------
def make_arrays(directory: Path) -> None:
    import lazymem

    rng = default_rng(2026)
    for name, shape, dtype, chunk in ARRAYS:
        if np.dtype(dtype).kind == "f":
            src = np.cumsum(rng.standard_normal(int(np.prod(shape)))).astype(dtype).reshape(shape)
        else:
            src = rng.integers(-(2**31), 2**31 - 1, size=shape, dtype=dtype)
        np.save(directory / f"{name}.npy", src)
        lazymem.save(str(directory / f"{name}.npy.zst"), src, chunk_bytes=chunk)


ROLES = {"lazymem-super": "supervisor", "lazymem-worker": "worker", "lazymem-standby": "standby"}


def monitor_processes(tag: str) -> dict[int, tuple[int, str]]:
    """Live monitor processes of this run: pid -> (session, role), roles named by the processes
    themselves (``/proc/PID/comm``). A standby holds nothing yet; it is fair game all the same."""
    found: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            role = ROLES.get(Path(f"/proc/{pid}/comm").read_text().strip())
            if role is None:
                continue
            if f"{TAG}={tag}".encode() not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] not in "ZX":  # a zombie holds nothing; its parent reaps it
            found[pid] = (int(fields[3]), role)
    return found


def whole(processes: dict[int, tuple[int, str]]) -> bool:
    """Every monitor (one per session) has its supervisor and its worker."""
    sessions: dict[int, list[str]] = {}
    for session, role in processes.values():
        if role != "standby":
            sessions.setdefault(session, []).append(role)
    return all(sorted(roles) == ["supervisor", "worker"] for roles in sessions.values())


def chaos(tag: str, stop: threading.Event, kills: list[str], seed: int) -> None:
    rng = random.Random(seed)
    while not stop.wait(rng.uniform(1.0, 3.0)):
        # Wait (on the pace of /proc, not a clock) until the last kill has been repaired.
        processes = monitor_processes(tag)
        while not whole(processes) and not stop.wait(0.05):
            processes = monitor_processes(tag)
        if stop.is_set() or not processes:
            return
        pid = rng.choice(sorted(processes))
        if os.environ.get("SOAK_DEBUG"):
            print(f"chaos: kill {pid} {processes[pid]} of {processes}", file=sys.stderr, flush=True)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        kills.append(processes[pid][1])


def wait_for_exit(pid: int, timeout: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def orchestrate(seconds: float, seed: int) -> dict[str, object]:
    tag = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="lazymem-soak-") as tmp:
        directory = Path(tmp)
        make_arrays(directory)
        env = {**os.environ, TAG: tag, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
            "PYTHONPATH")]))}
        app = subprocess.Popen([sys.executable, __file__, "--app", str(directory), "--seconds", str(seconds),
                                "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
        seen: set[int] = set()
        stop = threading.Event()
        kills: list[str] = []
        killer = threading.Thread(target=chaos, args=(tag, stop, kills, seed), daemon=True)
        killer.start()
        try:
            # No hang: the app stops reading after `seconds` and checks everything; a thread stuck
            # in a fault for good would keep it from ever printing its report.
            out, err = app.communicate(timeout=seconds + 180)
            hung = False
        except subprocess.TimeoutExpired:
            seen |= set(monitor_processes(tag))
            app.send_signal(signal.SIGUSR1)  # faulthandler: every thread's stack to stderr, GIL or not
            try:
                app.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            app.kill()
            out, err = app.communicate()
            hung = True
        finally:
            stop.set()
            killer.join()
        seen |= set(monitor_processes(tag))
        leaked = [pid for pid in seen if not wait_for_exit(pid, 60)]
        leaked += list(monitor_processes(tag))
    report = json.loads(out.splitlines()[-1]) if out.strip() and not hung else {}
    report.update(hung=hung, app_exit=app.returncode, kills=len(kills), killed_workers=kills.count("worker"),
                  killed_supervisors=kills.count("supervisor"), killed_standbys=kills.count("standby"),
                  leaked_processes=sorted(set(leaked)))
    # The app's stderr: what the monitors said (one line per death they repaired) and anything else.
    lines = [line for line in err.splitlines() if line.strip()]
    report["stderr_other"] = [line for line in lines if "starting a new one" not in line][:60]
    report["ok"] = bool(not hung and app.returncode == 0 and report.get("ok_app") and not report["leaked_processes"]
                        and not report["stderr_other"])
    return report


# --- the app --------------------------------------------------------------------------------------
def _fds() -> int:
    """Open fds, but pidfds: the watcher holds one on the monitor process it started while that lives."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[pidfd]"
        except OSError:  # the listing's own fd, closed by now
            pass
    return count


def _zombies() -> list[int]:
    me, found = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] == "Z" and fields[1] == me:
                found.append(int(entry))
    return found


def read_randomly(arrays: list, sources: list[np.ndarray], rng: np.random.Generator,
                  keep_going: threading.Event | None, count: list[int], until: float | None = None) -> int:
    """Read random slices until told to stop; return the number of wrong ones (stops at the first)."""
    while (keep_going is None or keep_going.is_set()) and (until is None or time.monotonic() < until):
        i = int(rng.integers(len(arrays)))
        lazy, src = arrays[i], sources[i]
        n = src.shape[0]
        start = int(rng.integers(n))
        stop = min(n, start + 1 + int(rng.integers(max(1, n // 64))))
        if np.asarray(lazy[start:stop]).tobytes() != src[start:stop].tobytes():
            return 1
        count[0] += 1
    return 0


def _forked_child(arrays: list, sources: list[np.ndarray], seed: int) -> None:
    """Read on two threads, then exit in the middle of it all."""
    try:
        rng = default_rng(seed)
        keep_going = threading.Event()
        keep_going.set()
        wrong: list[int] = []
        other = threading.Thread(target=lambda: wrong.append(read_randomly(
            arrays, sources, default_rng(seed + 1), keep_going, [0])), daemon=True)
        other.start()
        bad = read_randomly(arrays, sources, rng, None, [0], until=time.monotonic() + rng.uniform(0.05, 0.8))
        os._exit(3 if bad or any(wrong) else 0)  # the other thread is mid-read
    except BaseException:  # noqa: BLE001 - a forked child never returns into the app's code
        import traceback

        traceback.print_exc()
        os._exit(4)


def _view(a: np.ndarray, i: int) -> np.ndarray:
    """What a spawned process gets: a strided view, pickled by reference."""
    return a[i::2] if a.ndim == 1 else a[i::2, 1:]


def _spawned(views: list, npy: list[str], seconds: float, seed: int, i: int) -> None:
    sources = [_view(np.load(path, mmap_mode="r"), i) for path in npy]
    count = [0]
    until = time.monotonic() + seconds
    if read_randomly(views, sources, default_rng(seed), None, count, until=until):
        sys.exit(3)
    if any(np.asarray(v).tobytes() != s.tobytes() for v, s in zip(views, sources)):
        sys.exit(3)


def app(directory: Path, seconds: float, seed: int) -> int:
    import faulthandler

    import lazymem

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from lazymem.monitor.client import get_client

    npy = [str(directory / f"{name}.npy") for name, *_ in ARRAYS]
    sources = [np.load(path, mmap_mode="r") for path in npy]
    arrays = [lazymem.open(str(directory / f"{name}.npy.zst"), max_resident=src.nbytes // BUDGET_SHARE)
              for (name, *_), src in zip(ARRAYS, sources)]
    for a in arrays:
        a[0]
    client = get_client()
    until = time.monotonic() + seconds
    keep_going = threading.Event()
    keep_going.set()
    counts = [[0] for _ in range(3)]
    wrong: list[int] = []
    readers = [threading.Thread(target=lambda i=i: wrong.append(read_randomly(
        arrays, sources, default_rng(seed * 100 + i), keep_going, counts[i])), daemon=True)
        for i in range(3)]
    for reader in readers:
        reader.start()
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # its pipe stays open: count it in fds_before too
    fds_before = _fds()
    spawn = multiprocessing.get_context("spawn")
    spawned = [spawn.Process(target=_spawned, args=([_view(a, i) for a in arrays], npy, seconds, seed * 10 + i, i))
               for i in range(2)]
    for process in spawned:
        process.start()
    children = {"forked": 0, "ok": 0, "bad": []}
    child_seed = seed * 1000
    while time.monotonic() < until:
        child_seed += 1
        pid = os.fork()
        if pid == 0:
            _forked_child(arrays, sources, child_seed)
        _, status = os.waitpid(pid, 0)
        children["forked"] += 1
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            children["ok"] += 1
        else:
            children["bad"].append(os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status))
    keep_going.clear()
    for reader in readers:
        reader.join()  # a reader stuck in a fault for good hangs the app here: the orchestrator sees it
    exit_codes = []
    for process in spawned:
        process.join()
        exit_codes.append(process.exitcode)
        process.close()
    whole_ok = all(np.asarray(a).tobytes() == s.tobytes() for a, s in zip(arrays, sources))
    lazymem.stats(arrays[0])  # a live monitor answered: whatever restart was under way is done
    fds_after = _fds()
    zombies = _zombies()
    report = {
        "seconds": seconds,
        "reads": sum(c[0] for c in counts),
        "wrong_reads": sum(wrong),
        "arrays_whole_and_right": whole_ok,
        "forked_children": children["forked"],
        "forked_children_bad": children["bad"],
        "spawned_exit_codes": exit_codes,
        "app_restarts_of_both": client.generation,
        "fds_before": fds_before,
        "fds_after": fds_after,
        "zombies": zombies,
    }
    report["ok_app"] = bool(not report["wrong_reads"] and whole_ok and not children["bad"]
                            and exit_codes == [0, 0] and fds_after == fds_before
                            and not zombies)
    print(json.dumps(report), flush=True)
    return 0 if report["ok_app"] else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--app", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes if args.minutes is not None else 1)
    if args.app is not None:
        sys.exit(app(args.app, seconds, args.seed))
    report = orchestrate(seconds, args.seed)
    print(json.dumps(report), flush=True)
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()

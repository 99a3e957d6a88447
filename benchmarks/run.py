#!/usr/bin/env python3
"""lazymem benchmarks: lazy vs eager vs zarr vs the decode floor, on a local file in the page cache.

    python3 benchmarks/run.py --quick     # 256 MiB, 3 repetitions, < 2 minutes
    python3 benchmarks/run.py             # 1 GiB, 5 repetitions, plus a 16 GiB zeros array
    python3 benchmarks/run.py --huge-pages  # also lazy arrays on huge pages (root raises the pool)

Writes ``benchmarks/results/results-{quick,full}.json`` and ``benchmarks/results/touched_fraction.png``
(``--out`` to change), prints Markdown tables. Data files go to ``benchmarks/data/`` (git-ignored)
and are reused when they match. Contenders of a scenario run alternately within each repetition
(a seeded shuffle per repetition) and must give identical answers; medians are reported.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import contenders  # noqa: E402
import datagen  # noqa: E402
import hugepool  # noqa: E402
import report as results_report  # noqa: E402

import lazymem  # noqa: E402

MiB = 2**20
GiB = 2**30
CHUNK_BYTES = 4 * MiB
LEVEL = 3
FRACTIONS = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
SPARSE_FRACTIONS = [0.001, 0.01, 0.1]


_T0 = time.perf_counter()


def log(*args: Any) -> None:
    print(f"[{time.perf_counter() - _T0:5.0f} s]", *args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine description


def source_fingerprint() -> str:
    """SHA-256 of lazymem's Python sources: which version of the code the numbers belong to."""
    import hashlib

    digest = hashlib.sha256()
    root = Path(lazymem.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def machine_info() -> dict[str, Any]:
    import zstandard

    info: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zstandard": zstandard.__version__,
        "lazymem": getattr(lazymem, "__version__", "?"),
        "lazymem_source_sha256": source_fingerprint(),
    }
    try:
        from lazymem.monitor.client import get_client

        info["lazymem_zero_copy"] = bool(getattr(get_client(), "zero_copy", False))
    except Exception:  # noqa: BLE001 - informative only
        pass
    try:
        import zarr

        info["zarr"] = zarr.__version__
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- data


class Dataset:
    """The benchmark field in three formats: lazymem's .npy.zst, a plain .npy, a zarr v3 array."""

    def __init__(self, directory: Path, nbytes: int, seed: int = 0) -> None:
        self.n_time = datagen.n_steps_for(nbytes)
        self.shape = (self.n_time, datagen.N_LAT, datagen.N_LON)
        self.nbytes = int(np.prod(self.shape)) * 4
        stem = f"field-{self.nbytes // MiB}MiB-s{seed}"
        self.dir = directory
        self.zst = directory / f"{stem}.npy.zst"
        self.npy = directory / f"{stem}.npy"
        self.zarr = directory / f"{stem}.zarr"
        self.meta_path = directory / f"{stem}.json"
        self.seed = seed
        self.meta = {
            "shape": list(self.shape),
            "seed": seed,
            "generator": datagen.GENERATOR_VERSION,
            "chunk_bytes": CHUNK_BYTES,
            "level": LEVEL,
            "layout": "lazymem.save default frames (512 KiB), layout frame v2 (indexed)",  # older: rebuilt
        }

    def ready(self) -> bool:
        if not all(p.exists() for p in (self.zst, self.npy, self.zarr, self.meta_path)):
            return False
        try:
            return json.loads(self.meta_path.read_text()) == self.meta
        except ValueError:
            return False

    def build(self) -> None:
        import zarr

        self.dir.mkdir(parents=True, exist_ok=True)
        if self.ready():
            log(f"data: reusing {self.zst.name} ({self.zst.stat().st_size / MiB:.0f} MiB compressed)")
            return
        log(f"data: generating {self.shape} float32 ({self.nbytes / MiB:.0f} MiB) ...")
        t = time.perf_counter()
        field = datagen.generate(self.n_time, self.seed)
        log(f"data: generated in {time.perf_counter() - t:.1f} s; saving .npy.zst, .npy, .zarr ...")
        t = time.perf_counter()
        lazymem.save(str(self.zst), field, chunk_bytes=CHUNK_BYTES, level=LEVEL)
        log(f"data: lazymem.save {time.perf_counter() - t:.1f} s")
        np.save(self.npy, field)
        if self.zarr.exists():
            shutil.rmtree(self.zarr)
        steps_per_chunk = CHUNK_BYTES // datagen.STEP_BYTES  # (8, 256, 512) float32 = 4 MiB, as lazymem's
        t = time.perf_counter()
        z = zarr.create_array(
            store=str(self.zarr),
            shape=self.shape,
            dtype="float32",
            chunks=(steps_per_chunk, datagen.N_LAT, datagen.N_LON),
            compressors=zarr.codecs.ZstdCodec(level=LEVEL),
        )
        z[:] = field
        log(f"data: zarr write {time.perf_counter() - t:.1f} s")
        del field, z
        self.meta_path.write_text(json.dumps(self.meta))

    @property
    def compressed_bytes(self) -> int:
        return self.zst.stat().st_size

    def warm_page_cache(self) -> None:
        """Read every file once so that all contenders start from the OS page cache."""
        for path in [self.zst, self.npy, *sorted(self.zarr.rglob("*"))]:
            if path.is_file():
                with open(path, "rb") as f:
                    while f.read(16 * MiB):
                        pass


class ZeroChunkFiles:
    """The field with every other chunk (the odd ones) all zeros, written two ways.

    ``zero_frames``: ``lazymem.save``, which stores the zero chunks as zero frames. ``zstd_frames``:
    an ordinary zstd frame for every chunk, as writers made before zero frames. Made from the field's
    .npy and remade when that is newer.
    """

    def __init__(self, ds: Dataset) -> None:
        stem = f"{ds.npy.stem}-g{datagen.GENERATOR_VERSION}-odd-chunks-zero"
        self.source = ds.npy
        self.zero_frames = ds.dir / f"{stem}-zf.npy.zst"
        self.zstd_frames = ds.dir / f"{stem}-zstd.npy.zst"
        self.chunks_total = -(-ds.nbytes // CHUNK_BYTES)
        self.chunks_zero = self.chunks_total // 2

    def build(self) -> None:
        source_time = self.source.stat().st_mtime
        if all(p.exists() and p.stat().st_mtime > source_time for p in (self.zero_frames, self.zstd_frames)):
            log(f"data: reusing {self.zero_frames.name} and {self.zstd_frames.name}")
        else:
            t = time.perf_counter()
            data = np.load(self.source)
            flat, per_chunk = data.reshape(-1), CHUNK_BYTES // data.itemsize
            for start in range(per_chunk, flat.size, 2 * per_chunk):
                flat[start : start + per_chunk] = 0
            # One frame per chunk, as the zstd-frames file: the two differ in the zero frames alone.
            lazymem.save(str(self.zero_frames), data, chunk_bytes=CHUNK_BYTES, frame_bytes=CHUNK_BYTES, level=LEVEL)
            contenders.write_zstd_frames(str(self.zstd_frames), data, CHUNK_BYTES, LEVEL)
            for path in (self.zero_frames, self.zstd_frames):
                if not np.array_equal(lazymem.load(str(path)), data):
                    raise AssertionError(f"{path.name}: lazymem.load reads back other data")
            log(f"data: wrote {self.zero_frames.name} and {self.zstd_frames.name} in {time.perf_counter() - t:.1f} s")
            del data, flat
        for path in (self.zero_frames, self.zstd_frames):  # into the page cache
            with open(path, "rb") as f:
                while f.read(16 * MiB):
                    pass


def warm_huge_pages(ds: Dataset, pool: dict[str, Any]) -> bool:
    """One untimed lazy scan on huge pages: this VM's first use of pool pages is slow (host backing).

    False (and the reason in ``pool``) if the pool cannot hold the array after all.
    """
    t = time.perf_counter()
    try:
        a = lazymem.open(str(ds.zst), huge_pages=True)
    except lazymem.HugePagesUnavailableError as exc:
        log(f"huge pages: not used, {exc}; skipping the huge page contenders")
        pool.update(used=False, reason=str(exc))
        return False
    np.sum(a, dtype=np.float64)
    a.close()
    log(f"huge pages: warm-up scan {time.perf_counter() - t:.2f} s")
    return True


def warm_memory(nbytes: int) -> None:
    """Touch fresh memory once: the VM's first touch of never-used memory is ~10x slower (DESIGN.md)."""
    block = np.ones(nbytes // 8, dtype=np.float64)
    block[::512] += 1.0
    del block


# --------------------------------------------------------------------------- timing helpers


def monitor_cpu_seconds() -> float | None:
    """CPU time (user + system) used so far by the lazymem monitor process, if it is running."""
    try:
        from lazymem.monitor.client import get_client

        pid = get_client().monitor_pid
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except Exception:  # noqa: BLE001 - purely informative
        return None


def lazy_stats_dict(arr: Any) -> dict[str, Any]:
    s = lazymem.stats(arr)
    return {
        "bytes_fetched": s.bytes_fetched,
        "chunks_installed": s.chunks_installed,
        "chunks_total": s.chunks_total,
        "faults": s.faults,
        "readahead_chunks": s.readahead_chunks,
        "zero_chunks": s.zero_chunks,
        "fetch_seconds": s.fetch_seconds,
        "install_seconds": s.install_seconds,
    }


def cpu_jiffies() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def background_load(seconds: float = 2.0) -> float:
    """CPUs kept busy by other processes (this one sleeps meanwhile)."""
    busy0, _ = cpu_jiffies()
    time.sleep(seconds)
    busy1, _ = cpu_jiffies()
    return (busy1 - busy0) / seconds


WAIT_BUDGET = [0.0]  # seconds left for waiting on other processes, over the whole run


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> float:
    """Wait (up to max_wait s) until other processes use less than ``threshold`` CPUs; return the last load."""
    started = time.monotonic()
    max_wait = min(max_wait, WAIT_BUDGET[0])
    try:
        return _wait_for_quiet(max_wait, threshold)
    finally:
        WAIT_BUDGET[0] = max(0.0, WAIT_BUDGET[0] - (time.monotonic() - started))


def _wait_for_quiet(max_wait: float, threshold: float) -> float:
    deadline = time.monotonic() + max_wait
    load = background_load()
    while load > threshold and time.monotonic() < deadline:
        log(f"machine busy: other processes use {load:.1f} CPUs; waiting ...")
        time.sleep(10)
        load = background_load()
    return load


BUSY_THRESHOLD = 0.25  # CPUs used by other processes during a timed run before it is redone
RETRIES_IF_BUSY = 3
QUIET_WAIT = 120.0


def keep(obj: Any) -> dict[str, Any]:
    """Free ``obj`` (an eagerly loaded array) only after the timer stops, as lazy arrays are closed."""
    return {"_after": lambda: {"kept": type(obj).__name__}}


def finish(arr: Any) -> Callable[[], dict[str, Any]]:
    """Stats and close of a lazy array, run after the timer stops (not part of the read)."""

    def after() -> dict[str, Any]:
        info = lazy_stats_dict(arr)
        arr.close()
        return info

    return after


class Contender:
    """One way to get the answer: ``fn()`` returns (answer, info); info may hold lazymem stats."""

    def __init__(self, name: str, fn: Callable[[], tuple[Any, dict[str, Any]]]) -> None:
        self.name = name
        self.fn = fn
        self.times: list[float] = []
        self.infos: list[dict[str, Any]] = []
        self.answer: Any = None

    def _run(self) -> tuple[float, Any, dict[str, Any]]:
        gc.collect()
        cpu0 = monitor_cpu_seconds()
        busy0, steal0 = cpu_jiffies()
        p0 = time.process_time()
        t0 = time.perf_counter()
        answer, info = self.fn()
        elapsed = time.perf_counter() - t0
        app_cpu = time.process_time() - p0
        busy1, steal1 = cpu_jiffies()
        info = dict(info)
        info["app_cpu_seconds"] = app_cpu
        cpu1 = monitor_cpu_seconds()
        after = info.pop("_after", None)
        if after is not None:
            info.update(after())
        monitor_cpu = 0.0
        if cpu0 is not None and cpu1 is not None:
            monitor_cpu = info["monitor_cpu_seconds"] = cpu1 - cpu0
        # CPUs used meanwhile by other processes on the machine (noise), and stolen by the host.
        info["others_cpus"] = max(0.0, (busy1 - busy0) - app_cpu - monitor_cpu) / elapsed
        info["steal_cpus"] = (steal1 - steal0) / elapsed
        return elapsed, answer, info

    def run_once(self) -> None:
        """Time one run; redo it (after waiting for quiet) if other processes took CPU meanwhile."""
        for attempt in range(RETRIES_IF_BUSY + 1):
            elapsed, answer, info = self._run()
            # /proc/stat counts in 10 ms ticks: only runs of 0.3 s or more can be judged.
            if (
                elapsed < 0.3
                or info["others_cpus"] <= BUSY_THRESHOLD
                or attempt == RETRIES_IF_BUSY
                or WAIT_BUDGET[0] <= 0
            ):
                break
            log(f"    {self.name}: other processes used {info['others_cpus']:.2f} CPUs during the run; redoing it")
            WAIT_BUDGET[0] -= elapsed
            wait_for_quiet(QUIET_WAIT)
        info["redone"] = attempt
        self.times.append(elapsed)
        self.infos.append(info)
        self.answer = answer

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "median_s": statistics.median(self.times),
            "min_s": min(self.times),
            "times_s": self.times,
        }
        keys = set().union(*(i.keys() for i in self.infos)) if self.infos else set()
        for key in sorted(keys):
            values = [i[key] for i in self.infos if key in i]
            if values and all(isinstance(v, (int, float)) for v in values):
                out[key] = statistics.median(values)
        return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


WARMUP = True  # one untimed round per scenario before the timed ones (off in quick mode)


def run_order(entrants: list[Contender], rep: int) -> list[Contender]:
    """A different order each repetition, seeded: not a rotation, which keeps every contender behind
    the same predecessor (on this VM memory freed by one run and reused within ~2 s by the next costs
    a tenth of memory the host has taken back, so a fixed predecessor biases a contender)."""
    order = list(entrants)
    random.Random(rep).shuffle(order)
    return order


def compete(title: str, entrants: list[Contender], reps: int) -> list[dict[str, Any]]:
    """Run the entrants alternately (a different order each time) ``reps`` times; check they agree."""
    if WARMUP:
        for c in entrants:
            c.run_once()
            c.times.clear()
            c.infos.clear()
    for rep in range(reps):
        for c in run_order(entrants, rep):
            c.run_once()
    reference = entrants[0]
    for c in entrants[1:]:
        if not same(c.answer, reference.answer):
            raise AssertionError(
                f"{title}: {c.name} disagrees with {reference.name}: {c.answer!r} != {reference.answer!r}"
            )
    results = [c.summary() for c in entrants]
    log(f"  {title}: " + ", ".join(f"{r['name']} {r['median_s'] * 1e3:.1f} ms" for r in results))
    for c in entrants:
        c.answer = None
    return results


# --------------------------------------------------------------------------- scenarios


def full_scan(ds: Dataset, reps: int, huge_pages: bool = False) -> list[dict[str, Any]]:
    import zarr

    url = str(ds.zst)

    def lazy(**options: Any) -> tuple[Any, dict[str, Any]]:
        a = lazymem.open(url, **options)
        total = np.sum(a, dtype=np.float64)
        return float(total), {"_after": finish(a)}

    def load() -> tuple[Any, dict[str, Any]]:
        b = lazymem.load(url)
        return float(np.sum(b, dtype=np.float64)), keep(b)

    def load_only() -> tuple[Any, dict[str, Any]]:
        # What the "load / decode floor" compares: the floor does no sum either. Its data
        # is the same as "lazymem.load + sum"'s, whose sum is checked.
        return None, keep(lazymem.load(url))

    def naive() -> tuple[Any, dict[str, Any]]:
        b = contenders.naive_load(url)
        return float(np.sum(b, dtype=np.float64)), keep(b)

    floor = contenders.DecodeFloor(url)

    def decode_floor() -> tuple[Any, dict[str, Any]]:
        floor.run()
        return None, {}

    def decode_floor_fresh() -> tuple[Any, dict[str, Any]]:
        return None, keep(floor.run_fresh())

    warm = np.ones_like(floor.out)  # touched: resident, as the floor's own buffer

    def load_warm() -> tuple[Any, dict[str, Any]]:
        # lazymem.load under the floor's conditions: into memory allocated and touched beforehand.
        lazymem.load(url, out=warm)
        return None, {}

    def sum_alone() -> tuple[Any, dict[str, Any]]:
        # The sum every "+ sum" contender pays, on the decoded array in memory (floor.out).
        return float(np.sum(floor.out, dtype=np.float64)), {}

    def zarr_read() -> tuple[Any, dict[str, Any]]:
        b = zarr.open_array(str(ds.zarr), mode="r")[:]
        return float(np.sum(b, dtype=np.float64)), keep(b)

    def npy_load() -> tuple[Any, dict[str, Any]]:
        b = np.load(ds.npy)
        return float(np.sum(b, dtype=np.float64)), keep(b)

    def npy_mmap() -> tuple[Any, dict[str, Any]]:
        return float(np.sum(np.load(ds.npy, mmap_mode="r"), dtype=np.float64)), {}

    entrants = [
        Contender("lazymem.open + sum", lazy),
        Contender("lazymem.load + sum", load),
        Contender("naive serial zstd + sum", naive),
        Contender("decode floor (no sum)", decode_floor),
        Contender("zarr z[:] + sum", zarr_read),
        Contender("np.load(.npy) + sum", npy_load),
        Contender("np.load(.npy, mmap) + sum", npy_mmap),
        Contender("lazymem.load (no sum)", load_only),
        Contender("decode floor into fresh memory (no sum)", decode_floor_fresh),
        Contender("lazymem.load into a warm array (no sum)", load_warm),
        Contender("np.sum alone (array in memory)", sum_alone),
    ]
    if huge_pages:
        entrants.append(Contender("lazymem.open(huge_pages) + sum", lambda: lazy(huge_pages=True)))
    try:
        # The floor produces no sum: check its buffer once, outside timing, then leave it out of
        # the agreement check.
        floor.run()
        if not np.array_equal(floor.out, np.load(ds.npy, mmap_mode="r")):
            raise AssertionError("decode floor: decoded data differs from the .npy")
        results = _compete_floor(entrants, reps)
    finally:
        floor.close()
    return results


def _compete_floor(entrants: list[Contender], reps: int) -> list[dict[str, Any]]:
    # Same as compete(), but contenders without an answer (the floor, a load without a sum) are not compared.
    for c in entrants:  # always warm up here, quick mode too: the first scan of the run pays for fresh memory
        c.run_once()
        c.times.clear()
        c.infos.clear()
    for rep in range(reps):
        for c in run_order(entrants, rep):
            c.run_once()
    reference = entrants[0]
    for c in entrants[1:]:
        if c.answer is None:
            continue
        if not same(c.answer, reference.answer):
            raise AssertionError(
                f"full scan: {c.name} disagrees with {reference.name}: {c.answer!r} != {reference.answer!r}"
            )
    results = [c.summary() for c in entrants]
    log("  full scan: " + ", ".join(f"{r['name']} {r['median_s'] * 1e3:.0f} ms" for r in results))
    return results


def chunk_sample(ds: Dataset, fraction: float, seed: int = 1) -> tuple[np.ndarray, int]:
    """Flat element indices: one random element in each of ``fraction`` of the chunks (random chunks)."""
    per_chunk = CHUNK_BYTES // 4
    n_chunks = -(-int(np.prod(ds.shape)) // per_chunk)
    k = max(1, round(fraction * n_chunks))
    rng = np.random.default_rng(seed)
    chunks = np.sort(rng.choice(n_chunks, size=k, replace=False))
    total = int(np.prod(ds.shape))
    offsets = rng.integers(0, per_chunk, size=k)
    idx = np.minimum(chunks * per_chunk + offsets, total - 1)
    return idx.astype(np.int64), n_chunks


def touched_fraction(ds: Dataset, reps: int, fractions: list[float]) -> list[dict[str, Any]]:
    """One element in each of a fraction of the chunks: the cost of laziness vs loading everything."""
    import zarr

    url = str(ds.zst)
    table = contenders.SeekTable(url)
    out = []
    for fraction in fractions:
        idx, n_chunks = chunk_sample(ds, fraction)
        coords = np.unravel_index(idx, ds.shape)
        touched = np.unique(idx // (CHUNK_BYTES // 4))
        ideal_bytes = int(table.csize[1 + touched].sum())  # frame 0 is the header

        def lazy(idx: np.ndarray = idx) -> tuple[Any, dict[str, Any]]:
            a = lazymem.open(url)
            values = a.reshape(-1)[idx]
            return values, {"_after": finish(a)}

        def lazy_prefetch(coords: Any = coords) -> tuple[Any, dict[str, Any]]:
            # The batch API: name the elements first, and the monitor loads their chunks concurrently.
            # (3-D coordinates: prefetch with a fancy index on a huge 1-D view costs O(its length).)
            a = lazymem.open(url)
            a.prefetch(coords)
            values = a[coords]
            return values, {"_after": finish(a)}

        def load(idx: np.ndarray = idx) -> tuple[Any, dict[str, Any]]:
            b = lazymem.load(url)
            return b.reshape(-1)[idx], {"bytes_fetched": ds.compressed_bytes, **keep(b)}

        def zarr_vindex(coords: Any = coords) -> tuple[Any, dict[str, Any]]:
            z = zarr.open_array(str(ds.zarr), mode="r")
            return z.vindex[coords], {}

        def zarr_loop(coords: Any = coords) -> tuple[Any, dict[str, Any]]:
            z = zarr.open_array(str(ds.zarr), mode="r")
            return np.array([z[t, i, j] for t, i, j in zip(*coords)], dtype=np.float32), {}

        def mmap(idx: np.ndarray = idx) -> tuple[Any, dict[str, Any]]:
            return np.load(ds.npy, mmap_mode="r").reshape(-1)[idx], {}

        entrants = [
            Contender("lazymem.open", lazy),
            Contender("lazymem.load", load),
            Contender("zarr vindex", zarr_vindex),
            Contender("lazymem.open + prefetch(idx)", lazy_prefetch),
        ]
        if fraction <= 0.1:
            entrants += [Contender("zarr z[t,i,j] loop", zarr_loop), Contender("npy mmap", mmap)]
        results = compete(f"touched {fraction:g} ({len(touched)}/{n_chunks} chunks)", entrants, reps)
        out.append(
            {
                "fraction": fraction,
                "chunks_touched": len(touched),
                "chunks_total": n_chunks,
                "ideal_bytes": ideal_bytes,
                "results": results,
            }
        )
    return out


def strided(ds: Dataset, reps: int, quick: bool = False) -> list[dict[str, Any]]:
    import zarr

    url = str(ds.zst)
    nt, ny, nx = ds.shape
    cases: list[tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = [
        # (name, numpy access, zarr access)
        ("every 1000th element", lambda a: np.asarray(a.reshape(-1)[::1000]).copy(), None),
        (
            "time series at one point a[:, 128, 256]",
            lambda a: np.array(a[:, ny // 2, nx // 2]),
            lambda z: z[:, ny // 2, nx // 2],
        ),
        (
            "every 64th time step a[::64].mean()",
            lambda a: float(np.mean(a[::64], dtype=np.float64)),
            lambda z: float(np.mean(z[::64], dtype=np.float64)),
        ),
    ]
    if quick:
        cases = cases[1:]  # every 1000th element touches every chunk: the full scan again
    out = []
    for name, access, zaccess in cases:

        def lazy(access: Any = access) -> tuple[Any, dict[str, Any]]:
            a = lazymem.open(url)
            value = access(a)
            return value, {"_after": finish(a)}

        def load(access: Any = access) -> tuple[Any, dict[str, Any]]:
            b = lazymem.load(url)
            return access(b), keep(b)

        def mmap(access: Any = access) -> tuple[Any, dict[str, Any]]:
            return access(np.load(ds.npy, mmap_mode="r")), {}

        def zarr_read(zaccess: Any = zaccess) -> tuple[Any, dict[str, Any]]:
            return zaccess(zarr.open_array(str(ds.zarr), mode="r")), {}

        def zarr_flat(access: Any = access) -> tuple[Any, dict[str, Any]]:
            # zarr has no flat strided view: step along the flattened array by hand.
            z = zarr.open_array(str(ds.zarr), mode="r")
            flat = np.arange(0, nt * ny * nx, 1000)
            return z.vindex[np.unravel_index(flat, ds.shape)], {}

        entrants = [
            Contender("lazymem.open", lazy),
            Contender("lazymem.load", load),
            Contender("zarr", zarr_read if zaccess is not None else zarr_flat),
            Contender("npy mmap", mmap),
        ]
        out.append({"case": name, "results": compete(name, entrants, reps)})
    return out


def zero_chunks(zc: ZeroChunkFiles, reps: int) -> dict[str, Any]:
    """Full scan of a field with every other chunk all zeros: zero frames against ordinary zstd frames."""
    files = {"zero frames": str(zc.zero_frames), "zstd frames": str(zc.zstd_frames)}

    def lazy(url: str) -> tuple[Any, dict[str, Any]]:
        a = lazymem.open(url)
        return float(np.sum(a, dtype=np.float64)), {"_after": finish(a)}

    def load(url: str) -> tuple[Any, dict[str, Any]]:
        b = lazymem.load(url)
        return float(np.sum(b, dtype=np.float64)), keep(b)

    entrants = [
        Contender(f"{name} + sum, {kind}", lambda fn=fn, url=url: fn(url))
        for name, fn in (("lazymem.open", lazy), ("lazymem.load", load))
        for kind, url in files.items()
    ]
    results = compete("zero chunks", entrants, reps)
    t = {r["name"]: r["median_s"] for r in results}
    return {
        "files": {kind: {"file": Path(url).name, "bytes": os.path.getsize(url)} for kind, url in files.items()},
        "chunks_total": zc.chunks_total,
        "chunks_zero": zc.chunks_zero,
        "results": results,
        "ratios": {
            f"{name}: zero frames / zstd frames": t[f"{name} + sum, zero frames"] / t[f"{name} + sum, zstd frames"]
            for name in ("lazymem.open", "lazymem.load")
        },
    }


def first_element(
    ds: Dataset, reps: int, huge: list[tuple[str, str, int]], huge_pages: bool = False
) -> tuple[list, list]:
    """open() + one element, monitor already running: what a user waits for before the first value."""
    import zarr

    out, errors = [], []
    field = str(ds.zst)
    targets = [(f"{ds.nbytes // MiB} MiB field", field, ds.nbytes, {})]
    if huge_pages:
        targets.append((f"{ds.nbytes // MiB} MiB field, huge_pages=True", field, ds.nbytes, {"huge_pages": True}))
    targets += [(label, url, nbytes, {}) for label, url, nbytes in huge]
    for label, url, nbytes, options in targets:
        opens: list[float] = []
        firsts: list[float] = []
        lasts: list[float] = []
        totals: list[float] = []
        try:
            for _ in range(max(reps, 5)):
                gc.collect()
                t0 = time.perf_counter()
                a = lazymem.open(url, **options)
                t1 = time.perf_counter()
                flat = a.reshape(-1)
                v0 = float(flat[0])
                t2 = time.perf_counter()
                v1 = float(flat[-1])
                t3 = time.perf_counter()
                st = lazymem.stats(a)
                a.close()
                del a, flat
                opens.append(t1 - t0)
                firsts.append(t2 - t1)
                lasts.append(t3 - t2)
                totals.append(t2 - t0)
        except Exception as exc:  # noqa: BLE001 - reported in the results, not fatal
            log(f"  first element, {label}: FAILED {type(exc).__name__}: {exc}")
            errors.append({"target": label, "error": f"{type(exc).__name__}: {exc}"})
            continue
        entry = {
            "target": label,
            "open_options": options,
            "nbytes": nbytes,
            "file_bytes": os.path.getsize(url),
            "open_s": statistics.median(opens),
            "first_touch_s": statistics.median(firsts),
            "last_element_s": statistics.median(lasts),
            "open_plus_first_s": statistics.median(totals),
            "chunks_total": st.chunks_total,
            "values": [v0, v1],
        }
        if url == field:
            m = np.load(ds.npy, mmap_mode="r").reshape(-1)
            if [v0, v1] != [float(m[0]), float(m[-1])]:
                raise AssertionError(f"{label}: read back {v0}, {v1}; the .npy holds {m[0]}, {m[-1]}")
            del m
        elif v0 != 0.0 or v1 != 0.0:
            raise AssertionError(f"{label}: zeros array read back {v0}, {v1}")
        if url == field and not options:
            zt, mt = [], []
            for _ in range(max(reps, 5)):
                t0 = time.perf_counter()
                z = zarr.open_array(str(ds.zarr), mode="r")
                zv = float(z[0, 0, 0])
                zt.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                m = np.load(ds.npy, mmap_mode="r")
                mv = float(m[0, 0, 0])
                mt.append(time.perf_counter() - t0)
                del m
            assert zv == mv == v0, (zv, mv, v0)
            entry["zarr_open_plus_first_s"] = statistics.median(zt)
            entry["npy_mmap_open_plus_first_s"] = statistics.median(mt)
        log(
            f"  first element, {label}: open {entry['open_s'] * 1e3:.1f} ms + a[0] "
            f"{entry['first_touch_s'] * 1e3:.1f} ms"
        )
        out.append(entry)
    return out, errors


def make_huge(directory: Path, quick: bool) -> list[tuple[str, str, int]]:
    """Huge all-zeros arrays that cost nothing to store: 1 TiB written directly, 16 GiB via lazymem.save."""
    out = []
    tib = directory / "zeros-1TiB-zf-ix.npy.zst"  # zero frames, a layout frame with its index (as lazymem.save now)
    if not tib.exists():
        contenders.write_zeros_seekable(str(tib), 2**40 // 4)
    out.append(("1 TiB zeros (hand-written file)", str(tib), 2**40))
    if not quick:
        g16 = directory / "zeros-16GiB-saved-ix.npy.zst"  # lazymem.save's default frames, indexed layout frame
        if not g16.exists():
            t = time.perf_counter()
            lazymem.save(str(g16), np.broadcast_to(np.float32(0), (16 * GiB // 4,)))
            log(
                f"data: lazymem.save of a 16 GiB broadcast zeros view: {time.perf_counter() - t:.1f} s, "
                f"{g16.stat().st_size / MiB:.1f} MiB"
            )
        out.append(("16 GiB zeros (lazymem.save of a broadcast view)", str(g16), 16 * GiB))
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="256 MiB, 3 repetitions (< 2 minutes)")
    p.add_argument("--size-mb", type=int, help="array size in MiB (default 256 quick, 1024 full)")
    p.add_argument("--reps", type=int, help="repetitions (default 3 quick, 5 full)")
    p.add_argument("--data-dir", type=Path, default=HERE / "data")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--no-huge", action="store_true", help="skip the huge zeros arrays")
    p.add_argument("--scan-only", action="store_true",
                   help="only the full-scan scenario; results to results-scan.json, the other results stay")
    p.add_argument(
        "--huge-pages",
        action="store_true",
        help="also time lazy arrays on huge pages (lazymem.open(huge_pages=True)); as root, raise "
        "/proc/sys/vm/nr_hugepages for the run and restore it at exit",
    )
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="wait up to this many seconds for other processes to leave the CPUs idle, at the start "
        "and before redoing a run they disturbed (runs are redone up to 3 times either way)",
    )
    p.add_argument(
        "--wait-budget",
        type=float,
        help="most seconds spent waiting for quiet and redoing disturbed runs, in total (default 30 quick, 900 full)",
    )
    p.add_argument("--replot", type=Path, help="only redraw the plot and tables from a results JSON")
    args = p.parse_args(argv)
    if args.replot:
        print(results_report.redraw(args.replot))
        return 0
    global WARMUP, QUIET_WAIT
    WARMUP = not args.quick
    QUIET_WAIT = args.wait_quiet
    WAIT_BUDGET[0] = args.wait_budget if args.wait_budget is not None else (30.0 if args.quick else 900.0)

    size = (args.size_mb or (256 if args.quick else 1024)) * MiB
    ds = Dataset(args.data_dir, size)
    if args.huge_pages:
        pool_context: Any = hugepool.huge_page_pool(ds.nbytes, log)
    else:
        pool_context = contextlib.nullcontext(hugepool.describe())
    with pool_context as pool:
        run(args, ds, pool)
    return 0


def run(args: argparse.Namespace, ds: Dataset, pool: dict[str, Any]) -> None:
    mode = "quick" if args.quick else "full"
    reps = args.reps or (3 if args.quick else 5)
    start = time.perf_counter()

    ds.build()
    ds.warm_page_cache()
    quiet = wait_for_quiet(args.wait_quiet)
    log(f"warming up memory ({3 * ds.nbytes / GiB:.1f} GiB) ...")
    warm_memory(3 * ds.nbytes)
    huge_pages = bool(pool["used"]) and warm_huge_pages(ds, pool)

    report: dict[str, Any] = {
        "mode": mode,
        "reps": reps,
        "machine": {**machine_info(), "huge_pages": pool},
        "dataset": {
            "shape": list(ds.shape),
            "dtype": "float32",
            "nbytes": ds.nbytes,
            "compressed_bytes": ds.compressed_bytes,
            "chunk_bytes": CHUNK_BYTES,
            "level": LEVEL,
            "file": ds.zst.name,
        },
        "command": "python3 " + " ".join(sys.argv),
        "background_cpus_at_start": quiet,
    }
    log("full scan ...")
    report["full_scan"] = full_scan(ds, reps, huge_pages)
    if args.scan_only:
        report["ratios"] = results_report.ratios(report)
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / "results-scan.json"
        json_path.write_text(json.dumps(report, indent=1))
        print(results_report.scan_only_markdown(report))
        log(f"wrote {json_path}")
        return
    log("touched fraction ...")
    # With 64 chunks (quick mode) 0.1 % and 1 % of the chunks are both one chunk: keep the larger.
    n_chunks = -(-ds.nbytes // CHUNK_BYTES)
    counts = {f: max(1, round(f * n_chunks)) for f in FRACTIONS}
    fractions = [f for f in FRACTIONS if not any(counts[g] == counts[f] for g in FRACTIONS if g > f)]
    if args.quick:
        fractions.remove(0.5)  # time budget
    report["touched_fraction"] = touched_fraction(ds, reps, fractions)
    log("strided ...")
    report["strided"] = strided(ds, reps, args.quick)
    log("zero chunks ...")
    zc = ZeroChunkFiles(ds)
    zc.build()
    report["zero_chunks"] = zero_chunks(zc, reps)
    log("first element ...")
    huge = [] if args.no_huge else make_huge(args.data_dir, args.quick)
    report["first_element"], report["first_element_errors"] = first_element(ds, reps, huge, huge_pages)
    report["ratios"] = results_report.ratios(report)
    report["elapsed_s"] = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"results-{mode}.json"
    json_path.write_text(json.dumps(report, indent=1))
    png = args.out / results_report.plot_name(mode)
    print(results_report.render(report, png))
    log(f"wrote {json_path} and {png} in {report['elapsed_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())

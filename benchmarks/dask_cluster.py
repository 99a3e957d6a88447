"""A full reduction of the 1 GiB field on a 2-worker dask LocalCluster: lazymem against zarr.

Contenders, alternated in a shuffled order each repetition, on one cluster (worker processes):

* ``lazymem.to_dask``: ``lazymem.to_dask(path).sum(dtype=float64)``, default blocks (whole install
  units, about dask's ``array.chunk-size``);
* ``da.from_zarr``: the same field as a zarr v3 array with the same 4 MiB chunks and zstd level,
  default dask chunks (the stored ones);
* ``da.from_zarr, same blocks``: the same, rechunked at open to lazymem's blocks;
* ``xr.open_dataset(zarr, chunks={})``: xarray over the zarr store (a group holding the array with
  dimension names), ``ds.t.sum()``.

Files are local and in the OS page cache (read through once), so this measures decompression,
installs and dask, not a disk. Between runs the workers drop the arrays they keep open
(``lazymem.reopened.forget_all``), so every lazy run fetches everything again. Bytes read per
worker: lazymem's ``stats`` for the lazy array (fetched by each worker's monitor); ``rchar`` of
``/proc/self/io`` for zarr (read by the worker itself).

    python benchmarks/dask_cluster.py [--size-mb 1024] [--repeat 5] [--data-dir benchmarks/data]

Writes ``benchmarks/results/dask_cluster.json`` and prints a Markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402
from field import Dataset, read_through  # noqa: E402
from harness import log  # noqa: E402
from machine import background_load  # noqa: E402

import lazymem  # noqa: E402
from lazymem import reopened  # noqa: E402
from lazymem.integrations.dask import opened_here  # noqa: E402

MiB = 2**20


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


def _forget() -> None:
    reopened.forget_all()
    gc.collect()


def xarray_store(ds: Dataset) -> Path:
    """The field as a zarr group holding array ``t`` with dimension names (what xarray opens)."""
    import zarr
    from zarr.codecs import ZstdCodec

    path = ds.dir / f"{ds.zarr.stem}-xarray.zarr"
    marker = path.with_name(path.name + ".complete")  # beside it: zarr warns of unknown files inside
    if marker.exists():
        return path
    log("data: writing the zarr group for xarray ...")
    src = zarr.open_array(str(ds.zarr), mode="r")
    group = zarr.open_group(str(path), mode="w")
    t = group.create_array("t", shape=src.shape, dtype=src.dtype, chunks=src.chunks,
                           compressors=ZstdCodec(level=3), dimension_names=("time", "lat", "lon"))
    step = src.chunks[0] * 16
    for i in range(0, src.shape[0], step):
        t[i:i + step] = src[i:i + step]
    marker.write_text("")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--data-dir", type=Path, default=HERE / "data")
    args = parser.parse_args()

    import xarray as xr

    ds = Dataset(args.data_dir, args.size_mb * MiB)
    ds.build()
    xpath = xarray_store(ds)
    read_through([ds.zst, *sorted(ds.zarr.rglob("*")), *sorted(xpath.rglob("*"))])
    blocks = lazymem.to_dask(str(ds.zst)).chunks
    lazymem.reopened.forget_all()

    contenders = {
        "lazymem.to_dask": lambda: lazymem.to_dask(str(ds.zst)).sum(dtype=np.float64),
        "da.from_zarr": lambda: da.from_zarr(str(ds.zarr)).sum(dtype=np.float64),
        "da.from_zarr, same blocks": lambda: da.from_zarr(str(ds.zarr), chunks=blocks).sum(dtype=np.float64),
        "xr.open_dataset(zarr, chunks={})": lambda: xr.open_dataset(str(xpath), engine="zarr",
                                                                    chunks={}).t.sum(dtype=np.float64).data,
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    per_worker: dict[str, list[list[int]]] = {name: [] for name in contenders}
    tasks: dict[str, int] = {}
    answers: dict[str, float] = {}
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(2)
        for rep in range(args.repeat + 1):  # the first round warms up (imports, monitors), untimed
            order = list(contenders)
            random.Random(rep).shuffle(order)
            for name in order:
                client.run(_forget)
                before = client.run(_rchar)
                load = background_load(0.5)
                t = time.perf_counter()
                graph = contenders[name]()
                answer = float(graph.compute())
                seconds = time.perf_counter() - t
                after = client.run(_rchar)
                if name.startswith("lazymem"):
                    read = [sum(s.bytes_fetched for s in stats.values()) for stats in client.run(opened_here).values()]
                else:
                    read = [after[w] - before[w] for w in sorted(after)]
                tasks[name] = len(graph.__dask_graph__())
                answers[name] = answer
                del graph
                if rep:
                    times[name].append(seconds)
                    per_worker[name].append(read)
                log(f"rep {rep} {name}: {seconds:.2f} s, read per worker {[f'{r / MiB:.0f} MiB' for r in read]}, "
                    f"background load {load:.1f} CPUs")
    reference = answers["da.from_zarr"]
    for name, answer in answers.items():
        assert abs(answer - reference) <= 1e-9 * abs(reference), (name, answer, reference)
    lazy = statistics.median(times["lazymem.to_dask"])
    rows = []
    for name in contenders:
        median = statistics.median(times[name])
        workers = np.median(np.array(per_worker[name]), axis=0) / MiB
        rows.append({"contender": name, "median_s": median, "runs_s": times[name],
                     "ratio_lazy_over_this": lazy / median, "read_per_worker_MiB": [float(w) for w in workers],
                     "graph_tasks": tasks[name]})
    result = {"dataset": ds.describe(), "zarr_chunks_bytes": 4 * MiB, "lazy_blocks_rows": blocks[0][0],
              "workers": 2, "threads_per_worker": 1, "repeat": args.repeat, "rows": rows}
    out = HERE / "results" / "dask_cluster.json"
    out.write_text(json.dumps(result, indent=2))
    stored = ds.compressed_bytes / MiB
    print(f"\nFull reduction of the {ds.nbytes / MiB:.0f} MiB field ({stored:.0f} MiB stored), 2 workers x 1 thread, "
          f"medians of {args.repeat}:\n")
    print("| contender | median (s) | lazy / this | read per worker (MiB) | tasks |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['contender']} | {row['median_s']:.2f} | {row['ratio_lazy_over_this']:.2f} | "
              f"{' + '.join(f'{w:.0f}' for w in row['read_per_worker_MiB'])} | {row['graph_tasks']} |")


if __name__ == "__main__":
    main()

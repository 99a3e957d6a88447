#!/usr/bin/env python3
"""A dask.distributed reduction over a lazy array served over HTTP: each worker fetches its blocks.

    python3 examples/dask_cluster.py [--size-mb 256] [--workers 2] [--url URL]

Writes a float32 random walk with ``lazymem.save``, serves it with an HTTP server that honours
Range requests (the test suite's, in its own process; or give ``--url`` of your own file), starts a
``LocalCluster`` of worker processes and computes ``x.mean(axis=0)`` of ``lazymem.to_dask(url)``.
Prints the bytes each worker fetched against the stored size, the bytes the server sent, and
checks the result against numpy on the eager array. Exits with status 1 if it differs.

The client process never reads the data: the graph holds references (URL, options, view), each
worker process opens the array once and fetches only the units of its own tasks.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled (the HTTP server is tests.remote's)

from distributed import Client, LocalCluster  # noqa: E402

import lazymem  # noqa: E402
from lazymem.integrations.dask import opened_here  # noqa: E402

MiB = 2**20


def bytes_served(server) -> int:
    total = 0
    for method, _path, byte_range in server.control()["requests"]:
        if method == "GET" and byte_range:
            first, last = byte_range.split("=")[1].split("-")
            total += int(last) if not first else int(last) - int(first) + 1
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--url", help="a .npy.zst (or zarr) URL of your own instead of the generated file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.url:
            url, src, stored = args.url, lazymem.load(args.url), None
        else:
            from tests.remote import ServerProcess

            n = args.size_mb * MiB // 4
            rng = np.random.default_rng(0)
            src = np.cumsum(rng.standard_normal(n, dtype=np.float32), dtype=np.float32).reshape(-1, 1024)
            path = Path(tmp) / "walk.npy.zst"
            lazymem.save(str(path), src)
            stored = path.stat().st_size
            server = ServerProcess("http", tmp)
            url = f"{server.url}/walk.npy.zst"
        try:
            with LocalCluster(n_workers=args.workers, threads_per_worker=2, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                client.wait_for_workers(args.workers)
                if server is not None:
                    server.reset()
                t = time.perf_counter()
                a = lazymem.open(url)  # in the client: header and seek table only
                x = lazymem.to_dask(a)
                print(f"{url}: {x.shape} {x.dtype}, {x.nbytes / MiB:.0f} MiB in {x.npartitions} blocks "
                      f"of {x.chunks[0][0]} rows (whole install units)")
                mean = x.mean(axis=0).compute()
                seconds = time.perf_counter() - t
                ok = np.allclose(mean, src.mean(axis=0, dtype=np.float64), rtol=1e-4)
                print(f"mean(axis=0) in {seconds:.2f} s: {'equal to numpy' if ok else 'DIFFERENT from numpy'}")
                fetched = {w: s[a.url] for w, s in client.run(opened_here).items() if a.url in s}
                for worker, stats in sorted(fetched.items()):
                    share = f" ({stats.bytes_fetched / stored:.0%} of the stored size)" if stored else ""
                    print(f"  worker {worker}: fetched {stats.bytes_fetched / MiB:7.1f} MiB{share}, "
                          f"{stats.chunks_installed}/{stats.chunks_total} units")
                total = sum(s.bytes_fetched for s in fetched.values())
                if stored:
                    print(f"  all workers: {total / MiB:.1f} MiB = {total / stored:.2f} x the stored "
                          f"{stored / MiB:.1f} MiB; the server sent {bytes_served(server) / MiB:.1f} MiB")
                return 0 if ok else 1
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))  # worker processes import lazymem from here too
    sys.exit(main())

"""Touched fraction: one element in each of a fraction of the chunks (random chunks).

What laziness is for: reading a sliver should cost a sliver. Also what the README's plot shows.
"""

from __future__ import annotations

from typing import Any

import contenders
import numpy as np
from field import CHUNK_BYTES, Dataset
from harness import Contender, compete, eagerly, lazily

import lazymem
from scenarios import Context

TITLE = "touched fraction"
FRACTIONS = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
SLOW_CONTENDERS_UP_TO = 0.1  # zarr's element loop and the mmap'd .npy run on the small fractions only


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


def fractions_for(ds: Dataset, quick: bool) -> list[float]:
    """FRACTIONS less those that touch as many chunks as a larger one (and 0.5 in quick mode)."""
    # With 64 chunks (quick mode) 0.1 % and 1 % of the chunks are both one chunk: keep the larger.
    counts = {f: max(1, round(f * ds.n_chunks)) for f in FRACTIONS}
    fractions = [f for f in FRACTIONS if not any(counts[g] == counts[f] for g in FRACTIONS if g > f)]
    if quick:
        fractions.remove(0.5)  # time budget
    return fractions


def _touch(ds: Dataset, fraction: float, table: contenders.SeekTable, reps: int) -> dict[str, Any]:
    """One fraction: its contenders' results and what the ideal reader would fetch."""
    import zarr

    url = str(ds.zst)
    idx, n_chunks = chunk_sample(ds, fraction)
    coords = np.unravel_index(idx, ds.shape)
    touched = np.unique(idx // (CHUNK_BYTES // 4))
    ideal_bytes = int(table.csize[1 + touched].sum())  # frame 0 is the header

    def elements(a: Any) -> Any:
        return a.reshape(-1)[idx]

    def prefetched(a: Any) -> Any:
        # The batch API: name the elements first, and the monitor loads their chunks concurrently.
        # (3-D coordinates: prefetch with a fancy index on a huge 1-D view costs O(its length).)
        a.prefetch(coords)
        return a[coords]

    def zarr_vindex() -> tuple[Any, dict[str, Any]]:
        z = zarr.open_array(str(ds.zarr), mode="r")
        return z.vindex[coords], {}

    def zarr_loop() -> tuple[Any, dict[str, Any]]:
        z = zarr.open_array(str(ds.zarr), mode="r")
        return np.array([z[t, i, j] for t, i, j in zip(*coords)], dtype=np.float32), {}

    def mmap() -> tuple[Any, dict[str, Any]]:
        return elements(np.load(ds.npy, mmap_mode="r")), {}

    entrants = [
        Contender("lazymem.open", lazily(url, elements)),
        Contender("lazymem.load", eagerly(lambda: lazymem.load(url), elements, bytes_fetched=ds.compressed_bytes)),
        Contender("zarr vindex", zarr_vindex),
        Contender("lazymem.open + prefetch(idx)", lazily(url, prefetched)),
    ]
    if fraction <= SLOW_CONTENDERS_UP_TO:
        entrants += [Contender("zarr z[t,i,j] loop", zarr_loop), Contender("npy mmap", mmap)]
    return {
        "fraction": fraction,
        "chunks_touched": len(touched),
        "chunks_total": n_chunks,
        "ideal_bytes": ideal_bytes,
        "results": compete(f"touched {fraction:g} ({len(touched)}/{n_chunks} chunks)", entrants, reps),
    }


def measure(ctx: Context) -> dict[str, Any]:
    table = contenders.SeekTable(str(ctx.ds.zst))  # the compressed size of each chunk, read by hand
    return {"touched_fraction": [_touch(ctx.ds, f, table, ctx.reps) for f in fractions_for(ctx.ds, ctx.quick)]}

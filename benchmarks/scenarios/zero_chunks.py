"""Zero chunks: a full scan of the field with every other chunk all zeros, zero frames against zstd frames.

A zero frame says "this chunk is all zeros" in a few bytes, with nothing to decode; the scenario
measures what that saves a scan, against a file that stores the same zeros as ordinary zstd frames.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import contenders
import datagen
import numpy as np
from field import CHUNK_BYTES, LEVEL, Dataset, read_through
from harness import Contender, compete, eagerly, lazily, log, total

import lazymem
from scenarios import Context

TITLE = "zero chunks"
READERS = ("lazymem.open", "lazymem.load")


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
        self.chunks_total = ds.n_chunks
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
        read_through([self.zero_frames, self.zstd_frames])


def measure(ctx: Context) -> dict[str, Any]:
    zc = ZeroChunkFiles(ctx.ds)
    zc.build()
    files = {"zero frames": str(zc.zero_frames), "zstd frames": str(zc.zstd_frames)}
    readers = {
        "lazymem.open": lambda url: lazily(url, total),
        "lazymem.load": lambda url: eagerly(lambda: lazymem.load(url), total),
    }
    entrants = [
        Contender(f"{name} + sum, {kind}", readers[name](url)) for name in READERS for kind, url in files.items()
    ]
    results = compete(TITLE, entrants, ctx.reps)
    t = {r["name"]: r["median_s"] for r in results}
    return {
        "zero_chunks": {
            "files": {kind: {"file": Path(url).name, "bytes": os.path.getsize(url)} for kind, url in files.items()},
            "chunks_total": zc.chunks_total,
            "chunks_zero": zc.chunks_zero,
            "results": results,
            "ratios": {
                f"{name}: zero frames / zstd frames": t[f"{name} + sum, zero frames"] / t[f"{name} + sum, zstd frames"]
                for name in READERS
            },
        }
    }

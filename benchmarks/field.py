"""The benchmark field on disk in the formats the contenders read, built once and reused while it matches."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

import datagen
import numpy as np
from harness import log

import lazymem

MiB = 2**20
GiB = 2**30
CHUNK_BYTES = 4 * MiB
LEVEL = 3


def read_through(paths: Iterable[Path]) -> None:
    """Read files once so that they are in the OS page cache: every contender starts from there."""
    for path in paths:
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(16 * MiB):
                    pass


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
        from zarr.codecs import ZstdCodec

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
            compressors=ZstdCodec(level=LEVEL),
        )
        z[:] = field
        log(f"data: zarr write {time.perf_counter() - t:.1f} s")
        del field, z
        self.meta_path.write_text(json.dumps(self.meta))

    @property
    def compressed_bytes(self) -> int:
        return self.zst.stat().st_size

    @property
    def n_chunks(self) -> int:
        return -(-self.nbytes // CHUNK_BYTES)

    def describe(self) -> dict[str, object]:
        """The ``dataset`` entry of the results."""
        return {
            "shape": list(self.shape),
            "dtype": "float32",
            "nbytes": self.nbytes,
            "compressed_bytes": self.compressed_bytes,
            "chunk_bytes": CHUNK_BYTES,
            "level": LEVEL,
            "file": self.zst.name,
        }

    def warm_page_cache(self) -> None:
        """Read every file once so that all contenders start from the OS page cache."""
        read_through([self.zst, self.npy, *sorted(self.zarr.rglob("*"))])

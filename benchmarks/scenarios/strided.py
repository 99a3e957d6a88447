"""Strided access: a regular selection across the array (a time series at one point, every 64th step)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from harness import Contender, compete, eagerly, lazily

import lazymem
from scenarios import Context

TITLE = "strided"

Access = Callable[[Any], Any]


def _cases(shape: tuple[int, ...], quick: bool) -> list[tuple[str, Access, Access | None]]:
    """(name, access on a numpy-like array, the same on a zarr array; None: zarr cannot say it directly)."""
    _, ny, nx = shape
    cases: list[tuple[str, Access, Access | None]] = [
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
    return cases


def measure(ctx: Context) -> dict[str, Any]:
    import zarr

    ds = ctx.ds
    url = str(ds.zst)
    out = []
    for name, access, zaccess in _cases(ds.shape, ctx.quick):

        def mmap(access: Access = access) -> tuple[Any, dict[str, Any]]:
            return access(np.load(ds.npy, mmap_mode="r")), {}

        def zarr_read(zaccess: Access | None = zaccess) -> tuple[Any, dict[str, Any]]:
            z = zarr.open_array(str(ds.zarr), mode="r")
            if zaccess is not None:
                return zaccess(z), {}
            # zarr has no flat strided view: step along the flattened array by hand.
            flat = np.arange(0, int(np.prod(ds.shape)), 1000)
            return z.vindex[np.unravel_index(flat, ds.shape)], {}

        entrants = [
            Contender("lazymem.open", lazily(url, access)),
            Contender("lazymem.load", eagerly(lambda: lazymem.load(url), access)),
            Contender("zarr", zarr_read),
            Contender("npy mmap", mmap),
        ]
        out.append({"case": name, "results": compete(name, entrants, ctx.reps)})
    return {"strided": out}

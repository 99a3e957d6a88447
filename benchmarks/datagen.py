"""Synthetic benchmark data: a float32 random-walk "temperature field" (time, lat, lon).

Values are quantized to 1/32 K (exactly representable in float32), as real gridded products
often are, so zstd finds something to compress (about 2:1) without the data being trivial.
Generation is deterministic in ``seed`` and works block by block (a few hundred MB/s).
"""

from __future__ import annotations

import numpy as np

N_LAT = 256
N_LON = 512
STEP_BYTES = N_LAT * N_LON * 4  # 512 KiB per time step: 8 steps make one 4 MiB chunk
GENERATOR_VERSION = 1


def n_steps_for(nbytes: int) -> int:
    return max(8, nbytes // STEP_BYTES)


def generate(n_time: int, seed: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Return a float32 array of shape (n_time, N_LAT, N_LON)."""
    rng = np.random.default_rng(seed)
    lat = np.deg2rad(np.linspace(-89.5, 89.5, N_LAT))[:, None]
    lon = np.deg2rad(np.linspace(0.0, 359.3, N_LON))[None, :]
    # Climatology (K) and seasonal amplitude, in units of 1/32 K.
    base = np.rint(32 * (300.0 - 45.0 * np.sin(lat) ** 2 + 3.0 * np.cos(3 * lon) * np.cos(lat))).astype(np.int32)
    amp = 32 * 12.0 * np.sin(lat) * np.ones_like(lon)
    if out is None:
        out = np.empty((n_time, N_LAT, N_LON), dtype=np.float32)
    # Steps of -2..+2 units from random bytes through a lookup table (much faster than integers()).
    lut = (np.arange(256) % 5 - 2).astype(np.int32)
    state = base.copy()
    season = np.empty((N_LAT, N_LON), dtype=np.float64)
    level = np.empty((N_LAT, N_LON), dtype=np.int32)
    scale = np.float32(1 / 32)
    block = 32
    for t0 in range(0, n_time, block):
        t1 = min(n_time, t0 + block)
        raw = np.frombuffer(rng.bytes((t1 - t0) * N_LAT * N_LON), dtype=np.uint8)
        steps = lut[raw].reshape(t1 - t0, N_LAT, N_LON)
        for t in range(t0, t1):
            state += steps[t - t0]
            np.multiply(amp, np.cos(2 * np.pi * t / 365.25), out=season)
            np.rint(season, out=season)
            np.add(state, season, out=level, casting="unsafe")
            np.multiply(level, scale, out=out[t], casting="unsafe")
    return out

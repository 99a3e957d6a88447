"""Process-wide defaults, and sizes written the way people write them ("2GiB", "512 MB", 10**9)."""

from __future__ import annotations

import os
import re

from .kernel.limits import meminfo

MAX_RESIDENT_ENV = "LAZYMEM_MAX_RESIDENT"
DEFAULT_FRACTION_OF_AVAILABLE = 0.5  # like LLNL umap's buffer size: a share of what is free now

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")

_default_max_resident: int | None = None


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as ``"2GiB"``, ``"1.5 GB"``, ``"512M"``.

    >>> parse_size("2GiB"), parse_size("1.5 GB"), parse_size(4096)
    (2147483648, 1500000000, 4096)
    """
    if isinstance(value, bool):
        raise TypeError("a size must be an int or a string like '2GiB'")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"a size must be positive (got {value})")
        return value
    match = _SIZE.match(str(value))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a size; write e.g. 2GiB, 500MB or a number of bytes")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"a size must be positive (got {value!r})")
    return size


def set_max_resident(size: int | str | None) -> None:
    """Set the default ``max_resident`` of arrays opened from now on (``None``: back to automatic).

    Order of precedence: ``open(..., max_resident=...)``, this function, the environment variable
    ``LAZYMEM_MAX_RESIDENT``, then half of the memory available when the array is opened.
    """
    global _default_max_resident
    _default_max_resident = None if size is None else parse_size(size)


def available_memory() -> int:
    return meminfo().get("MemAvailable", 2**31)  # every Linux since 3.14 has MemAvailable


def default_max_resident() -> int:
    if _default_max_resident is not None:
        return _default_max_resident
    env = os.environ.get(MAX_RESIDENT_ENV)
    if env:
        try:
            return parse_size(env)
        except ValueError as exc:
            raise ValueError(f"${MAX_RESIDENT_ENV}={env!r}: {exc}") from None
    return int(available_memory() * DEFAULT_FRACTION_OF_AVAILABLE)

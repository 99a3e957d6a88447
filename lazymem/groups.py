"""``open_group``: a group (a zarr group, an HDF5/NetCDF file) as a read-only mapping of its
arrays, each opened lazily on access."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .sources.formats import ArrayInfo, open_listing


class Group(Mapping[str, np.ndarray]):
    """The arrays of a group by path (``"t2m"``, ``"sub/mask"``), opened with :func:`lazymem.open`
    when accessed (each access opens the array anew: keep what you use)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None, open_options: dict[str, Any]) -> None:
        listing = open_listing(url, storage_options)
        self.url = url
        self.format = listing.format
        """``"zarr"``, ``"hdf5"``, ``"netcdf3"``."""
        self.attrs: dict[str, Any] = dict(listing.attrs)
        """The group's attributes (a copy)."""
        self.arrays: dict[str, ArrayInfo] = dict(listing.arrays)
        """What the group's metadata says of each array (shape, dtype, attrs, dimension names),
        read without opening any."""
        self._storage_options = storage_options
        self._open_options = open_options

    def __getitem__(self, path: str) -> np.ndarray:
        if path not in self.arrays:
            raise KeyError(path)
        from .array import open as open_array

        return open_array(self.url, path=path, storage_options=self._storage_options, **self._open_options)

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def __repr__(self) -> str:
        return f"<lazymem.Group {self.url!r} ({self.format}): {', '.join(self.arrays)}>"


def open_group(url: str, *, storage_options: dict[str, Any] | None = None, **open_options: Any) -> Group:
    """Open a group: a zarr group (v2 or v3), or an HDF5 / NetCDF file, at any fsspec URL, as a
    read-only mapping of array paths to lazy arrays (:func:`lazymem.open` options apply to each).

    Raises
    ------
    ArrayNotFoundError
        Nothing at ``url``.
    FormatError
        Not a group lazymem reads.
    """
    from .sources import absolute_url

    return Group(absolute_url(url), storage_options, open_options)

"""``open_group``: a zarr group as a read-only mapping of its arrays, each opened lazily on access."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .errors import ArrayNotFoundError, FormatError


class Group(Mapping[str, np.ndarray]):
    """The arrays of a zarr group by path (``"t2m"``, ``"sub/mask"``), opened with
    :func:`lazymem.open` when accessed (each access opens the array anew: keep what you use)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None, open_options: dict[str, Any]) -> None:
        from .sources.zarr_array import _zarr, array_paths

        zarr = _zarr()
        kwargs = {"storage_options": storage_options} if storage_options and "://" in url else {}
        try:
            group = zarr.open_group(store=url, mode="r", **kwargs)
        except FileNotFoundError as exc:
            raise ArrayNotFoundError(f"{url}: no zarr group ({exc})") from exc
        except (ValueError, TypeError, KeyError) as exc:
            raise FormatError(f"{url}: not a readable zarr group ({type(exc).__name__}: {exc})") from exc
        self.url = url
        self.attrs: dict[str, Any] = dict(group.attrs)
        """The group's attributes (a copy)."""
        self._paths = array_paths(group)
        self._storage_options = storage_options
        self._open_options = open_options

    def __getitem__(self, path: str) -> np.ndarray:
        if path not in self._paths:
            raise KeyError(path)
        from .array import open as open_array

        return open_array(self.url, path=path, storage_options=self._storage_options, **self._open_options)

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)

    def __repr__(self) -> str:
        return f"<lazymem.Group {self.url!r}: {', '.join(self._paths)}>"


def open_group(url: str, *, storage_options: dict[str, Any] | None = None, **open_options: Any) -> Group:
    """Open a zarr group (v2 or v3, any fsspec URL) as a read-only mapping of array paths to lazy
    arrays (:func:`lazymem.open` options apply to each). Preview: see the README.

    Raises
    ------
    ArrayNotFoundError
        Nothing at ``url``.
    FormatError
        Not a zarr group.
    """
    from .sources import absolute_url

    return Group(absolute_url(url), storage_options, open_options)

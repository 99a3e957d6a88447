"""Arrays received by reference: one open per process, shared by every view that arrives.

A pickled :class:`~lazymem.array.LazyArray` is its URL, its open options and where the view lies
(``LazyArray.__reduce__``). A dask worker receives hundreds of such views of one array (a task
each); opening the URL for each would read the header and the seek table every time, and give
every task its own memory, so the chunks two tasks share would be fetched twice. Here the first
view opens the array and later ones map into the same memory.

Two kinds of entries, keyed by URL and options:

* arrays this process opened *to unpickle*: kept alive (the most recent :data:`KEEP_OPEN`), or
  the next task would open the array again;
* arrays this process *pickled* (``remember``): held weakly, so a view sent to this very process
  (dask's scheduler in the client's process, a local ``client.submit``) maps the array the user
  already has, and pickling never prolongs its life.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .array import _Handle

KEEP_OPEN = 8
"""Arrays opened for unpickling that stay open while unused (each keeps its chunks resident,
within its ``max_resident``)."""

_lock = threading.Lock()  # dask workers unpickle on several threads
_kept: OrderedDict[str, tuple[np.ndarray, _Handle]] = OrderedDict()
_sent: dict[str, tuple[weakref.ref[np.ndarray], _Handle]] = {}


def key(url: str, storage_options: dict[str, Any] | None, open_options: dict[str, Any]) -> str:
    """The cache key: the URL and every option that changes what ``open`` maps (JSON, sorted; values
    JSON cannot spell, such as a credentials object, by ``repr``)."""
    return json.dumps([url, storage_options or {}, open_options], sort_keys=True, default=repr)


def whole_memory(arr: np.ndarray, handle: _Handle) -> np.ndarray | None:
    """The flat uint8 array over the whole region that ``arr`` lies in (what ``open`` built its
    array on), found through ``.base``; None if ``arr`` is not a view of it."""
    obj: Any = arr
    while isinstance(obj, np.ndarray):
        if obj.ndim == 1 and obj.dtype == np.uint8 and obj.ctypes.data == handle.base_address \
                and obj.nbytes == handle.region.nbytes:
            return obj
        obj = obj.base
    return None


def _usable(handle: _Handle) -> bool:
    return not handle.closed and handle.region.usable


def remember(arr: np.ndarray, handle: _Handle, url: str, storage_options: dict[str, Any] | None,
             open_options: dict[str, Any]) -> None:
    """``arr`` is being pickled: a view of it unpickled in this process maps the same memory."""
    flat = whole_memory(arr, handle)
    if flat is None:
        return
    k = key(url, storage_options, open_options)
    with _lock:
        found = _sent.get(k)
        if found is None or found[0]() is None or not _usable(found[1]):
            _sent[k] = (weakref.ref(flat), handle)


def open_whole(url: str, storage_options: dict[str, Any] | None,
               open_options: dict[str, Any]) -> tuple[np.ndarray, _Handle, bool] | None:
    """The flat memory and handle of ``url`` opened with these options, opening it only if this
    process has no open array for them, and whether it was opened to unpickle (not the sender's
    own array, whose readahead is left alone). None for an empty array (nothing to map)."""
    from .array import LazyArray, open

    k = key(url, storage_options, open_options)
    with _lock:
        found = _lookup(k)
    if found is not None:
        return found
    # Opened outside the lock: an open is requests to storage, and other threads' views of other
    # arrays must not wait for it. Two threads racing here open twice; the second keeps its own.
    whole = open(url, storage_options=storage_options, **open_options)
    if not isinstance(whole, LazyArray):  # a plain local .npy pickles as a MappedArray, not here
        raise TypeError(f"{url} is no longer a compressed array")
    handle = whole._lazy
    if handle is None:  # an empty array
        return None
    flat = whole_memory(whole, handle)
    assert flat is not None, "open builds its array on one flat uint8 buffer"
    with _lock:
        _kept[k] = (flat, handle)
        _kept.move_to_end(k)
        while len(_kept) > KEEP_OPEN:
            _kept.popitem(last=False)
    return flat, handle, True


def _lookup(k: str) -> tuple[np.ndarray, _Handle, bool] | None:
    kept = _kept.get(k)
    if kept is not None:
        if _usable(kept[1]):
            _kept.move_to_end(k)
            return (*kept, True)
        del _kept[k]
    sent = _sent.get(k)
    if sent is not None:
        flat = sent[0]()
        if flat is not None and _usable(sent[1]):
            return flat, sent[1], False
        del _sent[k]
    return None


def opened_here() -> dict[str, _Handle]:
    """The arrays this process keeps open for unpickling, by URL (for stats per worker)."""
    with _lock:
        return {handle.url: handle for _flat, handle in _kept.values() if _usable(handle)}


def forget_all() -> None:
    """Drop every entry (the arrays close when their last view goes): for tests, and for a
    worker that wants its memory back."""
    with _lock:
        _kept.clear()
        _sent.clear()

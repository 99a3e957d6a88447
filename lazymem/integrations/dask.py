"""dask and dask.distributed: lazy arrays travel and hash by reference, never by their bytes.

Left to its defaults, dask treats a :class:`~lazymem.LazyArray` as the ``numpy.ndarray`` it is:
``tokenize`` hashes the whole buffer (every chunk fetched and decompressed to name a graph),
``sizeof`` reports the whole virtual size (distributed's scheduling and spilling believe it), and
distributed sends arrays between processes as raw bytes. Here:

* ``normalize_token``: a view is named by its URL, the stored object's size (and, for a local
  file, its inode and modification time), its open options and where it lies (dtype, shape,
  strides, offset): cheap, and the same in every process;
* ``sizeof``: a view held by reference costs the few hundred bytes of that reference (its
  resident chunks are lazymem's memory, governed by ``max_resident``, not distributed's);
* ``dask_serialize``: the reference (``LazyArray.__reduce__``), in the format distributed's own
  numpy deserializer accepts too, so even a process without this registration unpickles it;
* :func:`to_dask`: a dask array whose blocks follow the install units (or the stored chunks),
  each task fetching its block concurrently and raising storage errors as exceptions.

Nothing here imports dask or distributed unless they are imported already: the ``dask.sizeof``
entry point (loaded by ``import dask``, hence by ``import dask.array`` and ``import distributed``)
calls :func:`register`, which registers lazily, keyed on the ``lazymem`` module.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import numpy as np

from ..array import LazyArray, _Handle
from ..array import open as _open
from ..mapped import MappedArray

REFERENCE_BYTES = 512
"""What ``sizeof`` reports for a view held by reference: about its pickle (URL and options)."""


# --- registration -----------------------------------------------------------------------------------
def register(sizeof: Any = None) -> None:
    """The ``dask.sizeof`` entry point: register with dask's dispatchers, lazily (the functions
    run the first time dask meets a lazymem object), importing nothing.

    dask loads the group at the end of ``dask/sizeof.py``, which ``import dask`` reaches from
    ``dask._task_spec`` before ``dask.tokenize`` exists: importing ``dask.tokenize`` from here then
    is a circular import (an ImportError that breaks ``import dask``; checked on dask 2026.8). So
    the tokenizer is registered right after ``dask.tokenize`` has run, by a one-shot import hook.
    """
    _when_loaded("dask.sizeof", "sizeof", _register_sizeof)
    _when_loaded("dask.tokenize", "normalize_token", _register_tokenize)


def register_now() -> None:
    """Register with dask (and distributed, if imported) at once: what :func:`to_dask` does."""
    _register_sizeof()
    _register_tokenize()


def _when_loaded(module: str, dispatcher: str, registrar: Callable[[], None]) -> None:
    """``dispatcher.register_lazy("lazymem")(registrar)`` as soon as ``module`` defines it."""
    loaded = getattr(sys.modules.get(module), dispatcher, None)
    if loaded is not None:
        loaded.register_lazy("lazymem")(registrar)
    elif not any(isinstance(f, _AfterImport) and f.name == module for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(module, lambda: _when_loaded(module, dispatcher, registrar)))


class _AfterImport(importlib.abc.MetaPathFinder):
    """Call ``then`` once module ``name`` has been executed (then leave ``sys.meta_path``)."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name = name
        self.then = then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                loader: Any = spec.loader  # this spec's own loader object
                loader.exec_module = _then(loader.exec_module, self.then)
                return spec
        return None


def _then(run: Callable[[Any], None], then: Callable[[], None]) -> Callable[[Any], None]:
    def exec_module(module: Any) -> None:
        run(module)
        then()

    return exec_module


def _register_sizeof() -> None:
    from dask.sizeof import sizeof

    sizeof.register(LazyArray)(_sizeof)
    _register_distributed_if_loaded()


def _register_tokenize() -> None:
    from dask.tokenize import normalize_token

    normalize_token.register(LazyArray)(_normalize)
    _register_distributed_if_loaded()


_distributed_registered = False


def _register_distributed_if_loaded() -> None:
    """distributed has no entry point for serializers: register when dask meets one of our arrays
    in a process where distributed is loaded (distributed asks ``sizeof`` of every result before
    it may send it, and ``tokenize`` names what a client scatters or submits)."""
    global _distributed_registered
    serialize = sys.modules.get("distributed.protocol.serialize")
    if serialize is None or _distributed_registered:
        return
    serialize.dask_serialize.register(LazyArray)(_dask_serialize)
    serialize.dask_deserialize.register(LazyArray)(_dask_deserialize)
    _distributed_registered = True


# --- the registered functions ------------------------------------------------------------------------
def _normalize(arr: LazyArray) -> Any:
    from dask.tokenize import normalize_token

    _register_distributed_if_loaded()
    handle = arr._lazy
    if handle is None:  # memory of its own (a result, a detached copy): as any ndarray
        return normalize_token.dispatch(np.ndarray)(arr)
    if _written(arr, handle):
        # A copy-on-write copy that was written to (or may have been): its pages differ from
        # storage, and hashing them is what we avoid. Named uniquely (stable for this object), as
        # dask names objects it cannot hash. An unwritten copy holds the array's data: named by it.
        return _unique_token(arr)
    offset = arr.ctypes.data - handle.base_address
    return normalize_token(("lazymem.LazyArray", handle.url, _version(handle), handle.storage_options,
                            handle.open_options, arr.dtype.str, arr.shape, arr.strides, offset))


def _written(arr: LazyArray, handle: _Handle) -> bool:
    """Whether ``arr`` (a view of a copy-on-write copy, ``a.copy()``) has a page written under it
    (a read-only view never has; a writeable one that is no lazy copy is assumed written)."""
    if not arr.flags.writeable:
        return False
    copy = getattr(handle, "copy", None)
    return copy is None or bool(copy.written_under(arr))


def _unique_token(arr: LazyArray) -> str:
    try:
        from dask.tokenize import _maybe_raise_nondeterministic
    except ImportError:  # a dask without it: no deterministic mode to honour
        pass
    else:
        _maybe_raise_nondeterministic("a writeable LazyArray (a copy-on-write copy) cannot be tokenized "
                                      "deterministically without reading all of it")
    token: str = arr.__dict__.setdefault("_lazymem_token", uuid.uuid4().hex)
    return token


def _version(handle: _Handle) -> tuple[Any, ...]:
    """What distinguishes this object from another at the same URL, as known at open: the stored
    size, and a local file's (device, inode, size, mtime). ETags are not recorded at open."""
    description = getattr(handle.region, "_description", None) or {}
    storage = getattr(getattr(description.get("source"), "reader", None), "storage", None)
    if storage is None:
        return ()
    return (getattr(storage, "size", None), tuple(storage.__dict__.get("identity", ())))


def _sizeof(arr: LazyArray) -> int:
    _register_distributed_if_loaded()
    if arr._lazy is None or _written(arr, arr._lazy):  # its own memory, or a written copy's pages
        return int(arr.nbytes)
    return REFERENCE_BYTES


def _dask_serialize(arr: LazyArray, context: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    from distributed.protocol import numpy as dnumpy
    from distributed.protocol import pickle

    if arr._lazy is None or _written(arr, arr._lazy):  # its own memory, or a written copy's: raw bytes
        return dnumpy.serialize_numpy_ndarray(arr.view(np.ndarray), context)  # type: ignore[no-any-return]
    # {"pickle": True} is what distributed's numpy deserializer knows: a process that never
    # registered LazyArray still unpickles the reference rather than misreading it as raw bytes.
    return {"pickle": True}, [pickle.dumps(arr, protocol=5)]


def _dask_deserialize(header: dict[str, Any], frames: list[Any]) -> np.ndarray:
    from distributed.protocol import numpy as dnumpy

    return dnumpy.deserialize_numpy_ndarray(header, frames)  # type: ignore[no-any-return]


def opened_here() -> dict[str, Any]:
    """:func:`lazymem.stats` of each array this process opened to unpickle views of it, by URL:
    on a worker, what its tasks fetched (``client.run(lazymem.integrations.dask.opened_here)``)."""
    from ..array import Stats
    from ..reopened import opened_here as handles

    names = {f.name for f in fields(Stats)}
    return {url: Stats(**{k: v for k, v in handle.region.request("stats").items() if k in names})
            for url, handle in handles().items()}


# --- to_dask ----------------------------------------------------------------------------------------
class _Blocks:
    """What ``da.from_array`` slices: the lazy array, without a ``copy`` method (``from_array``
    copies anything that has one), fetching each block before handing it over."""

    def __init__(self, array: np.ndarray, token: Any = None) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.token = token  # None: the array's own token

    def __getitem__(self, key: Any) -> np.ndarray:
        # Fetched here, concurrently, where a failure is an exception in the task (a touch of a
        # chunk that cannot load would be SIGBUS and cost the worker). A plain ndarray view: the
        # block's memory is resident now, and results stay plain ndarrays.
        if isinstance(self.array, LazyArray) and self.array._lazy is not None:
            self.array.prefetch(key)
        block = self.array[key]
        return block.view(np.ndarray) if isinstance(block, np.ndarray) else block

    def __dask_tokenize__(self) -> Any:
        from dask.tokenize import normalize_token

        return ("lazymem.to_dask", normalize_token(self.array) if self.token is None else self.token)

    def __repr__(self) -> str:
        return f"<lazymem blocks of a {type(self.array).__name__} {self.shape} {self.dtype}>"


def _mapped_file_token(arr: MappedArray) -> Any:
    """A whole mapped local ``.npy`` named by its file as it is now (np.memmap's own token hashes
    every byte of it)."""
    st = os.stat(str(arr.filename))
    return ("lazymem.MappedArray", str(arr.filename), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            arr.dtype.str, arr.shape, arr.strides)


def to_dask(url_or_array: str | np.ndarray, chunks: Any = None, *, path: str | None = None,
            name: str | None = None, **open_options: Any) -> Any:
    """A dask array over a lazily loaded array: nothing is fetched, hashed or copied to build it.

    Parameters
    ----------
    url_or_array : str or LazyArray
        A URL for :func:`lazymem.open`, or an array it returned (or a view of one).
    chunks : optional
        dask's ``chunks``. Default: blocks of whole install units (about dask's
        ``array.chunk-size``) for ``.npy.zst`` and ``.npy`` arrays, whole stored chunks for zarr.
    path : str, optional
        The array's path inside a zarr group.
    name : str, optional
        The dask array's name; by default ``lazymem-<token>``, a token of the reference.
    **open_options
        Passed to :func:`lazymem.open` (``storage_options``, ``max_resident``, ...).

    Returns
    -------
    dask.array.Array
        Each task fetches its block (concurrently, storage errors raised in the task) and
        returns it as a plain ``numpy.ndarray`` over the lazy memory. On a dask.distributed
        cluster each worker process opens the array once and fetches only its tasks' blocks.
    """
    import dask.array as da
    from dask.tokenize import tokenize

    register_now()
    if isinstance(url_or_array, np.ndarray):
        if open_options or path is not None:
            raise TypeError("to_dask: open options apply to a URL, not to an array already open")
        arr = url_or_array
    else:
        arr = _open(url_or_array, path=path, **open_options)
    token = None
    if not isinstance(arr, LazyArray) or arr._lazy is None:  # a mapped local .npy, an empty array
        if isinstance(arr, MappedArray) and not isinstance(url_or_array, np.ndarray):
            token = _mapped_file_token(arr)  # opened here: the whole file
        chunks = "auto" if chunks is None else chunks
    elif chunks is None:
        chunks = aligned_chunks(arr)
    blocks = _Blocks(arr, token)
    name = name or f"lazymem-{tokenize(blocks, chunks)}"
    # inline_array: every task holds the reference (a few hundred bytes), so no task depends on
    # another worker for the array, and all of them are root tasks the scheduler spreads freely.
    return da.from_array(blocks, chunks=chunks, name=name, asarray=False, inline_array=True,
                         meta=np.empty((0,) * arr.ndim, arr.dtype))


def aligned_chunks(arr: LazyArray, target_bytes: int | None = None) -> Any:
    """dask ``chunks`` for ``arr`` whose blocks are whole install units (flat sources) or whole
    stored chunks (zarr), about ``target_bytes`` each (default: dask's ``array.chunk-size``).

    A block boundary inside an install unit makes two tasks, perhaps on two workers, fetch that
    unit: the cost is at most one unit per block. Views that are not contiguous get dask's
    ``"auto"`` chunks."""
    import dask
    from dask.array.core import normalize_chunks
    from dask.utils import parse_bytes

    from ..sources.flat import FlatSource

    handle = arr._lazy
    assert handle is not None
    if target_bytes is None:
        target_bytes = parse_bytes(dask.config.get("array.chunk-size"))
    source = (getattr(handle.region, "_description", None) or {}).get("source")
    whole = arr.ctypes.data == handle.base_address and arr.nbytes == handle.region.nbytes
    if source is not None and not isinstance(source, FlatSource) and whole and \
            len(source.storage_chunks) == arr.ndim:
        return normalize_chunks("auto", arr.shape, limit=target_bytes, dtype=arr.dtype,
                                previous_chunks=source.storage_chunks)
    if arr.ndim == 0 or not (arr.flags.c_contiguous or arr.flags.f_contiguous) or arr.size == 0:
        return normalize_chunks("auto", arr.shape, limit=target_bytes, dtype=arr.dtype)
    unit = handle.chunk_size
    span = max(1, target_bytes // unit) * unit  # the bytes of one block: whole units
    # Blocks are contiguous runs of memory: split the outermost axis whose step fits in a block,
    # keep the axes inside it whole and the axes outside it at one index.
    axes = sorted(range(arr.ndim), key=lambda d: -arr.strides[d])  # outermost first (C or F order)
    blocks = list(arr.shape)
    for d in axes:
        step = arr.strides[d]
        if step <= span or d == axes[-1]:
            blocks[d] = max(1, min(arr.shape[d], span // step))
            break
        blocks[d] = 1
    return normalize_chunks(tuple(blocks), arr.shape, dtype=arr.dtype)


# Registered from here too, not only by the entry point: lazymem is imported before any of its
# arrays exists (unpickling one imports it), and a source checkout has no entry points installed.
register()

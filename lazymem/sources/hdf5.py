"""HDF5 and NetCDF4 datasets behind the :class:`~lazymem.sources.base.Source` interface.

h5py reads a dataset's metadata and its chunk index *once*, at open (remote files through
:class:`BlockReader`, a small-block cache over lazymem's storage layer: HDF5 makes many small
reads, and fsspec's default 5 MiB read-ahead per miss would cost more than the whole index).
From then on the file is byte ranges:

* contiguous datasets are one range, installed as stored (:class:`~.byte_runs.ByteRunsSource`);
* chunked datasets fetch each chunk's range with fsspec and undo its filters in the monitor
  (:mod:`.hdf5_filters`), honouring each chunk's filter mask; unallocated chunks are the fill
  value, fetched from nowhere (:mod:`.hdf5_chunked`);
* compact datasets (at most 64 KiB, kept in the object header) are read whole at open.

No h5py call happens on the fault path: the HDF5 library holds one global lock.

The index is checked before use (every chunk inside the file and on the chunk grid, every filter
one lazymem decodes), so a damaged file fails at open, not with other data at a touch.
"""

from __future__ import annotations

import io
import posixpath
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from lazymem.errors import (
    ArrayNotFoundError,
    FetchError,
    FormatError,
    LazymemError,
    TruncatedFileError,
    UnsupportedCodecError,
)
from lazymem.storage import StoredObject

from .base import Source
from .hdf5_filters import Filter, check_pipeline

OPEN_BLOCK_BYTES = 64 << 10
"""Block of the fsspec cache h5py reads remote metadata through (HDF5's reads are tens of bytes
to a few KiB, clustered: 64 KiB blocks hold several)."""
OPEN_CACHE_BLOCKS = 512
"""Blocks the open cache keeps (32 MiB at most: the chunk index of a large dataset)."""

HIDDEN_ATTRS = frozenset({"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid",
                          "_Netcdf4Coordinates", "_nc3_strict"})
"""Attributes that implement HDF5 dimension scales and NetCDF4's bookkeeping (object references,
which do not pickle), not the user's: hidden as xarray's h5netcdf backend hides them."""
NOT_A_VARIABLE = b"This is a netCDF dimension but not a netCDF variable"
"""How NetCDF4 marks a dimension without a coordinate variable (a dataset of no data)."""


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError("reading HDF5 and NetCDF4 files needs h5py: pip install 'lazymem[hdf5]'") from None
    return h5py


class BlockReader(io.RawIOBase):
    """A read-only file object over a :class:`StoredObject` for h5py, reading aligned blocks of
    :data:`OPEN_BLOCK_BYTES` and keeping up to :data:`OPEN_CACHE_BLOCKS` of them.

    Reads go through ``StoredObject.read``: retried when transient, and failing with lazymem's
    errors. The first failure is kept in :attr:`error`: h5py turns whatever its reads raise into
    its own ``OSError``, and :func:`h5_file` raises the storage's error instead."""

    def __init__(self, storage: StoredObject) -> None:
        super().__init__()
        self.storage = storage
        self.position = 0
        self.blocks: OrderedDict[int, bytes] = OrderedDict()
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.storage.size}[whence]
        self.position = base + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def _block(self, index: int) -> bytes:
        block = self.blocks.get(index)
        if block is None:
            start = index * OPEN_BLOCK_BYTES
            try:
                block = self.storage.read(start, min(start + OPEN_BLOCK_BYTES, self.storage.size))
            except Exception as exc:
                # Kept as a fresh copy: the raised one's traceback holds frames of h5py's driver
                # callback, and an exception keeping those alive crashes the interpreter at exit
                # (measured: SIGSEGV at shutdown with h5py 3.16 / HDF5 2.0).
                self.error = self.error or _bare(exc)
                raise
            self.blocks[index] = block
            if len(self.blocks) > OPEN_CACHE_BLOCKS:
                self.blocks.popitem(last=False)
        else:
            self.blocks.move_to_end(index)
        return block

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        start = self.position
        stop = min(start + len(view), self.storage.size)
        done = 0
        while start + done < stop:
            index, within = divmod(start + done, OPEN_BLOCK_BYTES)
            block = self._block(index)
            piece = block[within : within + (stop - start - done)]
            view[done : done + len(piece)] = piece
            done += len(piece)
        self.position += done
        return done


def _bare(exc: Exception) -> Exception:
    """A copy of ``exc`` with its message and no traceback, cause or context."""
    try:
        return type(exc)(*exc.args)
    except Exception:  # noqa: BLE001 (an exception class with another constructor)
        return FetchError(str(exc))


@contextmanager
def h5_file(storage: StoredObject, url: str) -> Iterator[Any]:
    """The file open in h5py (read-only), through a small-block cache when remote."""
    h5py = _h5py()
    handle = None if storage.is_local else BlockReader(storage)
    try:
        f = h5py.File(storage.path if handle is None else handle, "r")
    except LazymemError:
        raise
    except FileNotFoundError as exc:
        raise ArrayNotFoundError(f"{url}: {exc}") from exc
    except OSError as exc:  # h5py's "Unable to open file (truncated file...)" and friends
        if handle is not None and handle.error is not None:
            raise handle.error from None  # the storage failed (FetchError...), not the file; no h5py frames kept
        message = str(exc)
        kind = TruncatedFileError if "truncat" in message.lower() or "eof" in message.lower() else FormatError
        raise kind(f"{url}: not a readable HDF5 file ({message})") from exc
    try:
        with f:
            yield f
    except LazymemError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as exc:  # h5py reading a dataset's header, the index
        if handle is not None and handle.error is not None:
            raise handle.error from None  # the storage failed, not the file
        raise FormatError(f"{url}: damaged HDF5 metadata ({type(exc).__name__}: {exc})") from exc


def _attr_value(value: Any) -> Any:
    h5py = _h5py()
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        return value.tolist()  # variable-length strings: Python objects as h5py gives them
    return value


def read_attrs(obj: Any) -> dict[str, Any]:
    """An HDF5 object's attributes, raw (no CF decoding), without dimension-scale bookkeeping."""
    attrs = {}
    for name in obj.attrs:
        if name in HIDDEN_ATTRS:
            continue
        try:
            value = obj.attrs[name]
        except (OSError, TypeError, ValueError):
            continue  # a type h5py cannot read (object references...): not data anyway
        h5py = _h5py()
        if isinstance(value, h5py.Reference) or (isinstance(value, np.ndarray) and value.dtype.kind == "O"
                                                 and any(isinstance(v, h5py.Reference) for v in value.flat)):
            continue
        attrs[name] = _attr_value(value)
    return attrs


def _is_scale(dataset: Any) -> bool:
    return bool(dataset.attrs.get("CLASS", b"") == b"DIMENSION_SCALE")


def _is_phony(dataset: Any) -> bool:
    name = dataset.attrs.get("NAME", b"")
    return isinstance(name, bytes | np.bytes_) and bytes(name).startswith(NOT_A_VARIABLE)


def dimension_names(dataset: Any) -> tuple[str, ...] | None:
    """Names of the dimensions: the attached dimension scales (NetCDF4 dimensions), a scale's own
    name for its dimension; None where a dimension has none."""
    names = []
    try:
        dims = dataset.dims
        for i in range(len(dataset.shape)):
            scales = list(dims[i].values())
            if scales:
                names.append(posixpath.basename(scales[0].name))
            elif _is_scale(dataset) and len(dataset.shape) == 1:
                names.append(posixpath.basename(dataset.name))
            else:
                return None
    except (OSError, TypeError, ValueError, KeyError, RuntimeError):
        return None
    return tuple(names) if names else None


def _datasets(f: Any) -> dict[str, Any]:
    """Every dataset of the file by its path (no leading "/"), NetCDF4's dimension-only datasets left out."""
    h5py = _h5py()
    found: dict[str, Any] = {}

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and not _is_phony(obj):
            found[name] = obj

    f.visititems(visit)
    return dict(sorted(found.items()))


def _dataset_dtype(dataset: Any, url: str) -> np.dtype[Any]:
    dtype = np.dtype(dataset.dtype)
    if dtype.hasobject:
        raise FormatError(f"{url}: dataset {dataset.name} has a variable-length or reference type ({dtype}): "
                          "its elements are pointers into the file's heap, not fixed-size data; lazymem cannot "
                          "serve it lazily (read it with h5py)")
    if dtype.subdtype is not None or dataset.id.get_type().get_size() != dtype.itemsize:
        raise FormatError(f"{url}: dataset {dataset.name} has a type whose stored layout is not numpy's "
                          f"({dataset.id.get_type().get_size()} stored bytes per element for {dtype})")
    return dtype


def _filters(plist: Any) -> tuple[Filter, ...]:
    out = []
    for i in range(plist.get_nfilters()):
        code, flags, cd_values, name = plist.get_filter(i)
        out.append(Filter(int(code), int(flags), tuple(int(v) for v in cd_values),
                          name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)))
    return tuple(out)


def _fill_pattern(dataset: Any, dtype: np.dtype[Any]) -> bytes:
    fill = np.zeros(1, dtype=dtype)
    try:
        dataset.id.get_create_plist().get_fill_value(fill)
    except (OSError, TypeError, ValueError):
        fill = np.zeros(1, dtype=dtype)  # no fill value defined: HDF5 reads zeros
    return fill.tobytes()


@dataclass(frozen=True)
class DatasetInfo:
    """What open read of a dataset (everything the sources need, picklable)."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    attrs: dict[str, Any]
    dimension_names: tuple[str, ...] | None


def _choose(f: Any, url: str, path: str | None) -> Any:
    datasets = _datasets(f)
    if path is None:
        data = [name for name, d in datasets.items() if not _is_scale(d)] or list(datasets)
        if len(data) != 1:
            listed = ", ".join(datasets) if datasets else "none"
            raise FormatError(f"{url} holds {len(data)} data variables/datasets (all datasets: {listed}): "
                              "name one with path=")
        return datasets[data[0]]
    key = path.strip("/")
    h5py = _h5py()
    node = f.get(key) if key else None
    if not isinstance(node, h5py.Dataset):
        listed = ", ".join(datasets) if datasets else "none"
        raise ArrayNotFoundError(f"{url}: no dataset at path {path!r}; the file holds: {listed}")
    return node


USER_BLOCK_PROBE = 64 << 10
"""First bytes read to look for a superblock after a user block (one request covers 512..32768)."""


def has_user_block_signature(storage: StoredObject) -> bool:
    """Whether the HDF5 signature sits at 512, 1024, 2048... (a user block before the superblock,
    where HDF5 looks for it): asked only of files no format recognised from their first bytes.
    Costs one request, plus one per power of two past 64 KiB (user blocks that big are rare)."""
    from .formats import HDF5_SIGNATURE

    first = storage.read(0, min(storage.size, USER_BLOCK_PROBE))
    offset = 512
    while offset + len(HDF5_SIGNATURE) <= storage.size:
        if offset + len(HDF5_SIGNATURE) <= len(first):
            found = first[offset : offset + len(HDF5_SIGNATURE)]
        else:
            found = storage.read(offset, offset + len(HDF5_SIGNATURE))
        if found == HDF5_SIGNATURE:
            return True
        offset *= 2
    return False


def open_hdf5(storage: StoredObject, url: str, path: str | None, storage_options: dict[str, Any] | None) -> Source:
    """The source of dataset ``path`` of the HDF5 / NetCDF4 file in ``storage``.

    ``path`` may be omitted when the file holds one data variable (datasets that are dimension
    scales, NetCDF4 coordinate variables, do not count unless there is nothing else).

    Raises
    ------
    ArrayNotFoundError
        No dataset at ``path`` (the message lists them).
    FormatError, TruncatedFileError
        Not an HDF5 file, a damaged one, a chunk outside the file, a variable-length type.
    UnsupportedCodecError
        A filter lazymem does not decode (named with its id).
    """
    from .byte_runs import ByteRunsSource, InlineSource

    h5py = _h5py()
    with h5_file(storage, url) as f:
        dataset = _choose(f, url, path)
        dtype = _dataset_dtype(dataset, url)
        shape = tuple(int(n) for n in dataset.shape)
        info = DatasetInfo(dataset.name.lstrip("/"), shape, dtype, read_attrs(dataset), dimension_names(dataset))
        plist = dataset.id.get_create_plist()
        layout = plist.get_layout()
        details: dict[str, Any] = {"format": "hdf5", "path": info.path}
        common: dict[str, Any] = {"attrs": info.attrs, "dimension_names": info.dimension_names}
        if plist.get_external_count():
            raise FormatError(f"{url}: dataset {info.path} keeps its data in external files: not supported")
        if layout == h5py.h5d.COMPACT or (shape == () and layout != h5py.h5d.CHUNKED):
            data = np.asarray(dataset[()], dtype=dtype).tobytes() if info.dtype.itemsize else b""
            details["layout"] = "compact" if layout == h5py.h5d.COMPACT else "contiguous"
            return InlineSource(url, shape, dtype, data, details={**details, "stored_bytes": len(data)}, **common)
        if layout == h5py.h5d.CONTIGUOUS:
            offset = dataset.id.get_offset()
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset is None or nbytes == 0:  # never written: the fill value everywhere
                details.update({"layout": "contiguous", "allocated": False})
                return InlineSource(url, shape, dtype, _fill_pattern(dataset, dtype), details=details, **common)
            details["layout"] = "contiguous"
            return ByteRunsSource(storage, url, shape, dtype, begin=int(offset), details=details, **common)
        if layout == h5py.h5d.CHUNKED:
            filters = _filters(plist)
            check_pipeline(filters)
            from .hdf5_chunked import Hdf5ChunkedSource
            from .hdf5_index import ChunkFetcher, ChunkIndex

            index = ChunkIndex.read(dataset, storage, url)
            fetcher = ChunkFetcher(storage, url, info.path, shape, dtype, filters, index)
            return Hdf5ChunkedSource(fetcher, info, _fill_pattern(dataset, dtype))
        raise FormatError(f"{url}: dataset {info.path} has a layout lazymem does not read "
                          f"({'virtual' if layout == getattr(h5py.h5d, 'VIRTUAL', -1) else layout})")


def list_hdf5(storage: StoredObject, url: str, storage_options: dict[str, Any] | None) -> Any:
    """The :class:`~lazymem.sources.formats.Listing` of an HDF5 / NetCDF4 file: every dataset
    (coordinate variables included, NetCDF4's dimension-only datasets not), the root's attributes."""
    from .formats import ArrayInfo, Listing

    with h5_file(storage, url) as f:
        arrays = {}
        for name, d in _datasets(f).items():
            try:
                dtype: Any = np.dtype(d.dtype)
            except TypeError:
                dtype = d.dtype
            arrays[name] = ArrayInfo(tuple(int(n) for n in d.shape), dtype, read_attrs(d), dimension_names(d))
        return Listing(arrays, read_attrs(f), "hdf5")


__all__ = ["DatasetInfo", "UnsupportedCodecError", "dimension_names", "h5_file", "list_hdf5", "open_hdf5",
           "read_attrs"]

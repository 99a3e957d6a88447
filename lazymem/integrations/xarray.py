"""xarray backend: ``xr.open_dataset(url, engine="lazymem")`` for every group lazymem lists (zarr
v2/v3, HDF5/NetCDF) and every single array it opens (``.npy.zst``, a zarr array).

What opening costs: the group's metadata and the dimension coordinates, read eagerly (xarray
builds an index from each at once: a lazy mapping there would only add a monitor round trip). The
metadata comes from :func:`lazymem.open_group`, whatever the format; a URL that names a zarr store
(``.zarr``, a local directory) is read once with zarr-python instead, since xarray's zarr
conventions need what the listing does not carry (fill values, chunk grids, the zarr format). No
other array is opened: each data variable is a :class:`LazymemBackendArray` that calls
:func:`lazymem.open` the first time xarray indexes it and answers with that
:class:`~lazymem.LazyArray` (the whole of it), or a prefetched selection of it.

CF decoding is xarray's own (``StoreBackendEntrypoint``, ``xarray.conventions``), fed the
attributes xarray's own engines would feed it (zarr: the array's ``fill_value`` as ``_FillValue``
for zarr v2, ``_FillValue`` decoded from the attributes for v3, exactly as ``engine="zarr"``), so
values agree with those engines. Decoders that change values (scale/offset, an integer or finite
``_FillValue``) wrap the variable in xarray's lazy element-wise arrays: indexing still reaches the
LazyArray first and decodes only the selection. A float variable whose ``_FillValue`` is NaN (what
xarray writes by default) needs no decoding (NaN is already NaN), and xarray leaves it unwrapped.

``ds[v].values`` / ``ds[v].to_numpy()`` of a variable left undecoded is an ``ndarray`` sharing the
LazyArray's memory (xarray's ``np.asarray`` drops the subclass; ``ds[v].data`` keeps it): no copy,
pages fetched on touch. ``ds.close()`` evicts every array this dataset opened (its resident
memory is freed at once) and drops the dataset's handles: like a file closed by xarray's own
engines, the dataset stays usable (what is touched next is fetched again, and a variable not yet
opened opens anew), and each mapping goes when its last view does.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from xarray.backends.common import AbstractDataStore, BackendArray, BackendEntrypoint
from xarray.backends.store import StoreBackendEntrypoint
from xarray.core import indexing
from xarray.core.variable import Variable

from ..config import parse_size
from ..errors import ArrayNotFoundError, ClosedArrayError, FormatError, LazymemError

HIDDEN_ATTRS = frozenset({
    "_ARRAY_DIMENSIONS",  # zarr v2: the dimension names, xarray's convention
    # HDF5 dimension-scale bookkeeping and netCDF-4's own, hidden by xarray's h5netcdf engine too
    "DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "_Netcdf4Dimid", "_Netcdf4Coordinates",
    "_nc3_strict", "_NCProperties",
})
"""Attributes that describe the storage layout, not the data: never shown as attributes."""

UNITS_PER_BLOCK = 4
"""dask blocks (``chunks={}``) span at least this many install units: two blocks that share a unit
both fetch it when two worker processes run them, so a block of 4 units costs at most 5 (1.25x)."""

# The largest unit a chunked source (zarr, HDF5) chooses by itself: without opening the array
# (``chunk_bytes`` not given), blocks are sized for units this large.
from ..sources.chunk_grid import MAX_UNIT_BYTES  # noqa: E402


@dataclass
class _VariableSpec:
    """One variable as the metadata describes it, before any array is opened."""

    name: str
    path: str | None
    """Path for :func:`lazymem.open` (None: the URL is the array)."""
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    dims: tuple[str, ...] | None
    attrs: dict[str, Any]
    encoding: dict[str, Any] = field(default_factory=dict)
    chunks: tuple[int, ...] | None = None
    """The format's chunk grid (blocks of ``chunks={}``), where known."""
    unreadable: str | None = None
    """Why lazymem cannot serve this variable (raised only if it is not dropped)."""


class LazymemBackendArray(BackendArray):
    """One variable of a :class:`LazymemStore`: opens its LazyArray on first indexing and answers
    every xarray indexer with numpy indexing of that array.

    The whole array comes back as the LazyArray itself (``.values``: nothing fetched). A part of it
    (a selection, a dask block) is prefetched first, as xarray's own engines read a selection when
    it is asked for: its units load concurrently, a failure is an exception here (not SIGBUS at
    the first touch, which would cost a dask worker), and the reads fault nothing, so no readahead
    runs past the selection into what other tasks will read. Basic selections are views.
    """

    __slots__ = ("_name", "_store", "dtype", "shape")

    def __init__(self, store: LazymemStore, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self._store = store
        self._name = name
        self.shape = shape
        self.dtype = dtype

    def __getitem__(self, key: indexing.ExplicitIndexer) -> Any:
        array = self._store.array(self._name)
        _prefetch_part(array, key)
        adapter = indexing.NumpyIndexingAdapter(array)
        if isinstance(key, indexing.OuterIndexer):
            return adapter.oindex[key]
        if isinstance(key, indexing.VectorizedIndexer):
            return adapter.vindex[key]
        return adapter[key]

    def __repr__(self) -> str:
        return f"<LazymemBackendArray {self._name!r} of {self._store.url!r} shape={self.shape} dtype={self.dtype}>"


def _prefetch_part(array: np.ndarray, key: indexing.ExplicitIndexer) -> None:
    """Prefetch what ``key`` selects of ``array``, unless it selects all of it."""
    from ..array import LazyArray

    if not isinstance(array, LazyArray) or array._lazy is None:  # a mapped .npy (the kernel's), or empty
        return
    items = key.tuple
    if all(isinstance(k, slice) and k.indices(n) == (0, n, 1) for k, n in zip(items, array.shape)):
        return
    if isinstance(key, indexing.OuterIndexer):
        to_numpy = getattr(indexing, "_outer_to_numpy_indexer", None)
        if to_numpy is None:  # an xarray without it: the reads fault the units in instead
            return
        items = to_numpy(key, array.shape)
    array.prefetch(tuple(items))


class LazymemStore(AbstractDataStore):
    """The variables and attributes of one group (or one array) at a URL, read from metadata; the
    arrays themselves opened with :func:`lazymem.open` when first indexed."""

    def __init__(self, url: str, *, group: str | None = None, storage_options: dict[str, Any] | None = None,
                 open_options: dict[str, Any] | None = None, drop_variables: Iterable[str] = ()) -> None:
        from ..sources import absolute_url

        self.url = absolute_url(url)
        self.storage_options = storage_options
        self.open_options = dict(open_options or {})
        self._drop = frozenset(drop_variables)
        chunk_bytes = self.open_options.get("chunk_bytes")
        unit_bytes = parse_size(chunk_bytes) if isinstance(chunk_bytes, str) else chunk_bytes
        self._specs, self._attrs, self._zarr_nodes = _read_metadata(self.url, group, storage_options, unit_bytes)
        self._lock = threading.Lock()
        self._arrays: dict[str, np.ndarray] = {}

    # --- arrays, opened on demand --------------------------------------------------------------------
    def array(self, name: str) -> np.ndarray:
        """The lazily loaded array of variable ``name`` (opened on first call, then shared)."""
        with self._lock:
            array = self._arrays.get(name)
            if array is None:
                from ..array import open as open_array

                spec = self._specs[name]
                array = open_array(self.url, path=spec.path, storage_options=self.storage_options,
                                   **self.open_options)
                if array.shape != spec.shape or array.dtype != spec.dtype:  # the store changed since open
                    raise FormatError(f"{self.url}: variable {name!r} is now {array.shape} {array.dtype}, "
                                      f"its metadata said {spec.shape} {spec.dtype} when the dataset was opened")
                self._arrays[name] = array
            return array

    def _load_eagerly(self, spec: _VariableSpec) -> np.ndarray:
        node = self._zarr_nodes.get(spec.name)
        if node is not None:  # the node read at open: one request for its chunk, none for its metadata
            return np.asarray(node[...], dtype=spec.dtype)
        from ..eager import load

        return load(self.url, path=spec.path, storage_options=self.storage_options, threads=1)

    # --- AbstractDataStore -----------------------------------------------------------------------------
    def get_variables(self) -> dict[str, Variable]:
        variables = {}
        for name, spec in self._specs.items():
            if name in self._drop:
                continue
            assert spec.dims is not None
            if spec.unreadable:
                raise FormatError(f"{self.url}: {spec.unreadable} (drop_variables=[{name!r}] opens the rest)")
            data: Any
            if spec.dims == (name,):  # a dimension coordinate: xarray reads it whole for its index
                data = self._load_eagerly(spec)
            else:
                data = indexing.LazilyIndexedArray(LazymemBackendArray(self, name, spec.shape, spec.dtype))
            variables[name] = Variable(spec.dims, data, dict(spec.attrs), dict(spec.encoding))
        return variables

    def get_attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    def get_dimensions(self) -> dict[str, int]:
        return {d: n for spec in self._specs.values() for d, n in zip(spec.dims or (), spec.shape)}

    def get_encoding(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        """Free the resident memory of every array opened here, and forget them (see the module)."""
        with self._lock:
            arrays, self._arrays = list(self._arrays.values()), {}
        for array in arrays:
            evict = getattr(array, "evict", None)
            if evict is None or getattr(array, "_lazy", True) is None:  # an empty array: no memory
                continue
            try:
                evict()
            except ClosedArrayError:  # the user closed it (LazyArray.close): released already
                pass

    def __getstate__(self) -> dict[str, Any]:
        # Sent to dask workers by reference: each process opens the arrays it indexes itself.
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_arrays", "_zarr_nodes")}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._arrays = {}
        self._zarr_nodes = {}  # used at open only (coordinates)


# --- metadata ---------------------------------------------------------------------------------------
def _read_metadata(url: str, group: str | None, storage_options: dict[str, Any] | None, unit_bytes: int | None
                   ) -> tuple[dict[str, _VariableSpec], dict[str, Any], dict[str, Any]]:
    """The variables (by name) of ``group`` at ``url``, the group's attributes, and the zarr array
    nodes of a zarr store by variable name (empty for other formats)."""
    from ..groups import open_group
    from ..sources.formats import is_zarr_url

    if is_zarr_url(url) or os.path.isdir(url):
        # Named a zarr store: read its metadata once, with zarr-python, rather than list it through
        # open_group and then again for what only zarr knows (fill values, chunk grids).
        nodes = _zarr_arrays(url, storage_options)
        if nodes is not None:
            arrays, attrs = nodes
            infos = {path: (_zarr_info(node), node) for path, node in arrays.items()}
            return _group_specs(url, group, infos, attrs, unit_bytes)
    try:
        listing = open_group(url, storage_options=storage_options)
    except (ArrayNotFoundError, FormatError) as listing_error:
        if group:
            raise
        try:
            specs, nodes_by_name = _single_array(url, storage_options, unit_bytes)
        except LazymemError as exc:
            raise exc from listing_error
        return specs, {}, nodes_by_name
    zarr_nodes: dict[str, Any] = {}
    if listing.format == "zarr":
        found = _zarr_arrays(url, storage_options)
        zarr_nodes = found[0] if found is not None else {}
    infos = {path: (info, zarr_nodes.get(path)) for path, info in listing.arrays.items()}
    return _group_specs(url, group, infos, listing.attrs, unit_bytes)


def _group_specs(url: str, group: str | None, infos: dict[str, tuple[Any, Any]], attrs: dict[str, Any],
                 unit_bytes: int | None) -> tuple[dict[str, _VariableSpec], dict[str, Any], dict[str, Any]]:
    """The variables of ``group`` from each array's ``(ArrayInfo, zarr node or None)`` by path."""
    prefix = (group or "").strip("/")
    specs: dict[str, _VariableSpec] = {}
    nodes: dict[str, Any] = {}
    for path, (info, node) in infos.items():
        parent, _, name = path.rpartition("/")
        if parent != prefix:
            continue
        specs[name] = _spec(name, path, info.shape, info.dtype, info.attrs, info.dimension_names,
                            getattr(info, "chunks", None), node, unit_bytes=unit_bytes)
        if node is not None:
            nodes[name] = node
    if not specs and prefix and not any(p.startswith(prefix + "/") for p in infos):
        raise ArrayNotFoundError(f"{url}: no group {prefix!r} holding arrays")
    _name_missing_dimensions(specs)
    return specs, {k: v for k, v in _xarray_attrs(attrs).items() if not k.lower().startswith("_nc")}, nodes


def _single_array(url: str, storage_options: dict[str, Any] | None, unit_bytes: int | None
                  ) -> tuple[dict[str, _VariableSpec], dict[str, Any]]:
    """A URL naming one array (``.npy.zst``, a zarr array): one variable named after it."""
    from ..sources.formats import open_array_source, split_store_url

    source = open_array_source(url, None, storage_options)
    _, path = split_store_url(url, None)
    base = (path or url.rstrip("/")).rsplit("/", 1)[-1]
    name = _stem(base) or "data"
    chunks: tuple[int, ...] | None = tuple(source.storage_chunks)
    if chunks is not None and len(chunks) != len(source.shape):  # a flat source's frames: no N-d grid
        chunks = None
    node = getattr(source, "array", None)  # a zarr array's node
    spec = _spec(name, None, tuple(source.shape), source.dtype, source.attrs, source.dimension_names, chunks, node,
                 order=source.order, unit_bytes=unit_bytes or source.default_unit_bytes())
    _name_missing_dimensions({name: spec})
    return {name: spec}, ({name: node} if node is not None else {})


def _stem(name: str) -> str:
    for suffix in (".npy.zst", ".zst", ".npy", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _zarr_arrays(url: str, storage_options: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The zarr array nodes of the store at ``url`` by path, and the root group's attributes; None
    if no zarr group is there (the caller then asks lazymem's own dispatch, for its errors)."""
    from ..sources.zarr_array import _store_options, _zarr

    zarr = _zarr()
    try:
        root = zarr.open_group(store=url, mode="r", **_store_options(url, storage_options))
        arrays = {name: node for name, node in root.members(max_depth=None) if not hasattr(node, "members")}
    except (FileNotFoundError, ValueError, TypeError, KeyError):  # zarr's own errors derive from these
        return None
    return dict(sorted(arrays.items())), dict(root.attrs)


def _zarr_info(node: Any) -> Any:
    """What :func:`lazymem.open_group` lists of a zarr array (the same reading of its metadata)."""
    from ..sources.formats import ArrayInfo
    from ..sources.zarr_array import _dimension_names

    return ArrayInfo(tuple(int(n) for n in node.shape), np.dtype(node.dtype), dict(node.attrs), _dimension_names(node))


def _spec(name: str, path: str | None, shape: tuple[int, ...], dtype: Any, attrs: dict[str, Any],
          dims: tuple[str, ...] | None, chunks: tuple[int, ...] | None, zarr_node: Any, *, order: str = "C",
          unit_bytes: int | None = None) -> _VariableSpec:
    dtype = np.dtype(dtype)
    unreadable = None
    if dtype.hasobject or dtype.kind not in "biufcmMSUV":
        unreadable = f"variable {name!r} has dtype {dtype}: not fixed-size data, which lazymem cannot map"
    attrs = _xarray_attrs(attrs)
    encoding: dict[str, Any] = {"dtype": dtype}
    if zarr_node is not None:
        chunks = _zarr_conventions(zarr_node, dtype, attrs, encoding)
        order = "F" if getattr(zarr_node.metadata, "order", "C") == "F" else "C"
    blocks = _dask_blocks(shape, dtype, order, chunks, unit_bytes) if shape else None
    return _VariableSpec(name, path, shape, dtype, tuple(dims) if dims is not None else None, attrs, encoding,
                         blocks, unreadable)


def _xarray_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes as xarray's own engines show them: without storage bookkeeping, and byte strings
    (HDF5's fixed-length strings, as netCDF-4 writes text) decoded as UTF-8 (as its h5netcdf engine
    does; fill values stay as stored)."""
    shown = {}
    for key, value in attrs.items():
        if key in HIDDEN_ATTRS:
            continue
        if key not in ("_FillValue", "missing_value") and isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                pass  # kept as bytes, as xarray does (it warns)
        shown[key] = value
    return shown


def _zarr_conventions(node: Any, dtype: np.dtype[Any], attrs: dict[str, Any], encoding: dict[str, Any]) -> Any:
    """What xarray's zarr engine makes of a zarr array's metadata (``open_store_variable``): its
    fill value as the mask for zarr v2, the ``_FillValue`` attribute decoded for v3; the chunk grid
    (shards where there are) as dask's preferred blocks. Returns those blocks."""
    chunks = tuple(int(c) for c in node.chunks)
    encoding["chunks"] = chunks
    shards = getattr(node, "shards", None)
    if node.metadata.zarr_format == 2:
        if node.fill_value is not None:
            attrs["_FillValue"] = node.fill_value
    else:
        encoding["fill_value"] = node.fill_value
        if "_FillValue" in attrs:
            from xarray.backends.zarr import FillValueCoder

            attrs["_FillValue"] = FillValueCoder.decode(attrs["_FillValue"], dtype)
    return tuple(int(s) for s in shards) if shards else chunks


def _dask_blocks(shape: tuple[int, ...], dtype: np.dtype[Any], order: str, chunks: tuple[int, ...] | None,
                 unit_bytes: int | None) -> tuple[int, ...] | None:
    """dask blocks for ``chunks={}``: bands of whole rows of the outermost axis in memory order (each
    block a contiguous run of the image, as install units are), whole rows of stored chunks where
    the format has a chunk grid, of at least :data:`UNITS_PER_BLOCK` install units.

    Blocks as small as the stored chunks (what xarray's zarr engine prefers) would make every
    worker that runs one of a unit's blocks fetch that whole unit."""
    if 0 in shape:
        return None
    axis = 0 if order == "C" else len(shape) - 1
    row = dtype.itemsize * int(np.prod([n for i, n in enumerate(shape) if i != axis], dtype=np.int64))
    step = int(chunks[axis]) if chunks is not None and len(chunks) == len(shape) and chunks[axis] > 0 else 1
    if unit_bytes is None:  # a chunked source's own choice, known only once opened: the largest
        unit_bytes = MAX_UNIT_BYTES
    rows = -(-UNITS_PER_BLOCK * unit_bytes // max(row, 1))
    rows = min(shape[axis], max(step, -(-rows // step) * step))
    return tuple(rows if i == axis else n for i, n in enumerate(shape))


def _name_missing_dimensions(specs: dict[str, _VariableSpec]) -> None:
    """Arrays whose format records no dimension names get ``dim_0``, ``dim_1``...; where that
    would give one name two sizes in the group, ``<variable>_dim_<i>`` instead."""
    sizes: dict[str, int] = {d: n for s in specs.values() if s.dims is not None for d, n in zip(s.dims, s.shape)}
    for spec in specs.values():
        if spec.dims is not None:
            continue
        dims = []
        for i, n in enumerate(spec.shape):
            dim = f"dim_{i}"
            if sizes.setdefault(dim, n) != n:
                dim = f"{spec.name}_dim_{i}"
            dims.append(dim)
        spec.dims = tuple(dims)
    for spec in specs.values():
        assert spec.dims is not None
        if spec.chunks is not None and "preferred_chunks" not in spec.encoding:
            spec.encoding["preferred_chunks"] = dict(zip(spec.dims, spec.chunks))


# --- the entry point ----------------------------------------------------------------------------------
SUFFIXES = (".npy.zst", ".zst", ".npy")
"""Suffixes no other xarray engine claims: ``guess_can_open`` says yes to them."""

HDF5_SUFFIXES = (".nc", ".nc4", ".h5", ".hdf5", ".he5", ".cdf")
"""Claimed once lazymem reads HDF5/NetCDF (xarray tries its netCDF4, h5netcdf and scipy engines
first for these)."""

ZSTD_MAGIC = (b"\x28\xb5\x2f\xfd",)  # a zstd frame; a seekable file may also start with a skippable one
SKIPPABLE_MAGIC_LOW = 0x184D2A50


class LazymemBackendEntrypoint(BackendEntrypoint):
    """``engine="lazymem"``: zarr stores (v2, v3), HDF5/NetCDF files and single ``.npy.zst`` arrays,
    local or at any fsspec URL, as datasets of lazily loaded arrays.

    ``guess_can_open`` claims ``.npy.zst``, ``.zst`` and ``.npy`` (and local files whose first bytes
    say zstd or npy), and HDF5/NetCDF files once lazymem reads them. It does not claim ``.zarr``
    stores: xarray would pick this engine before its own zarr engine (plugins are tried
    alphabetically), so installing lazymem would change what ``xr.open_dataset("x.zarr")`` does.
    Name the engine for zarr.
    """

    description = "Huge compressed arrays (zarr, HDF5/NetCDF, .npy.zst) loaded lazily through userfaultfd"
    url = "https://github.com/lazymem/lazymem#xarray"
    open_dataset_parameters = (
        "filename_or_obj", "mask_and_scale", "decode_times", "concat_characters", "decode_coords", "drop_variables",
        "use_cftime", "decode_timedelta", "group", "storage_options", "chunk_bytes", "readahead", "max_resident",
        "max_in_flight", "huge_pages",
    )

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: Any,
        *,
        mask_and_scale: bool = True,
        decode_times: bool = True,
        concat_characters: bool = True,
        decode_coords: bool = True,
        drop_variables: str | Iterable[str] | None = None,
        use_cftime: bool | None = None,
        decode_timedelta: bool | None = None,
        group: str | None = None,
        storage_options: dict[str, Any] | None = None,
        chunk_bytes: int | str | None = None,
        readahead: int | None = None,
        max_resident: int | str | None = None,
        max_in_flight: int | None = None,
        huge_pages: bool | None = None,
    ) -> Any:
        """Open ``filename_or_obj`` (a path or fsspec URL) as a dataset.

        ``group`` names a zarr group or HDF5 group inside the store (its arrays become the
        variables); ``storage_options`` go to fsspec; ``chunk_bytes``, ``readahead``,
        ``max_resident``, ``max_in_flight``, ``huge_pages`` to :func:`lazymem.open` for each array.
        The CF decoders are xarray's own.
        """
        if not isinstance(filename_or_obj, (str, os.PathLike)):
            raise TypeError(f"engine='lazymem' opens a path or URL, not {type(filename_or_obj).__name__}")
        if isinstance(drop_variables, str):
            drop_variables = [drop_variables]
        open_options = {"chunk_bytes": chunk_bytes, "readahead": readahead, "max_resident": max_resident,
                        "max_in_flight": max_in_flight, "huge_pages": huge_pages}
        store = LazymemStore(os.fspath(filename_or_obj), group=group, storage_options=storage_options,
                             open_options={k: v for k, v in open_options.items() if v is not None},
                             drop_variables=drop_variables or ())
        try:
            return StoreBackendEntrypoint().open_dataset(
                store, mask_and_scale=mask_and_scale, decode_times=decode_times,
                concat_characters=concat_characters, decode_coords=decode_coords,
                drop_variables=drop_variables, use_cftime=use_cftime, decode_timedelta=decode_timedelta)
        except BaseException:
            store.close()
            raise

    def guess_can_open(self, filename_or_obj: Any) -> bool:
        if not isinstance(filename_or_obj, (str, os.PathLike)):
            return False
        name = os.fspath(filename_or_obj).rstrip("/")
        lowered = name.lower()
        hdf5 = importlib.util.find_spec("lazymem.sources.hdf5") is not None
        if lowered.endswith(SUFFIXES) or (hdf5 and lowered.endswith(HDF5_SUFFIXES)):
            return True
        if "://" in name and not name.startswith("file://"):
            return False  # remote: by suffix only (a request per guess is not cheap)
        return _local_head_is_ours(name.removeprefix("file://"), hdf5)


def _local_head_is_ours(path: str, hdf5: bool) -> bool:
    from ..sources.formats import FILE_FORMATS

    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    if head.startswith(ZSTD_MAGIC) or head.startswith(b"\x93NUMPY"):
        return True
    if len(head) >= 4 and int.from_bytes(head[:4], "little") & ~0xF == SKIPPABLE_MAGIC_LOW:
        return True
    if not hdf5:
        return False
    return any(fmt.sniff(head) for fmt in FILE_FORMATS)

"""NetCDF3 files (classic, 64-bit offset, CDF5) behind the :class:`~lazymem.sources.base.Source`
interface, with our own header parser (the format is small and fully specified:
https://docs.unidata.ucar.edu/netcdf-c/current/file_format_specifications.html).

Data is uncompressed and big-endian. A fixed-size variable is one byte range; a record variable
(its first dimension the unlimited one) has one slab per record, the records of every record
variable interleaved: slab ``r`` of variable ``v`` at ``v.begin + r * recsize``. Both are
:class:`~.byte_runs.ByteRunsSource` (one run, or one run per record).

The header is untrusted input: every count and offset is checked against the bytes present
before anything is allocated or read past it, and every variable's data against the file's size
(``FormatError`` / ``TruncatedFileError``, never an array of other bytes). A streaming file
(``numrecs`` = -1, written by a process that had not finished) takes its record count from its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lazymem.errors import ArrayNotFoundError, FormatError, TruncatedFileError
from lazymem.storage import StoredObject

from .base import Source

HEADER_PROBE = 64 << 10
"""First read of a header; a larger header is read again whole (its size is then known to be more)."""
MAX_HEADER = 64 << 20
"""A header larger than this is refused (real ones are kilobytes)."""

NC_DIMENSION, NC_VARIABLE, NC_ATTRIBUTE = 10, 11, 12
STREAMING = 0xFFFFFFFF

NC_TYPES: dict[int, str] = {1: "i1", 2: "S1", 3: ">i2", 4: ">i4", 5: ">f4", 6: ">f8",
                            7: "u1", 8: ">u2", 9: ">u4", 10: ">i8", 11: ">u8"}
"""nc_type -> numpy dtype (7..11 exist in CDF5 only)."""


class _NeedMore(Exception):
    """The header goes on past the bytes read so far."""


@dataclass
class Variable:
    name: str
    dims: tuple[int, ...]
    attrs: dict[str, Any]
    dtype: np.dtype[Any]
    vsize: int
    begin: int


@dataclass
class Header:
    version: int
    numrecs: int
    streaming: bool
    dims: list[tuple[str, int]]
    attrs: dict[str, Any]
    variables: list[Variable] = field(default_factory=list)

    @property
    def record_dim(self) -> int | None:
        for i, (_, length) in enumerate(self.dims):
            if length == 0:
                return i
        return None


class _Reader:
    def __init__(self, data: bytes, version: int, file_size: int) -> None:
        self.data = data
        self.pos = 4
        self.big = version == 5  # CDF5: 64-bit counts and sizes
        self.file_size = file_size

    def take(self, n: int) -> bytes:
        if n < 0:
            raise FormatError(f"negative length {n}")
        end = self.pos + n
        if end > len(self.data):
            if end > self.file_size or end > MAX_HEADER:
                raise TruncatedFileError(f"the header runs past the end of the file (byte {end} of {self.file_size})")
            raise _NeedMore(end)
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def count(self) -> int:
        """A NON_NEG count (INT64 in CDF5)."""
        value = int.from_bytes(self.take(8 if self.big else 4), "big", signed=True)
        if value < 0:
            raise FormatError(f"negative count {value}")
        return value

    def offset(self, version: int) -> int:
        return int.from_bytes(self.take(4 if version == 1 else 8), "big", signed=True)

    def name(self) -> str:
        n = self.count()
        self._plausible(n, 1)
        raw = self.take(n)
        self.take(-n % 4)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"a name that is not UTF-8: {raw[:40]!r}") from None

    def _plausible(self, n: int, item: int) -> None:
        # An absurd count (a fuzzed header) must fail here, before a huge read or allocation.
        if n * item > self.file_size:
            raise FormatError(f"a count of {n} items of {item} bytes exceeds the file ({self.file_size} bytes)")

    def values(self) -> Any:
        nc_type = self.u32()
        if nc_type not in NC_TYPES:
            raise FormatError(f"unknown nc_type {nc_type}")
        dtype = np.dtype(NC_TYPES[nc_type])
        n = self.count()
        self._plausible(n, dtype.itemsize)
        raw = self.take(n * dtype.itemsize)
        self.take(-(n * dtype.itemsize) % 4)
        if dtype.kind == "S":
            return raw.decode("utf-8", "replace")
        return np.frombuffer(raw, dtype=dtype).copy()

    def tagged_list(self, tag: int) -> int:
        """The element count of a list tagged ``tag`` (ABSENT: zero tag, zero count)."""
        found = self.u32()
        n = self.count()
        if found == 0 and n == 0:
            return 0
        if found != tag:
            raise FormatError(f"expected list tag {tag}, found {found}")
        return n

    def attrs(self) -> dict[str, Any]:
        n = self.tagged_list(NC_ATTRIBUTE)
        self._plausible(n, 12)
        out = {}
        for _ in range(n):
            name = self.name()
            out[name] = self.values()
        return out


def parse_header(data: bytes, file_size: int) -> Header:
    """The header at the start of ``data`` (the file's first bytes).

    Raises
    ------
    FormatError, TruncatedFileError
        Not NetCDF3, or a damaged header.
    _NeedMore
        ``data`` ends inside the header (read more and call again).
    """
    if len(data) < 4 or data[:3] != b"CDF" or data[3] not in (1, 2, 5):
        raise FormatError(f"not a NetCDF3 file (it starts with {data[:4]!r})")
    version = data[3]
    r = _Reader(data, version, file_size)
    raw_numrecs = r.take(8 if r.big else 4)
    numrecs = int.from_bytes(raw_numrecs, "big")
    streaming = numrecs == (2 ** (8 * len(raw_numrecs)) - 1)
    n_dims = r.tagged_list(NC_DIMENSION)
    r._plausible(n_dims, 8)
    dims = [(r.name(), r.count()) for _ in range(n_dims)]
    if sum(1 for _, n in dims if n == 0) > 1:
        raise FormatError("more than one unlimited dimension")
    header = Header(version, 0 if streaming else numrecs, streaming, dims, r.attrs())
    n_vars = r.tagged_list(NC_VARIABLE)
    r._plausible(n_vars, 16)
    for _ in range(n_vars):
        name = r.name()
        ndims = r.count()
        r._plausible(ndims, 4)
        dimids = tuple(r.count() for _ in range(ndims))
        for d in dimids:
            if d >= len(dims):
                raise FormatError(f"variable {name!r} names dimension {d}; the file has {len(dims)}")
        attrs = r.attrs()
        nc_type = r.u32()
        if nc_type not in NC_TYPES or (version != 5 and nc_type > 6):
            raise FormatError(f"variable {name!r} has unknown nc_type {nc_type}")
        vsize = r.count() if r.big else r.u32()
        begin = r.offset(version)
        if begin < 0:
            raise FormatError(f"variable {name!r} starts at a negative offset {begin}")
        header.variables.append(Variable(name, dimids, attrs, np.dtype(NC_TYPES[nc_type]), vsize, begin))
    return header


def read_header(storage: StoredObject, url: str) -> Header:
    """The file's header, read in one request unless it is larger than :data:`HEADER_PROBE`."""
    want = min(storage.size, HEADER_PROBE)
    while True:
        data = storage.read(0, want)
        try:
            return parse_header(data, storage.size)
        except _NeedMore as more:
            want = min(storage.size, max(int(more.args[0]), 2 * want))
        except FormatError as exc:
            raise type(exc)(f"{url}: NetCDF3 header: {exc}") from None


@dataclass(frozen=True)
class Layout:
    """Where one variable's bytes are."""

    shape: tuple[int, ...]
    dims: tuple[str, ...]
    begin: int
    records: int
    """Runs of the variable's bytes: 1 for a fixed-size variable, numrecs for a record variable."""
    stride: int
    """Bytes from one record's slab to the next (the record size)."""


def layouts(header: Header, file_size: int, url: str) -> dict[str, Layout]:
    """Every variable's layout, checked against the file's size."""
    rec_dim = header.record_dim
    record_vars = [v for v in header.variables if v.dims and v.dims[0] == rec_dim]

    def slab(v: Variable) -> int:  # bytes of one record (record variables) or of the whole (fixed)
        dims = v.dims[1:] if v in record_vars else v.dims
        return math.prod(header.dims[d][1] for d in dims) * v.dtype.itemsize

    for v in header.variables:
        if rec_dim is not None and rec_dim in v.dims[1:]:
            raise FormatError(f"{url}: variable {v.name!r} has the unlimited dimension other than first")
    # The record size: every record variable's slab padded to 4 bytes, except when there is only one
    # (netCDF-C's NC_computeshapes: no padding between its records then).
    recsize = sum(-(-slab(v) // 4) * 4 for v in record_vars)
    if len(record_vars) == 1:
        recsize = slab(record_vars[0])
    numrecs = header.numrecs
    if header.streaming:
        begin_rec = min((v.begin for v in record_vars), default=file_size)
        numrecs = (file_size - begin_rec) // recsize if recsize else 0
    out = {}
    for v in header.variables:
        is_rec = v in record_vars
        shape = tuple(numrecs if (is_rec and i == 0) else header.dims[d][1] for i, d in enumerate(v.dims))
        records = numrecs if is_rec else 1
        size = slab(v)
        # Nothing to read (no records yet, a zero-length dimension): its begin may lie past the end.
        end = v.begin + (records - 1) * recsize + size if records and size else 0
        if end > file_size:
            raise TruncatedFileError(f"{url}: variable {v.name!r} ends at byte {end}, past the end of the file "
                                     f"({file_size} bytes)")
        out[v.name] = Layout(shape, tuple(header.dims[d][0] for d in v.dims), v.begin, records, recsize)
    return out


def _choose(header: Header, url: str, path: str | None) -> Variable:
    names = [v.name for v in header.variables]
    if path is None:
        # Coordinate variables (1-d, named as their dimension) do not count, unless nothing else is there.
        data = [v.name for v in header.variables
                if not (len(v.dims) == 1 and header.dims[v.dims[0]][0] == v.name)] or names
        if len(data) != 1:
            raise FormatError(f"{url} holds {len(data)} data variables (all variables: {', '.join(names) or 'none'}): "
                              "name one with path=")
        path = data[0]
    for v in header.variables:
        if v.name == path.strip("/"):
            return v
    raise ArrayNotFoundError(f"{url}: no variable {path!r}; the file holds: {', '.join(names) or 'none'}")


def open_netcdf3(storage: StoredObject, url: str, path: str | None, storage_options: dict[str, Any] | None) -> Source:
    """The source of variable ``path`` of the NetCDF3 file in ``storage`` (one header read)."""
    from .byte_runs import ByteRunsSource

    header = read_header(storage, url)
    var = _choose(header, url, path)
    layout = layouts(header, storage.size, url)[var.name]
    kind = {1: "classic", 2: "64-bit offset", 5: "CDF5"}[header.version]
    details = {"format": "netcdf3", "variant": kind, "path": var.name,
               "record_variable": bool(var.dims) and var.dims[0] == header.record_dim}
    chunks = (1, *layout.shape[1:]) if details["record_variable"] else None
    return ByteRunsSource(storage, url, layout.shape, var.dtype, begin=layout.begin, count=layout.records,
                          stride=layout.stride, chunks=chunks, attrs=var.attrs, dimension_names=layout.dims,
                          details=details)


def list_netcdf3(storage: StoredObject, url: str, storage_options: dict[str, Any] | None) -> Any:
    """Every variable of the file (coordinate variables included) and its global attributes."""
    from .formats import ArrayInfo, Listing

    header = read_header(storage, url)
    found = layouts(header, storage.size, url)
    arrays = {v.name: ArrayInfo(found[v.name].shape, v.dtype, v.attrs, found[v.name].dims)
              for v in header.variables}
    return Listing(arrays, header.attrs, "netcdf3")

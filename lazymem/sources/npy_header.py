"""Parse and write ``.npy`` headers without trusting the input.

numpy's own reader is built for files you trust: it reads from a file object, allows pickles on
request and bounds the header at 10 kB. Sources here hold a *prefix* of the decompressed stream (the
first frame or two), so this module parses from bytes, refuses anything that is not plain data, and
bounds every size before anyone allocates it.
"""

from __future__ import annotations

import ast
import importlib
import io
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.lib import format as _npformat

from lazymem.errors import FormatError, HeaderError, TruncatedFileError, UnsupportedDtypeError

__all__ = [
    "MAGIC_PREFIX",
    "MAX_HEADER_LEN",
    "MAX_NBYTES",
    "NpyHeader",
    "npy_header_bytes",
    "npy_header_length",
    "parse_npy_header",
]

MAGIC_PREFIX = b"\x93NUMPY"
"""The first six bytes of every ``.npy`` stream."""

MAX_HEADER_LEN = 1 << 20
"""Longest header dict accepted (bytes). Generous for big structured dtypes, small enough for ``ast``."""

MAX_NBYTES = 1 << 56
"""Largest array accepted (bytes): 64 PiB, far above any real array, far below int64 overflow."""

MAX_NDIM = 64
"""numpy 2 refuses more dimensions than this; checking here gives a clear message instead."""

ARRAY_ALIGN = 64
"""numpy pads headers so that the data starts at a multiple of this."""

# version -> (struct format of the header length, text encoding of the header dict)
_VERSIONS: dict[tuple[int, int], tuple[str, str]] = {
    (1, 0): ("<H", "latin1"),
    (2, 0): ("<I", "latin1"),
    (3, 0): ("<I", "utf8"),
}
_EXPECTED_KEYS = {"descr", "fortran_order", "shape"}


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says about the array that follows it."""

    dtype: np.dtype
    """Element type; never an object dtype."""
    shape: tuple[int, ...]
    """Dimensions, each a non-negative Python int."""
    fortran_order: bool
    """True if the data is stored in Fortran (column-major) order."""
    data_offset: int
    """Offset of the first data byte in the ``.npy`` stream (also the header's total length)."""

    @property
    def nbytes(self) -> int:
        """Size of the array data in bytes (Python int: never overflows)."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def order(self) -> Literal["C", "F"]:
        """``"F"`` or ``"C"``, for ``np.empty(..., order=...)``."""
        return "F" if self.fortran_order else "C"


def _version_info(prefix: bytes) -> tuple[tuple[int, int], str, str]:
    """Check the magic and version bytes; return (version, length format, encoding)."""
    head = bytes(prefix[: len(MAGIC_PREFIX)])
    if head != MAGIC_PREFIX[: len(head)]:
        raise FormatError(f"not a .npy stream: it starts with {head!r}, expected {MAGIC_PREFIX!r}")
    if len(prefix) < len(MAGIC_PREFIX) + 2:
        raise TruncatedFileError(f".npy stream ends after {len(prefix)} bytes, inside its magic string")
    version = (prefix[6], prefix[7])
    if version not in _VERSIONS:
        raise HeaderError(f"unsupported .npy format version {version[0]}.{version[1]} (known: 1.0, 2.0, 3.0)")
    fmt, encoding = _VERSIONS[version]
    return version, fmt, encoding


def npy_header_length(prefix: bytes) -> int:
    """Total length of the header (magic, version, length field, dict) from its first bytes.

    Lets a reader that holds only the first few bytes of a stream learn how many it needs.

    Parameters
    ----------
    prefix : bytes
        The first bytes of the stream: at least 10 (version 1.0) or 12 (versions 2.0 and 3.0).

    Returns
    -------
    int
        ``data_offset`` of the header: the number of bytes :func:`parse_npy_header` needs.

    Raises
    ------
    FormatError
        The bytes are not a ``.npy`` magic string.
    TruncatedFileError
        Fewer bytes than the fixed-size part of the header.
    HeaderError
        Unknown version or a header length above :data:`MAX_HEADER_LEN`.
    """
    _, fmt, _ = _version_info(prefix)
    start = len(MAGIC_PREFIX) + 2 + struct.calcsize(fmt)
    if len(prefix) < start:
        raise TruncatedFileError(f".npy stream ends after {len(prefix)} bytes, inside its header length field")
    (header_len,) = struct.unpack_from(fmt, prefix, len(MAGIC_PREFIX) + 2)
    if header_len > MAX_HEADER_LEN:
        raise HeaderError(f".npy header claims {header_len} bytes; more than {MAX_HEADER_LEN} is refused as absurd")
    return start + header_len


def _literal_dict(text: str) -> dict[str, Any]:
    try:
        # literal_eval builds only literals: no names, calls or attribute access can run.
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as exc:
        raise HeaderError(f".npy header is not a Python literal: {text[:200]!r}") from exc
    if not isinstance(value, dict):
        raise HeaderError(f".npy header is not a dict: {text[:200]!r}")
    return value


def _check_shape(shape: object) -> tuple[int, ...]:
    # bool is an int subclass; numpy would accept True as 1, but no writer produces it.
    if not isinstance(shape, tuple) or not all(type(d) is int for d in shape):
        raise HeaderError(f".npy header 'shape' must be a tuple of ints, got {shape!r}")
    if len(shape) > MAX_NDIM:
        raise HeaderError(f".npy header has {len(shape)} dimensions; at most {MAX_NDIM} are supported")
    if any(d < 0 for d in shape):
        raise HeaderError(f".npy header 'shape' has a negative dimension: {shape!r}")
    return shape


def _check_dtype(descr: object) -> np.dtype:
    if not isinstance(descr, (str, list, tuple)):
        raise HeaderError(f".npy header 'descr' must be a str, list or tuple, got {type(descr).__name__}")
    try:
        dtype = _npformat.descr_to_dtype(descr)  # type: ignore[arg-type]
    except Exception as exc:
        raise HeaderError(f".npy header 'descr' is not a valid dtype: {str(descr)[:200]!r} ({exc})") from exc
    if dtype.hasobject:
        raise UnsupportedDtypeError(
            f".npy header describes dtype {dtype!r}, which holds Python objects (pointers): "
            "only plain-data dtypes can be stored and loaded"
        )
    return dtype


def parse_npy_header(prefix: bytes) -> NpyHeader:
    """Parse the ``.npy`` header at the start of ``prefix``, refusing anything unsafe.

    Parameters
    ----------
    prefix : bytes
        The first bytes of a ``.npy`` stream; anything after the header is ignored.

    Returns
    -------
    NpyHeader
        dtype, shape, order and the offset of the data.

    Raises
    ------
    FormatError
        The bytes do not start with the ``.npy`` magic string.
    TruncatedFileError
        ``prefix`` ends inside the header (:func:`npy_header_length` says how long it is).
    HeaderError
        Unknown version, header longer than 1 MiB, a dict that is not exactly ``descr``,
        ``fortran_order`` and ``shape`` with valid values, or an array above 2**56 bytes.
    UnsupportedDtypeError
        An object dtype, or a structured dtype with an object field.
    """
    prefix = bytes(prefix[: len(MAGIC_PREFIX) + 2 + 4 + MAX_HEADER_LEN])
    version, fmt, encoding = _version_info(prefix)
    data_offset = npy_header_length(prefix)
    if len(prefix) < data_offset:
        raise TruncatedFileError(
            f".npy header is {data_offset} bytes long but the stream ends after {len(prefix)} bytes"
        )
    start = len(MAGIC_PREFIX) + 2 + struct.calcsize(fmt)
    try:
        text = prefix[start:data_offset].decode(encoding)
    except UnicodeDecodeError as exc:
        raise HeaderError(f".npy {version[0]}.{version[1]} header is not valid {encoding}") from exc
    fields = _literal_dict(text)
    if fields.keys() != _EXPECTED_KEYS:
        raise HeaderError(
            f".npy header must have exactly the keys {sorted(_EXPECTED_KEYS)}, got {sorted(map(str, fields))}"
        )
    shape = _check_shape(fields["shape"])
    fortran_order = fields["fortran_order"]
    if not isinstance(fortran_order, bool):
        raise HeaderError(f".npy header 'fortran_order' must be a bool, got {fortran_order!r}")
    dtype = _check_dtype(fields["descr"])
    if dtype.subdtype is not None:
        # A top-level subarray dtype ("('<f4', (3,))"): numpy folds it into the shape, and so must we,
        # or the header's shape would disagree with the array built from it. np.save never writes one.
        if fortran_order:
            raise HeaderError(f".npy header combines the subarray dtype {dtype} with Fortran order")
        dtype, extra = dtype.subdtype
        shape = _check_shape(shape + extra)
    header = NpyHeader(dtype=dtype, shape=shape, fortran_order=fortran_order, data_offset=data_offset)
    if header.nbytes > MAX_NBYTES:
        raise HeaderError(
            f".npy header describes {header.nbytes} bytes (shape {shape}, dtype {dtype}); "
            f"more than 2**56 is refused as absurd"
        )
    return header


def _numpy_header_writer() -> Any:
    # numpy's writer is private (numpy.lib._format_impl since 2.0, numpy.lib.format before), but it is the
    # only way to get byte-identical headers across numpy versions, including its version guessing.
    for name in ("numpy.lib._format_impl", "numpy.lib.format"):
        try:
            writer = getattr(importlib.import_module(name), "_write_array_header", None)
        except ImportError:
            continue
        if writer is not None:
            return writer
    return None


_write_array_header = _numpy_header_writer()


def npy_header_bytes(dtype: np.dtype | Any, shape: tuple[int, ...], fortran_order: bool) -> bytes:
    """The ``.npy`` header exactly as ``np.save`` writes it for this dtype, shape and order.

    Parameters
    ----------
    dtype : numpy.dtype or dtype-like
        Element type (object dtypes are refused).
    shape : tuple of int
        Array dimensions.
    fortran_order : bool
        True if the data that follows is in Fortran order.

    Returns
    -------
    bytes
        Magic, version, length and padded dict; its length is a multiple of 64.

    Raises
    ------
    UnsupportedDtypeError
        ``dtype`` holds Python objects.
    """
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise UnsupportedDtypeError(f"dtype {dtype!r} holds Python objects and cannot be stored")
    fields = {
        "descr": _npformat.dtype_to_descr(dtype),
        "fortran_order": bool(fortran_order),
        # Python ints: numpy 2 reprs np.int64(3) as "np.int64(3)", which no reader parses.
        "shape": tuple(int(d) for d in shape),
    }
    buf = io.BytesIO()
    if _write_array_header is not None:
        _write_array_header(buf, fields, None)
    else:  # pragma: no cover - only if numpy drops the private helper
        try:
            _npformat.write_array_header_1_0(buf, fields)
        except ValueError:
            buf = io.BytesIO()
            _npformat.write_array_header_2_0(buf, fields)
    out = buf.getvalue()
    assert len(out) % ARRAY_ALIGN == 0, "numpy no longer aligns .npy headers to 64 bytes"
    return out

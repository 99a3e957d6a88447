"""The .npy header parser and writer: byte-exact with numpy, strict with hostile input."""

from __future__ import annotations

import io
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lazymem.errors import FormatError, HeaderError, TruncatedFileError, UnsupportedDtypeError
from lazymem.sources.npy_header import (
    MAX_HEADER_LEN,
    NpyHeader,
    npy_header_bytes,
    npy_header_length,
    parse_npy_header,
)

DTYPES = [
    np.dtype("u1"),
    np.dtype("<i4"),
    np.dtype(">i8"),
    np.dtype("<f2"),
    np.dtype(">f8"),
    np.dtype("<c16"),
    np.dtype("?"),
    np.dtype("<U7"),
    np.dtype(">U3"),
    np.dtype("S5"),
    np.dtype("V4"),
    np.dtype("<M8[ns]"),
    np.dtype(">m8[D]"),
    np.dtype([("a", "<i4"), ("b", ">f8", (2, 3)), ("c", "S3")]),
    np.dtype([("x", [("y", "<u2"), ("z", "?")]), ("w", "<c8")]),
    np.dtype({"names": ["p", "q"], "formats": ["<i2", "<f4"], "offsets": [0, 8], "itemsize": 16}),
    np.dtype(("<f4", (3,))),
]


def numpy_header(dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> bytes:
    """What np.save writes before the data, for an array of this dtype/shape/order."""
    arr = np.zeros(shape, dtype=dtype, order="F" if fortran else "C")
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()[: len(buf.getvalue()) - arr.nbytes]


def make_header(text: str, version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy prefix holding an arbitrary header text (for hostile inputs)."""
    encoded = text.encode("latin1" if version < (3, 0) else "utf8")
    fmt = "<H" if version == (1, 0) else "<I"
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(encoded)) + encoded


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "shape, fortran",
    [(s, False) for s in [(), (0,), (3,), (2, 0, 4), (5, 7), (1, 2, 3, 4)]] + [((5, 7), True), ((1, 2, 3, 4), True)],
)
def test_header_bytes_equal_numpy_and_parse_back(dtype: np.dtype, shape: tuple[int, ...], fortran: bool) -> None:
    saved = np.zeros(shape, dtype=dtype, order="F" if fortran else "C")  # subarray dtypes fold, as in numpy
    expected = numpy_header(dtype, shape, fortran)
    ours = npy_header_bytes(saved.dtype, saved.shape, fortran)
    assert ours == expected
    assert len(ours) % 64 == 0
    header = parse_npy_header(ours + b"trailing data is ignored")
    assert header == NpyHeader(saved.dtype, saved.shape, fortran, len(ours))
    assert header.nbytes == saved.nbytes
    assert npy_header_length(ours[:12]) == len(ours)


@settings(max_examples=40, deadline=None)
@given(
    dtype=st.one_of(
        hnp.scalar_dtypes(),
        hnp.array_dtypes(subtype_strategy=hnp.scalar_dtypes(), max_size=4),
    ),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=10**6),
)
@pytest.mark.filterwarnings("ignore:Stored array in format 3.0")
def test_header_round_trip_property(dtype: np.dtype, shape: tuple[int, ...]) -> None:
    if dtype.hasobject:
        return
    data = npy_header_bytes(dtype, shape, False)
    if math.prod(shape) * dtype.itemsize > 2**56:
        with pytest.raises(HeaderError, match="absurd"):
            parse_npy_header(data)
        return
    header = parse_npy_header(data)
    assert (header.dtype, header.shape, header.data_offset) == (dtype, shape, len(data))
    small = tuple(min(d, 3) for d in shape)
    assert npy_header_bytes(dtype, small, False) == numpy_header(dtype, small, False)


def test_version_2_and_3_headers() -> None:
    many_fields = np.dtype([(f"field_{i:05d}", "<f8") for i in range(3000)])  # header > 64 KiB: version 2.0
    data = npy_header_bytes(many_fields, (2,), False)
    assert data[6:8] == b"\x02\x00"
    assert parse_npy_header(data).dtype == many_fields
    unicode_names = np.dtype([("température", "<f4"), ("ß", "<i2")])  # not latin1-only: utf8, version 3.0
    data = npy_header_bytes(np.dtype([("温度", "<f4")]), (4,), False)
    assert data[6:8] == b"\x03\x00"
    assert parse_npy_header(data).dtype == np.dtype([("温度", "<f4")])
    assert parse_npy_header(npy_header_bytes(unicode_names, (1,), False)).dtype == unicode_names


def test_huge_shapes_use_python_ints() -> None:
    header = parse_npy_header(npy_header_bytes(np.dtype("<f8"), (2**20, 2**20, 2**10), False))
    assert header.nbytes == 2**53  # computed without int64 overflow
    assert all(type(d) is int for d in header.shape)


@pytest.mark.parametrize(
    "prefix, error, match",
    [
        (b"", TruncatedFileError, "magic"),
        (b"\x93NUM", TruncatedFileError, "magic"),
        (b"\x93NUMPY\x01", TruncatedFileError, "magic"),
        (b"\x93NUMPY\x01\x00\x10", TruncatedFileError, "length"),
        (b"PK\x03\x04 zip file", FormatError, "not a .npy"),
        (b"\x93NUMPX\x01\x00", FormatError, "not a .npy"),
        (b"\x93NUMPY\x04\x00\x00\x00\x00\x00", HeaderError, "version 4.0"),
        (b"\x93NUMPY\x01\x00\x50\x00{'descr'", TruncatedFileError, "90 bytes"),
    ],
)
def test_malformed_prefixes(prefix: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_npy_header(prefix)


def test_header_len_too_large() -> None:
    prefix = b"\x93NUMPY\x02\x00" + struct.pack("<I", MAX_HEADER_LEN + 1)
    with pytest.raises(HeaderError, match="absurd"):
        npy_header_length(prefix)
    with pytest.raises(HeaderError, match="absurd"):
        parse_npy_header(prefix + b" " * 100)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", None),  # the control: valid
        ("__import__('os').system('echo pwned')", "not a Python literal"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (3,)", "not a Python literal"),
        ("['descr', 'fortran_order', 'shape']", "not a dict"),
        ("{'descr': '<f8', 'fortran_order': False}", "exactly the keys"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (3,), 'extra': 1}", "exactly the keys"),
        ("{'descr': '<f8', 'fortran_order': 0, 'shape': (3,)}", "fortran_order"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': [3]}", "shape"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (3.0,)}", "shape"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (True,)}", "shape"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (-1,)}", "negative"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (2**31, 2**31, 2**31)}", "not a Python literal"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (2147483648, 2147483648, 2147483648)}", "absurd"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (" + "1, " * 65 + ")}", "dimensions"),
        ("{'descr': 42, 'fortran_order': False, 'shape': (3,)}", "descr"),
        ("{'descr': 'not a dtype', 'fortran_order': False, 'shape': (3,)}", "not a valid dtype"),
        ("{'descr': [('a', '<f8', 'bad')], 'fortran_order': False, 'shape': (3,)}", "not a valid dtype"),
        ("{'descr': " + "[" * 300 + "]" * 300 + ", 'fortran_order': False, 'shape': (3,)}", "not a"),
    ],
)
def test_hostile_header_dicts(text: str, match: str | None) -> None:
    data = make_header(text)
    if match is None:
        assert parse_npy_header(data).shape == (3,)
        return
    with pytest.raises(HeaderError, match=match):
        parse_npy_header(data)


@pytest.mark.parametrize(
    "descr",
    ["'|O'", "[('a', '<i4'), ('b', '|O')]", "[('a', [('deep', '|O')])]", "('|O', (2,))"],
)
def test_object_dtypes_refused(descr: str) -> None:
    data = make_header(f"{{'descr': {descr}, 'fortran_order': False, 'shape': (3,)}}")
    with pytest.raises(UnsupportedDtypeError, match="objects") as info:
        parse_npy_header(data)
    assert isinstance(info.value, HeaderError) and isinstance(info.value, TypeError)


def test_writer_refuses_object_dtype() -> None:
    with pytest.raises(UnsupportedDtypeError):
        npy_header_bytes(np.dtype(object), (1,), False)


def test_top_level_subarray_descr_is_folded() -> None:
    header = parse_npy_header(make_header("{'descr': ('<f4', (3,)), 'fortran_order': False, 'shape': (2,)}"))
    assert (header.dtype, header.shape, header.nbytes) == (np.dtype("<f4"), (2, 3), 24)
    with pytest.raises(HeaderError, match="Fortran"):
        parse_npy_header(make_header("{'descr': ('<f4', (3,)), 'fortran_order': True, 'shape': (2,)}"))


def test_invalid_encoding() -> None:
    raw = b"\x93NUMPY\x03\x00" + struct.pack("<I", 4) + b"\xff\xfe\xfd\xfc"
    with pytest.raises(HeaderError, match="utf8"):
        parse_npy_header(raw)

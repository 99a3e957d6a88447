"""The exceptions lazymem raises.

Every class derives from :class:`LazymemError` *and* from the built-in exception a caller would
already catch for the same situation (as zarr-python does), so ``except FileNotFoundError`` keeps
working on a missing object and ``except ValueError`` on a bad file.
"""

from __future__ import annotations


class LazymemError(Exception):
    """Base class of every error lazymem raises."""


class ArrayNotFoundError(LazymemError, FileNotFoundError):
    """The URL names no object."""


class FormatError(LazymemError, ValueError):
    """The object is not an array in a format lazymem reads, or its metadata is damaged."""


class TruncatedFileError(FormatError):
    """The object ends before the data its own tables describe."""


class SeekTableError(FormatError):
    """The seek table at the end of the object is missing or inconsistent."""


class HeaderError(FormatError):
    """The ``.npy`` header is malformed, absurd, or describes an unsupported array."""


class UnsupportedDtypeError(HeaderError, TypeError):
    """The dtype cannot be served lazily (object dtypes hold pointers, not data)."""


class UnsupportedCodecError(FormatError):
    """The array is stored with a codec (compressor, filter, HDF5 filter) lazymem cannot or will not
    run: not installed (the message names the package to install), unknown, or unsafe on untrusted
    input (codecs that run code when decoding, such as numcodecs ``Pickle``)."""


class CorruptChunkError(LazymemError, ValueError):
    """A chunk failed to decompress or its checksum did not match."""


class FetchError(LazymemError, OSError):
    """Fetching bytes from storage failed after the retries were spent."""


class UserfaultfdUnavailableError(LazymemError, OSError):
    """The kernel refused every way of creating a userfaultfd; ``lazymem.load`` still works."""


class MonitorError(LazymemError, RuntimeError):
    """The monitor process could not be started or stopped answering."""


class ClosedArrayError(LazymemError, ValueError):
    """The array was closed; its memory is gone."""


class HugePagesUnavailableError(LazymemError, MemoryError):
    """``huge_pages=True``, but the huge page pool cannot hold the array (``vm.nr_hugepages``)."""


class UnsupportedStorageError(LazymemError, ValueError):
    """The storage cannot serve a lazily loaded array (``memory://`` exists in this process alone)."""


class UnverifiableDataWarning(UserWarning):
    """The data cannot be checked against corruption (its zstd frames carry no content checksums)."""


def user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside lazymem (for a
    ``warnings.warn`` in the function calling this): the user's line, however deep the call."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level

"""Read an uncompressed ``.npy`` file through the same interface as the compressed formats.

The stored bytes *are* the stream, so the frames are synthetic: frame 0 is the header, then fixed
slices of the data (aligned to the data's start, like native chunks), and "decompressing" is a copy.
"""

from __future__ import annotations

from typing import Any

from lazymem.errors import CorruptChunkError, FormatError, TruncatedFileError
from lazymem.storage import StoredObject

from .frames import FramedSource, FrameTable, byte_view
from .npy_header import npy_header_length, parse_npy_header

__all__ = ["RAW_FRAME_BYTES", "RawNpyReader"]

RAW_FRAME_BYTES = 4 << 20
"""Size of the synthetic data frames (the native format's default chunk)."""
HEADER_PROBE = 1 << 16


class RawNpyReader(FramedSource):
    """A plain ``.npy`` file, read through fsspec in synthetic frames."""

    format_name = "npy"

    @classmethod
    def open(
        cls,
        fs: Any,
        path: str,
        size: int | None = None,
        *,
        head: bytes | None = None,
        frame_bytes: int = RAW_FRAME_BYTES,
    ) -> RawNpyReader:
        """Read the ``.npy`` header of ``path`` and lay out synthetic frames.

        Parameters
        ----------
        fs : fsspec.AbstractFileSystem
            Filesystem holding the object.
        path : str
            Path on ``fs``.
        size : int, optional
            Size of the object, if known.
        head : bytes, optional
            The object's first bytes, if already read.
        frame_bytes : int
            Size of the synthetic data frames.

        Returns
        -------
        RawNpyReader

        Raises
        ------
        FormatError, TruncatedFileError, HeaderError, UnsupportedDtypeError
            Not a valid ``.npy`` file, or one shorter than its header says.
        """
        return cls.from_storage(StoredObject.open(fs, path, size), head=head, frame_bytes=frame_bytes)

    @classmethod
    def from_storage(cls, storage: StoredObject, *, head: bytes | None = None,
                     frame_bytes: int = RAW_FRAME_BYTES) -> RawNpyReader:
        """Like :meth:`open`, for an object already opened (``open_source`` read its start through it)."""
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive (got {frame_bytes})")
        path, size = storage.path, storage.size
        self = cls.__new__(cls)
        self.storage = storage
        if head is None or len(head) < min(size, 16):
            head = self.storage.read(0, min(size, HEADER_PROBE))
        try:
            length = npy_header_length(head)
            if length > size:
                raise TruncatedFileError(f".npy header is {length} bytes long but the file has only {size}")
            if length > len(head):
                head = self.storage.read(0, length)
            header = parse_npy_header(head)
        except FormatError as exc:
            raise type(exc)(f"{path}: {exc}") from None
        end = header.data_offset + header.nbytes
        if end > size:
            raise TruncatedFileError(
                f"{path}: the .npy header describes {header.nbytes} bytes of data ending at {end}, "
                f"but the file has only {size} bytes"
            )
        sizes = [header.data_offset]
        full, rest = divmod(header.nbytes, frame_bytes)
        sizes += [frame_bytes] * full + ([rest] if rest else [])
        self.table = FrameTable.from_sizes(sizes, sizes)
        self.header = header
        self.stream_size = self.table.decompressed_total
        return self

    def decompress_into(self, index: int, compressed: bytes | memoryview, out: Any) -> None:
        """Copy frame ``index`` (stored bytes = content) into ``out``, exactly its size."""
        view = byte_view(out)
        expected = self.table.decompressed_size(index)
        if len(view) != expected:
            raise ValueError(f"frame {index} holds {expected} bytes, the output buffer has {len(view)}")
        if len(compressed) != expected:
            raise CorruptChunkError(f"{self.path}: frame {index}: got {len(compressed)} bytes, expected {expected}")
        view[:] = compressed

    def read_into(self, start: int, out: Any, *, skip_zeros: bool = False, first: Any = None,
                  on_first: Any = None) -> bool:
        """Fill ``out`` with file bytes ``[start, start + len(out))`` in one request.

        Returns False: ``out`` is always filled (telling zeros apart would cost reading them anyway).
        ``on_first`` is never called: the bytes arrive together, there is nothing to decode first.
        """
        view = byte_view(out)
        stop = start + len(view)
        if start < 0 or stop > self.stream_size:
            raise ValueError(f"range [{start}, {stop}) is outside the stream [0, {self.stream_size})")
        if view:
            view[:] = self.storage.read(start, stop)
        return False

"""lazymem: huge compressed arrays, local or in object storage, as real numpy arrays that load lazily.

>>> import lazymem
>>> lazymem.save("data/temp.npy.zst", array)   # doctest: +SKIP
>>> a = lazymem.open("data/temp.npy.zst")      # doctest: +SKIP
>>> a[123_456], a[1000:2000].mean()            # doctest: +SKIP
"""

from .array import LazyArray, Stats, open, stats
from .config import parse_size, set_max_resident
from .eager import load
from .errors import (
    ArrayNotFoundError,
    ClosedArrayError,
    CorruptChunkError,
    FetchError,
    FormatError,
    HeaderError,
    HugePagesUnavailableError,
    LazymemError,
    MonitorError,
    SeekTableError,
    TruncatedFileError,
    UnsupportedCodecError,
    UnsupportedDtypeError,
    UnsupportedStorageError,
    UnverifiableDataWarning,
    UserfaultfdUnavailableError,
)
from .groups import Group, open_group
from .integrations import to_dask
from .mapped import MappedArray
from .writer import save

__version__ = "0.1.0"

__all__ = [
    "ArrayNotFoundError",
    "ClosedArrayError",
    "CorruptChunkError",
    "FetchError",
    "FormatError",
    "Group",
    "HeaderError",
    "HugePagesUnavailableError",
    "LazyArray",
    "LazymemError",
    "MappedArray",
    "MonitorError",
    "SeekTableError",
    "Stats",
    "TruncatedFileError",
    "UnsupportedCodecError",
    "UnsupportedDtypeError",
    "UnverifiableDataWarning",
    "UnsupportedStorageError",
    "UserfaultfdUnavailableError",
    "load",
    "open",
    "open_group",
    "parse_size",
    "save",
    "set_max_resident",
    "stats",
    "to_dask",
]

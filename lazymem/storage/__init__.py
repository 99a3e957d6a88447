"""Storage: reading byte ranges of one object, anywhere fsspec reaches.

Sources (:mod:`lazymem.sources`) know formats; this package knows objects. Each source reads
through a :class:`StoredObject`: exact reads, coalesced range reads, a descriptor per process for
plain local files, retries of transient failures and one mapping of storage exceptions to
lazymem's.

* :mod:`~lazymem.storage.stored`: :class:`StoredObject`.
* :mod:`~lazymem.storage.ranges`: which ranges share a request (pure).
* :mod:`~lazymem.storage.local`: :func:`is_local_file`, the per-process descriptor.
* :mod:`~lazymem.storage.retry`: what is sent again, and when.
* :mod:`~lazymem.storage.errors`: missing object, failed fetch, short read.
* :mod:`~lazymem.storage.remote`: what object stores need beyond fsspec (size and tail in one
  request, one download cache for the app and the monitor, refusing ``memory://``).
"""

from __future__ import annotations

from .errors import check_length, network_errors, storage_errors
from .local import LocalFile, is_local_file
from .ranges import Run, plan_runs
from .retry import RETRY_DELAYS, cat_ranges_with_retries, http_status, is_transient, with_retries
from .stored import StoredObject, checked_size

__all__ = [
    "RETRY_DELAYS",
    "LocalFile",
    "Run",
    "StoredObject",
    "cat_ranges_with_retries",
    "check_length",
    "checked_size",
    "http_status",
    "is_local_file",
    "is_transient",
    "network_errors",
    "plan_runs",
    "storage_errors",
    "with_retries",
]

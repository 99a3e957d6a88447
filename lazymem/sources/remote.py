"""Moved to :mod:`lazymem.storage.remote` (object storage is the storage layer's concern).

Kept as a re-export because ``lazymem.monitor.server`` imports ``default_max_in_flight`` from
here; that import belongs to the monitor's owners, who can move it and then delete this file.
"""

from lazymem.storage.remote import (
    REMOTE_MAX_IN_FLIGHT,
    check_shareable,
    default_max_in_flight,
    share_whole_file_cache,
    size_and_tail,
)

__all__ = ["REMOTE_MAX_IN_FLIGHT", "check_shareable", "default_max_in_flight", "share_whole_file_cache",
           "size_and_tail"]

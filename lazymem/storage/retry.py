"""Retry storage requests that failed for a passing reason (timeouts, 5xx, connection resets).

Every request a source makes goes through here, so ``open``, ``load``, ``prefetch`` and the
monitor's transparent loads all get the same behaviour: a transient failure is retried with
backoff; a permanent one (missing object, access denied, other 4xx) fails at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from lazymem.errors import LazymemError

from .errors import network_errors

__all__ = ["RETRY_DELAYS", "cat_ranges_with_retries", "http_status", "is_transient", "with_retries"]

RETRY_DELAYS = (0.1, 0.4, 1.6)
"""Seconds to wait before each retry (each scaled by a random factor in [0.75, 1.25])."""

_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
_RETRIED_4XX = frozenset({408, 425, 429})  # request timeout, too early, too many requests

T = TypeVar("T")


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from (s3fs chains botocore's error to the OSError it raises)."""
    chain = [exc]
    while len(chain) < 8:
        cause = chain[-1].__cause__
        if cause is None or cause in chain:
            break
        chain.append(cause)
    return chain


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a storage error, if it came from a response (aiohttp, botocore)."""
    for error in _causes(exc):
        status = getattr(error, "status", None)  # aiohttp.ClientResponseError
        if isinstance(status, int):
            return status
        response = getattr(error, "response", None)  # botocore.exceptions.ClientError
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a storage request that raised ``exc`` may succeed if sent again.

    Yes for 5xx, 408, 425 and 429 responses, timeouts, refused or reset connections; no for a
    missing object, denied access, any other 4xx, and anything that is not a storage error.
    """
    if isinstance(exc, (LazymemError, *_PERMANENT)):
        return False
    status = http_status(exc)
    if status is not None:
        return status >= 500 or status in _RETRIED_4XX
    # Without a status, a storage error is a network failure (reset, timeout): worth again.
    return isinstance(exc, network_errors())


def _pause(delay: float) -> None:
    # Jitter: the requests of one readahead window that failed together do not retry together.
    time.sleep(delay * random.uniform(0.75, 1.25))


def with_retries(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, sent again after each of :data:`RETRY_DELAYS` while it fails transiently."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if delay is None or not is_transient(exc):
                raise
        _pause(delay)
    raise AssertionError("unreachable")


def cat_ranges_with_retries(fs: Any, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """``fs.cat_ranges`` for one path; ranges that failed transiently are fetched again, alone.

    Raises the first permanent error, or the last transient one once the retries are spent.
    """
    results: list[Any] = [None] * len(ranges)
    pending = list(range(len(ranges)))
    for delay in (*RETRY_DELAYS, None):
        starts = [ranges[i][0] for i in pending]
        ends = [ranges[i][1] for i in pending]
        try:
            got: list[Any] = fs.cat_ranges([path] * len(pending), starts, ends, on_error="return")
        except Exception as exc:  # noqa: BLE001 - the whole call failed (no session, no connection): every range did
            got = [exc] * len(pending)
        failed = []
        for index, result in zip(pending, got):
            if isinstance(result, BaseException):
                if delay is None or not is_transient(result):
                    raise result
                failed.append(index)
            else:
                results[index] = result
        if not failed:
            return results
        pending = failed
        assert delay is not None  # the last attempt (delay None) raised above
        _pause(delay)
    raise AssertionError("unreachable")

"""One classification of what storage raises: a missing object, a failed fetch, a short read.

Every request a source or the writer makes is wrapped in :func:`storage_errors`, and the retry
policy (:mod:`lazymem.storage.retry`) asks :func:`network_errors` which exceptions come from
talking to storage at all. One list serves both: a type the retries know as a storage error is
also one the caller sees as :class:`~lazymem.errors.FetchError`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from lazymem.errors import ArrayNotFoundError, FetchError, LazymemError, TruncatedFileError

__all__ = ["check_length", "network_errors", "storage_errors"]


def network_errors() -> tuple[type[BaseException], ...]:
    """The exception types a storage request can raise for a reason outside lazymem.

    ``OSError`` (connection resets, timeouts, asyncio's too), ``aiohttp.ClientError`` (HTTP:
    server disconnects, payload errors, error responses) and botocore's ``BotoCoreError``
    (endpoint unreachable, read timeouts) and ``ClientError`` (S3 error responses). aiohttp's and
    botocore's are not ``OSError``\\ s. Only libraries already imported are looked at: a filesystem
    that could raise them imported its own, and importing them here would cost every process.
    """
    types: list[type[BaseException]] = [OSError]
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        types.append(aiohttp.ClientError)
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        types += [botocore.BotoCoreError, botocore.ClientError]
    return tuple(types)


@contextmanager
def storage_errors(path: str, action: str = "reading") -> Iterator[None]:
    """Translate storage exceptions raised inside the block into lazymem's.

    Parameters
    ----------
    path : str
        The object, as messages name it.
    action : str
        What was being done (``"reading"``, ``"writing"``), for the message.

    Raises
    ------
    ArrayNotFoundError
        The object does not exist (``FileNotFoundError`` inside).
    FetchError
        Any other storage error (one of :func:`network_errors`); the cause is chained.
    """
    try:
        yield
    except LazymemError:
        raise
    except FileNotFoundError as exc:
        raise ArrayNotFoundError(f"{path}: no such file or object ({exc})") from exc
    except network_errors() as exc:
        raise FetchError(f"{action} {path} failed: {type(exc).__name__}: {exc}") from exc


def check_length(data: bytes, path: str, size: int, start: int, end: int) -> None:
    """Raise :class:`~lazymem.errors.TruncatedFileError` unless ``data`` is exactly ``[start, end)``.

    Storage answers a range past the end of an object with fewer bytes, not an error: an object
    shorter than the size it had at open (truncated, or replaced) shows up here.
    """
    if len(data) != end - start:
        raise TruncatedFileError(
            f"{path}: asked storage for bytes [{start}, {end}) and got {len(data)} bytes; "
            f"the object is shorter than its {size} bytes (truncated or changed while open?)"
        )

"""Which storage errors are retried: the classification, on the exceptions the libraries raise."""

from __future__ import annotations

import asyncio
import errno

import aiohttp
import botocore.exceptions
import pytest
from aiohttp.client_reqrep import RequestInfo
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

import lazymem
from lazymem.storage.retry import RETRY_DELAYS, http_status, is_transient, with_retries


def _response_error(status: int) -> aiohttp.ClientResponseError:
    info = RequestInfo(URL("http://example.invalid/x"), "GET", CIMultiDictProxy(CIMultiDict()))
    return aiohttp.ClientResponseError(info, (), status=status, message="from the test")


def _boto_error(status: int, code: str) -> OSError:
    # What s3fs raises: an OSError translated from botocore's ClientError, chained to it.
    cause = botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")
    error = OSError(errno.EIO, f"{code}")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize("exc", [
    _response_error(500), _response_error(503), _response_error(429), _response_error(408),
    _boto_error(503, "SlowDown"), _boto_error(500, "InternalError"),
    aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("cut"), asyncio.TimeoutError(),
    ConnectionResetError(errno.ECONNRESET, "reset"), ConnectionRefusedError(), TimeoutError(),
    botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"),
    botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"),
])
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    _response_error(404), _response_error(403), _response_error(416), _boto_error(403, "AccessDenied"),
    FileNotFoundError("gone"), PermissionError("denied"), lazymem.CorruptChunkError("bad"),
    lazymem.FetchError("spent"), ValueError("a bug"), KeyError("x"),
])
def test_permanent_errors(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_http_status_reads_the_chain() -> None:
    assert http_status(_boto_error(503, "SlowDown")) == 503
    assert http_status(_response_error(502)) == 502
    assert http_status(ConnectionResetError()) is None


def test_with_retries_stops_at_a_permanent_error_and_after_the_last_delay(monkeypatch) -> None:
    monkeypatch.setattr("lazymem.storage.retry.RETRY_DELAYS", (0.0,) * len(RETRY_DELAYS))  # no waiting here
    calls = []

    def flaky(fail: list[BaseException]) -> str:
        calls.append(1)
        if fail:
            raise fail.pop(0)
        return "ok"

    assert with_retries(flaky, [ConnectionResetError(), _response_error(503)]) == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(FileNotFoundError):
        with_retries(flaky, [ConnectionResetError(), FileNotFoundError("x"), ConnectionResetError()])
    assert len(calls) == 2
    calls.clear()
    with pytest.raises(ConnectionResetError):
        with_retries(flaky, [ConnectionResetError() for _ in range(10)])
    assert len(calls) == 1 + len(RETRY_DELAYS)

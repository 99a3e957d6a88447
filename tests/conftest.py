"""Shared fixtures: real files, real kernel, real child processes. No mocks."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from fsspec.implementations.local import LocalFileSystem

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def field(tmp_path: Path) -> tuple[str, np.ndarray]:
    """A 10 MiB float32 random walk saved with 1 MiB chunks (so about 10 chunks)."""
    import lazymem

    rng = np.random.default_rng(42)
    src = np.cumsum(rng.standard_normal(10 * 2**18, dtype=np.float32)).astype(np.float32).reshape(-1, 1024)
    path = str(tmp_path / "field.npy.zst")
    lazymem.save(path, src, chunk_bytes=2**20)
    return path, src


class CountingFileSystem(LocalFileSystem):
    """The real local filesystem, counting the byte-range requests made through it (being a
    subclass, it is not a plain local file: lazymem reads through it, never past it)."""

    protocol = "countingfile"
    requests: ClassVar[list[tuple[int | None, int | None]]] = []

    def cat_file(self, path, start=None, end=None, **kwargs):  # type: ignore[no-untyped-def]
        type(self).requests.append((start, end))
        return super().cat_file(path, start=start, end=end, **kwargs)


def run_python(code: str, *, env: dict[str, str] | None = None, prefix: list[str] | None = None,
               timeout: float = 120, args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (with ``args`` as ``sys.argv[1:]``) in a fresh interpreter that imports lazymem
    from this checkout."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH")]))
    full_env.update(env or {})
    return subprocess.run(
        [*(prefix or []), sys.executable, "-c", textwrap.dedent(code), *(args or [])],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def save_with_pyzstd(path: Path, array: np.ndarray, frame_content_size: int, *, checksums: bool = True) -> None:
    """``array`` as ``np.save`` writes it, through pyzstd's seekable writer: frames of
    ``frame_content_size`` stream bytes that cut the header and pages anywhere, no content sizes
    in their headers (what foreign files look like)."""
    import io

    pyzstd = pytest.importorskip("pyzstd")
    buf = io.BytesIO()
    np.save(buf, array)
    option = {pyzstd.CParameter.checksumFlag: 1} if checksums else None
    with pyzstd.SeekableZstdFile(str(path), "w", level_or_option=option,
                                 max_frame_content_size=frame_content_size) as f:
        f.write(buf.getvalue())


def wait_for_exit(pid: int, timeout: float = 30.0) -> bool:
    """Block until process ``pid`` (not our child) exits, via a pidfd; True if it did."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def report_from_forked_child(work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child and return what it reported (it must exit cleanly)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_fd, work().encode())
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001 - a forked child must never return into pytest
            os.write(write_fd, repr(exc).encode())
            os._exit(1)
    os.close(write_fd)
    report = os.read(read_fd, 1000).decode()
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, report
    return report


def assert_same_array(got: np.ndarray, want: np.ndarray) -> None:
    """Byte-for-byte equality plus dtype, shape and memory order.

    Memory order is compared where it exists: with two or more dimensions of more than one
    element each, a C-contiguous and an F-contiguous array of equal values are different arrays
    (a reader that ignores ``fortran_order`` returns the transpose's bytes in C order).
    """
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if got.ndim >= 2 and all(n > 1 for n in got.shape):
        got_order = (got.flags.c_contiguous, got.flags.f_contiguous)
        want_order = (want.flags.c_contiguous, want.flags.f_contiguous)
        assert got_order == want_order, f"(C, F) contiguous: got {got_order}, want {want_order}"
    # order="A": each array's own memory order (the same for both, checked above).
    assert np.asarray(got).tobytes(order="A") == np.asarray(want).tobytes(order="A")


# -- remote storage: real servers in their own processes, on loopback, port 0 (tests/remote.py) ---------


@pytest.fixture(scope="session")
def _http_server_process(tmp_path_factory: pytest.TempPathFactory):
    from .remote import ServerProcess

    root = tmp_path_factory.mktemp("http-root")
    with ServerProcess("http", str(root)) as server:
        server.root = root  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def http_store(_http_server_process, request: pytest.FixtureRequest):
    """The session's HTTP Range server, knobs and counters reset, and a fresh directory it serves."""
    from .remote import HttpStore

    server = _http_server_process
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name[:40])  # parametrized names hold [ ] (not URL-safe)
    directory = server.root / f"t{len(list(server.root.iterdir()))}-{name}"
    directory.mkdir()
    server.reset()
    try:
        yield HttpStore(server, directory, f"{server.url}/{directory.name}")
    finally:
        server.reset()


@pytest.fixture(scope="session")
def _s3_server_process():
    from .remote import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3_store(_s3_server_process):
    """The session's moto S3 server (through its proxy), emptied, with an empty bucket ``test``."""
    server = _s3_server_process
    server.reset()
    server.make_bucket("test")
    try:
        yield server
    finally:
        server.reset()


def rewrite_layout_frame(path: str, frame: bytes | None) -> None:
    """Replace the layout frame before the seek table (None: drop it, as older files were)."""
    from lazymem.sources import open_source
    from lazymem.writer import seek_table_bytes

    reader = open_source(path)
    table = reader.table
    keep = len(table) - 1  # the layout frame is the last entry
    data = Path(path).read_bytes()[: int(table.compressed_offsets[keep])]
    compressed = list(table.compressed_sizes[:keep])
    decompressed = list(table.decompressed_sizes[:keep])
    if frame is not None:
        data += frame
        compressed.append(len(frame))
        decompressed.append(0)
    Path(path).write_bytes(data + seek_table_bytes(np.array(compressed), np.array(decompressed)))


def resident_pages(arr: np.ndarray) -> np.ndarray:
    """mincore over the pages under ``arr``: 1 for each page in memory, 0 for the others."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    start = arr.ctypes.data - arr.ctypes.data % PAGE
    length = arr.ctypes.data + arr.nbytes - start
    pages = -(-length // PAGE)
    vec = (ctypes.c_ubyte * pages)()
    assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(length), vec) == 0, ctypes.get_errno()
    return np.frombuffer(vec, dtype=np.uint8) & 1

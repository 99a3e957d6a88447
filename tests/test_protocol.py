"""Messages between app, monitor and supervisor: pickles whose big buffers travel in a memfd."""

from __future__ import annotations

import gc
import os
import signal
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lazymem
from lazymem.monitor import protocol
from lazymem.sources import open_source
from lazymem.sources.frames import FrameTable

from .conftest import rewrite_layout_frame, wait_for_exit

MEMFD = "memfd:lazymem-message"


def _fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _message_fds(pid: int | str = "self") -> int:
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += MEMFD in os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:  # closed meanwhile (listdir's own fd)
            pass
    return count


def _message_mappings(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum(MEMFD in line for line in f)


def _round_trip(obj: Any) -> Any:
    """Send ``obj`` through a stream socketpair, from another thread (big pickles fill the socket)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        sender = threading.Thread(target=protocol.send_obj, args=(theirs, obj))
        sender.start()
        try:
            return protocol.recv_obj(ours)
        finally:
            sender.join()


def test_big_buffers_travel_in_a_memfd_and_arrive_read_only() -> None:
    rng = np.random.default_rng(1)
    big = rng.integers(0, 2**32, 2**18, dtype=np.uint32)  # 1 MiB: out of band
    odd = rng.standard_normal(100_001)  # not a multiple of the alignment
    small = np.arange(1000, dtype=np.int64)  # 8 KiB: in band
    strided = big.reshape(-1, 2)[:, 1]  # not contiguous: in band, as numpy pickles it
    obj = {"big": big, "odd": odd, "small": small, "strided": strided, "text": "x" * 100, "n": 7}
    fds = _fds()
    got = _round_trip(obj)
    assert got["text"] == obj["text"] and got["n"] == 7
    for key in ("big", "odd", "small", "strided"):
        assert got[key].dtype == obj[key].dtype
        assert got[key].tobytes() == obj[key].tobytes()
    for key in ("big", "odd"):  # views of the mapped memfd, never copies
        assert not got[key].flags.writeable and not got[key].flags.owndata
        assert got[key].flags.aligned
        with pytest.raises(ValueError):
            got[key][0] = 0
    assert _fds() == fds  # the mapping outlives the memfd's fd on both sides
    assert _message_mappings() == 1
    del got
    gc.collect()
    assert _message_mappings() == 0


def test_small_objects_need_no_memfd() -> None:
    message = protocol.Message.pack(("ping", {"array": np.zeros(16)}))
    assert message.fd is None and not message.sizes
    fds = _fds()
    op, args = _round_trip(("ping", {"array": np.zeros(16)}))
    assert op == "ping" and args["array"].tolist() == [0.0] * 16
    assert _fds() == fds and _message_mappings() == 0


def test_an_unpickled_frame_table_is_a_read_only_view_that_works() -> None:
    # As a seek table gives them: rows of (compressed, decompressed) sizes; the columns are strided
    # views of them, and the table pickles the rows, one contiguous buffer out of band.
    entries = np.random.default_rng(2).integers(1, 2**20, (262_144, 2), dtype=np.uint32)
    entries[:, 1] = 2**22
    sizes = entries[:, 0].copy()
    table = FrameTable.from_entries(entries)
    message = protocol.Message.pack(table)
    assert message.sizes == (2**21,) and len(message.data) < 1000 + 16 * 256  # in band: the block sums
    message.close()
    got = _round_trip(table)
    assert not got.compressed_sizes.flags.writeable and not got.compressed_sizes.flags.owndata
    assert not got.decompressed_sizes.flags.writeable
    assert got.compressed_sizes.tobytes() == sizes.tobytes()
    assert got.compressed_offset(200_000) == int(sizes[:200_000].sum())
    assert got.decompressed_total == 2**22 * 262_144


@pytest.mark.parametrize("cut", ["header", "sizes", "pickle"])
def test_end_of_stream_in_a_message_is_eof_and_leaks_nothing(cut: str) -> None:
    message = protocol.Message.pack({"big": np.ones(2**17)})  # 1 MiB: a memfd
    assert message.fd is not None and len(message.sizes) == 1
    header = struct.pack("<QI", len(message.data), len(message.sizes))
    before = _fds()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs, message:
        if cut == "header":
            socket.send_fds(theirs, [header[:5]], [message.fd])
        else:
            socket.send_fds(theirs, [header], [message.fd])
            theirs.sendall(struct.pack("<Q", message.sizes[0])[: 3 if cut == "sizes" else 8])
            if cut == "pickle":
                theirs.sendall(message.data[:-1])
        theirs.shutdown(socket.SHUT_WR)
        with pytest.raises(EOFError):
            protocol.recv_message(ours)
    assert _fds() == before - 1  # all but the message's own memfd, closed with it


@pytest.mark.slow  # ~3 s
def test_the_journal_keeps_a_big_frame_table_across_a_monitor_restart(tmp_path: Path) -> None:
    """A register request whose frame table went out of band: the supervisor keeps its memfd,
    a new worker rebuilds the reader from it, and nothing is leaked on either side."""
    from lazymem.monitor.client import get_client
    from lazymem.sources.layout_frame import layout_frame

    src = np.random.default_rng(3).integers(0, 1000, 18 * 2**20, dtype=np.int32)  # 72 MiB
    path = str(tmp_path / "many-frames.npy.zst")
    lazymem.save(path, src, chunk_bytes=4096)  # ~18k frames: 72 KiB columns, out of band
    # Without the layout frame's index: a big table is then read whole, and travels whole.
    rewrite_layout_frame(path, layout_frame(4096))
    client = get_client()
    supervisor = client.supervisor_pid
    assert len(open_source(path).table) > 16_384
    a = lazymem.open(path, chunk_bytes=2**20)  # 4 KiB chunks would take 18k faults to read

    worker = client.monitor_pid
    assert _message_fds(worker) == 0  # the monitor maps the table and closes the fd

    def restart() -> None:
        """Kill the worker and wait for the new one. The supervisor reads everything the dead
        worker journaled before it forks the next: its fds are settled when the new one answers."""
        dead = client.monitor_pid
        os.kill(dead, signal.SIGKILL)
        assert wait_for_exit(dead)
        assert client.monitor_pid != dead

    restart()
    assert _message_fds(supervisor) >= 1  # the journal kept the table's memfd for the next worker
    assert np.asarray(a).tobytes() == src.tobytes()  # every chunk served by the new worker
    assert _message_mappings(client.monitor_pid) >= 1  # it rebuilt the reader from the journal's memfd
    del a
    gc.collect()
    restart()
    settled = _fds(supervisor)
    assert _message_fds(supervisor) == 0  # closing the array closed its table's memfd in the journal
    for _ in range(20):  # what grows with the number of arrays opened and closed is a leak
        b = lazymem.open(path)
        assert b[12345] == src[12345]
        b.close()
        del b
    gc.collect()
    worker = client.monitor_pid
    assert _message_fds(worker) == 0  # the monitor keeps no memfd...
    assert _message_mappings(worker) < 20  # ...and maps tables for live readers only
    restart()
    assert (_fds(supervisor), _message_fds(supervisor)) == (settled, 0)

"""The kernel interface on its own: message parsing, the handshake, register/copy/wake/poison."""

from __future__ import annotations

import ctypes
import os
import struct
import threading

import pytest

from lazymem.kernel import userfaultfd as uffd

PAGE = uffd.PAGE_SIZE


def test_parse_messages_splits_pagefaults_and_other_events() -> None:
    data = struct.pack("<B7xQQI4x", uffd.UFFD_EVENT_PAGEFAULT, 1, 0x7F0000001000, 42)
    data += struct.pack("<B7xQQI4x", uffd.UFFD_EVENT_FORK, 0, 0, 0)
    messages = list(uffd.parse_messages(data))
    assert messages == [uffd.PageFault(1, 0x7F0000001000, 42), uffd.OtherEvent(uffd.UFFD_EVENT_FORK)]


def test_parse_messages_rejects_partial_message() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        list(uffd.parse_messages(b"\x12" * 33))


def test_round_up() -> None:
    assert uffd.round_up(1) == PAGE and uffd.round_up(PAGE) == PAGE and uffd.round_up(0) == 0


@pytest.fixture
def registered():
    """A fresh userfaultfd with one registered 4-page memfd region, served by hand in this test."""
    opened = uffd.open_userfaultfd()
    features = uffd.api_handshake(opened.fd, uffd.UFFD_FEATURE_MISSING_SHMEM | uffd.UFFD_FEATURE_POISON)
    memfd = os.memfd_create("test", os.MFD_CLOEXEC)
    os.ftruncate(memfd, 4 * PAGE)
    address = uffd.map_shared(memfd, 4 * PAGE)
    uffd.register(opened.fd, address, 4 * PAGE)
    yield opened.fd, address, memfd, features
    uffd.unregister(opened.fd, address, 4 * PAGE)
    uffd.unmap(address, 4 * PAGE)
    os.close(memfd)
    os.close(opened.fd)


def _serve_one_fault(fd: int, src: int, length: int, seen: list) -> None:
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        poller.poll()
        messages = uffd.read_messages(fd)  # may be empty: a spurious wake-up
        if messages:
            seen.extend(messages)
            fault = messages[0]
            start = fault.address & ~(PAGE - 1)
            uffd.copy(fd, start, src, length)
            return


def test_copy_serves_a_blocked_reader_from_another_thread(registered) -> None:
    # The reader must fault with its GIL released, or the serving thread could never run (the
    # very reason the real monitor is a separate process): os.write from the mapping to a pipe
    # faults inside the kernel, in a system call that released the GIL.
    fd, address, _memfd, _ = registered
    payload = (ctypes.c_char * PAGE)(*([b"z"] * PAGE))
    seen: list = []
    server = threading.Thread(target=_serve_one_fault, args=(fd, ctypes.addressof(payload), PAGE, seen))
    server.start()
    r, w = os.pipe()
    try:
        view = (ctypes.c_char * PAGE).from_address(address + PAGE)
        written = os.write(w, memoryview(view))  # faults in the kernel with the GIL released
        server.join()
        assert os.read(r, PAGE) == b"z" * written
    finally:
        os.close(r)
        os.close(w)
    assert isinstance(seen[0], uffd.PageFault) and seen[0].address & ~(PAGE - 1) == address + PAGE


def test_copy_reports_existing_pages_without_error(registered) -> None:
    fd, address, _memfd, _ = registered
    src = uffd.map_anonymous(4 * PAGE)
    ctypes.memset(src, 7, 4 * PAGE)
    assert uffd.copy(fd, address + PAGE, src, PAGE) == PAGE
    # The range now overlaps a present page: EEXIST is skipped, the rest installed.
    assert uffd.copy(fd, address, src, 4 * PAGE) == 3 * PAGE
    assert ctypes.string_at(address, 4 * PAGE) == b"\x07" * (4 * PAGE)
    uffd.unmap(src, 4 * PAGE)


def test_punch_hole_makes_pages_fault_again(registered) -> None:
    fd, address, memfd, _ = registered
    src = uffd.map_anonymous(PAGE)
    ctypes.memset(src, 1, PAGE)
    uffd.copy(fd, address, src, PAGE)
    assert ctypes.string_at(address, 1) == b"\x01"
    uffd.punch_hole(memfd, 0, PAGE)
    ctypes.memset(src, 2, PAGE)
    uffd.copy(fd, address, src, PAGE)  # would be EEXIST (0 installed) had the hole not freed it
    assert ctypes.string_at(address, 1) == b"\x02"
    uffd.unmap(src, PAGE)


def test_zeropage_and_poison(registered) -> None:
    fd, address, _memfd, features = registered
    uffd.zeropage(fd, address, PAGE)
    assert ctypes.string_at(address, PAGE) == b"\0" * PAGE
    if not features & uffd.UFFD_FEATURE_POISON:
        pytest.skip("kernel without UFFDIO_POISON")
    uffd.poison(fd, address + PAGE, PAGE)  # reading it would SIGBUS; poisoning again is fine
    uffd.poison(fd, address, 2 * PAGE)  # the present page is skipped (EEXIST), not an error


def test_unavailable_message_names_causes_and_remedies() -> None:
    import errno

    message = uffd._unavailable_message(
        [("/dev/userfaultfd", OSError(errno.EACCES, "Permission denied")),
         ("userfaultfd(2)", OSError(errno.EPERM, "Operation not permitted")),
         ("userfaultfd(2) with UFFD_USER_MODE_ONLY", OSError(errno.EPERM, "Operation not permitted"))]
    )
    for needle in ("seccomp", "vm.unprivileged_userfaultfd", "/dev/userfaultfd", "CAP_SYS_PTRACE", "lazymem.load"):
        assert needle in message

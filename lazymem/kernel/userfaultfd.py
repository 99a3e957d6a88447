"""Thin ctypes wrappers over Linux userfaultfd, memfd mappings and friends.

Names follow ``linux/userfaultfd.h`` exactly so they can be grepped against the header. Every
wrapper raises ``OSError(errno, strerror)``; nothing here knows about arrays or chunks. Numbers
and struct sizes were checked on the project's machines (``shared/DESIGN.md``).

ioctls go through ctypes rather than ``fcntl.ioctl``: ctypes releases the GIL for the call and
lets us read the ``copy``/``zeropage`` result fields after an error, which ``fcntl.ioctl`` does
not do reliably for small buffers on every Python version.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .limits import meminfo

PAGE_SIZE = mmap.PAGESIZE

# --- syscall / device -------------------------------------------------------------------------
SYS_userfaultfd = 323  # x86_64
USERFAULTFD_IOC_NEW = 0xAA00
UFFD_USER_MODE_ONLY = 1
UFFD_API = 0xAA

# --- ioctls -------------------------------------------------------------------------------------
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_UNREGISTER = 0x8010AA01
UFFDIO_WAKE = 0x8010AA02
UFFDIO_COPY = 0xC028AA03
UFFDIO_ZEROPAGE = 0xC020AA04
UFFDIO_CONTINUE = 0xC020AA07
UFFDIO_POISON = 0xC020AA08

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_REGISTER_MODE_MINOR = 1 << 2
UFFDIO_COPY_MODE_DONTWAKE = 1 << 0
UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0
UFFDIO_CONTINUE_MODE_DONTWAKE = 1 << 0
UFFDIO_POISON_MODE_DONTWAKE = 1 << 0

# --- features (uffdio_api.features) -------------------------------------------------------------
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_SIGBUS = 1 << 7
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_MINOR_SHMEM = 1 << 10
UFFD_FEATURE_POISON = 1 << 14

# --- events (uffd_msg.event) --------------------------------------------------------------------
UFFD_EVENT_PAGEFAULT = 0x12
UFFD_EVENT_FORK = 0x13
UFFD_EVENT_REMAP = 0x14
UFFD_EVENT_REMOVE = 0x15
UFFD_EVENT_UNMAP = 0x16
UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
UFFD_PAGEFAULT_FLAG_WP = 1 << 1
UFFD_PAGEFAULT_FLAG_MINOR = 1 << 2

# uffd_msg: u8 event, 7 reserved bytes, then the pagefault arm: u64 flags, u64 address, u32 ptid.
UFFD_MSG_FORMAT = "<B7xQQI4x"
UFFD_MSG_SIZE = struct.calcsize(UFFD_MSG_FORMAT)
assert UFFD_MSG_SIZE == 32

# --- mmap / madvise / fallocate -----------------------------------------------------------------
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS = 0x01, 0x02, 0x20
MAP_FIXED, MAP_NORESERVE, MAP_FIXED_NOREPLACE = 0x10, 0x4000, 0x100000
MADV_DONTFORK = 10
MADV_POPULATE_WRITE = 23  # Linux 5.14: fault a range in, writable, in one call
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
MAP_FAILED = ctypes.c_void_p(-1).value

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def _check(result: int) -> int:
    """Raise ``OSError`` from errno when a libc call returned -1."""
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def _ioctl(fd: int, request: int, arg: ctypes.Structure) -> None:
    while True:
        if _libc.ioctl(fd, request, ctypes.byref(arg)) != -1:
            return
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err))


class uffdio_api(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class uffdio_range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class uffdio_register(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class uffdio_copy(ctypes.Structure):
    _fields_ = [
        ("dst", ctypes.c_uint64),
        ("src", ctypes.c_uint64),
        ("len", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("copy", ctypes.c_int64),
    ]


class uffdio_zeropage(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("zeropage", ctypes.c_int64)]


class uffdio_continue(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("mapped", ctypes.c_int64)]


class uffdio_poison(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64), ("updated", ctypes.c_int64)]


assert ctypes.sizeof(uffdio_api) == 24 and ctypes.sizeof(uffdio_register) == 32
assert ctypes.sizeof(uffdio_copy) == 40 and ctypes.sizeof(uffdio_zeropage) == 32


@dataclass(frozen=True)
class PageFault:
    """One ``UFFD_EVENT_PAGEFAULT`` message."""

    flags: int
    address: int
    thread_id: int


@dataclass(frozen=True)
class OtherEvent:
    """Any non-pagefault event (fork, remap, remove, unmap); we request none, so it is a bug."""

    event: int


def parse_messages(data: bytes) -> Iterator[PageFault | OtherEvent]:
    """Split what one ``read()`` of a userfaultfd returned into messages (pure, no I/O)."""
    if len(data) % UFFD_MSG_SIZE:
        raise ValueError(f"userfaultfd read returned {len(data)} bytes, not a multiple of {UFFD_MSG_SIZE}")
    for event, flags, address, ptid in struct.iter_unpack(UFFD_MSG_FORMAT, data):
        if event == UFFD_EVENT_PAGEFAULT:
            yield PageFault(flags, address, ptid)
        else:
            yield OtherEvent(event)


# --- creating a userfaultfd: the privilege ladder --------------------------------------------------

_FORCE_ENV = "LAZYMEM_USERFAULTFD"  # "auto" (default), "device", "syscall" or "user": for tests


def _open_via_device(flags: int) -> int:
    dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    try:
        return _check(_libc.ioctl(dev, USERFAULTFD_IOC_NEW, ctypes.c_void_p(flags)))
    finally:
        os.close(dev)


def _open_via_syscall(flags: int) -> int:
    return _check(_libc.syscall(SYS_userfaultfd, ctypes.c_int(flags)))


def _unavailable_message(failures: list[tuple[str, OSError]]) -> str:
    lines = ["userfaultfd is not available to this process, so arrays cannot be opened lazily."]
    for how, exc in failures:
        lines.append(f"  - {how}: {exc.strerror} (errno {exc.errno})")
    codes = {exc.errno for _, exc in failures}
    lines.append("Likely causes and remedies:")
    if errno.ENOSYS in codes or all(exc.errno == errno.EPERM for _, exc in failures[1:] if failures[1:]):
        lines.append(
            "  - a container's seccomp profile (Docker's and Podman's defaults) blocks the userfaultfd "
            "system call whatever the capabilities: run with a profile that allows it, e.g. "
            "`--security-opt seccomp=unconfined`;"
        )
    lines.append(
        "  - vm.unprivileged_userfaultfd is 0 and the process lacks CAP_SYS_PTRACE: "
        "`sysctl -w vm.unprivileged_userfaultfd=1`, or grant CAP_SYS_PTRACE;"
    )
    lines.append(
        "  - /dev/userfaultfd is missing or not readable and writable by this user: "
        "`chmod 0666 /dev/userfaultfd` or add the user to a group that owns it;"
    )
    lines.append("  - or read the whole array eagerly with lazymem.load(url), which needs no userfaultfd.")
    return "\n".join(lines)


@dataclass(frozen=True)
class Opened:
    fd: int
    how: str  # "device", "syscall" or "user"
    user_mode_only: bool


def open_userfaultfd() -> Opened:
    """Create a non-blocking, close-on-exec userfaultfd, climbing the privilege ladder.

    ``/dev/userfaultfd`` (file permissions only), then the system call (CAP_SYS_PTRACE or the
    sysctl), then the system call with ``UFFD_USER_MODE_ONLY`` (anyone; faults raised inside
    system calls then fail with EFAULT instead of being served).
    """
    from ..errors import UserfaultfdUnavailableError

    base = os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a blocking read after POLLIN was seen to hang
    forced = os.environ.get(_FORCE_ENV, "auto")
    rungs = [
        ("device", "/dev/userfaultfd", lambda: _open_via_device(base), False),
        ("syscall", "userfaultfd(2)", lambda: _open_via_syscall(base), False),
        ("user", "userfaultfd(2) with UFFD_USER_MODE_ONLY",
         lambda: _open_via_syscall(base | UFFD_USER_MODE_ONLY), True),
    ]
    failures: list[tuple[str, OSError]] = []
    for how, label, attempt, user_only in rungs:
        if forced != "auto" and forced != how:
            continue
        try:
            fd = attempt()
        except OSError as exc:
            failures.append((label, exc))
            continue
        return Opened(fd, how, user_only)
    raise UserfaultfdUnavailableError(errno.EPERM, _unavailable_message(failures))


WANTED_FEATURES = UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_THREAD_ID


def api_handshake(fd: int, features: int = WANTED_FEATURES) -> int:
    """Do the ``UFFDIO_API`` handshake; return the features the kernel offers."""
    arg = uffdio_api(UFFD_API, features, 0)
    _ioctl(fd, UFFDIO_API, arg)
    return int(arg.features)


def register(fd: int, start: int, length: int, mode: int = UFFDIO_REGISTER_MODE_MISSING) -> int:
    """Register ``[start, start+length)``; return the ioctls allowed on it."""
    arg = uffdio_register(uffdio_range(start, length), mode, 0)
    _ioctl(fd, UFFDIO_REGISTER, arg)
    return int(arg.ioctls)


def unregister(fd: int, start: int, length: int) -> None:
    _ioctl(fd, UFFDIO_UNREGISTER, uffdio_range(start, length))


def wake(fd: int, start: int, length: int) -> None:
    """Wake every thread blocked on a fault in the range (it retries the access)."""
    _ioctl(fd, UFFDIO_WAKE, uffdio_range(start, length))


def _fill(fd: int, request: int, arg: ctypes.Structure, result: str, start: int, length: int,
          aim: Callable[[int], None], *, wake_waiters: bool, page: int = PAGE_SIZE) -> int:
    """Run a range-filling ioctl (COPY, ZEROPAGE, CONTINUE, POISON) over the whole range.

    ``aim(done)`` points ``arg`` at the rest of the range. EAGAIN (partial progress; the ``result``
    field says how much) and EINTR are retried from where the kernel stopped. EEXIST (a page of the
    range is already present, e.g. installed through another mapping of the same memfd) skips that
    page (``page`` bytes: huge pages come whole); since the kernel may then not have woken its
    waiters, the range is woken at the end. Returns the bytes newly filled.
    """
    done = filled = 0
    skipped = False
    while done < length:
        aim(done)
        setattr(arg, result, 0)
        rc = _libc.ioctl(fd, request, ctypes.byref(arg))
        err = ctypes.get_errno() if rc == -1 else 0
        progressed = max(int(getattr(arg, result)), 0)
        done += progressed
        filled += progressed
        if rc == 0:
            break
        if err in (errno.EAGAIN, errno.EINTR):
            continue
        if err == errno.EEXIST:
            done += page
            skipped = True
            continue
        raise OSError(err, os.strerror(err))
    if skipped and wake_waiters:
        wake(fd, start, length)
    return filled


def _aim_range(arg: ctypes.Structure, start: int, length: int, mode: int) -> Callable[[int], None]:
    def aim(done: int) -> None:
        arg.range.start, arg.range.len, arg.mode = start + done, length - done, mode

    return aim


def copy(fd: int, dst: int, src: int, length: int, *, wake_waiters: bool = True, page: int = PAGE_SIZE) -> int:
    """``UFFDIO_COPY`` ``length`` bytes from ``src`` (ours) to ``dst`` (the registered range).

    ``page``: the range's page size (a hugetlbfs mapping takes whole huge pages, aligned)."""
    arg = uffdio_copy()
    mode = 0 if wake_waiters else UFFDIO_COPY_MODE_DONTWAKE

    def aim(done: int) -> None:
        arg.dst, arg.src, arg.len, arg.mode = dst + done, src + done, length - done, mode

    return _fill(fd, UFFDIO_COPY, arg, "copy", dst, length, aim, wake_waiters=wake_waiters, page=page)


def zeropage(fd: int, start: int, length: int, *, wake_waiters: bool = True) -> int:
    """Install zero pages over the range."""
    arg = uffdio_zeropage()
    aim = _aim_range(arg, start, length, 0 if wake_waiters else UFFDIO_ZEROPAGE_MODE_DONTWAKE)
    return _fill(fd, UFFDIO_ZEROPAGE, arg, "zeropage", start, length, aim, wake_waiters=wake_waiters)


def continue_range(fd: int, start: int, length: int, *, wake_waiters: bool = True) -> int:
    """``UFFDIO_CONTINUE``: map page-cache pages of a MINOR-registered range without copying."""
    arg = uffdio_continue()
    aim = _aim_range(arg, start, length, 0 if wake_waiters else UFFDIO_CONTINUE_MODE_DONTWAKE)
    return _fill(fd, UFFDIO_CONTINUE, arg, "mapped", start, length, aim, wake_waiters=wake_waiters)


def poison(fd: int, start: int, length: int, *, page: int = PAGE_SIZE) -> None:
    """Make reads of the range raise SIGBUS (pages already present are left alone), then wake."""
    arg = uffdio_poison()
    _fill(fd, UFFDIO_POISON, arg, "updated", start, length, _aim_range(arg, start, length, 0),
          wake_waiters=False, page=page)
    wake(fd, start, length)


def read_messages(fd: int, max_messages: int = 64) -> list[PageFault | OtherEvent]:
    """Read pending messages; an empty list on EAGAIN (spurious wake-up of a non-blocking fd)."""
    try:
        data = os.read(fd, UFFD_MSG_SIZE * max_messages)
    except BlockingIOError:
        return []
    return list(parse_messages(data))


# --- memory --------------------------------------------------------------------------------------

def map_shared(fd: int, length: int, *, prot: int = PROT_READ, address: int = 0, reserve: bool = False) -> int:
    """``mmap`` a memfd ``MAP_SHARED | MAP_NORESERVE``; with ``address``, exactly there or fail.

    ``reserve``: without ``MAP_NORESERVE``, so that a hugetlbfs memfd reserves its huge pages now
    (``ENOMEM`` if the pool is short) rather than failing an install later."""
    flags = MAP_SHARED | (0 if reserve else MAP_NORESERVE) | (MAP_FIXED_NOREPLACE if address else 0)
    addr = _libc.mmap(ctypes.c_void_p(address or None), length, prot, flags, fd, 0)
    if addr is None or addr == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    if address and addr != address:  # pre-4.17 kernels ignore MAP_FIXED_NOREPLACE
        _libc.munmap(ctypes.c_void_p(addr), length)
        raise OSError(errno.EEXIST, "could not map at the requested address")
    return int(addr)


def map_private(fd: int, length: int, *, reserve: bool = False) -> int:
    """``mmap`` a memfd ``MAP_PRIVATE``, readable and writeable: reads see the memfd's pages,
    writes copy them into this process (copy-on-write) and never reach the memfd.

    ``MAP_NORESERVE`` unless ``reserve``: a writeable private mapping is otherwise charged in full
    to the commit limit at once (a 16 GiB copy of which 1 % is ever written must not need 16 GiB of
    headroom). ``reserve`` for hugetlbfs: a write copies a whole huge page, which must come from
    the pool; reserving them now turns an empty pool into ``ENOMEM`` here, not a SIGBUS on a write."""
    flags = MAP_PRIVATE | (0 if reserve else MAP_NORESERVE)
    addr = _libc.mmap(None, length, PROT_READ | PROT_WRITE, flags, fd, 0)
    if addr is None or addr == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(addr)


def map_anonymous(length: int) -> int:
    addr = _libc.mmap(None, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if addr is None or addr == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(addr)


def unmap(address: int, length: int) -> None:
    _check(_libc.munmap(ctypes.c_void_p(address), length))


def release(fd: int, address: int, length: int) -> None:
    """Unregister a range from the userfaultfd ``fd`` (it may be gone already) and unmap it."""
    try:
        unregister(fd, address, length)
    except OSError:
        pass
    unmap(address, length)


def protect(address: int, length: int, prot: int) -> None:
    _check(_libc.mprotect(ctypes.c_void_p(address), length, prot))


def madvise(address: int, length: int, advice: int) -> None:
    _check(_libc.madvise(ctypes.c_void_p(address), length, advice))


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``[offset, offset+length)`` of a memfd; every mapping of it faults there again."""
    _check(_libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length))


def reserve_huge_pages(fd: int, offset: int, length: int) -> None:
    """Reserve again from the huge page pool ``[offset, offset+length)`` of a hugetlbfs memfd.

    Punching a hole in a hugetlbfs file gives the reservation of the pages it frees back to the
    pool (ranges never filled keep theirs). A shared mapping reserves its file range in the inode,
    where the reservation outlives the mapping: map it without ``MAP_NORESERVE`` and unmap it.
    ``OSError(ENOMEM)`` if the pool has fewer free unreserved pages than the range lacks."""
    addr = _libc.mmap(None, length, PROT_READ, MAP_SHARED, fd, offset)
    if addr is None or addr == MAP_FAILED:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    _libc.munmap(ctypes.c_void_p(addr), length)


def huge_pages() -> tuple[int, int]:
    """The default huge page size and how many of them the pool has free and not reserved."""
    fields = meminfo()
    return fields.get("Hugepagesize", 0), fields.get("HugePages_Free", 0) - fields.get("HugePages_Rsvd", 0)


def round_up(n: int, multiple: int = PAGE_SIZE) -> int:
    return -(-n // multiple) * multiple

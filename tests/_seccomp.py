"""A seccomp filter that refuses userfaultfd(2), as Docker's and Podman's default profiles do."""

from __future__ import annotations

import ctypes
import errno

PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000
BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K = 0x20, 0x15, 0x06
SYS_userfaultfd = 323  # x86_64


class sock_filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class sock_fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(sock_filter))]


def deny_userfaultfd() -> None:
    program = (sock_filter * 4)(
        sock_filter(BPF_LD_W_ABS, 0, 0, 0),  # load the syscall number
        sock_filter(BPF_JEQ_K, 0, 1, SYS_userfaultfd),
        sock_filter(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EPERM),
        sock_filter(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    )
    prog = sock_fprog(4, program)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or libc.prctl(
        PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0
    ):
        raise OSError(ctypes.get_errno(), "cannot install the seccomp filter")

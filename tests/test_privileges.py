"""System calls on untouched pages, and the privilege ladder, in child processes.

With a privileged userfaultfd (``/dev/userfaultfd`` or CAP_SYS_PTRACE), a system call that reads an
untouched page (``write(2)``, ``send(2)``) faults inside the kernel and the monitor serves it. With
``UFFD_USER_MODE_ONLY`` such a call fails with EFAULT: the user must get correct bytes or an
``OSError``, never wrong bytes.
"""

from __future__ import annotations

import shutil

import pytest

from .conftest import run_python

KERNEL_MODE_ACCESS = """
    import hashlib, os, socket, sys, tempfile, threading
    import numpy as np, lazymem
    from lazymem.monitor.client import get_client
    d = tempfile.mkdtemp()
    src = np.random.default_rng(0).standard_normal(3 * 2**18)  # 6 MiB, 6 chunks of 1 MiB
    lazymem.save(d + "/x.npy.zst", src, chunk_bytes=2**20)
    expected = src.tobytes()
    print("mode", get_client().uffd_how if lazymem.open(d + "/x.npy.zst") is not None else "")
    outcomes = []

    def check(name, produce):
        a = lazymem.open(d + "/x.npy.zst", readahead=0)  # untouched: every read faults
        try:
            got = produce(a)
        except OSError as exc:
            outcomes.append((name, "oserror", exc.errno))
            return
        outcomes.append((name, "ok" if got == expected else "WRONG", None))

    def tofile(a):
        a.tofile(d + "/out1"); return open(d + "/out1", "rb").read()
    def filewrite(a):
        with open(d + "/out2", "wb") as f: f.write(a)
        return open(d + "/out2", "rb").read()
    def rawwrite(a):
        fd = os.open(d + "/out3", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        view = memoryview(a).cast("B"); done = 0
        while done < len(view): done += os.write(fd, view[done:])
        os.close(fd); return open(d + "/out3", "rb").read()
    def sendall(a):
        left, right = socket.socketpair(); chunks = []
        def drain():
            while True:
                b = right.recv(1 << 20)
                if not b: return
                chunks.append(b)
        t = threading.Thread(target=drain); t.start()
        left.sendall(a); left.close(); t.join(); right.close()
        return b"".join(chunks)
    def sha(a):
        return expected if hashlib.sha256(a).digest() == hashlib.sha256(expected).digest() else b""

    for name, fn in [("tofile", tofile), ("file.write", filewrite), ("os.write", rawwrite),
                     ("socket.sendall", sendall), ("hashlib", sha)]:
        check(name, fn)
    for outcome in outcomes:
        print(*outcome)
"""


def _outcomes(stdout: str) -> dict[str, str]:
    lines = [line.split() for line in stdout.splitlines() if line and not line.startswith("mode")]
    return {parts[0]: parts[1] for parts in lines}


def test_system_calls_on_untouched_pages_give_the_right_bytes_with_a_privileged_userfaultfd() -> None:
    result = run_python(KERNEL_MODE_ACCESS)
    assert result.returncode == 0, result.stderr
    assert "mode device" in result.stdout or "mode syscall" in result.stdout
    outcomes = _outcomes(result.stdout)
    assert outcomes == dict.fromkeys(["tofile", "file.write", "os.write", "socket.sendall", "hashlib"], "ok")


def test_user_mode_only_gives_right_bytes_or_oserror_never_wrong_bytes() -> None:
    result = run_python(KERNEL_MODE_ACCESS, env={"LAZYMEM_USERFAULTFD": "user"})
    assert result.returncode == 0, result.stderr
    assert "mode user" in result.stdout
    outcomes = _outcomes(result.stdout)
    assert set(outcomes) == {"tofile", "file.write", "os.write", "socket.sendall", "hashlib"}
    assert "WRONG" not in outcomes.values(), outcomes
    assert outcomes["hashlib"] == "ok"  # hashing reads in user mode: always served


def test_user_mode_only_tofile_names_the_cause_and_prefetch_is_the_remedy() -> None:
    result = run_python(
        """
        import errno, os, tempfile
        import numpy as np, lazymem
        d = tempfile.mkdtemp(); src = np.random.default_rng(1).standard_normal(3 * 2**18)
        lazymem.save(d + "/x.npy.zst", src, chunk_bytes=2**20)
        a = lazymem.open(d + "/x.npy.zst", readahead=0)
        try:
            a.tofile(d + "/out")  # numpy's fwrite reads untouched pages: EFAULT in user mode
        except OSError as exc:
            print("errno", exc.errno == errno.EFAULT, "prefetch" in str(exc), "user-mode only" in str(exc))
        else:
            print("written")
        a.prefetch()
        a.tofile(d + "/out")
        print("after prefetch", open(d + "/out", "rb").read() == src.tobytes())
        """,
        env={"LAZYMEM_USERFAULTFD": "user"},
    )
    assert result.returncode == 0, result.stderr
    assert "errno True True True" in result.stdout and "after prefetch True" in result.stdout, result.stdout


def _drop_privileges_prefix() -> list[str]:
    """unshare -m + bind /dev/null over /dev/userfaultfd + drop CAP_SYS_PTRACE (DESIGN.md)."""
    if not shutil.which("unshare") or not shutil.which("setpriv"):
        pytest.skip("needs unshare and setpriv (util-linux)")
    import os

    if os.geteuid() != 0:
        pytest.skip("dropping privileges this way needs root")
    script = (
        'mount --bind /dev/null /dev/userfaultfd && '
        'exec setpriv --bounding-set -sys_ptrace --inh-caps -sys_ptrace "$@"'
    )
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]


def test_ladder_falls_back_to_user_mode_only_without_privileges() -> None:
    result = run_python(
        """
        import numpy as np, lazymem, tempfile
        from lazymem.monitor.client import get_client
        d = tempfile.mkdtemp(); src = np.arange(500000, dtype="i8")
        lazymem.save(d + "/x.npy.zst", src, chunk_bytes=65536)
        a = lazymem.open(d + "/x.npy.zst")
        assert np.array_equal(a, src)
        print(get_client().uffd_how)
        """,
        prefix=_drop_privileges_prefix(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == "user"


def test_no_userfaultfd_at_all_raises_a_clear_error() -> None:
    result = run_python(
        """
        import numpy as np, lazymem, tempfile
        from tests._seccomp import deny_userfaultfd
        deny_userfaultfd()
        d = tempfile.mkdtemp(); src = np.arange(1000)
        lazymem.save(d + "/x.npy.zst", src)
        try:
            lazymem.open(d + "/x.npy.zst")
        except lazymem.UserfaultfdUnavailableError as exc:
            assert isinstance(exc, OSError)
            print(exc)
            assert np.array_equal(lazymem.load(d + "/x.npy.zst"), src)  # the remedy works
        else:
            raise SystemExit("open succeeded without userfaultfd")
        """,
        # The device is hidden and the syscall (both rungs) refused by a seccomp filter.
        prefix=_drop_privileges_prefix(),
    )
    assert result.returncode == 0, result.stderr + result.stdout
    for needle in ("seccomp", "vm.unprivileged_userfaultfd", "/dev/userfaultfd", "lazymem.load"):
        assert needle in result.stdout

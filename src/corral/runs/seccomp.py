"""The seccomp filter of a run's sandbox: the system calls an agent never needs, refused.

The filter allows everything else (an allow-list would break the next tool an
agent installs) and answers a refused call with ``EPERM``, so tools fail
cleanly instead of being killed. It is built with libseccomp (through
``pyseccomp``) and handed to bubblewrap as compiled BPF (``--seccomp FD``),
which loads it right before it starts the agent. What it refuses, as
Docker's default profile, Flatpak and Codex's Linux sandbox do:

* reading or steering other processes: ``ptrace``, ``process_vm_readv`` and
  ``process_vm_writev``, ``pidfd_getfd``, ``kcmp``;
* the kernel itself: loading modules or kernels, ``bpf``, ``perf_event_open``,
  ``userfaultfd``, ``keyctl`` and the keyrings, ``syslog``, ``acct``, swap,
  ``reboot``, the clock, ``io_uring`` (a large, often-patched surface: libuv
  and the others fall back to threads);
* the filesystem tree: ``mount`` and the new mount API, ``umount2``,
  ``pivot_root``, ``chroot``, file handles (``open_by_handle_at`` reads files
  by inode, around every folder's permissions);
* new namespaces: ``setns``, and ``unshare``/``clone`` with any ``CLONE_NEW*``
  flag (bubblewrap's ``--disable-userns`` also forbids user namespaces);
  ``clone3`` answers ``ENOSYS`` instead, so the C library falls back to
  ``clone``, whose flags the filter can see;
* ``ioctl`` ``TIOCSTI``/``TIOCLINUX`` (typing into a terminal);
* ``personality`` other than the plain ones (``PER_LINUX``, ``PER_LINUX32``,
  ``UNAME26``, and the query ``0xffffffff``): no ASLR switched off, no
  read-implies-exec;
* sockets other than Unix, IPv4, IPv6 and netlink's routing protocol
  (``NETLINK_ROUTE``: the C library's ``getaddrinfo`` and ``getifaddrs`` use it,
  and the sandbox's network namespace holds only loopback): no packet, key,
  vsock, bluetooth or other netlink sockets.

Only the native architecture's calls are filtered; a call made through another
ABI (32-bit ``int 0x80``) kills the process, libseccomp's default.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from corral.errors import ConfigError

REFUSED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "syslog", "acct", "swapon", "swapoff", "reboot", "quotactl", "lookup_dcookie",
    "uselib", "iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr",
    "open_by_handle_at", "name_to_handle_at", "setns",
)  # fmt: skip
"""System calls refused outright, whatever their arguments."""

CLONE_NEWUSER = 0x10000000
# CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
# CLONE_NEWPID, CLONE_NEWNET (os.CLONE_* arrive with Python 3.12)
_NAMESPACES = (
    0x80,
    0x20000,
    0x2000000,
    0x4000000,
    0x8000000,
    CLONE_NEWUSER,
    0x20000000,
    0x40000000,
)
_SOCKETS = {socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK}
_FAMILIES = 64  # above every address family Linux defines (AF_MAX is 46)
_NETLINK_ROUTE = 0
_TERMINAL_IOCTLS = (0x5412, 0x541C)  # TIOCSTI, TIOCLINUX
# personality(2) flags that weaken the process: ADDR_NO_RANDOMIZE, FDPIC_FUNCPTRS,
# MMAP_PAGE_ZERO, ADDR_COMPAT_LAYOUT, READ_IMPLIES_EXEC, ADDR_LIMIT_32BIT, SHORT_INODE,
# WHOLE_SECONDS, STICKY_TIMEOUTS, ADDR_LIMIT_3GB
_PERSONALITY_FLAGS = tuple(1 << bit for bit in range(18, 28))
_QUERY_BIT = 1 << 31  # set in a personality only as part of the query, 0xffffffff
_LOW_32 = 0xFFFFFFFF


def _library() -> Any:
    try:
        import pyseccomp
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp is missing
        raise ConfigError(
            f"the sandbox's seccomp filter cannot be built: {exc} (Debian: apt-get install "
            "libseccomp2; and pip install pyseccomp)"
        ) from exc
    return pyseccomp


def build() -> bytes:
    """The filter, compiled to the BPF program bubblewrap loads."""
    sc = _library()
    refuse = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(sc.ALLOW)
    for name in REFUSED:
        flt.add_rule(refuse, name)
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in _NAMESPACES:
        flt.add_rule(refuse, "unshare", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        flt.add_rule(refuse, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    for request in _TERMINAL_IOCTLS:
        flt.add_rule(refuse, "ioctl", sc.Arg(1, sc.MASKED_EQ, _LOW_32, request))
    for family in set(range(_FAMILIES)) - _SOCKETS:
        flt.add_rule(refuse, "socket", sc.Arg(0, sc.EQ, family))
    # GE also catches a family with garbage in the upper half (the kernel reads an int)
    flt.add_rule(refuse, "socket", sc.Arg(0, sc.GE, _FAMILIES))
    flt.add_rule(
        refuse,
        "socket",
        sc.Arg(0, sc.EQ, socket.AF_NETLINK),
        sc.Arg(2, sc.NE, _NETLINK_ROUTE),
    )
    _personality(flt, sc, refuse)
    fd = os.memfd_create("corral-seccomp")
    try:
        with open(fd, "wb", closefd=False) as out:
            flt.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        return _read_all(fd)
    finally:
        os.close(fd)


def _personality(flt: Any, sc: Any, refuse: int) -> None:
    """Refuse every personality with a weakening flag, except the query ``0xffffffff``.

    One comparison per argument and rule is all libseccomp allows, so "bit 31 set but not
    all bits" is one rule per other bit, and "flag set, bit 31 clear" one rule per flag.
    """
    for bit in range(31):
        flt.add_rule(
            refuse, "personality", sc.Arg(0, sc.MASKED_EQ, _QUERY_BIT | 1 << bit, _QUERY_BIT)
        )
    for flag in _PERSONALITY_FLAGS:
        flt.add_rule(refuse, "personality", sc.Arg(0, sc.MASKED_EQ, flag | _QUERY_BIT, flag))
    flt.add_rule(refuse, "personality", sc.Arg(0, sc.GT, _LOW_32))


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def memfd(data: bytes, name: str) -> int:
    """An in-memory file holding ``data``, positioned at its start, for a child process to
    read: close-on-exec, so only a child given it in ``pass_fds`` inherits it."""
    fd = os.memfd_create(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def unrefused() -> list[str]:
    """Run inside a sandbox (the start-up probe): what it should refuse and does not."""
    import ctypes
    import importlib.util

    libc = ctypes.CDLL(None, use_errno=True)
    problems: list[str] = []
    if importlib.util.find_spec("httpx") is None:
        problems.append("Corral's dependencies (site-packages) are not reachable inside")
    if libc.unshare(CLONE_NEWUSER) == 0:
        problems.append("a process inside can create a user namespace")
    with open("/proc/self/status") as lines:
        status = dict(line.split(":", 1) for line in lines if ":" in line)
    # ADDR_NO_RANDOMIZE: allowed without the filter, and harmless to this process if it is
    if status.get("Seccomp", "").strip() != "2" or libc.personality(0x0040000) != -1:
        problems.append("the seccomp filter is not in force inside")
    elif ctypes.get_errno() != errno.EPERM:
        problems.append(f"the seccomp filter answers {os.strerror(ctypes.get_errno())}, not EPERM")
    return problems


if __name__ == "__main__":
    for problem in unrefused():
        print(f"SANDBOX_PROBLEM {problem}")
    print("SANDBOX_CHECKED")

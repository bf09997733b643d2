"""Linux Landlock through its three system calls: a process confines itself, without root, for good.

Our own small ctypes module rather than a PyPI binding: the two there (`landlock`,
`py-landlock`) are young 0.x wrappers and neither covers ABI 6's scopes (signals
and abstract Unix sockets), which the sandbox uses. This is the whole interface
bumps-mpi needs: ask the kernel's ABI, build a ruleset of paths (and, ABI >= 4,
TCP ports), restrict the calling thread and its future children. Rules apply to
files opened afterwards; descriptors already open stay as they are.
"""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # the same on x86_64 and aarch64
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
PR_SET_NO_NEW_PRIVS = 38

# file-system access rights, and the ABI that introduced each
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
MAKE_REG, MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 8, 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
FS_BY_ABI.update({abi: (1 << 16) - 1 for abi in range(5, 64)})
READ = EXECUTE | READ_FILE | READ_DIR
FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the rights a rule on a file may hold

NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


class LandlockError(OSError):
    """A Landlock system call failed (errno and which call)."""


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI (0: none: an old kernel, Landlock disabled, or not Linux)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64"):
        return 0
    version = _libc().syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    return max(int(version), 0)


class Ruleset:
    """What the process will still be allowed once restricted: paths with their rights, TCP ports."""

    def __init__(self, abi: int, handle_net: bool, scopes: int):
        self.abi = abi
        self.fs = FS_BY_ABI.get(abi, 0)
        self.net = (NET_BIND_TCP | NET_CONNECT_TCP) if handle_net and abi >= 4 else 0
        self.scopes = scopes if abi >= 6 else 0
        attr = _RulesetAttr(self.fs, self.net, self.scopes)
        size = (
            ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
        )  # the struct each ABI knows
        libc = _libc()
        self.fd = libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
        if self.fd < 0:
            raise LandlockError(ctypes.get_errno(), "landlock_create_ruleset")
        self._libc = libc

    def allow_path(self, path: str, access: int) -> bool:
        """Allow *access* beneath *path* (only the file rights, for a file); False if it does not exist."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            rights = access & self.fs
            if not os.path.isdir(path):
                rights &= FILE_ONLY
            if not rights:
                return True
            rule = _PathBeneath(rights, fd)
            if self._libc.syscall(SYS_ADD_RULE, self.fd, RULE_PATH_BENEATH, ctypes.byref(rule), 0) < 0:
                raise LandlockError(ctypes.get_errno(), f"landlock_add_rule {path}")
        finally:
            os.close(fd)
        return True

    def allow_port(self, port: int, access: int) -> None:
        """Allow *access* (NET_BIND_TCP, NET_CONNECT_TCP) on TCP *port*; nothing when TCP is not handled."""
        rights = access & self.net
        if rights:
            rule = _NetPort(rights, port)
            if self._libc.syscall(SYS_ADD_RULE, self.fd, RULE_NET_PORT, ctypes.byref(rule), 0) < 0:
                raise LandlockError(ctypes.get_errno(), f"landlock_add_rule port {port}")

    def restrict_self(self) -> None:
        """Enforce the ruleset on this thread and its future children; irreversible."""
        if self._libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0:
            raise LandlockError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if self._libc.syscall(SYS_RESTRICT_SELF, self.fd, 0) < 0:
            raise LandlockError(ctypes.get_errno(), "landlock_restrict_self")
        os.close(self.fd)
        self.fd = -1

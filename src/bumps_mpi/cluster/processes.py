"""Which process is which, and whether it still runs: a pid with its start time, host and boot.

A pid alone is not enough to tell whether a run is alive: after the run ends
the kernel may give the same pid to anything else. A process is identified by
its pid and its start time (from /proc, in clock ticks since boot), on a host
and a boot; a record from another host or an earlier boot cannot be checked
here, and says so (None) rather than guess.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 (the state) on; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from the last ')'
    return stat[stat.rfind(b")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """Start time in clock ticks since boot (/proc/PID/stat field 22); None if gone or a zombie."""
    fields = _stat_fields(pid)
    return None if fields is None or fields[0] in (b"Z", b"X") else int(fields[19])


def identity(pid: int | None = None) -> dict[str, Any]:
    """What identifies process *pid* (default: this one) for alive() later, here or from another process."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start": start_ticks(pid), "host": socket.gethostname(), "boot": _boot_id()}


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has this pid
        return True
    return True


def alive(record: Any) -> bool | None:
    """True if the process in *record* still runs, False if it does not, None if this host cannot tell.

    A record from this host but an earlier boot is dead. Without /proc (not Linux)
    the pid alone answers, which a reused pid can fool.
    """
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int) or record["pid"] <= 0:
        return None
    if record.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if boot is not None and record.get("boot") not in (None, boot):
        return False  # the machine restarted since
    if boot is None or not os.path.exists("/proc/self/stat"):
        return _pid_exists(record["pid"])
    now = start_ticks(record["pid"])
    if now is None:
        return False
    if not isinstance(record.get("start"), int):  # recorded without /proc: the pid is all there is
        return True
    return now == record["start"]


def command_line(pid: int) -> list[str] | None:
    """The process's arguments (/proc/PID/cmdline); None if gone or unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [arg.decode("utf-8", "replace") for arg in fh.read().split(b"\0") if arg]
    except OSError:
        return None


def parent_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def runs_job(record: Any, job_path: Any) -> bool | None:
    """alive(record), and if alive, whether that process was started for the job at *job_path* (its
    arguments name the job directory). A record read from a job directory is the job's own writing: a
    model could name any process in it, and whoever signals on its word must not signal that one."""
    live = alive(record)
    if live is not True or not os.path.exists("/proc/self/cmdline"):
        return live
    return str(job_path) in (command_line(int(record["pid"])) or [])


def descendants(pid: int) -> list[int]:
    """Every process below *pid* in the process tree (children, theirs, ...), from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and (parent := parent_of(int(entry))) is not None:
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rank_of(pid: int) -> int | None:
    """The MPI rank a process was started as, from the environment its launcher gave it (PMI_RANK, or Open
    MPI's or Slurm's); None when it is not a rank or cannot be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read(1 << 20)
    except OSError:
        return None
    found = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    for key in (b"PMI_RANK", b"OMPI_COMM_WORLD_RANK", b"SLURM_PROCID"):
        if found.get(key, b"").isdigit():
            return int(found[key])
    return None

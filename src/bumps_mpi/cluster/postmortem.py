"""After the launcher failed with no error.json: say which rank died and how, from the log.

A rank that dies outright (killed, segfault, out of memory) cannot report
itself; mpiexec or srun ends the others and prints its own line. This turns
that line into error.json, naming the rank through ranks.json (host and pid
of every rank, written at start-up).

    python -m bumps_mpi.postmortem JOBDIR STATUS LOGFILE
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from ..jobdir import ERROR_FILE, RANKS_FILE, RESULT_FILE, JobDir, read_json, read_tail, write_json
from .states import describe_exit

SRUN_TASK = re.compile(r"srun: error: (\S+): tasks? ([0-9,-]+): (.+)")
HYDRA_PID = re.compile(r"PID (\d+) RUNNING AT (\S+)")
HYDRA_EXIT = re.compile(r"EXIT (?:CODE|STRING): (.+)")
# srun's "task 0: Out Of Memory" and slurmstepd's "Detected 1 oom-kill event(s)": the cgroup killed a rank
OOM = re.compile(r"Out Of Memory|oom-kill event", re.IGNORECASE)


def explain(log_tail: str, ranks: list[dict] | None) -> tuple[int | None, str | None, str]:
    """(rank, host, what happened) from the launcher's own lines; rank None when it cannot tell."""
    for match in SRUN_TASK.finditer(log_tail):
        first = match.group(2).split(",")[0].split("-")[0]
        return int(first), match.group(1), match.group(3).strip()
    pid = HYDRA_PID.search(log_tail)
    if pid:
        how = HYDRA_EXIT.findall(log_tail)
        what = how[-1].strip() if how else "ended abnormally"
        for entry in ranks or []:  # the model's to write: any shape
            if isinstance(entry, dict) and str(entry.get("pid")) == pid.group(1):
                rank, host = entry.get("rank"), entry.get("host")
                if isinstance(rank, int) and not isinstance(rank, bool):
                    return rank, host if isinstance(host, str) else pid.group(2), what
        return None, pid.group(2), what
    return None, None, "the launcher failed"


def write_postmortem(job_dir: Path, status: int, log: Path) -> dict | None:
    """Write error.json unless the job already did; returns what was written."""
    job = JobDir(job_dir)
    if any(job.file(name).is_symlink() for name in (ERROR_FILE, RESULT_FILE)):
        pass  # the model's links, not the run's records: the post-mortem replaces error.json
    else:
        try:
            if job.error is not None or job.result is not None:
                return None
        except Exception:  # unreadable: the run's own record exists, do not overwrite it
            return None
    try:  # a local run's log is in the job directory: its tail only, never through a link
        tail = "\n".join(read_tail(log).decode(errors="replace").splitlines()[-60:])
    except OSError:
        tail = ""
    try:
        ranks = read_json(job.file(RANKS_FILE), kind=list)
    except Exception:  # a broken ranks.json: the launcher's own line still names the host
        ranks = None
    rank, host, what = explain(tail, ranks)
    how = f"launcher exit status {status}" + (f": {describe_exit(None, status)}" if status > 128 else "")
    if rank is None and host is None:
        message = f"the launcher failed ({how}); its output is in {log.name}"
    else:
        who = f"rank {rank}" if rank is not None else "a rank"
        message = f"{who}{f' on {host}' if host else ''} died: {what} ({how})"
    error = {
        "phase": "run",
        "rank": rank,
        "host": host,
        "point": None,
        "message": message,
        "traceback": tail,
        "time": time.time(),
    }
    if OOM.search(tail):  # only a step was killed, so accounting says FAILED for the job: keep why
        error["killed_by"] = "OUT_OF_MEMORY"
    try:
        write_json(job.file(ERROR_FILE), error)
    except OSError as exc:  # a full disk: at least the log says why
        print(f"bumps-mpi: {message} ({ERROR_FILE} could not be written: {exc.strerror})", file=sys.stderr)
    return error

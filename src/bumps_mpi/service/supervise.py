"""`python -m bumps_mpi.service.supervise JOBDIR RANKS`: a local run's supervisor, for the job controller
and the dispatch worker alike, and what both know of a run by their own records.

The same supervision as `bumps-submit submit --local` (bumps_mpi.cluster.local.run),
in a process of its own: the service starts it in a new session and may stop and
start again meanwhile; the run records how it ended in its job directory. The
worker imports this and nothing of the controller's (its store, its queue).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ..cluster import local, processes
from ..errors import BumpsMpiError
from ..jobdir import JobDir
from ..pythonenv import safe_environment
from ..records import Request
from ..sandbox.child import nice_prefix


class RecordedJob(JobDir):
    """A fit's job directory whose Slurm id is the one the service recorded when it submitted it, never
    what job.json says now (the model can write job.json: it could name someone else's job)."""

    def __init__(self, path: Path | str, fit: dict):
        super().__init__(path)
        self.recorded_id = fit.get("job_id")

    @property
    def spec(self) -> Request:
        try:
            spec = Request(**super().spec)
        except BumpsMpiError:
            spec = Request()
        spec.pop("slurm", None)
        if self.recorded_id:
            spec["slurm"] = {"job_id": str(self.recorded_id)}
        return spec


def launch(job: JobDir, ranks: int, nice: int = 0) -> dict[str, Any]:
    """Start a local run's supervisor in its own session (it outlives a restart of the service), *nice*
    below this process (its ranks inherit it); who it is."""
    with open(os.devnull, "wb") as null:
        started = subprocess.Popen(
            [
                *nice_prefix(nice),
                sys.executable,
                "-m",
                "bumps_mpi.service.supervise",
                str(job.path),
                str(ranks),
            ],
            stdin=subprocess.DEVNULL,
            stdout=null,
            stderr=null,
            start_new_session=True,
            cwd=job.control,  # never the job directory: nothing planted there is imported (pythonenv)
            env=safe_environment(),
        )
    threading.Thread(target=started.wait, name=f"reap {started.pid}", daemon=True).start()  # no zombie
    return processes.identity(started.pid)


def alive_ids(fits: list[dict]) -> set[str]:
    """The fits whose processes or Slurm job the records themselves (not the job's files) show alive."""
    alive = {f["id"] for f in fits if processes.alive(json.loads(f.get("supervisor") or "null"))}
    ids = {str(f["job_id"]): f["id"] for f in fits if f.get("job_id")}
    if ids:
        try:
            listed = subprocess.run(
                ["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True, text=True, timeout=60
            ).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            listed = list(ids)  # Slurm cannot say: nothing ends on the files' word alone
        alive |= {ids[i] for i in listed if i in ids}
    return alive


if __name__ == "__main__":
    local.run(JobDir(sys.argv[1]), int(sys.argv[2]))

"""The Python API behind bumps-submit's status, results, watch and cancel.

The click layer only parses and prints; a notebook can call these directly.
Submitting lives in bumps_mpi.submission. Importing this module stays cheap:
no numpy, bumps or mpi4py, nothing only `submit` needs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import jobstate, registry, slurm
from .errors import JobFailed, JobNotFound, UsageError
from .jobdir import CANCEL_FILE, CHECKPOINT_REQUEST_FILE, JOB_FILE, RESUMABLE_FITTERS, JobDir


def resolve(ref: str) -> JobDir:
    """A job id (from the registry) or a job directory."""
    path = Path(ref)
    if path.is_dir() and (path / JOB_FILE).is_file():
        return JobDir(path)
    entry = registry.find(ref)
    if entry is not None:
        return JobDir(entry["job_dir"])
    if path.is_dir():
        raise JobNotFound(f"{ref} is a directory but not a bumps-mpi job directory (no {JOB_FILE})")
    raise JobNotFound(f"no job {ref!r}: give a job directory, or a job id that bumps-submit submitted")


def status(
    refs: list[str] | None = None, limit: int = 20, state: str | None = None, since: float | None = None
) -> list[dict[str, Any]]:
    """One record per job (see bumps_mpi.jobstate); no refs: my jobs, newest first, filtered."""
    if refs:
        return jobstate.status([resolve(r) for r in refs])
    entries = [e for e in registry.entries() if since is None or (e.get("submitted") or 0) >= since]
    seen: set[str] = set()  # a resumed job has one entry per submission: list its directory once
    unique = [e for e in entries if not (e["job_dir"] in seen or seen.add(e["job_dir"]))]
    jobs = [JobDir(e["job_dir"]) for e in unique if (Path(e["job_dir"]) / JOB_FILE).is_file()]
    if state is None:
        return jobstate.status(jobs[:limit])
    wanted = state.upper()
    found: list[dict[str, Any]] = []
    for start in range(0, len(jobs), 50):  # a state filter may need to look further back than limit
        found += [r for r in jobstate.status(jobs[start : start + 50]) if r["state"] == wanted]
        if len(found) >= limit:
            break
    return found[:limit]


def results(ref: str) -> dict[str, Any]:
    """The fit's result.json; JobNotFound-style errors say why there is none."""
    job = resolve(ref)
    result = job.result
    if result is not None:
        return {"job_id": jobstate.job_id_of(job), "job_dir": str(job.path), **result}
    error = job.error
    if error is not None:
        raise JobFailed(error)
    state = jobstate.status([job])[0]["state"]
    raise JobNotFound(f"job {ref} has no results yet (state {state})")


def request_checkpoint(ref: str) -> dict[str, Any]:
    """Ask a running DREAM or DE fit to save a checkpoint at its next boundary; it goes on running."""
    job = resolve(ref)
    spec = job.spec
    if spec.get("fit") not in RESUMABLE_FITTERS:
        only = " and ".join(RESUMABLE_FITTERS)
        raise UsageError(f"fitter {spec.get('fit')!r} keeps no checkpoint (only {only} do)")
    if job.result is not None or job.error is not None:
        raise UsageError(f"{ref} has ended: there is nothing to checkpoint")
    job.file(CHECKPOINT_REQUEST_FILE).write_text(f"{time.time()}\n")
    return {"job_id": jobstate.job_id_of(job), "job_dir": str(job.path), "requested": True}


def cancel(ref: str) -> dict[str, Any]:
    job = resolve(ref)
    job_id = jobstate.job_id_of(job)
    if job_id is None:
        raise UsageError(f"{ref} ran locally: stop it with Ctrl-C where it runs")
    job.file(CANCEL_FILE).write_text(f"{time.time()}\n")  # a job at its time limit must not requeue now
    slurm.scancel(job_id)
    return {"job_id": job_id, "job_dir": str(job.path), "cancelled": True}

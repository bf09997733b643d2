"""Accounting through pyslurm (its `db` API, pyslurm >= 23.2) instead of running sacct.

Optional: pyslurm builds only against the Slurm it was compiled for, so it
imports only where it matches the cluster (PyPI has 25.11 only; nothing fits
Slurm 22.05). `bumps_mpi.cluster.slurm.sacct` uses it when it imports and falls back
to sacct when it is absent or fails. The records have sacct's fields and text.
"""

from __future__ import annotations

from typing import Any

from .states import array_ids


def available() -> bool:
    try:
        import pyslurm  # noqa: F401
    except Exception:  # ImportError, or a library built for another Slurm
        return False
    return True


def elapsed_text(seconds: int | None) -> str:
    """Seconds as sacct's [D-]HH:MM:SS."""
    seconds = int(seconds or 0)
    days, rest = divmod(seconds, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


def record(job: Any) -> dict[str, str]:
    """One pyslurm.db.Job as the sacct fields that bumps_mpi reads."""
    return {
        "JobIDRaw": str(job.id),
        "JobName": job.name or "",
        "State": job.state or "",
        "ExitCode": f"{job.exit_code or 0}:{job.exit_code_signal or 0}",
        "Elapsed": elapsed_text(job.elapsed_time),
    }


def jobs(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Accounting records of *job_ids* (allocations), by job id: an array's task as 'ARRAY_TASK'."""
    import pyslurm

    found = pyslurm.db.Jobs.load(pyslurm.db.JobFilter(ids=[int(i) for i in job_ids]))
    records = {}
    for job in found:
        records.update(dict.fromkeys(keys(job), record(job)))
    return records


def keys(job: Any) -> list[str]:
    """The ids status knows the record by: a job's own, or an array's tasks as ARRAY_TASK (the tasks not
    started yet share one record, whose array_tasks_waiting is Slurm's range text, '2-5%2')."""
    array = getattr(job, "array_id", None)
    if not array:
        return [str(job.id)]
    waiting = getattr(job, "array_tasks_waiting", None)
    if waiting:
        return array_ids(f"{array}_[{waiting}]")
    return [f"{array}_{getattr(job, 'array_task_id', None) or 0}"]  # pyslurm reads task 0 as None

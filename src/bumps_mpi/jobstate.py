"""The job-state layer: Slurm's view of each job joined with its job directory's.

Slurm accounting (sacct, batched) is the truth for the job's state; squeue
adds what accounting lacks (pending reasons, jobs it does not know yet); the
job directory is the truth for the fit (progress.json, result.json,
error.json). A terminal state is cached in the job directory (state.json), so
a finished job never costs another accounting query.
"""

from __future__ import annotations

from typing import Any

from . import slurm
from .jobdir import JobDir, read_json, write_json
from .states import JobState, pending_hint

STATE_FILE = "state.json"
PROGRESS_FILE = "progress.json"  # written by bumps_mpi.progress on rank 0


def job_id_of(job: JobDir) -> str | None:
    job_id = job.spec.get("slurm", {}).get("job_id")
    return None if job_id is None else str(job_id)


def elapsed_seconds(text: str | None) -> int | None:
    """Slurm's [D-]HH:MM:SS, MM:SS or MM:SS.mmm as seconds."""
    if not text or text in ("INVALID", "UNLIMITED"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return int((int(days) if days else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2])


def status(jobs: list[JobDir]) -> list[dict[str, Any]]:
    """One record per job; at most one sacct call per 50 uncached jobs and one squeue call."""
    cached = {job.path: read_json(job.file(STATE_FILE)) for job in jobs}
    ids = [i for job in jobs if (i := job_id_of(job)) and cached[job.path] is None]
    problems: list[str] = []
    accounting: dict[str, dict[str, str]] = {}
    queue: dict[str, dict[str, str]] | None = {}
    try:
        accounting = slurm.sacct(ids) if ids else {}
    except slurm.Unreachable as exc:
        problems.append(str(exc))
    waiting = [i for i in ids if i not in accounting or accounting[i]["State"] == "PENDING"]
    try:
        queue = slurm.squeue(waiting, finished=bool(problems)) if waiting else {}
    except slurm.Unreachable as exc:
        problems.append(str(exc))
        queue = None
    view = _SlurmView(
        accounting,
        queue or {},
        accounting_ok=not problems,
        unreachable="; ".join(problems) if problems and queue is None else None,
    )
    records = [_record(job, cached[job.path], view) for job in jobs]
    if problems and queue is not None:  # slurmdbd down, controller up: say so (the CLI prints it once)
        for record in records:
            record["accounting"] = f"unavailable ({problems[0]}); states from the controller"
    return records


class _SlurmView:
    def __init__(self, accounting: dict, queue: dict, accounting_ok: bool, unreachable: str | None):
        self.accounting, self.queue = accounting, queue
        self.accounting_ok, self.unreachable = accounting_ok, unreachable


def _record(job: JobDir, cached: dict | None, view: _SlurmView) -> dict[str, Any]:
    spec = job.spec
    job_id = job_id_of(job)
    progress, error, result = read_json(job.file(PROGRESS_FILE)), job.error, job.result  # each read once
    record: dict[str, Any] = {
        "job_id": job_id,
        "job_dir": str(job.path),
        "name": spec.get("name"),
        "state": JobState.UNKNOWN.value,
        "slurm_state": None,
        "exit_code": None,
        "elapsed": None,
        "elapsed_s": None,
        "reason": None,
        "submitted": spec.get("slurm", {}).get("submitted", spec.get("created")),
    }
    if cached is not None:
        record.update(cached)
    elif job_id is None:
        record.update(_local_state(job, finished=result is not None or error is not None))
    elif job_id in view.accounting and view.accounting[job_id]["State"] != "PENDING":
        row = view.accounting[job_id]
        state = JobState.from_slurm(row["State"])
        if state is JobState.FAILED and (error or {}).get("killed_by") == JobState.OUT_OF_MEMORY.value:
            state = JobState.OUT_OF_MEMORY  # a rank's step hit --mem; the batch script itself did not
        found = {
            "state": state.value,
            "slurm_state": row["State"],
            "exit_code": row["ExitCode"],
            "elapsed": row["Elapsed"],
            "elapsed_s": elapsed_seconds(row["Elapsed"]),
        }
        record.update(found)
        if state.terminal:
            write_json(job.file(STATE_FILE), found)
    elif job_id in view.queue:
        row = view.queue[job_id]
        record.update(
            state=JobState.from_slurm(row["State"]).value,
            slurm_state=row["State"],
            reason=row["Reason"],
            elapsed=row["Elapsed"],
            elapsed_s=elapsed_seconds(row["Elapsed"]),
        )
    elif (
        view.accounting_ok
    ):  # accounting lags a few seconds behind sbatch: unknown yet is pending, never done
        record.update(state=JobState.PENDING.value, reason="not yet in accounting")
    else:  # Slurm did not answer: say so, never guess
        record.update(reason=f"Slurm not reachable ({view.unreachable or 'accounting failed'})")
    if progress is not None:
        record["restarts"] = progress.get("restarts", 0)  # allocations after the first: requeues, resumes
        if record["state"] == JobState.PENDING.value and not progress.get("done"):
            record["state"] = JobState.REQUEUED.value  # it ran, stopped unfinished, and will continue
    if record["state"] == JobState.UNKNOWN.value and record["slurm_state"]:
        record["warning"] = f"Slurm state {record['slurm_state']!r} is not one bumps-mpi knows"
    if record["state"] in (JobState.PENDING.value, JobState.REQUEUED.value):
        hint = pending_hint(record["reason"])
        if hint:
            record["never_starts"], record["hint"] = hint
    _join_job_dir(record, progress, error, result)
    return record


def _local_state(job: JobDir, finished: bool) -> dict[str, Any]:
    local = job.local_state
    if local is None:
        return {"state": "UNKNOWN" if finished else JobState.RUNNING.value}
    import datetime

    seconds = int(local["finished"] - local["started"])
    return {
        "state": local["state"],
        "exit_code": f"{local['exit_code']}:0",
        "elapsed": str(datetime.timedelta(seconds=seconds)),
        "elapsed_s": seconds,
    }


def _join_job_dir(
    record: dict[str, Any], progress: dict | None, error: dict | None, result: dict | None
) -> None:
    """The fit's own view: progress while it runs, the error or the chi-square at the end."""
    if progress is not None:
        steps = max(int(progress.get("steps") or 1), 1)
        record["progress"] = {
            "step": progress.get("step"),
            "steps": steps,
            "percent": round(100.0 * (progress.get("step") or 0) / steps, 1),
            "chisq": progress.get("chisq"),
            "eta_s": progress.get("eta_s"),
            "failed_evaluations": progress.get("failed_evaluations"),
            "done": progress.get("done"),
        }
    if error is not None:
        record["error"] = {
            k: error.get(k) for k in ("message", "rank", "host", "point", "phase", "traceback")
        }
    if result is not None:
        record["chisq"] = result.get("chisq")

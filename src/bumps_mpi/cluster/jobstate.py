"""The job-state layer: Slurm's view of each job joined with its job directory's.

Slurm is the truth for the job's state: the controller (squeue, one call) for
what it still knows, accounting (sacct, batched) for exit codes and for jobs
the controller has forgotten; accounting lags the controller by seconds, so the
controller's word wins while it has one, and a state never goes back from an
end the controller or the job's own files have shown. The job directory is the
truth for the fit (progress.json, result.json, error.json). A final state is
cached in the job directory (state.json), so a finished job never costs another
query; caching is best effort and never breaks a read.
"""

from __future__ import annotations

import re
import time
from typing import Any, cast

from ..errors import BumpsMpiError
from ..jobdir import (
    EXIT_STATUS_FILE,
    RANKS_FILE,
    RUNS_FILE,
    STATE_FILE,
    JobDir,
    read_json,
    read_regular,
    slurm_log,
    write_json,
)
from ..records import ErrorView, ProgressView, Result, Status
from ..text import one_line, rank_ranges
from . import slurm
from .states import JobState, describe_exit, pending_hint

JOB_ID = re.compile(r"\d+(_\d+)?")  # a job, or an array's task
UNKNOWN_AFTER_S = 300  # a job neither accounting nor the controller knows this long after sbatch is lost
FULL_BELOW_BYTES = 1 << 20  # free space under which a job's file system is reported full


def job_id_of(job: JobDir) -> str | None:
    """The Slurm job id job.json records; None if none (or one of a shape Slurm never gives)."""
    record = job.spec.get("slurm")
    job_id = record.get("job_id") if isinstance(record, dict) else None
    if isinstance(job_id, bool) or not isinstance(job_id, (str, int)):
        return None
    return str(job_id) if JOB_ID.fullmatch(str(job_id)) else None


def elapsed_seconds(text: str | None) -> int | None:
    """Slurm's [D-]HH:MM:SS, MM:SS or MM:SS.mmm as seconds."""
    if not text or text in ("INVALID", "UNLIMITED"):
        return None
    days, _, clock = text.rpartition("-")
    try:
        parts = [float(p) for p in clock.split(":")]
    except ValueError:
        return None
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return int((int(days) if days.isdigit() else 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2])


def _cached(job: JobDir) -> Status | None:
    """A Slurm job's final record, kept to spare accounting; a local run's local.json is as cheap to read
    and is written last, by its supervisor, after the ranks have ended (the model may write state.json)."""
    if _id_or_none(job) is None:
        return None
    try:
        cached = read_json(job.file(STATE_FILE))
    except BumpsMpiError:  # a cache that cannot be read is no cache: ask Slurm again
        return None
    if not isinstance(cached, dict) or cached.get("state") not in {s.value for s in JobState}:
        return None
    return cast(Status, cached)


def _id_or_none(job: JobDir) -> str | None:
    try:
        return job_id_of(job)
    except BumpsMpiError:
        return None


def ended_for_good(record: Status) -> bool:
    """A final state that Slurm will not requeue, and the job's processes gone (a state is final only
    then: the fit's own files, which the model can write, never end it)."""
    state = JobState(record["state"])
    if not state.terminal or record.get("finishing"):
        return False
    if state in (JobState.PREEMPTED, JobState.NODE_FAIL):  # Slurm requeues such a job in its queue:
        return record.get("in_queue") is False  # once it has left the queue, nothing will
    return True


def status(jobs: list[JobDir]) -> list[Status]:
    """One record per job; at most one sacct call per 50 uncached jobs and one squeue call.

    A job directory that cannot be read gives a record with state UNKNOWN and
    `unreadable` saying why; the others are still reported.
    """
    cached = {job.path: _cached(job) for job in jobs}
    ids = [i for job in jobs if (i := _id_or_none(job)) and cached[job.path] is None]
    problems: list[str] = []
    accounting: dict[str, dict[str, str]] = {}
    queue: dict[str, dict[str, str]] | None = {}
    try:
        accounting = slurm.sacct(ids) if ids else {}
    except slurm.Unreachable as exc:
        problems.append(str(exc))
    try:
        queue = slurm.squeue(ids) if ids else {}
    except slurm.Unreachable as exc:
        problems.append(str(exc))
        queue = None
    view = _SlurmView(
        accounting,
        queue or {},
        accounting_ok=not problems,
        unreachable="; ".join(problems) if problems and queue is None else None,
        queue_ok=queue is not None,
    )
    records: list[Status] = []
    for job in jobs:
        try:
            records.append(_record(job, cached[job.path], view))
        except BumpsMpiError as exc:
            records.append(_unreadable(job, exc))
        except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as exc:  # not bumps-mpi's
            records.append(_unreadable(job, BumpsMpiError(f"unreadable files in {job.path}: {exc!r}")))
    if problems and queue is not None:  # slurmdbd down, controller up: say so (the CLI prints it once)
        for record in records:
            record["accounting"] = f"unavailable ({problems[0]}); states from the controller"
    return records


def _unreadable(job: JobDir, exc: BumpsMpiError) -> Status:
    return {
        "job_id": None,
        "job_dir": str(job.path),
        "name": None,
        "state": JobState.UNKNOWN.value,
        "slurm_state": None,
        "exit_code": None,
        "exit": None,
        "elapsed": None,
        "elapsed_s": None,
        "reason": None,
        "unreadable": str(exc),
    }


class _SlurmView:
    def __init__(
        self, accounting: dict, queue: dict, accounting_ok: bool, unreachable: str | None, queue_ok: bool
    ):
        self.accounting, self.queue = accounting, queue
        self.accounting_ok, self.unreachable, self.queue_ok = accounting_ok, unreachable, queue_ok


def _read(job: JobDir, name: str, warnings: list[str]) -> Any:
    """progress, error or result: what JobDir reads (shape-checked), or None with a warning saying why."""
    try:
        return getattr(job, name)
    except BumpsMpiError as exc:
        warnings.append(str(exc))
        return None


def _record(job: JobDir, cached: Status | None, view: _SlurmView) -> Status:
    spec = job.spec
    job_id = job_id_of(job)
    warnings: list[str] = []
    progress, error, result = (_read(job, name, warnings) for name in ("progress", "error", "result"))
    record: Status = {
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
        from . import local

        record.update(local.state(job, finished=result is not None or error is not None))
    else:
        record.update(_slurm_state(job, job_id, view, error, record["submitted"]))
    record["state"] = _out_of_memory(JobState(record["state"]), error).value
    state = JobState(record["state"])
    if state is JobState.RUNNING and (result is not None or error is not None):
        # The fit's files say it ended; its processes still run (drawing figures, writing the report,
        # exiting), or the model wrote them: Slurm and the process table decide when it has ended.
        record["finishing"] = True
        record["reason"] = "finishing: " + ("result written" if result is not None else "error written")
    if progress is not None:
        record["restarts"] = progress.get("restarts", 0)  # allocations after the first: requeues, resumes
        if record["state"] == JobState.PENDING.value and not progress.get("done"):
            record["state"] = JobState.REQUEUED.value  # it ran, stopped unfinished, and will continue
    if record["state"] == JobState.UNKNOWN.value and record["slurm_state"]:
        warnings.append(f"Slurm state {record['slurm_state']!r} is not one bumps-mpi knows")
    if record["state"] in (JobState.PENDING.value, JobState.REQUEUED.value):
        hint = pending_hint(record["reason"])
        if hint:
            record["never_starts"], record["hint"] = hint
    if JobState(record["state"]).terminal:
        record["exit"] = describe_exit(record["exit_code"], _script_status(job, job_id, record["exit_code"]))
        if record["state"] == JobState.FAILED.value and job_id and _never_ran(job, job_id):
            record["reason"] = (
                f"it never started: the compute node could not open the job's log in {job.control} "
                "(the job directory must be on a file system every compute node sees: submit again "
                "with --jobs-dir there)"
            )
    else:
        record["exit_code"] = record["exit"] = None  # a running job has no exit code yet
    full = _full(job) if record["state"] != JobState.COMPLETED.value else None
    if full:
        warnings.append(full)
    if warnings:
        record["warning"] = "; ".join(dict.fromkeys(warnings))
    _where_it_ran(record, job, job_id)
    _join_job_dir(record, progress, error, result)
    return record


def _slurm_state(
    job: JobDir, job_id: str, view: _SlurmView, error: dict | None, submitted: float | None
) -> Status:
    """State from the controller while it knows the job (it is ahead of accounting), else accounting."""
    row = view.accounting.get(job_id)
    live = view.queue.get(job_id)
    if live is not None:
        state = JobState.from_slurm(live["State"])
        found: Status = {
            "state": state.value,
            "slurm_state": live["State"],
            "reason": None if live["Reason"] in ("None", "") else live["Reason"],
            "elapsed": live["Elapsed"],
            "elapsed_s": elapsed_seconds(live["Elapsed"]),
        }
        if not state.terminal or row is None or not JobState.from_slurm(row["State"]).terminal:
            return found  # still going, or ended but accounting has not caught up: no exit code yet
    if row is not None and (row["State"] != "PENDING" or live is None):
        state = _out_of_memory(JobState.from_slurm(row["State"]), error)
        found = {
            "state": state.value,
            "slurm_state": row["State"],
            "exit_code": row["ExitCode"],
            "elapsed": row["Elapsed"],
            "elapsed_s": elapsed_seconds(row["Elapsed"]),
            # still queued or running for Slurm (a requeued job waits there); an ended job stays listed a
            # while (MinJobAge) in its final state: that is not in the queue. None: the queue could not say
            "in_queue": (live is not None and not JobState.from_slurm(live["State"]).terminal)
            if view.queue_ok
            else None,
        }
        if state.final:
            try:
                write_json(job.file(STATE_FILE), found)
            except OSError:  # a full or read-only file system: the answer stands, uncached
                pass
        return found
    if view.accounting_ok:
        age = time.time() - float(submitted or time.time())
        if age < UNKNOWN_AFTER_S:  # accounting lags a few seconds behind sbatch: pending, never done
            return {"state": JobState.PENDING.value, "reason": "not yet in accounting"}
        return {
            "state": JobState.UNKNOWN.value,
            "reason": f"Slurm knows no job {job_id} ({int(age // 60)} min after it was submitted): "
            "purged from accounting, or submitted to another cluster?",
        }
    return {"reason": f"Slurm not reachable ({view.unreachable or 'accounting failed'})"}


MAX_HOSTS_SHOWN = 64


def hosts_of(job: JobDir) -> dict[str, list[int]] | None:
    """Which host each rank ran on, by host (ranks.json, the job's last run), or None before it says.
    The model can write ranks.json: names are made plain and short, and at most MAX_HOSTS_SHOWN kept."""
    try:
        ranks = read_json(job.file(RANKS_FILE), kind=list)
    except BumpsMpiError:
        return None
    hosts: dict[str, list[int]] = {}
    for entry in ranks or []:
        if isinstance(entry, dict) and isinstance(entry.get("host"), str) and type(entry.get("rank")) is int:
            host = one_line(entry["host"])[:64]
            if host in hosts or len(hosts) < MAX_HOSTS_SHOWN:
                hosts.setdefault(host, []).append(entry["rank"])
    return {host: sorted(hosts[host]) for host in sorted(hosts)} or None


def _where_it_ran(record: Status, job: JobDir, job_id: str | None) -> None:
    """The hosts of its ranks, once it has run; for a requeued job, a node failure that requeued it."""
    hosts = hosts_of(job) if record["state"] != JobState.PENDING.value else None
    if hosts:
        record["hosts"] = hosts
    if record["state"] == JobState.REQUEUED.value and job_id:
        failure = _node_failure(job_id, hosts or {})
        if failure:
            record["node_failure"] = failure


def _node_failure(job_id: str, hosts: dict[str, list[int]]) -> str | None:
    """What a node failure did to a requeued job: which node, under which ranks (Slurm's NODE_FAIL)."""
    try:
        nodes = slurm.failed_nodes(job_id)
    except slurm.Unreachable:
        return None
    if not nodes:
        return None
    under = [f"{node} (ranks {rank_ranges(hosts[node])})" if node in hosts else node for node in nodes]
    return (
        f"node {', '.join(under)} failed (Slurm: NODE_FAIL): Slurm requeued the job, which continues from "
        "its last checkpoint when it starts again"
    )


def _never_ran(job: JobDir, job_id: str) -> bool:
    """A Slurm job whose batch script never ran: no log (slurmd opens it before the script starts) and
    no run recorded. Where the nodes do not see the job directory (a login node's /tmp), this is all
    there is to see."""
    return not job.file(slurm_log(job_id)).exists() and not job.file(RUNS_FILE).exists()


def _out_of_memory(state: JobState, error: dict | None) -> JobState:
    """OUT_OF_MEMORY when the cgroup killed a rank's step: Slurm marks only the step, the job FAILED."""
    if state is JobState.FAILED and (error or {}).get("killed_by") == JobState.OUT_OF_MEMORY.value:
        return JobState.OUT_OF_MEMORY
    return state


def _script_status(job: JobDir, job_id: str | None, exit_code: str | None) -> int | None:
    """The run's real exit status: the batch script's own record, or a local run's mpiexec status."""
    try:
        if job_id is None:  # mpiexec's own status, as local.state wrote it: "N:0", or "0:S" for a signal
            code, _, sig = (exit_code or "").partition(":")
            return -int(sig) if sig.isdigit() and int(sig) else int(code)
        return int(read_regular(job.file(EXIT_STATUS_FILE)).decode().strip())
    except (OSError, ValueError):
        return None


def _full(job: JobDir) -> str | None:
    import shutil

    try:
        free = shutil.disk_usage(job.path).free
    except OSError:
        return None
    if free >= FULL_BELOW_BYTES:
        return None
    return f"no space left on the file system of {job.path} ({free} bytes free): the fit cannot save there"


def _join_job_dir(record: Status, progress: dict | None, error: dict | None, result: Result | None) -> None:
    """The fit's own view: progress while it runs, the error or the chi-square at the end."""
    if progress is not None:
        steps = max(int(progress.get("steps") or 1), 1)
        record["progress"] = ProgressView(
            step=progress.get("step"),
            steps=steps,
            percent=round(100.0 * (progress.get("step") or 0) / steps, 1),
            chisq=progress.get("chisq"),
            eta_s=progress.get("eta_s"),
            failed_evaluations=progress.get("failed_evaluations"),
            done=progress.get("done"),
        )
    if error is not None:
        record["error"] = ErrorView(
            message=error.get("message"),
            rank=error.get("rank"),
            host=error.get("host"),
            point=error.get("point"),
            phase=error.get("phase"),
            traceback=error.get("traceback"),
        )
    if result is not None:
        record["chisq"] = result.get("chisq")

"""The Python API behind bumps-submit's status, results, watch, checkpoint and cancel.

The click layer only parses and prints; a notebook can call these directly.
Submitting lives in bumps_mpi.front.submission. Importing this module stays cheap:
no numpy, bumps or mpi4py, nothing only `submit` needs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..cluster import jobstate, slurm
from ..cluster.states import JobState
from ..errors import BumpsMpiError, JobFailed, JobNotFound, UsageError
from ..jobdir import (
    CANCEL_FILE,
    CHECKPOINT_FILE,
    CHECKPOINT_REQUEST_FILE,
    LOCAL_LOG_FILE,
    REQUEST_FILE,
    RESUMABLE_FITTERS,
    JobDir,
    control_dir,
    is_job_dir,
    slurm_log,
    write_atomic,
)
from ..records import Status
from . import registry


def resolve(ref: str) -> JobDir:
    """A job id (from the registry) or a job directory; its job.json must be readable."""
    path = Path(ref)
    if is_job_dir(path):
        job = JobDir(path)
    else:
        entry = registry.find(ref)
        if entry is not None:
            job = JobDir(entry["job_dir"])
        elif path.is_dir():
            raise JobNotFound(
                f"{ref} is a directory but not a job directory of this bumps-mpi (no {REQUEST_FILE} in "
                f"{control_dir(path.resolve())})"
            )
        elif path.exists():
            raise JobNotFound(f"{ref} is a file: give a job directory or a job id")
        else:
            raise JobNotFound(
                f"no job {ref!r}: give a job directory, or a job id that bumps-submit submitted"
            )
    job.spec  # noqa: B018 - read now, so that a broken job.json is one clear error here
    return job


def status(
    refs: list[str] | None = None, limit: int = 20, state: str | None = None, since: float | None = None
) -> list[Status]:
    """One record per job (see bumps_mpi.cluster.jobstate); no refs: my jobs, newest first, filtered.

    A job whose directory cannot be read is still listed, with `unreadable`
    saying why (a directory deleted by hand is left out of the listing).
    """
    if refs:
        return jobstate.status([resolve(r) for r in refs])
    entries = [
        e
        for e in registry.entries()
        if not e.get("campaign") and (since is None or _number(e.get("submitted")) >= since)
    ]  # a campaign is listed by its fits
    firsts: dict[str, dict[str, Any]] = {}  # a resumed job has one entry per submission: list it once
    for entry in entries:
        firsts.setdefault(entry["job_dir"], entry)
    unique = list(firsts.values())
    present = [e for e in unique if Path(e["job_dir"]).is_dir()]
    jobs = [JobDir(e["job_dir"]) for e in present]
    ids = {str(JobDir(e["job_dir"]).path): e.get("job_id") for e in present}

    def look(chunk: list[JobDir]) -> list[Status]:
        found = jobstate.status(chunk)
        for record in found:  # a broken job.json: the registry still knows its id
            if record["job_id"] is None and record.get("unreadable"):
                record["job_id"] = ids.get(record["job_dir"])
        return found

    if state is None:
        return look(jobs[:limit]) if limit else look(jobs)
    wanted = state.upper()
    found: list[Status] = []
    for start in range(0, len(jobs), 50):  # a state filter may need to look further back than limit
        found += [r for r in look(jobs[start : start + 50]) if r["state"] == wanted]
        if limit and len(found) >= limit:
            break
    return found[:limit] if limit else found


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def results(ref: str) -> dict[str, Any]:
    """The fit's result.json; an error that says why there is none and what to do."""
    job = resolve(ref)
    result = job.result
    if result is not None:
        from ..results.prediction import compared

        found = {"job_id": jobstate.job_id_of(job), "job_dir": str(job.path), **result, **outputs(job)}
        return {**found, "prediction": compared(job.spec, result)}  # the estimate against the run
    error = job.error
    if error is not None:
        raise JobFailed(error)
    record = jobstate.status([job])[0]
    state = record["state"]
    if state in (JobState.PENDING.value, JobState.REQUEUED.value):
        raise JobNotFound(f"job {ref} has no results yet: it is {state}")
    if state == JobState.RUNNING.value:
        done = progress["percent"] if (progress := record.get("progress")) else None
        raise JobNotFound(
            f"job {ref} has no results yet: it is RUNNING" + (f" ({done:.0f}%)" if done else "")
        )
    resumable = job.file(CHECKPOINT_FILE).exists() and job.spec.get("fit") in RESUMABLE_FITTERS
    hint = f"; continue it with 'bumps-submit resume {ref}'" if resumable else ""
    if state == JobState.COMPLETED.value:
        raise JobNotFound(f"job {ref} is COMPLETED but its result.json is missing from {job.path} (deleted?)")
    log = job.file(slurm_log(record["job_id"]) if record["job_id"] else LOCAL_LOG_FILE)
    why = f" ({record['reason']})" if record.get("reason") else ""
    raise JobNotFound(f"job {ref} ended {state}{why} without results; its log: {log}{hint}")


def request_checkpoint(ref: str) -> dict[str, Any]:
    """Ask a running DREAM or DE fit to save a checkpoint at its next boundary; it goes on running."""
    job = resolve(ref)
    spec = job.spec
    if spec.get("fit") not in RESUMABLE_FITTERS:
        only = " and ".join(RESUMABLE_FITTERS)
        raise UsageError(f"fitter {spec.get('fit')!r} keeps no checkpoint (only {only} do)")
    state = jobstate.status([job])[0]["state"]
    if JobState(state).terminal:
        raise UsageError(f"{ref} has ended ({state}): there is nothing to checkpoint")
    _write_request(job, CHECKPOINT_REQUEST_FILE)
    return {"job_id": jobstate.job_id_of(job), "job_dir": str(job.path), "requested": True}


def _write_request(job: JobDir, name: str) -> None:
    try:
        write_atomic(job.file(name), f"{time.time()}\n")  # a link the model left there is replaced
    except OSError as exc:
        raise BumpsMpiError(f"cannot write {job.file(name)}: {exc.strerror or exc}") from None


def cancel(ref: str) -> dict[str, Any]:
    """Cancel a Slurm job, or stop a live local run (rank 0 checkpoints first where the fitter can)."""
    job = resolve(ref)
    job_id = jobstate.job_id_of(job)
    if job_id is None:
        from ..cluster import local

        return local.cancel(job)
    state = jobstate.status([job])[0]["state"]
    if JobState(state).terminal and state not in (JobState.PREEMPTED.value, JobState.NODE_FAIL.value):
        raise UsageError(f"job {job_id} has already ended ({state}): there is nothing to cancel")
    _write_request(job, CANCEL_FILE)  # a job at its time limit must not requeue now
    try:
        slurm.scancel(job_id)
    except BaseException:
        job.file(CANCEL_FILE).unlink(missing_ok=True)  # not cancelled: it may still requeue as usual
        raise
    return {"job_id": job_id, "job_dir": str(job.path), "cancelled": True}


def plot(ref: str, out: str | None = None, fmt: str = "png") -> dict[str, Any]:
    """Draw the fit's figures (Bumps' own plots) into *out*, default the job's figures/; the manifest.

    A running, stopped or failed fit is drawn from its last checkpoint (or its
    starting point), and the manifest's source says so.
    """
    from ..config import load_settings
    from ..results.figures import plot as draw

    job = resolve(ref)
    record = jobstate.status([job])[0]
    timeout = load_settings()["plot_timeout"]
    manifest = draw(job, None if out is None else Path(out), fmt, record["state"], timeout)
    return {"job_id": record["job_id"], "job_dir": str(job.path), **manifest}


def report(ref: str) -> dict[str, Any]:
    """Write report.html in the job directory, drawing its figures first unless they are final; its path."""
    from ..results import figures
    from ..results import report as page

    job = resolve(ref)
    record = jobstate.status([job])[0]
    manifest = figures.manifest_of(job)
    if manifest is None or not figures.is_final(job, manifest):
        manifest = plot(ref)
    path = page.write(job, record)
    return {
        "job_id": record["job_id"],
        "job_dir": str(job.path),
        "report": str(path),
        "source": manifest["source"],
    }


def viewer(job: JobDir, port: int = 0) -> dict[str, Any]:
    """Start Bumps' viewer on *job*'s session file (bumps_mpi.sandbox.viewer): {"url", "process"}."""
    import socket
    import subprocess

    from ..jobdir import SESSION_FILE
    from ..pythonenv import safe_environment
    from ..sandbox import viewer as bumps_viewer

    if not job.file(SESSION_FILE).is_file() or job.file(SESSION_FILE).is_symlink():
        raise UsageError(
            f"{job.path} has no Bumps session ({SESSION_FILE}): a fit writes one when it completes "
            "(DREAM and the other fitters, from this version on); `bumps-submit report` shows the others"
        )
    if (job.spec.get("sandbox") or {}).get("level") != "off":
        from ..sandbox import landlock
        from ..sandbox.policy import Policy

        if landlock.abi_version() < Policy().needed_abi():
            raise UsageError(
                f"open loads the fit's session file, which its model could write, so the viewer runs "
                f"confined, and this machine's kernel offers Landlock ABI {landlock.abi_version()} (the "
                f"sandbox needs {Policy().needed_abi()}): open it where the sandbox works"
            )
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: give a TCP port, 1 to 65535 (0: a free one)")
    if port == 0:
        with socket.socket() as probe:  # a free port now; the viewer binds it a moment later
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    process = subprocess.Popen(bumps_viewer.command(job, port), cwd=job.control, env=safe_environment())
    return {"url": f"http://127.0.0.1:{port}/", "process": process, "port": port}


def outputs(job: JobDir) -> dict[str, Any]:
    """Where a job's figures and report are (paths that exist), for results and status."""
    from ..jobdir import FIGURES_DIR, REPORT_FILE
    from ..results.figures import manifest_of

    manifest = manifest_of(job) or {}
    files = [job.file(FIGURES_DIR) / f["file"] for f in manifest.get("figures", [])]  # plain names
    report_path = job.file(REPORT_FILE)
    return {
        "figures": [str(f) for f in files if f.is_file() and not f.is_symlink()],
        "figures_source": manifest.get("source", {}).get("label"),
        "report": str(report_path) if report_path.exists() else None,
    }

"""`resume`: continue a stopped fit from its checkpoint, here or as a new Slurm job (a campaign's fit as
a new array of its one task), one resume of a job at a time. Apart from submission, which campaigns build
on, since a campaign's fit resumes through its campaign."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from ..cluster import jobstate, local, slurm
from ..config import packaged_defaults
from ..errors import UsageError
from ..jobdir import RESUMABLE_FITTERS, RESUME_LOCK, SCRIPT_FILE, JobDir, exclusive
from ..records import Status
from . import campaign, submission


def resume(
    job: JobDir, ranks: int | None = None, echo: Any = None, warn: Any = None, launch: Any = None
) -> Status:
    """Continue a stopped fit from its checkpoint: here if it ran here, else as a new Slurm job.

    Every check comes first (the checkpoint loads, the job is not running);
    nothing is lost: the old error.json and cached state are kept under new names. One resume of a job
    at a time: a second one at once is refused, never a second run in the same directory.
    """
    import contextlib

    busy = f"{job.path} is being resumed by another command right now; see 'bumps-submit status {job.path}'"
    with contextlib.ExitStack() as held:
        held.enter_context(exclusive(job.file(RESUME_LOCK), busy))
        if isinstance(job.spec.get("campaign"), dict):  # and its campaign's: resume --failed may choose it
            held.enter_context(campaign.locked(Path(job.spec["campaign"]["dir"])))
        return _resume(JobDir(job.path), ranks, echo, warn, launch)  # read again, under the locks


def _resume(job: JobDir, ranks: int | None, echo: Any, warn: Any, launch: Any) -> Status:
    spec = job.spec
    if job.result is not None:
        raise UsageError(f"{job.path} already completed: see 'bumps-submit results {job.path}'")
    if spec.get("fit") not in RESUMABLE_FITTERS:
        only = ", ".join(RESUMABLE_FITTERS)
        raise UsageError(f"fitter {spec.get('fit')!r} cannot resume (only {only} can); submit it again")
    record = jobstate.status([job])[0]
    if record["state"] in ("PENDING", "RUNNING", "REQUEUED"):
        raise UsageError(f"job {record['job_id'] or job.path} is {record['state']}: it continues by itself")
    if record["state"] == "UNKNOWN":
        why = f" ({record['reason']})" if record.get("reason") else ""
        raise UsageError(
            f"job {record['job_id'] or job.path} is UNKNOWN{why}: resume only a job known to have stopped, "
            "so that it never runs twice"
        )
    is_local = "slurm" not in spec
    if is_local:
        ranks = ranks or int(spec.get("local", {}).get("ranks") or packaged_defaults()["local_ranks"])
        local.check_ranks(ranks, warn)
        local.find_mpiexec()
    else:
        slurm.require("sbatch")
    submission.check_checkpoint(job)
    if isinstance(spec.get("campaign"), dict):  # one fit of a campaign: a new array of this one task
        return cast(Status, campaign.resubmit(Path(spec["campaign"]["dir"]), [job])[0])
    submission.set_aside(job)
    if is_local:
        assert ranks is not None
        if launch is not None:  # someone else supervises the run (the job controller)
            launch(job, ranks)
            return {"job_id": None, "job_dir": str(job.path), "resumed": True}
        local.run(job, ranks, echo)
        return jobstate.status([job])[0]
    job_id = slurm.sbatch(job.file(SCRIPT_FILE), job.path)
    earlier = [*spec["slurm"].get("earlier_job_ids", []), spec["slurm"]["job_id"]]
    submission.record_submission(
        job, job_id, {"job_id": job_id, "submitted": time.time(), "earlier_job_ids": earlier}
    )
    return {"job_id": job_id, "job_dir": str(job.path), "resumed": True}

"""How the job controller runs fits: the same submission layer as the command line, sandbox required.

Every fit has its own directory under the data directory, `fits/<id>/`: `model/`
holds what was uploaded, `job/` is the job directory (the usual contract). A
fit goes to Slurm (sbatch, with the site profile and the user's account and
limits) or runs here under mpiexec with a supervisor of its own, started in its
own session so that the service can stop and start again while fits run.

After a restart `reconcile` looks at every fit that was being submitted: one
whose job directory records a Slurm id (or that squeue finds by its directory)
was submitted; one whose local run started was submitted; any other was
interrupted, and submitting it again with the same Idempotency-Key resumes from
the saved upload. A local run whose processes are gone while it can resume from
a checkpoint is started again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..cluster import jobstate, local, slurm
from ..errors import BumpsMpiError, UsageError
from ..front import submission
from ..jobdir import CHECKPOINT_FILE, JobDir
from .settings import ServiceConfig
from .store import Store

NAME = re.compile(r"[^A-Za-z0-9._+-]")


def fit_dir(config: ServiceConfig, fit_id: str) -> Path:
    return config.data_dir / "fits" / fit_id


def job_of(config: ServiceConfig, fit: dict) -> JobDir | None:
    path = fit.get("job_dir")
    return JobDir(path) if path and Path(path).is_dir() else None


class Runner:
    def __init__(self, config: ServiceConfig, store: Store):
        self.config, self.store = config, store

    def job_request(self, fit: dict) -> submission.JobRequest:
        asked = json.loads(fit["request"])
        limits = self.config.limits_for(fit["owner"])
        model = fit_dir(self.config, fit["id"]) / "model" / asked["model"]
        resources: dict[str, Any] = {"sandbox": "require"}  # strangers' code: confined, or not at all
        if self.config.backend == "slurm":
            resources.update(
                ntasks=asked.get("ntasks") or min(2, limits.max_ranks),
                time=asked.get("time") or limits.max_time,
            )
            if limits.account:
                resources["account"] = limits.account
        name = NAME.sub("_", Path(asked["model"]).stem)[:60].lstrip("._+-") or "fit"
        return submission.JobRequest(
            model=model,
            model_args=list(asked.get("args", [])),
            fit=asked.get("fit", "dream"),
            fit_options=dict(asked.get("options", {})),
            seed=asked.get("seed"),
            name=name,
            job_dir=fit_dir(self.config, fit["id"]) / "job",
            profile=self.config.profile,
            resources=resources,
        )

    def submit(self, fit: dict) -> dict:
        """Check and submit (or start) a recorded fit; its row says how it went. Raises on a rejection."""
        request = self.job_request(fit)
        asked = json.loads(fit["request"])
        try:
            if self.config.backend == "slurm":
                done = submission.submit(request)
                self.store.update_fit(
                    fit["id"],
                    phase="submitted",
                    job_dir=done["job_dir"],
                    job_id=done["job_id"],
                    state="PENDING",
                )
            else:
                ranks = int(asked.get("ntasks") or self.config.local_ranks)
                job, ranks = submission.create_local(request, ranks)
                self.store.update_fit(fit["id"], phase="submitted", job_dir=str(job.path), state="RUNNING")
                launch(job, ranks)
        except BumpsMpiError as exc:
            if isinstance(exc, slurm.SubmitUncertain):
                self.store.update_fit(fit["id"], phase="interrupted", message=str(exc))
                raise
            self.store.update_fit(fit["id"], phase="rejected", message=str(exc))
            raise
        return self.store.fit(fit["id"]) or fit

    def cancel(self, fit: dict) -> None:
        job = job_of(self.config, fit)
        if job is None:
            raise UsageError("the fit has not started: there is nothing to cancel")
        if fit.get("job_id"):
            from ..front import api

            api.cancel(str(job.path))
        else:
            local.cancel(job)

    def delete(self, fit: dict) -> None:
        shutil.rmtree(fit_dir(self.config, fit["id"]), ignore_errors=True)
        self.store.delete_fit(fit["id"])

    def reconcile(self) -> list[str]:
        """After a start: settle every fit a stop may have caught half-way; what was done, in words."""
        said = []
        for fit in self.store.active():
            job_dir = fit_dir(self.config, fit["id"]) / "job"
            job = JobDir(job_dir) if (job_dir / "job.json").exists() else None
            if fit["phase"] == "submitting":
                said.append(f"{fit['id']}: " + self._settle(fit, job))
            elif fit["phase"] == "submitted" and job is not None and not fit.get("job_id"):
                said.extend(self._restart_local(fit, job))
        return said

    def _settle(self, fit: dict, job: JobDir | None) -> str:
        if job is None:
            self.store.update_fit(
                fit["id"], phase="interrupted", message="the service stopped before it started"
            )
            return "interrupted before its job directory was made"
        job_id = job.spec.get("slurm", {}).get("job_id")
        if job_id is None and self.config.backend == "slurm":
            try:
                job_id = slurm.find_by_workdir(job.path)
            except slurm.Unreachable:
                job_id = None
            if job_id:
                job.update_spec(slurm={"job_id": job_id, "submitted": fit["created"], "recovered": True})
        if job_id:
            self.store.update_fit(fit["id"], phase="submitted", job_dir=str(job.path), job_id=str(job_id))
            return f"was submitted as job {job_id}"
        if job.local_state is not None:
            self.store.update_fit(fit["id"], phase="submitted", job_dir=str(job.path))
            return "its local run had started"
        shutil.rmtree(job.path, ignore_errors=True)  # made, never started: it is submitted again on retry
        self.store.update_fit(fit["id"], phase="interrupted", message="the service stopped before it started")
        return "interrupted before it started"

    def _restart_local(self, fit: dict, job: JobDir) -> list[str]:
        record = jobstate.status([job])[0]
        stale = (record.get("reason") or "").startswith("stale")
        if not stale or not job.file(CHECKPOINT_FILE).exists():
            return []
        submission.resume(job, launch=launch)
        return [f"{fit['id']}: its local run was gone; started again from its checkpoint"]

    def resubmit(self, fit: dict) -> dict:
        """Submit again a fit a stop interrupted (the same Idempotency-Key came back)."""
        self.store.update_fit(fit["id"], phase="submitting", message=None)
        return self.submit(self.store.fit(fit["id"]) or fit)


def launch(job: JobDir, ranks: int) -> None:
    """Start a local run's supervisor in its own session: it outlives a restart of the service."""
    with open(os.devnull, "wb") as null:
        subprocess.Popen(
            [sys.executable, "-m", "bumps_mpi.service.supervise", str(job.path), str(ranks)],
            stdin=subprocess.DEVNULL,
            stdout=null,
            stderr=null,
            start_new_session=True,
            cwd=job.path,
        )

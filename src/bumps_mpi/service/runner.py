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
import signal
import time
from pathlib import Path
from typing import Any

from ..cluster import jobstate, processes, slurm
from ..errors import BumpsMpiError, SubmitError, UsageError
from ..front import resume, submission
from ..jobdir import CANCEL_FILE, CHECKPOINT_FILE, JobDir, is_job_dir, write_atomic
from .caches import cache_key, user_cache
from .dispatch import Queue
from .settings import ServiceConfig
from .store import Store
from .supervise import RecordedJob, launch

NAME = re.compile(r"[^A-Za-z0-9._+-]")


def fit_dir(config: ServiceConfig, fit_id: str) -> Path:
    return config.data_dir / "fits" / fit_id


def job_of(config: ServiceConfig, fit: dict) -> JobDir | None:
    path = fit.get("job_dir")
    return RecordedJob(path, fit) if path and Path(path).is_dir() else None


class Runner:
    def __init__(self, config: ServiceConfig, store: Store, queue: Queue):
        self.config, self.store, self.queue = config, store, queue

    def job_request(self, fit: dict) -> submission.JobRequest:
        asked = json.loads(fit["request"])
        limits = self.config.limits_for(fit["owner"])
        model = fit_dir(self.config, fit["id"]) / "model" / asked["model"]
        resources: dict[str, Any] = {  # strangers' code: confined, or not at all
            "sandbox": "require",
            "sandbox_cache": str(user_cache(self.config.data_dir, cache_key(fit["owner"]))),
        }
        resources["auto_max_ntasks"] = limits.max_ranks  # the estimate's table: what the user may ask for
        if self.config.backend == "slurm":
            resources.update(
                ntasks=asked.get("ntasks") or min(2, limits.max_ranks),
                time=asked.get("time") or limits.max_time,
            )
            if limits.account:
                resources["account"] = limits.account
        else:  # a local run ends at its time limit too (the user's, else the most this service allows)
            resources["time"] = asked.get("time") or limits.max_time
            resources["ntasks"] = int(asked.get("ntasks") or self.config.local_ranks)  # the estimate's row
            resources["max_requeues"] = 0  # a local run is never requeued: its time limit must hold it
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
            nice=self.config.nice,
            refuse_too_long=(
                f"ask for fewer samples or steps, more ranks (at most {limits.max_ranks} for you) or a "
                f"longer time limit (at most {limits.max_time} for you)"
            ),
        )

    def estimate(self, fit: dict) -> dict[str, Any]:
        """The estimate of a fit not yet submitted (its upload saved as *fit*'s), and why it would be
        refused: its estimated time past its time limit (None when it fits)."""
        from ..front import sizing

        request = self.job_request(fit)
        hint, request.refuse_too_long = request.refuse_too_long, None
        prepared = submission.prepare(request, estimate=True)
        found = prepared.estimate
        assert found is not None  # asked for
        refused = sizing.fits_in_time(prepared.settings, found, factor=1.0, hint=hint)
        limits = self.config.limits_for(fit["owner"])
        return {
            "estimate": found,
            "refused": refused,
            "time_limit": prepared.settings.get("time"),
            "limits": {"max_ranks": limits.max_ranks, "max_time": limits.max_time},
        }

    def submit(self, fit: dict) -> dict:
        """Check and submit (or start) a recorded fit; its row says how it went. Raises on a rejection."""
        asked = json.loads(fit["request"])
        if self.config.backend == "dispatch":  # a worker checks and runs it (its model, its cluster)
            self.queue.enqueue(fit["id"], asked.get("wants") or {})
            return self.store.fit(fit["id"]) or fit
        request = self.job_request(fit)
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
                try:  # started, then recorded with who runs it: never a moment without its supervisor
                    self._launched(
                        fit["id"], job, ranks, phase="submitted", job_dir=str(job.path), state="PENDING"
                    )
                except OSError as exc:
                    raise SubmitError(f"the fit could not be started here: {exc}") from None
        except BumpsMpiError as exc:
            if isinstance(exc, slurm.SubmitUncertain):
                self.store.update_fit(fit["id"], phase="interrupted", message=str(exc))
                raise
            self.store.update_fit(fit["id"], phase="rejected", message=str(exc))
            raise
        return self.store.fit(fit["id"]) or fit

    def _launched(self, fit_id: str, job: JobDir, ranks: int, **fields: Any) -> None:
        """Start a local run's supervisor and keep who it is here (with *fields*, in the same update),
        not in the job directory."""
        supervisor = launch(job, ranks, self.config.nice)
        self.store.update_fit(fit_id, supervisor=json.dumps(supervisor), **fields)

    def cancel(self, fit: dict) -> None:
        """Cancel by what the service recorded (its Slurm id, its supervisor), never by the job's files:
        the model writes those, and could name someone else's job or process in them."""
        if fit["phase"] in ("queued", "leased"):
            self.queue.cancel(fit)
            return
        job = job_of(self.config, fit)
        if job is None:
            raise UsageError("the fit has not started: there is nothing to cancel")
        if fit.get("job_id"):
            write_atomic(job.file(CANCEL_FILE), f"{time.time()}\n")  # no requeue after this
            slurm.scancel(str(fit["job_id"]))
            return
        supervisor = json.loads(fit.get("supervisor") or "null")
        if not processes.alive(supervisor):
            raise UsageError("the fit's run has ended: there is nothing to cancel")
        write_atomic(job.file(CANCEL_FILE), f"{time.time()}\n")
        os.kill(int(supervisor["pid"]), signal.SIGTERM)  # rank 0 checkpoints and stops; the rest end

    def resume(self, fit: dict) -> None:
        """Continue a fit that stopped (its time limit, a cancel) from its checkpoint: on Slurm as a new
        job, here under a new supervisor. The same checks as `bumps-submit resume` (a clear refusal)."""
        if fit["phase"] != "submitted" or not fit.get("ended"):
            raise UsageError("only a fit that has stopped can be resumed")
        job = job_of(self.config, fit)
        if job is None:
            raise UsageError("the fit never started: submit it again")
        if fit.get("job_id"):
            done = resume.resume(job)
            self.store.update_fit(fit["id"], job_id=str(done["job_id"]), state="PENDING", ended=None)
            return
        resume.resume(job, launch=lambda job, ranks: self._launched(fit["id"], job, ranks))
        self.store.update_fit(fit["id"], state="PENDING", ended=None)

    def delete(self, fit: dict) -> None:
        shutil.rmtree(fit_dir(self.config, fit["id"]), ignore_errors=True)
        self.store.delete_fit(fit["id"])

    def reconcile(self) -> list[str]:
        """After a start: settle every fit a stop may have caught half-way; what was done, in words."""
        said = []
        for fit in self.store.active():
            job_dir = fit_dir(self.config, fit["id"]) / "job"
            job = JobDir(job_dir) if is_job_dir(job_dir) else None
            try:
                if fit["phase"] == "submitting":
                    said.append(f"{fit['id']}: " + self._settle(fit, job))
                elif fit["phase"] == "submitted" and job is not None and not fit.get("job_id"):
                    said.extend(self._restart_local(fit, job))
            except Exception as exc:  # one fit's broken files must not keep the service from starting
                said.append(f"{fit['id']}: not settled ({type(exc).__name__}: {exc})")
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
        job.remove()  # made, never started: it is submitted again on retry
        self.store.update_fit(fit["id"], phase="interrupted", message="the service stopped before it started")
        return "interrupted before it started"

    def _restart_local(self, fit: dict, job: JobDir) -> list[str]:
        record = jobstate.status([job])[0]
        stale = (record.get("reason") or "").startswith("stale")
        if not stale or not job.file(CHECKPOINT_FILE).exists():
            return []
        resume.resume(job, launch=lambda job, ranks: self._launched(fit["id"], job, ranks))
        return [f"{fit['id']}: its local run was gone; started again from its checkpoint"]

    def resubmit(self, fit: dict) -> dict:
        """Submit again a fit a stop interrupted (the same Idempotency-Key came back; already taken)."""
        self.store.update_fit(fit["id"], message=None)
        return self.submit(self.store.fit(fit["id"]) or fit)

"""The Python API a notebook drives: submit a fit or a campaign, follow it, read its results.

In the spirit of submitit: `submit(...)` returns a Job, `submit_campaign(...)` a
Campaign; both reattach after a restart (`from_id`, `from_dir`) because all
they hold is a directory. The CLI's campaign commands go through these
classes. Errors are bumps_mpi.errors' types. Importing this module stays as
light as the CLI (no numpy, bumps or mpi4py).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cluster import jobstate
from ..errors import BumpsMpiError, JobNotFound, UsageError
from ..jobdir import JobDir
from ..records import ProgressView, Status
from . import api
from . import campaign as campaigns
from . import campaign_table as tables


class WaitTimeout(BumpsMpiError, TimeoutError):
    """wait(timeout=...) ran out before the job (or campaign) ended; it goes on."""


@dataclass(frozen=True)
class Parameter:
    name: str
    best: float
    mean: float
    std: float


@dataclass(frozen=True)
class Results:
    """A completed fit: its parameters, chi-square, and where its figures and report are."""

    job_id: str | None
    job_dir: Path
    fitter: str
    chisq: float
    chisq_str: str
    parameters: list[Parameter]
    figures: list[Path]
    report: Path | None

    def __getitem__(self, name: str) -> Parameter:
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        raise KeyError(name)


def _wait(look: Any, ended: Any, change: Any, timeout: float | None, poll: float, what: str) -> Any:
    """Poll *look* until *ended* says so, backing off to 30 s while *change* (what a user would call
    progress) stays the same: a shared cluster's accounting is not asked every 2 s for hours."""
    deadline = None if timeout is None else time.monotonic() + timeout
    wait, last = poll, None
    while True:
        found = look()
        if ended(found):
            return found
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(f"{what} has not ended after {timeout:g} s; it goes on")
        key = change(found)
        wait = poll if key != last else min(wait * 1.5, 30.0)
        last = key
        pause = wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic()))
        time.sleep(pause)


class Job:
    """One fit, by its job directory (the record of everything about it)."""

    def __init__(self, job_dir: str | Path):
        self.job_dir = Path(job_dir).absolute()

    @classmethod
    def from_id(cls, job_id: str | int) -> Job:
        """The job bumps-submit submitted with this Slurm id (your list of jobs knows it)."""
        return cls(api.resolve(str(job_id)).path)

    @classmethod
    def from_dir(cls, job_dir: str | Path) -> Job:
        return cls(api.resolve(str(job_dir)).path)

    def __repr__(self) -> str:
        return f"Job({self.job_id or 'local'}, {str(self.job_dir)!r})"

    @property
    def job_id(self) -> str | None:
        """The Slurm id (the newest, after a resume); None for a local run."""
        return jobstate.job_id_of(JobDir(self.job_dir))

    def status(self) -> Status:
        """The full status record, as `bumps-submit status --json` prints it."""
        record = jobstate.status([JobDir(self.job_dir)])[0]
        if record.get("unreadable"):
            raise JobNotFound(record["unreadable"])
        return record

    @property
    def state(self) -> str:
        """PENDING, RUNNING, REQUEUED, COMPLETED, FAILED, TIMEOUT, CANCELLED, ... (bumps_mpi's states)."""
        return str(self.status()["state"])

    @property
    def progress(self) -> ProgressView | None:
        """step, steps, percent, chisq, eta_s while the fit reports them; None before."""
        return self.status().get("progress")

    def done(self) -> bool:
        return jobstate.ended_for_good(self.status())

    def wait(self, timeout: float | None = None, poll: float = 2.0) -> str:
        """Until the job has ended (its files written, its processes gone); its final state.
        WaitTimeout after *timeout* seconds."""

        def change(record: Status) -> Any:
            progress = record.get("progress")
            return record["state"], progress["step"] if progress else None

        what = f"job {self.job_id or self.job_dir}"
        record = _wait(self.status, jobstate.ended_for_good, change, timeout, poll, what)
        return str(record["state"])

    def results(self) -> Results:
        """The completed fit's results; JobFailed (with its traceback) or JobNotFound saying why not."""
        return _results(api.results(str(self.job_dir)))

    def cancel(self) -> None:
        api.cancel(str(self.job_dir))


def _results(found: dict[str, Any]) -> Results:
    return Results(
        job_id=found.get("job_id"),
        job_dir=Path(found["job_dir"]),
        fitter=found["fitter"],
        chisq=found["chisq"],
        chisq_str=found["chisq_str"],
        parameters=[Parameter(p["name"], p["best"], p["mean"], p["std"]) for p in found["parameters"]],
        figures=[Path(f) for f in found.get("figures") or []],
        report=Path(found["report"]) if found.get("report") else None,
    )


class Campaign:
    """Many fits submitted as one Slurm job array, by its campaign directory."""

    def __init__(self, campaign_dir: str | Path):
        self.campaign_dir = Path(campaign_dir).absolute()
        campaigns.load(self.campaign_dir)  # a clear error now, not at the first look

    @classmethod
    def from_id(cls, campaign_id: str | int) -> Campaign:
        """The campaign whose job array has this Slurm id (the first array, or one of a resume)."""
        found = campaigns.find(str(campaign_id))
        if found is None:
            raise JobNotFound(f"no campaign {campaign_id!r}: give its directory or its array's job id")
        return cls(found)

    @classmethod
    def from_dir(cls, campaign_dir: str | Path) -> Campaign:
        return cls(campaign_dir)

    def __repr__(self) -> str:
        return f"Campaign({str(self.campaign_dir)!r}, {len(self.jobs)} fits)"

    @property
    def campaign_id(self) -> str | None:
        """The id of its first job array."""
        arrays = campaigns.load(self.campaign_dir)["arrays"]
        return arrays[0]["job_id"] if arrays else None

    @property
    def jobs(self) -> list[Job]:
        return [Job(job.path) for job in campaigns.jobs(self.campaign_dir)]

    def status(self) -> dict[str, Any]:
        """counts by state, percent, ended, attention (the fits that need it), records (every fit)."""
        return campaigns.status(self.campaign_dir)

    @property
    def state(self) -> dict[str, int]:
        """How many fits are in each state."""
        return dict(self.status()["counts"])

    @property
    def progress(self) -> float:
        """Overall progress in percent (a completed fit counts 100)."""
        return float(self.status()["percent"])

    def wait(self, timeout: float | None = None, poll: float = 5.0) -> dict[str, int]:
        """Until every fit has ended; the counts by state. WaitTimeout after *timeout* seconds."""

        def change(summary: dict[str, Any]) -> Any:
            return summary["counts"], summary["percent"]

        what = f"campaign {self.campaign_dir}"
        found = _wait(self.status, lambda s: s["ended"], change, timeout, poll, what)
        return dict(found["counts"])

    def table(self, dataframe: bool = False) -> Any:
        """One row per fit (index, label, job_id, state, chisq, parameters, error, job_dir); with
        *dataframe*, a pandas DataFrame of the CSV's columns (pandas must be installed)."""
        rows = tables.table(self.campaign_dir)
        if not dataframe:
            return rows
        try:
            import pandas
        except ImportError:
            raise UsageError("table(dataframe=True) needs pandas: pip install pandas") from None
        columns, flat = tables.flat(rows)
        return pandas.DataFrame(flat, columns=columns)

    def report(self) -> Path:
        """Write the campaign's report.html (each parameter across the fits, their chi-square, the table,
        links to each fit's report) and return its path."""
        written = tables.write_report(self.campaign_dir, tables.table(self.campaign_dir))
        if written is None:
            raise UsageError(f"cannot write the report in {self.campaign_dir}: is it read-only?")
        return written

    def plot(self, out: str | Path | None = None, fmt: str = "png") -> list[Path]:
        """The report's figures as files (in the campaign's figures/, or *out*); their paths."""
        rows = tables.table(self.campaign_dir)
        return tables.plot(self.campaign_dir, rows, None if out is None else Path(out), fmt)

    def results(self) -> list[Results | None]:
        """Each fit's Results, None for a fit without them (its row in table() says why)."""
        return [
            _results(api.results(row["job_dir"])) if row["chisq"] is not None else None
            for row in self.table()
        ]

    def cancel(self) -> int:
        """Cancel every fit still pending or running; how many."""
        return int(campaigns.cancel(self.campaign_dir)["cancelled"])

    def resume_failed(self) -> list[Job]:
        """Run again the fits that failed or timed out (from their checkpoints where they have them)."""
        return [Job(r["job_dir"]) for r in campaigns.resume_failed(self.campaign_dir)]


def _request(
    model: str | Path,
    args: Sequence[str],
    fit: str,
    options: dict[str, Any] | None,
    seed: int | None,
    resources: dict[str, Any] | None,
    name: str | None,
    jobs_dir: str | Path | None,
    profile: str | None,
    read: Sequence[str | Path],
    write: Sequence[str | Path] = (),
) -> Any:
    from .submission import JobRequest

    return JobRequest(
        model=Path(model),
        model_args=[str(a) for a in args],
        fit=fit,
        fit_options={k: str(v) for k, v in (options or {}).items()},
        seed=seed,
        name=name,
        jobs_dir=None if jobs_dir is None else Path(jobs_dir),
        profile=profile,
        resources=dict(resources or {}),
        read=[Path(p).absolute() for p in read],
        write=[Path(p).absolute() for p in write],
        own_files=True,
    )


def submit(
    model: str | Path,
    *args: str,
    fit: str = "dream",
    options: dict[str, Any] | None = None,
    seed: int | None = None,
    resources: dict[str, Any] | None = None,
    name: str | None = None,
    jobs_dir: str | Path | None = None,
    profile: str | None = None,
    read: Sequence[str | Path] = (),
    write: Sequence[str | Path] = (),
    local: bool = False,
    ranks: int | None = None,
) -> Job:
    """Check *model* (with its *args*) and submit it to Slurm; with *local*, run it here under mpiexec
    with *ranks* processes and return when it has ended.

    *options* are the fitter's (samples, burn, steps, pop, ...), *resources* Slurm's (time, ntasks,
    partition, account, ...); what is left out comes from your site profile, as for bumps-submit.
    """
    from . import submission

    request = _request(model, args, fit, options, seed, resources, name, jobs_dir, profile, read, write)
    if local:
        return Job(submission.run_local(request, ranks)["job_dir"])
    return Job(submission.submit(request)["job_dir"])


def submit_campaign(
    model: str | Path,
    *args: str,
    each: str | None = None,
    args_list: Sequence[Sequence[str]] | None = None,
    models: Sequence[str | Path] | None = None,
    max_running: int | None = None,
    fit: str = "dream",
    options: dict[str, Any] | None = None,
    seed: int | None = None,
    resources: dict[str, Any] | None = None,
    name: str | None = None,
    jobs_dir: str | Path | None = None,
    profile: str | None = None,
    read: Sequence[str | Path] = (),
    write: Sequence[str | Path] = (),
) -> Campaign:
    """Submit many fits of *model* as one Slurm job array, exactly one of: *each* (a glob: each file is
    the model's argument, in place of '{}' in *args* or after them), *args_list* (one argument list per
    fit, after *args*), or *models* (more model files, each with *args*). *max_running* caps how many
    run at once. Every fit is checked before anything is submitted.
    """
    common = _request(model, args, fit, options, seed, resources, name, jobs_dir, profile, read, write)
    if args_list is not None:
        if each is not None or models:
            raise UsageError("give exactly one of each, args_list or models")
        lines = [[str(a) for a in line] for line in args_list]
        fits = [(Path(model), [*common.model_args, *line]) for line in lines]
        labels, reads = [shlex.join(line) for line in lines], [list[Path]() for _ in lines]
    else:
        fits, labels, reads = campaigns.fits_from(
            Path(model), common.model_args, each=each, models=[Path(m) for m in models] if models else None
        )
    request = campaigns.CampaignRequest(fits, common, max_running, labels, reads)
    return Campaign(campaigns.submit(request)["campaign_dir"])

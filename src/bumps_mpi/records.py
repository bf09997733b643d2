"""The job's records as types: the request (request.json), a status record (`status --json`, the
service) and a result (result.json).

They stay JSON on disk and on the wire, so they are TypedDicts rather than dataclasses: the files and the
`--json` output keep their shape, and a type checker and a reader see which keys there are. Each has one
reader, which checks its shape where it is read: `JobDir.spec` (the request), `JobDir.result` (a result),
and `cluster.jobstate.status`, the one place a status record is made.
"""

from __future__ import annotations

from typing import Any, TypedDict


class SandboxRequest(TypedDict, total=False):
    """What the job's sandbox is asked to be (policy, from the site profile and the submitter)."""

    level: str  # off | best-effort | require
    read: list[str]  # absolute paths the model may read, beyond its job directory and Python
    write: list[str]  # absolute paths it may also write (never home, ~/.local, ~/.config, ~/.cache)
    cache: str | None  # the per-user cache for compiled kernels, or None
    gpus: int  # GPUs asked for: their device files are opened read-write
    max_file_mb: int | float  # the largest file the model may write
    mpi_ports: list[int]  # [low, high]: the TCP ports a job on several nodes may bind and connect to
    node_tmp: str  # where each rank's TMPDIR goes on its node ($VARIABLES expanded there), or ""


class SlurmSubmission(TypedDict, total=False):
    """The job's place in Slurm, recorded when sbatch answered (or a resume submitted it again)."""

    job_id: str
    submitted: float  # epoch seconds
    earlier_job_ids: list[str]  # the submissions a resume replaced
    recovered: bool  # recorded by the service after a restart, from Slurm's own word


class LocalRun(TypedDict, total=False):
    """A run under mpiexec on this machine (no Slurm)."""

    ranks: int
    time_limit_s: float


class CampaignPlace(TypedDict):
    """A campaign fit's place in its campaign."""

    dir: str
    index: int
    label: str


class Request(TypedDict, total=False):
    """request.json: what was asked, in the control directory where the model cannot write. Written whole
    by `front.submission.spec_of`; `slurm`, `local` and `campaign` are added as the job is placed."""

    name: str
    model: str  # the submitted model's absolute path (the job runs its copy in model/)
    model_args: list[str]
    fit: str  # the Bumps fitter's id
    fit_options: dict[str, Any]  # checked Bumps options: samples, burn, pop, ...
    seed: int | None
    threads: int
    checkpoint_every: float  # seconds
    max_requeues: int
    parameters: list[dict[str, Any]]  # the model's fitted parameters, as the check found them
    start_nllf: float | None
    resources: dict[str, Any]  # Slurm directives, launcher and profile
    created: float  # epoch seconds
    versions: dict[str, str]
    sandbox: SandboxRequest
    slurm: SlurmSubmission
    local: LocalRun
    campaign: CampaignPlace
    estimate: dict[str, Any]  # what the model check's timing predicted (front.sizing), when it was timed


class ParameterResult(TypedDict):
    name: str
    best: float
    mean: float
    std: float


class Result(TypedDict, total=False):
    """result.json, written by rank 0 at the fit's end (the model can write it too: read, never trusted)."""

    fitter: str
    chisq: float
    chisq_str: str
    nllf: float
    parameters: list[ParameterResult]
    elapsed_s: float  # the fit's own time, across all its runs
    sandbox: dict[str, Any]  # what the confinement enforced
    restarts: int
    ranks: int
    host: str
    started: float
    finished: float
    threads: dict[str, str | None]
    failed_evaluations: int
    evaluations: int  # this run's (a requeued fit's earlier runs are not counted)
    run_elapsed_s: float  # this run's own fit time
    seconds_per_evaluation: float  # the model's time per point on rank 0, this run
    first_failure: str  # the traceback of the first failed evaluation on rank 0, when any failed
    gpus: dict[str, dict[str, str]]  # each rank's GPUs, by rank
    exports: list[str]  # Bumps' own files in export/
    export_error: str
    session: str  # session.h5, for Bumps' viewer
    session_error: str


class ProgressView(TypedDict):
    step: int | None
    steps: int
    percent: float
    chisq: float | None
    eta_s: float | None
    failed_evaluations: int | None
    done: bool | None


class ErrorView(TypedDict, total=False):
    message: str | None
    rank: int | None
    host: str | None
    point: Any
    phase: str | None
    traceback: str | None


class Status(TypedDict, total=False):
    """One job's state: Slurm's (or the process table's) word joined with the fit's own files."""

    job_id: str | None
    job_dir: str
    name: str | None
    state: str  # a states.JobState value
    slurm_state: str | None
    exit_code: str | None  # Slurm's "N:S"
    exit: str | None  # the exit explained
    elapsed: str | None
    elapsed_s: int | None
    reason: str | None
    submitted: float | None
    in_queue: bool | None
    finishing: bool  # the fit's files say it ended; its processes still run
    restarts: int
    never_starts: bool
    hint: str
    warning: str
    accounting: str
    unreadable: str  # why the job directory could not be read (state UNKNOWN)
    progress: ProgressView | None
    error: ErrorView | None
    chisq: float | None
    hosts: dict[str, list[int]]  # the ranks on each host (ranks.json), once the job has run
    node_failure: str  # a requeued job's: which node failed under which ranks
    index: int  # a campaign fit's: its array index and label
    label: str
    resumed: bool  # a resume handed to the job controller's supervisor (no state read yet)

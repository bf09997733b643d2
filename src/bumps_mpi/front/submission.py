"""Submission: check a model, write its job directory, and sbatch it or run it here under mpiexec.

Imported only by `bumps-submit submit` and `resume` (and notebooks): the other
commands stay fast on a login node without it. Every check comes before
anything is written, cheapest first: names, resources, environment, the job
directory's place, the sbatch text, then the model (in a subprocess with a
time limit, bumps_mpi.front.modelcheck).
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..cluster import jobstate, local, slurm
from ..cluster.render import DIRECTIVES, limit_seconds, render_sbatch
from ..config import PACKAGED, Settings, check_environment, load_settings, slurm_dir
from ..errors import BumpsMpiError, SubmitError, UsageError
from ..jobdir import (
    CANCEL_FILE,
    CHECKPOINT_FILE,
    ERROR_FILE,
    EXIT_STATUS_FILE,
    JOB_FILE,
    LOCAL_STATE_FILE,
    MODEL_DIR,
    REQUEST_FILE,
    SCRIPT_FILE,
    STATE_FILE,
    JobDir,
    control_dir,
    current_umask,
    is_control_name,
    write_atomic,
)
from ..records import Request, SandboxRequest, SlurmSubmission, Status
from ..runtime.fit import check_model_file
from ..version import __version__
from . import registry
from .validation import check_resources

JOB_SETTINGS = ("checkpoint_every", "signal_grace", "max_requeues")  # settings for the job, not sbatch
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


@dataclass
class JobRequest:
    """What the user asked for: the model, the fit and (for Slurm) the resources.

    Resources and job settings left out (None) come from the site profile and the
    packaged defaults (bumps_mpi.config).
    """

    model: Path
    model_args: list[str] = field(default_factory=list)
    fit: str = "dream"
    fit_options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    name: str | None = None
    jobs_dir: Path | None = None
    job_dir: Path | None = None
    profile: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    read: list[Path] = field(default_factory=list)  # paths the confined model may read, besides the site's
    write: list[Path] = field(default_factory=list)  # paths it may write, besides its job and the cache
    start_from: Path | None = None  # a checkpoint the fit continues from (the dispatcher's next attempt)
    # the submitter's own arguments (the command line, the Python API; never the service's users): one that
    # names a file here is made absolute (the check and the job run in their own directories) and the
    # model may read that file
    own_files: bool = False
    nice: int = (
        0  # the model check runs this much below the caller's priority (a service's: others wait less)
    )
    # the service: the model is timed and the fit refused when its estimate does not fit its time limit
    # (and requeues); what to do, said with the refusal
    refuse_too_long: str | None = None

    def __post_init__(self) -> None:
        if self.own_files:
            self.model_args = [str(Path(a).absolute()) if _is_file(a) else a for a in self.model_args]


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a file
        return False


@dataclass
class Prepared:
    """A request that passed every check: where it goes, what job.json says, the script to submit."""

    target: Path
    spec: Request
    script: str
    settings: Settings
    notes: list[str] = field(default_factory=list)  # warnings for the user (the sandbox's, say)
    estimate: dict[str, Any] | None = None  # what the fit will cost (bumps_mpi.front.estimate)


def _check_name(request: JobRequest) -> str:
    name = request.name or request.model.stem
    if not NAME.match(name):
        raise UsageError(
            f"job name {name!r} is not allowed: use 1-64 letters, digits and ._+- (starting with a letter "
            "or digit); pass --name for a model file whose name has other characters"
        )
    if request.seed is not None and not 0 <= request.seed < 2**32:
        raise UsageError(f"--seed must be between 0 and 2**32-1, got {request.seed}")
    return name


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _target_dir(request: JobRequest, name: str, settings: Settings) -> Path:
    """The new job directory's path, after checking that it can be made there (nothing is made yet)."""
    if request.job_dir is not None:
        target, label = Path(request.job_dir).expanduser().absolute(), "--job-dir"
    else:
        root = request.jobs_dir if request.jobs_dir is not None else settings["jobs_dir"]
        where = settings.sources.get("jobs_dir", "--jobs-dir") if request.jobs_dir is None else "--jobs-dir"
        label = where if where.startswith("--") else f"jobs_dir (from {where})"
        expanded = os.path.expandvars(os.path.expanduser(str(root)))
        unset = re.findall(r"\$\{?(\w+)", expanded) if request.jobs_dir is None else []
        if unset:
            raise UsageError(f"{label}={str(root)!r}: environment variable ${unset[0]} is not set")
        root = Path(expanded).absolute()
        target = root / f"{name}-{_stamp()}-{os.urandom(2).hex()}"
    if any(c in str(target) for c in "\n\r"):
        raise UsageError(f"the job directory path contains a line break; choose another {label}")
    if target.exists() or target.is_symlink():
        raise UsageError(
            f"job directory {target} already exists; choose another --job-dir (nothing was changed)"
        )
    ancestor = target.parent
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise UsageError(
                f"{label}: {ancestor} links to {os.readlink(ancestor)}, which does not exist (not mounted?)"
            )
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{label}: {ancestor} is a file, not a directory (nothing was changed)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{label}: cannot create a job directory under {ancestor}: permission denied")
    return target


def spec_of(
    request: JobRequest, name: str, checked: dict[str, Any], settings: Settings, sandbox: SandboxRequest
) -> Request:
    """job.json's content for a request that passed its checks."""
    from importlib.metadata import version

    model = request.model.resolve()
    return {
        "name": name,
        "model": str(model),
        "model_args": list(request.model_args),
        "fit": request.fit,
        "fit_options": checked["fit_options"],
        "seed": request.seed,
        "threads": settings["threads"],
        "checkpoint_every": settings["checkpoint_every"],
        "max_requeues": settings["max_requeues"],
        "parameters": checked["parameters"],
        "start_nllf": checked["nllf"],
        "resources": resources_of(settings),
        "created": time.time(),
        "versions": {"bumps_mpi": __version__, "bumps": version("bumps"), "python": sys.version.split()[0]},
        "sandbox": sandbox,
    }


def resources_of(settings: Settings) -> dict[str, Any]:
    """The Slurm directives, launcher and profile a request records."""
    return {k: settings.get(k) for k in (*DIRECTIVES, "launcher", "profile") if settings.get(k)}


def create_job_dir(target: Path, files: dict[str, str], model: Path) -> JobDir:
    """Build the job directory and its control directory under temporary names, then rename: a job
    directory is complete or absent. *files* go where JobDir.file puts them; JOB_FILE is the request,
    kept in the control directory (trusted) with a copy in the job directory (for the record)."""
    control = control_dir(target)
    staged: list[Path] = []
    try:
        control.parent.mkdir(parents=True, exist_ok=True)
        for where in (control.parent, target.parent):
            made = Path(tempfile.mkdtemp(dir=where, prefix=f".{target.name}.", suffix=".tmp"))
            os.chmod(made, 0o777 & ~current_umask())  # mkdtemp makes it 0700 whatever the umask
            staged.append(made)
        control_staging, staging = staged
        for fname, text in files.items():
            if fname == JOB_FILE:
                write_atomic(control_staging / REQUEST_FILE, text)
            write_atomic((control_staging if is_control_name(fname) else staging) / fname, text)
        (staging / MODEL_DIR).mkdir()
        copy = staging / MODEL_DIR / model.name
        shutil.copyfile(model, copy)  # the umask's permissions, like every other file here
        shutil.copystat(model, copy, follow_symlinks=True)
        os.chmod(copy, 0o666 & ~current_umask())
        if control.exists() and not target.exists():  # what a deleted job directory left behind
            shutil.rmtree(control)
        os.rename(control_staging, control)  # an existing control directory is never overwritten
        staged.remove(control_staging)
        try:
            os.rename(staging, target)  # a target that appeared meanwhile is never overwritten, unless empty
        except OSError:
            shutil.rmtree(control, ignore_errors=True)
            raise
    except OSError as exc:
        for made in staged:
            shutil.rmtree(made, ignore_errors=True)
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):  # a non-empty target appeared meanwhile
            raise UsageError(f"job directory {target} already exists (nothing was changed)") from None
        raise UsageError(f"cannot create job directory {target}: {exc.strerror or exc}") from None
    return JobDir(target)


def prepare(request: JobRequest, estimate: bool = False) -> Prepared:
    """Every check, cheapest first, then the sbatch text; nothing is written. With *estimate*, or
    `--ntasks auto`/`--time auto`, the check also times the model (up to 3 s) and the fit's estimate comes
    with it (bumps_mpi.front.sizing), recorded in the request when it chose the ranks or the time."""
    from . import sizing

    settings, name, target = place(request)
    auto = sizing.auto_keys(settings)
    script = render(sizing.placeholder(settings), name, target)
    confinement = sandbox_for(request, settings)
    timed = estimate or bool(auto) or request.refuse_too_long is not None
    checked = check_model(request, settings, confinement, timed=timed)
    found, partition = None, None
    if timed:
        partition = sizing.partition_of(settings)
        found = sizing.estimate_of(request.fit, checked, settings, partition)
    notes = [f"sandbox: {checked['sandbox']['note']}"] if (checked.get("sandbox") or {}).get("note") else []
    if found is not None and auto:
        settings = sizing.choose(settings, found, partition)
        script = render(settings, name, target)
    elif found is not None and request.refuse_too_long is not None:
        if reason := sizing.fits_in_time(settings, found, factor=1.0, hint=request.refuse_too_long):
            raise UsageError(reason)
    elif found is not None:
        notes += [warning] if (warning := sizing.fits_in_time(settings, found)) else []
    spec = spec_of(request, name, checked, settings, confinement)
    if found is not None:
        spec["estimate"] = found  # what --ntasks/--time auto chose from; results compare it with the run
    return Prepared(target, spec, script, settings, notes, found)


def place(request: JobRequest) -> tuple[Settings, str, Path]:
    """The cheap checks (name, resources, environment) and where the new directory goes: (settings, the
    job's name, its path)."""
    settings = load_settings(request.profile, request.resources)
    check_model_file(Path(request.model))  # before the check's child: a loop of links is one line
    name = _check_name(request)
    check_resources(settings, settings.sources)
    check_environment()
    return settings, name, _target_dir(request, name, settings)


def render(settings: Settings, name: str, target: Path, array: str | None = None) -> str:
    """The sbatch script for the job in *target* (with *array*, a campaign's job array)."""
    return render_sbatch(
        template=(slurm_dir() / "job.sbatch").read_text(),
        name=name,
        job_dir=str(target),
        python=settings.get("python") or sys.executable,
        resources={k: settings.get(k) for k in DIRECTIVES},
        gpus=int(settings.get("gpus") or 0),
        gpu_directive=settings.get("gpu_directive") or "gres",
        launcher=settings["launcher"],
        launcher_args=settings["launcher_args"],
        extra=settings["extra"],
        skip=settings["skip"],
        prologue=settings["prologue"],
        epilogue=settings["epilogue"],
        version=__version__,
        signal_grace=settings["signal_grace"],
        max_requeues=int(settings["max_requeues"]),
        array=array,
    )


def sandbox_for(request: JobRequest, settings: Settings) -> SandboxRequest:
    """The sandbox job.json asks for: the site's, plus the request's --read and --write paths (which must
    exist) and, for the submitter's own arguments, every one that names a file (the data; never a
    directory)."""
    for option, paths, verb in (("--read", request.read, "read"), ("--write", request.write, "write")):
        for path in paths:
            if not Path(path).exists():
                raise UsageError(f"{option} {path}: no such file or directory (a path the model may {verb})")
    named = [a for a in request.model_args if _is_file(a)] if request.own_files else []
    more_read = [str(Path(p).resolve()) for p in [*map(str, request.read), *named]]
    return _sandbox_request(settings, more_read, [str(Path(p).resolve()) for p in request.write])


ESTIMATE_TIMING_S = 3.0  # of the model check spent timing the model, for the estimate


def check_model(
    request: JobRequest, settings: Settings, confinement: SandboxRequest, timed: bool = False
) -> dict[str, Any]:
    """The model check (bumps_mpi.front.modelcheck), confined as the job will be; *timed*: the model
    timed too, for the estimate."""
    from .modelcheck import run_check

    return run_check(
        request.model,
        request.model_args,
        request.fit,
        request.fit_options,
        settings["check_timeout"],
        sandbox=confinement,
        nice=request.nice,
        timing_s=min(ESTIMATE_TIMING_S, settings["check_timeout"] / 4) if timed else 0.0,
    )


def _sandbox_request(settings: Settings, more_read: list[str], more_write: list[str]) -> SandboxRequest:
    """What the job's sandbox is asked to be (job.json); `require` is checked against this kernel now."""
    from ..sandbox import landlock
    from ..sandbox import policy as sandbox

    level = settings["sandbox"]
    if level == "require" and landlock.abi_version() < sandbox.Policy().needed_abi():
        raise sandbox.SandboxError(
            f"sandbox=require: this login node's kernel ({os.uname().release}) offers Landlock ABI "
            f"{landlock.abi_version()}, and the sandbox needs ABI {sandbox.Policy().needed_abi()}: "
            "ask your site, or use --sandbox best-effort"
        )
    read = [str(Path(os.path.expanduser(p)).resolve()) for p in settings["sandbox_read"]]
    write = [str(Path(os.path.expanduser(p)).resolve()) for p in settings.get("sandbox_write") or []]
    cache = settings.get("sandbox_cache") or ""
    for path in [*write, *more_write]:
        _writable_enough("--write/sandbox_write", path)
    _writable_enough("sandbox_cache", cache)
    return {
        "level": level,
        "read": [*read, *more_read],
        "write": [*write, *more_write],
        "cache": str(Path(os.path.expanduser(os.path.expandvars(cache))).absolute()) if cache else None,
        "gpus": int(settings.get("gpus") or 0),  # their device files are opened read-write
        "max_file_mb": settings["sandbox_max_file_mb"],
        "mpi_ports": list(sandbox.port_range(settings["sandbox_mpi_ports"])),
        "node_tmp": settings.get("node_tmp") or "",
    }


def _writable_enough(where: str, path: str) -> None:
    """A path the sandbox opens for writing must be a place of its own: never the home directory or
    above it, nor a directory unconfined programs read code or settings from (the Python environment,
    ~/.local, ~/.config, ~/.cache itself), where what a model wrote would run outside its sandbox."""
    if not path:
        return
    from ..sandbox.policy import python_paths

    chosen = Path(os.path.expanduser(os.path.expandvars(path))).absolute()
    home = Path.home().absolute()
    shared = [home / ".local", home / ".config", home / ".cache", home]
    code = [Path(p) for p in python_paths() if p.startswith("/")]
    if (
        chosen in shared
        or chosen in home.parents
        or chosen == Path("/")
        or any(chosen == p or p.is_relative_to(chosen) or chosen.is_relative_to(p) for p in code)
    ):
        raise UsageError(
            f"{where} {path}: a model could write there what unconfined programs of yours read or run "
            "(your home, its settings, your Python): give a directory of its own"
        )


def submit(request: JobRequest) -> dict[str, Any]:
    """Check, write the job directory, sbatch it, record it. Returns {job_id, job_dir}."""
    slurm.require("sbatch")
    prepared = prepare(request)
    job = create_job_dir(
        prepared.target, {JOB_FILE: _json(prepared.spec), SCRIPT_FILE: prepared.script}, request.model
    )
    try:
        _start_from(job, request)
        job_id = slurm.sbatch(job.file(SCRIPT_FILE), job.path)
    except slurm.SubmitUncertain:
        raise  # it may be queued: its directory stays, and the message says so
    except KeyboardInterrupt:
        raise SubmitError(
            f"interrupted while sbatch ran: the job may be queued; {job.path} is kept"
        ) from None
    except BaseException:
        job.remove()  # never submitted: leave no orphan directory
        raise
    record_submission(job, job_id, {"job_id": job_id, "submitted": time.time()})
    return {"job_id": job_id, "job_dir": str(job.path), "notes": prepared.notes}


def record_submission(job: JobDir, job_id: str, slurm_record: SlurmSubmission) -> None:
    """The job is queued: record its id in job.json and the registry; a failure still names the job."""
    try:
        job.update_spec(slurm=slurm_record)
    except OSError as exc:
        _register(job_id, job, job.spec["name"])
        raise BumpsMpiError(
            f"job {job_id} is queued (directory {job.path}), but job.json could not record its id: "
            f"{exc.strerror or exc}; follow it with 'squeue -j {job_id}'"
        ) from None
    _register(job_id, job, job.spec["name"])


def _register(job_id: str | None, job: JobDir, name: str) -> None:
    try:
        registry.add({"job_id": job_id, "job_dir": str(job.path), "name": name, "submitted": time.time()})
    except BumpsMpiError as exc:  # the job exists: say where, so it is not lost
        what = f"job {job_id}" if job_id else "the local run"
        raise BumpsMpiError(f"{what} is in {job.path}, but {exc}") from None


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def run_local(request: JobRequest, ranks: int | None = None, echo: Any = None, warn: Any = None) -> Status:
    """Run the job now under mpiexec with *ranks* processes (default: local_ranks), no Slurm.

    *echo* gets the run's output line by line, *warn* any warning. Returns the status record.
    """
    job, ranks = create_local(request, ranks, warn)
    local.run(job, ranks, echo)
    return jobstate.status([job])[0]


def create_local(request: JobRequest, ranks: int | None = None, warn: Any = None) -> tuple[JobDir, int]:
    """Check and write the job directory of a local run (not started yet); (the job, its ranks)."""
    settings = load_settings(request.profile, request.resources)
    label = "-n"
    if ranks is None:
        ranks, where = settings["local_ranks"], settings.sources.get("local_ranks", "")
        label = f"local_ranks (from {where})"
    local.check_ranks(ranks, warn, label)
    local.find_mpiexec()
    from . import sizing

    if sizing.auto_keys(settings):  # its estimate is for these ranks
        request = replace(request, resources={**request.resources, "ntasks": ranks})
    prepared = prepare(request)
    for note in prepared.notes:
        if warn is not None:
            warn(f"bumps-submit: warning: {note}")
    prepared.spec["local"] = {"ranks": ranks}
    chosen = prepared.settings  # with --time auto, the time it chose
    if chosen.sources.get("time", PACKAGED) != PACKAGED:  # a time someone chose (the packaged hour is
        limit = limit_seconds(chosen["time"])  # Slurm's default, not a local run's)
        if limit:
            prepared.spec["local"]["time_limit_s"] = limit
    job = create_job_dir(prepared.target, {JOB_FILE: _json(prepared.spec)}, request.model)
    try:
        _start_from(job, request)
    except BaseException:
        job.remove()
        raise
    _register(None, job, prepared.spec["name"])
    return job, ranks


def _start_from(job: JobDir, request: JobRequest) -> None:
    """Put the checkpoint to continue from in place (checked: it loads), before the job can start."""
    if request.start_from is None:
        return
    shutil.copyfile(request.start_from, job.file(CHECKPOINT_FILE))
    check_checkpoint(job)


def check_checkpoint(job: JobDir) -> int:
    """The step the checkpoint holds, after loading it as the job will (in a confined child: the file is
    the model's to write); a clear error when it cannot."""
    return check_checkpoints([job])[str(job.file(CHECKPOINT_FILE))]


def check_checkpoints(jobs: list[JobDir]) -> dict[str, int]:
    """check_checkpoint for several jobs of one campaign, in one child: {checkpoint path: step}."""
    from .checkpointcheck import check_checkpoints as in_child

    for job in jobs:
        if not job.file(CHECKPOINT_FILE).exists():
            raise UsageError(f"{job.path} has no checkpoint yet: submit the model again")
    spec = jobs[0].spec
    paths = [job.file(CHECKPOINT_FILE) for job in jobs]
    return in_child(paths, spec.get("sandbox") or {}, spec["model"], spec.get("fit"))


def set_aside(job: JobDir) -> list[tuple[Path, Path]]:
    """Before a fit runs again: its last end (error, cached state, exit status) is kept under new names,
    and an earlier cancel request no longer holds. The renames, for put_back."""
    stamp = _stamp()
    moved = []
    for name in (ERROR_FILE, STATE_FILE, LOCAL_STATE_FILE, EXIT_STATUS_FILE):
        if job.file(name).exists():
            os.replace(job.file(name), job.file(f"{name}.{stamp}"))
            moved.append((job.file(name), job.file(f"{name}.{stamp}")))
    job.file(CANCEL_FILE).unlink(missing_ok=True)
    return moved


def put_back(moved: list[tuple[Path, Path]]) -> None:
    """Undo set_aside when the fit was not submitted after all (best effort)."""
    for original, kept in moved:
        try:
            os.replace(kept, original)
        except OSError:
            pass

"""Submission: check a model, write its job directory, and sbatch it or run it here under mpiexec.

Imported only by `bumps-submit submit` (and notebooks): the other commands stay
fast on a login node without it.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, jobstate, registry, slurm
from .config import load_settings, slurm_dir
from .errors import SubmitError, UsageError
from .jobdir import (
    CANCEL_FILE,
    CHECKPOINT_FILE,
    JOB_FILE,
    LOCAL_STATE_FILE,
    MODEL_DIR,
    RESUMABLE_FITTERS,
    SCRIPT_FILE,
    JobDir,
    read_json,
    write_atomic,
    write_json,
)
from .postmortem import RANKS_FILE, write_postmortem
from .render import DIRECTIVES, render_sbatch

JOB_SETTINGS = ("checkpoint_every", "signal_grace", "max_requeues")  # settings for the job, not sbatch
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


@dataclass
class JobRequest:
    """What the user asked for: the model, the fit and (for Slurm) the resources."""

    model: Path
    model_args: list[str] = field(default_factory=list)
    fit: str = "dream"
    fit_options: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    name: str | None = None
    jobs_dir: Path = Path("bumps-jobs")
    job_dir: Path | None = None
    profile: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)


def _validate(request: JobRequest) -> tuple[str, dict[str, Any]]:
    """Every check that needs no Slurm, before anything is written."""
    from .fit import check_model, validate_fit_options

    name = request.name or request.model.stem
    if not NAME.match(name):
        raise UsageError(
            f"job name {name!r} is not allowed: use 1-64 letters, digits and ._+- (starting with a letter "
            "or digit); pass --name for a model file whose name has other characters"
        )
    for key in ("nodes", "ntasks", "cpus_per_task", "threads", "checkpoint_every", "signal_grace"):
        value = request.resources.get(key)
        if value is not None and value < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    if (request.resources.get("max_requeues") or 0) < 0:
        raise UsageError(f"--max-requeues must not be negative, got {request.resources['max_requeues']}")
    if request.seed is not None and not 0 <= request.seed < 2**32:
        raise UsageError(f"--seed must be between 0 and 2**32-1, got {request.seed}")
    options = validate_fit_options(request.fit, request.fit_options)
    check = check_model(request.model, request.model_args)
    return name, {"fit_options": options, "check": check}


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _target_dir(request: JobRequest, name: str) -> Path:
    if request.job_dir is not None:
        target = Path(request.job_dir).absolute()
    else:
        target = Path(request.jobs_dir).absolute() / f"{name}-{_stamp()}-{os.urandom(2).hex()}"
    if any(c in str(target) for c in "\n\r"):
        raise UsageError("the job directory path contains a line break; choose another --jobs-dir")
    if target.exists():
        raise UsageError(
            f"job directory {target} already exists; choose another --job-dir (nothing was changed)"
        )
    return target


def _spec(
    request: JobRequest, name: str, checked: dict[str, Any], settings: dict[str, Any]
) -> dict[str, Any]:
    from importlib.metadata import version

    model = request.model.resolve()
    return {
        "name": name,
        "model": str(model),
        "model_args": list(request.model_args),
        "fit": request.fit,
        "fit_options": checked["fit_options"],
        "seed": request.seed,
        "threads": settings.get("threads", 1),
        "checkpoint_every": settings["checkpoint_every"],  # defaults: slurm/defaults.toml
        "max_requeues": settings["max_requeues"],
        "parameters": checked["check"]["parameters"],
        "start_nllf": checked["check"]["nllf"],
        "resources": {k: settings.get(k) for k in (*DIRECTIVES, "launcher", "profile") if settings.get(k)},
        "created": time.time(),
        "versions": {"bumps_mpi": __version__, "bumps": version("bumps"), "python": sys.version.split()[0]},
    }


def _create_job_dir(target: Path, files: dict[str, str], model: Path) -> JobDir:
    """Build the directory under a temporary name, then rename: a job dir is complete or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        for fname, text in files.items():
            write_atomic(staging / fname, text)
        (staging / MODEL_DIR).mkdir()
        shutil.copy2(model, staging / MODEL_DIR / model.name)
        os.rename(staging, target)  # fails if target appeared meanwhile: nothing overwritten
    except FileExistsError:
        shutil.rmtree(staging, ignore_errors=True)
        raise UsageError(f"job directory {target} already exists (nothing was changed)") from None
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if exc.errno in (39, 66):  # ENOTEMPTY: target exists and is not empty
            raise UsageError(f"job directory {target} already exists (nothing was changed)") from None
        raise
    return JobDir(target)


def prepare(request: JobRequest, cli_settings: dict[str, Any] | None = None) -> tuple[Path, dict, str]:
    """Validate and render without writing: (job dir, spec, sbatch text)."""
    settings = load_settings(request.profile, {**(cli_settings or {}), **request.resources})
    request.resources = {
        k: settings.get(k) for k in ("nodes", "ntasks", "cpus_per_task", "threads", *JOB_SETTINGS)
    }
    name, checked = _validate(request)
    target = _target_dir(request, name)
    spec = _spec(request, name, checked, settings)
    script = render_sbatch(
        template=(slurm_dir() / "job.sbatch").read_text(),
        name=name,
        job_dir=str(target),
        python=settings.get("python") or sys.executable,
        resources={k: settings.get(k) for k in DIRECTIVES},
        launcher=settings.get("launcher", "srun"),
        launcher_args=settings.get("launcher_args", []),
        extra=settings.get("extra", []),
        skip=settings.get("skip", []),
        prologue=settings.get("prologue", []),
        epilogue=settings.get("epilogue", []),
        version=__version__,
        signal_grace=settings["signal_grace"],
    )
    return target, spec, script


def submit(request: JobRequest, cli_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check, write the job directory, sbatch it, record it. Returns {job_id, job_dir}."""
    target, spec, script = prepare(request, cli_settings)
    slurm.require("sbatch")
    job = _create_job_dir(target, {JOB_FILE: _json(spec), SCRIPT_FILE: script}, request.model)
    try:
        job_id = slurm.sbatch(job.file(SCRIPT_FILE), job.path)
    except BaseException:
        shutil.rmtree(job.path, ignore_errors=True)  # never submitted: leave no orphan directory
        raise
    job.update_spec(slurm={"job_id": job_id, "submitted": time.time()})
    registry.add({"job_id": job_id, "job_dir": str(job.path), "name": spec["name"], "submitted": time.time()})
    return {"job_id": job_id, "job_dir": str(job.path)}


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def find_mpiexec() -> str:
    """mpiexec beside this Python (the mpich wheel puts it there), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise SubmitError("no mpiexec found: install the MPI runtime with 'pip install mpich'")
    return found


def run_local(request: JobRequest, ranks: int, echo: Any = None) -> dict[str, Any]:
    """Run the job now under mpiexec with *ranks* processes, no Slurm. Returns the status record."""
    if ranks < 1:
        raise UsageError(f"-n must be at least 1, got {ranks}")
    target, spec, _ = prepare(request)
    spec["local"] = {"ranks": ranks}
    job = _create_job_dir(target, {JOB_FILE: _json(spec)}, request.model)
    registry.add({"job_id": None, "job_dir": str(job.path), "name": spec["name"], "submitted": time.time()})
    return run_local_job(job, ranks, echo)


def run_local_job(job: JobDir, ranks: int, echo: Any = None) -> dict[str, Any]:
    """Run (or continue, from its checkpoint) a job directory under mpiexec here.

    mpiexec runs in its own session, so a Ctrl-C or SIGTERM reaches only this
    process, which passes it to rank 0: rank 0 checkpoints at its next
    generation and stops the others (a second Ctrl-C kills the run).
    """
    import signal

    command = [find_mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "bumps_mpi.job"]
    command.append(str(job.path))
    started = time.time()
    stops: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stops.append(signum)
        rank0 = _rank0_pid(job)
        if len(stops) > 1 or rank0 is None:
            proc.kill()
        else:
            os.kill(rank0, signum)

    with open(job.file("local.out"), "ab") as log:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=job.path, start_new_session=True
        )
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if echo:
                    echo(line.decode(errors="replace").rstrip("\n"))
            rc = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if job.result is not None and rc == 0:
            state = "COMPLETED"
        elif stops and job.file(CHECKPOINT_FILE).exists():
            state = "CANCELLED"  # stopped on request, resumable: `bumps-submit resume`
        else:
            state = "CANCELLED" if stops else "FAILED"
            log.flush()
            if not stops:
                write_postmortem(job.path, rc, job.file("local.out"))
        write_json(
            job.file(LOCAL_STATE_FILE),
            dict(state=state, exit_code=rc, started=started, finished=time.time(), command=command),
        )
    return jobstate.status([job])[0]


def _rank0_pid(job: JobDir) -> int | None:
    ranks = read_json(job.file(RANKS_FILE))
    return int(ranks[0]["pid"]) if ranks else None


def resume(job: JobDir, ranks: int | None = None, echo: Any = None) -> dict[str, Any]:
    """Continue a stopped fit from its checkpoint: here if it ran here, else as a new Slurm job.

    Nothing is lost: the old error.json and cached state are kept under new names.
    """
    spec = job.spec
    if job.result is not None:
        raise UsageError(f"{job.path} already completed: see 'bumps-submit results {job.path}'")
    if spec["fit"] not in RESUMABLE_FITTERS:
        only = ", ".join(RESUMABLE_FITTERS)
        raise UsageError(f"fitter {spec['fit']!r} cannot resume (only {only} can); submit it again")
    if not job.file(CHECKPOINT_FILE).exists():
        raise UsageError(f"{job.path} has no checkpoint yet: submit the model again")
    record = jobstate.status([job])[0]
    if record["state"] in ("PENDING", "RUNNING", "REQUEUED", "UNKNOWN"):
        raise UsageError(f"job {record['job_id'] or job.path} is {record['state']}: it continues by itself")
    stamp = _stamp()
    for name in ("error.json", jobstate.STATE_FILE, LOCAL_STATE_FILE):
        if job.file(name).exists():
            os.replace(job.file(name), job.file(f"{name}.{stamp}"))
    job.file(CANCEL_FILE).unlink(missing_ok=True)
    if "slurm" not in spec:
        return run_local_job(job, ranks or int(spec.get("local", {}).get("ranks", 2)), echo)
    slurm.require("sbatch")
    job_id = slurm.sbatch(job.file(SCRIPT_FILE), job.path)
    earlier = [*spec["slurm"].get("earlier_job_ids", []), spec["slurm"]["job_id"]]
    job.update_spec(slurm={"job_id": job_id, "submitted": time.time(), "earlier_job_ids": earlier})
    registry.add({"job_id": job_id, "job_dir": str(job.path), "name": spec["name"], "submitted": time.time()})
    return {"job_id": job_id, "job_dir": str(job.path), "resumed": True}

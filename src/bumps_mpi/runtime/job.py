"""The job: `python -m mpi4py -m bumps_mpi.job JOBDIR`, on every rank, under srun or mpiexec.

Every rank loads the model; rank 0 drives Bumps' FitDriver through the MPI
mapper and writes result.json (or error.json) and the exports; the other
ranks serve the mapper until rank 0 stops them. Any failure, on any rank,
ends every rank with a non-zero exit, never a rank waiting in a collective.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

from ..jobdir import (
    CANCEL_FILE,
    CHECKPOINT_FILE,
    ERROR_FILE,
    EXPORT_DIR,
    PROGRESS_FILE,
    RANKS_FILE,
    RESULT_FILE,
    RESUMABLE_FITTERS,
    SESSION_FILE,
    JobDir,
    write_json,
)
from ..records import Request, Result
from .threads import THREAD_VARIABLES, limit_threads


def _gpus() -> dict[str, Any]:
    """The GPUs this rank was given, as the runtimes and Slurm name them (ranks.json, the report)."""
    from ..sandbox.devices import visible_gpus

    given = visible_gpus()
    return {"gpus": given} if given else {}


def _report(exc: BaseException) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "message": f"{type(exc).__name__}: {exc}".splitlines()[0],
    }


def _say(text: str) -> None:
    """To the job's log, which may be on a full disk: a failure to say something must not fail the job."""
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass


def _write_error(jobdir: JobDir, phase: str, rank: int, report: dict[str, Any], **extra: Any) -> None:
    error = {"phase": phase, "rank": rank, "time": time.time(), **report, **extra}
    _say(f"bumps-mpi: {phase} failed on rank {rank} ({report['host']}):\n{report['traceback']}")
    try:
        write_json(jobdir.file(ERROR_FILE), error)
    except OSError as exc:  # a full disk: the log line above (if it got out) and status's warning remain
        _say(f"bumps-mpi: could not write {ERROR_FILE}: {exc.strerror or exc}")


def _setting(spec: Request, key: str) -> Any:
    """A job setting from job.json (submit writes them all), else the packaged default."""
    if key in spec:
        return spec[key]  # type: ignore[literal-required] # key: one of the request's settings
    from ..config import packaged_defaults

    return packaged_defaults()[key]


def slurm_job_id() -> str | None:
    """This allocation's id as status shows it: an array's task is ARRAY_TASK, not its raw id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mpi4py -m bumps_mpi.job JOBDIR", file=sys.stderr)
        return 2
    jobdir = JobDir(argv[0])
    spec = jobdir.spec
    limit_threads(int(_setting(spec, "threads")))

    confinement, failure = _confine(jobdir, spec)  # before MPI starts its threads: they are confined too
    # The launcher started us in the control directory (nothing planted can be imported from there); the
    # model expects its job directory, now that it can no longer leave it.
    os.chdir(jobdir.path)
    from mpi4py import MPI

    from ..cluster import processes
    from .checkpoint import StopRequest
    from .watchdog import Watchdog

    stop = StopRequest(jobdir)
    comm = MPI.COMM_WORLD
    if comm.rank == 0:
        stop.install()  # rank 0 checkpoints and stops the others
    else:  # Ctrl-C (mpiexec) and preemption's SIGTERM (srun) reach every rank: only rank 0 acts on them
        for signum in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_IGN)  # rank 0 stops us, or the launcher's SIGKILL does
        signal.signal(signal.SIGTERM, lambda _s, _f: None)  # ignored too, but seen by the watchdog
    watchdog = Watchdog(comm)

    from .fit import load_model

    problem = None
    try:
        if failure is None:
            problem = load_model(spec["model"], spec.get("model_args", []))
    except BaseException as exc:  # noqa: B036 - every rank must reach the allgather below
        failure = _report(exc)
    me = {"rank": comm.rank, **processes.identity(), **_gpus(), "failure": failure}
    everyone = comm.allgather(me)  # start-up only: pickling is fine here
    watchdog.know_ranks(everyone)
    if comm.rank == 0:  # who is who, so a post-mortem can name a rank that dies
        try:
            write_json(
                jobdir.file(RANKS_FILE), [{k: v for k, v in r.items() if k != "failure"} for r in everyone]
            )
        except OSError as exc:
            _say(f"bumps-mpi: could not write {RANKS_FILE}: {exc.strerror or exc}")
    for entry in everyone:
        if entry["failure"] is not None:
            watchdog.disarm()
            if comm.rank == 0:
                phase = "sandbox" if entry["failure"].get("sandbox") else "model load"
                _write_error(jobdir, phase, entry["rank"], entry["failure"])
            return 1
    if comm.rank != 0:
        from .mapper import serve

        serve(problem, comm)
        watchdog.disarm()  # rank 0 said stop: its end from now on is no one's death
        return 0
    try:
        gpus = {str(r["rank"]): r["gpus"] for r in everyone if r.get("gpus")}
        return _run_root(jobdir, spec, problem, comm, stop, watchdog, confinement, gpus)
    finally:
        watchdog.disarm()


def _confine(jobdir: JobDir, spec: Request) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Each rank confines itself to the job (bumps_mpi.sandbox): (what was enforced, a failure report).

    A failure under `require` (a kernel without what is needed) is reported by
    rank 0 after the start-up exchange, and no rank loads the model.
    """
    asked = spec.get("sandbox") or {}
    if asked.get("level", "off") == "off":
        return {"level": "off"}, None
    from ..sandbox import policy as sandbox

    nodes = int(os.environ.get("SLURM_NNODES") or os.environ.get("SLURM_JOB_NUM_NODES") or 1)
    os.environ.update(sandbox.mpi_environment(nodes, sandbox.mpi_ports(spec)))
    try:
        return sandbox.apply(sandbox.job_policy(spec, nodes, jobdir.control), jobdir.path), None
    except Exception as exc:  # SandboxError under require; a Landlock call that failed
        if asked["level"] == "require":
            return {"level": "require"}, {**_report(exc), "sandbox": True}
        return {"level": asked["level"], "missing": [f"everything: {type(exc).__name__}: {exc}"]}, None


@dataclass
class _Fitted:
    """What one run of the fit left: Bumps' driver and the result, and what it resumed from."""

    fit_id: str
    options: dict[str, Any]
    driver: Any
    result: Result
    checkpointer: Any  # None for a fitter that keeps no checkpoint
    resumed: bool
    info: dict[str, Any]  # the checkpoint's record (elapsed_s of the runs before), or {"elapsed_s": 0}
    convergence: Any


def _run_root(
    jobdir: JobDir,
    spec: Request,
    problem: Any,
    comm: Any,
    stop: Any,
    watchdog: Any,
    confinement: dict,
    gpus: dict[str, dict[str, str]],
) -> int:
    from . import checkpoint
    from .fit import Failures
    from .mapper import Mapper

    failures = Failures(problem)  # rank 0's own evaluations, and the first traceback it sees
    mapper = Mapper(problem, comm)

    def failed() -> tuple[int, int]:
        """(failed, evaluations) this run: every rank's through the mapper, else rank 0's own."""
        if mapper.evaluations:
            return mapper.nonfinite, mapper.evaluations
        return failures.nonfinite, failures.calls

    watchdog.watch(mapper)
    started = time.time()
    if jobdir.file(ERROR_FILE).exists():  # an earlier allocation's failure: this one runs again
        stamp = time.strftime("%Y%m%d-%H%M%S")
        os.replace(jobdir.file(ERROR_FILE), jobdir.file(f"{ERROR_FILE}.{stamp}"))
    runs = checkpoint.record_run(
        jobdir.path,
        started=started,
        slurm_job_id=slurm_job_id(),
        host=socket.gethostname(),
        sandbox=confinement,
    )
    prior_runs = len(runs) - 1  # allocations before this one: requeues and resumes
    try:
        fitted = _fit(jobdir, spec, problem, mapper, stop, prior_runs, failed)
    except BaseException as exc:  # noqa: B036 - report it, stop the workers, exit non-zero
        _fit_failed(jobdir, exc, failures, *failed())
        mapper.stop()
        return 1
    mapper.stop()
    if fitted.checkpointer is not None and fitted.checkpointer.stopped:
        return _stopped(jobdir, spec, stop, fitted.checkpointer)
    count, evaluations = failed()
    result = fitted.result
    why = failures.verdict(count, evaluations, float(result["nllf"]))
    if why is not None:  # Bumps scored the model's failures as impossible points and went on: not a fit
        checkpoint.record_run(jobdir.path, update=True, finished=time.time(), reason="model failed")
        report = {"host": socket.gethostname(), "traceback": failures.first or "", "message": why}
        _write_error(jobdir, "fit", 0, report, failed_evaluations=count, evaluations=evaluations)
        return 1
    checkpoint.record_run(jobdir.path, update=True, finished=time.time(), reason="completed")
    this_run_s = float(result["elapsed_s"])
    if fitted.resumed:  # the fit's time across all its runs, not only this one's
        result["elapsed_s"] += float(fitted.info.get("elapsed_s", 0.0))
    result.update(
        Result(
            sandbox=confinement,
            restarts=prior_runs,
            ranks=comm.size,
            host=socket.gethostname(),
            started=started,
            finished=time.time(),
            threads={name: os.environ.get(name) for name in THREAD_VARIABLES},
            failed_evaluations=count,
            evaluations=evaluations,
            run_elapsed_s=this_run_s,
        )
    )
    if mapper.own_points:  # what an evaluation cost on rank 0: the measured side of the estimate
        result["seconds_per_evaluation"] = mapper.own_s / mapper.own_points
    if count and failures.first:  # the fit went on past them: the first one's traceback, to show
        result["first_failure"] = failures.first
    if gpus:
        result["gpus"] = gpus  # each rank's GPUs, as its runtime and Slurm named them
    return _write_result(jobdir, fitted, comm.size, stop)


def _fit(
    jobdir: JobDir, spec: Request, problem: Any, mapper: Any, stop: Any, prior_runs: int, failed: Any
) -> _Fitted:
    """Run the fit (from its checkpoint, if it has one) with its monitors: progress, convergence and
    checkpoints."""
    from . import checkpoint, session
    from .fit import fitter_class, run_fit
    from .progress import ProgressMonitor

    fit_id, options = spec["fit"], spec.get("fit_options", {})
    steps = fitter_class(fit_id).max_steps(problem, options)
    fit_state, info = None, {"elapsed_s": 0.0}
    saved = jobdir.file(CHECKPOINT_FILE)
    if fit_id in RESUMABLE_FITTERS and saved.exists():
        fit_state, info = checkpoint.load(saved, fit_id, problem.labels())  # and the random generator
        print(f"bumps-mpi: resuming from the checkpoint at step {info['step']}", flush=True)
        checkpoint.record_run(jobdir.path, update=True, resumed_from_step=info["step"])
    checkpointer = None
    if fit_id in RESUMABLE_FITTERS:
        every = float(_setting(spec, "checkpoint_every"))
        checkpointer = checkpoint.Checkpointer(saved, fit_id, stop, every, info, last_step=steps)
    progress = ProgressMonitor(
        jobdir.file(PROGRESS_FILE),
        problem,
        fit_id,
        steps,
        restarts=prior_runs,
        info=info,
        stopped=(lambda: checkpointer.stopped) if checkpointer else None,
        failures=failed,
    )
    convergence = session.convergence_monitor(problem)
    monitors: list[Any] = [progress, convergence] + ([checkpointer] if checkpointer else [])
    driver, result = run_fit(
        problem,
        fit_id,
        checkpoint.remaining_options(fit_id, options, fit_state) if fit_state is not None else options,
        mapper=mapper,
        seed=spec.get("seed") if fit_state is None else None,
        monitors=monitors,
        fit_state=fit_state,
        abort_test=(lambda: checkpointer.stopped) if checkpointer else None,
    )
    return _Fitted(fit_id, options, driver, result, checkpointer, fit_state is not None, info, convergence)


def _write_result(jobdir: JobDir, fitted: _Fitted, ranks: int, stop: Any) -> int:
    """result.json and Bumps' own files, then (unless near the time limit) the figures and the report."""
    result = fitted.result
    _bumps_files(jobdir, fitted.driver, fitted.fit_id, fitted.options, fitted.convergence, result)
    try:
        write_json(jobdir.file(RESULT_FILE), result)
    except OSError as exc:  # a full disk: say so where we can, with the numbers, and fail visibly
        message = f"the fit finished but {RESULT_FILE} could not be written: {exc.strerror or exc}"
        _write_error(jobdir, "result", 0, {"host": socket.gethostname(), "traceback": "", "message": message})
        _say(f"bumps-mpi: the result: {result}")
        return 1
    print(
        f"bumps-mpi: fit done, chisq={result['chisq_str']}, {result['elapsed_s']:.1f} s on {ranks} ranks",
        flush=True,
    )
    if not stop.poll():  # near the time limit, the figures wait for `bumps-submit plot` or `report`
        _figures_and_report(jobdir, fitted.driver, fitted.fit_id, result)
    return 0


def _fit_failed(jobdir: JobDir, exc: BaseException, failures: Any, count: int, evaluations: int) -> None:
    """error.json for a fit that raised: a rank's failure, a fitter broken by a failing model, or else."""
    from ..errors import RemoteError

    every = count and count >= evaluations
    why = failures.verdict(count, evaluations, math.inf if every else 0.0) if count else None
    if isinstance(exc, RemoteError):
        report = {"host": exc.host, "traceback": exc.remote_traceback, "message": str(exc)}
        _write_error(jobdir, "fit", exc.rank, report, point=exc.point)
    elif why is not None:  # the fitter broke on a model that failed (Bumps went on with inf values)
        report = _report(exc)
        report.update(message=why, traceback=f"{failures.first or ''}\n{report['traceback']}".strip())
        _write_error(jobdir, "fit", 0, report, failed_evaluations=count, evaluations=evaluations)
    else:
        _write_error(jobdir, "fit", 0, _report(exc))


def _bumps_files(
    jobdir: JobDir, driver: Any, fit_id: str, options: dict, convergence: Any, result: Result
) -> None:
    """Bumps' own exports and its session file, beside the result; the result stands without them."""
    from . import session
    from .fit import write_exports

    try:
        result["exports"] = write_exports(driver, fit_id, jobdir.file(EXPORT_DIR))
    except Exception as exc:  # the fit's result must not be lost to a failed export
        result["export_error"] = _report(exc)["message"]
    try:  # for Bumps' own viewer (bumps-submit open)
        best = [p["best"] for p in result["parameters"]]
        session.write(jobdir.file(SESSION_FILE), driver, fit_id, options, convergence, best, result["nllf"])
        result["session"] = SESSION_FILE
    except Exception as exc:
        result["session_error"] = _report(exc)["message"]


FIGURES_BUDGET_S = 300  # drawing at the job's end stops here; `bumps-submit plot` can always draw later


def _figures_and_report(jobdir: JobDir, driver: Any, fit_id: str, result: Result) -> None:
    """The fit's figures and report.html, drawn from the fit still in memory; never fails the fit."""

    def overtime(_signum: int, _frame: Any) -> None:
        raise TimeoutError(f"drawing took more than {FIGURES_BUDGET_S} s")

    previous = signal.signal(signal.SIGALRM, overtime)
    signal.alarm(FIGURES_BUDGET_S)
    try:
        from ..results import figures, report

        state = getattr(driver.fitter, "state", None) if fit_id == "dream" else None
        best = [p["best"] for p in result["parameters"]]
        manifest = figures.in_job(jobdir, driver.problem, best, state)
        path = report.write(jobdir, {"state": "COMPLETED", "exit": "0"})
        _say(f"bumps-mpi: {len(manifest['figures'])} figures in {manifest['seconds']:.1f} s; report: {path}")
    except Exception as exc:  # the result is safe already: say why, `bumps-submit plot` may do better
        _say(f"bumps-mpi: figures or report not written: {type(exc).__name__}: {exc}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _stopped(jobdir: JobDir, spec: Request, stop: Any, checkpointer: Any) -> int:
    """After a checkpoint on request: ask for a requeue, or say why not and how to continue."""
    from . import checkpoint

    now = time.time()
    checkpoint.record_run(
        jobdir.path,
        update=True,
        finished=now,
        reason=stop.reason,
        stop_requested=stop.requested_at,
        checkpoint_step=checkpointer.saved_step,
        checkpoint_s=checkpointer.save_s,
    )
    if checkpointer.save_error:  # the stop's checkpoint failed (a full disk): requeueing would not help
        report = {"host": socket.gethostname(), "traceback": "", "message": checkpointer.save_error}
        _write_error(jobdir, "checkpoint", 0, report)
        return 1
    where = f"stopped at step {checkpointer.saved_step} ({stop.reason}); checkpoint in {jobdir.path}"
    in_slurm = "SLURM_JOB_ID" in os.environ
    # SIGTERM reaches the ranks (not the batch shell) when Slurm preempts the job: requeue as at a time
    # limit. scancel and the time limit's own end also kill the batch shell, so no requeue follows them.
    requeueable = stop.reason in ("time limit", "terminated")
    if requeueable and in_slurm and not jobdir.file(CANCEL_FILE).exists():
        requeues = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        limit = int(_setting(spec, "max_requeues"))
        if requeues < limit:
            print(f"bumps-mpi: {where}; requeue {requeues + 1} of at most {limit}", flush=True)
            return checkpoint.REQUEUE_EXIT
        message = (
            f"{stop.reason} with the requeue limit ({limit}) spent: {where}; "
            f"continue with 'bumps-submit resume {jobdir.path}' (or submit with a longer --time)"
        )
        report = {"host": socket.gethostname(), "traceback": "", "message": message}
        _write_error(jobdir, "time limit", 0, report)
        return 1
    print(f"bumps-mpi: {where}; continue: bumps-submit resume {jobdir.path}", file=sys.stderr, flush=True)
    return 130 if stop.reason == "interrupted" else 143


def exit_with(code: int) -> None:
    """Leave with *code* after a handled failure: finalize MPI cleanly instead of mpi4py's MPI_Abort.

    Under srun an abort kills the step with signal 9, so accounting would show
    exit code 9 instead of the job's own 1. Unhandled exceptions still abort.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    if code == 0:
        sys.exit(0)
    from mpi4py import MPI

    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()
    os._exit(code)

"""Bumps on both sides: check a model on the login node, run the fit in the job, summarise results.

Uses only bumps.fitproblem, bumps.fitters and bumps.dream, whose API is the
same in bumps 1.0.4 and 1.0.5 (refl1d 1.0.1 pins 1.0.4).
"""

from __future__ import annotations

import errno
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelCheckError, UsageError
from ..jobdir import write_atomic
from ..records import Result


def fitter_class(fit_id: str) -> Any:
    from bumps import fitters

    extra = [getattr(fitters, name) for name in ("PSFit", "RLFit") if hasattr(fitters, name)]
    classes = [*fitters.FITTERS, *extra]  # PS and RL map whole generations but Bumps leaves them out
    for cls in classes:
        if cls.id == fit_id:
            return cls
    known = ", ".join(sorted(cls.id for cls in classes))
    raise UsageError(f"unknown fitter {fit_id!r}; choose one of: {known}")


def check_model_file(path: Path) -> None:
    """A readable regular file (through links, but not a loop of them), or a one-line ModelCheckError."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # pathlib's "Symlink loop" before Python 3.13
        raise ModelCheckError(f"model file {path} is a loop of symbolic links") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelCheckError(f"model file {path} is a loop of symbolic links") from None
    if path.is_dir():
        raise ModelCheckError(f"{path} is a directory: give the model's Python file")
    if not path.exists():
        raise ModelCheckError(f"model file not found: {path}")
    if not path.is_file():
        raise ModelCheckError(f"{path} is not a regular file: give the model's Python file")
    if not os.access(path, os.R_OK):
        raise ModelCheckError(f"model file {path} is not readable (permissions)")
    if not path.name.split(".")[0].strip():  # Bumps names the module from it (and fails with IndexError)
        raise ModelCheckError(
            f"model file {path.name!r}: Bumps cannot load a model whose file name starts with a dot; "
            f"rename it (for example {path.name.strip('.') or 'model.py'!r})"
        )


def load_model(path: Path | str, args: list[str] | None = None) -> Any:
    """Load a Bumps model file as `python model.py` would; any failure becomes a one-line ModelCheckError.

    The model's directory goes first on sys.path, so a model can import the helper
    modules beside it (Bumps itself only changes into that directory while loading).
    """
    from bumps.fitproblem import FitProblem, load_problem

    path = Path(path)
    check_model_file(path)
    directory = str(path.resolve().parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    try:
        problem = load_problem(path, list(args or []))
    except SyntaxError as exc:
        raise ModelCheckError(f"{path}: syntax error at line {exc.lineno}: {exc.msg}") from exc
    except BaseException as exc:  # noqa: B036 - a model may sys.exit(); still a check failure
        loaded = _problem_bumps_loaded(exc)  # Bumps uses whatever `problem` is, and fails on a wrong one
        if loaded is not None and not isinstance(loaded, FitProblem):
            raise ModelCheckError(_wrong_type(path, loaded)) from exc
        raise ModelCheckError(_one_line(path, exc)) from exc
    if not isinstance(problem, FitProblem):
        raise ModelCheckError(_wrong_type(path, problem))
    return problem


def _one_line(path: Path, exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"{path}: the model called sys.exit({exc.code!r}) while loading"
    return f"{path}: {type(exc).__name__}: {exc}".splitlines()[0] + refused_write_hint(exc)


def refused_write_hint(exc: BaseException) -> str:
    """For a write the sandbox refused (a library's cache, say): which path, and how to open it."""
    if not isinstance(exc, OSError) or exc.errno not in (errno.EACCES, errno.EPERM) or not exc.filename:
        return ""
    place = str(exc.filename) if os.path.isdir(exc.filename) else os.path.dirname(str(exc.filename))
    return (
        f" (if the sandbox refused it: a model may write only its job directory and your library cache; "
        f"if the model's library must write in {place}, open it with --write {place} (it must exist), or "
        "sandbox_write in your site profile)"
    )


def _wrong_type(path: Path, problem: Any) -> str:
    return (
        f"{path}: `problem` is a {type(problem).__name__}, not a FitProblem: a model must define "
        "problem = FitProblem(model) (from bumps.names import FitProblem)"
    )


def _problem_bumps_loaded(exc: BaseException) -> Any:
    """The `problem` Bumps' loader had in hand when *exc* was raised (after the model ran), or None."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        loader = code.co_name in ("load_problem", "_load_script_from_path")
        if loader and code.co_filename.endswith("fitproblem.py") and "problem" in tb.tb_frame.f_locals:
            return tb.tb_frame.f_locals["problem"]
        tb = tb.tb_next
    return None


def check_model(
    path: Path | str, args: list[str] | None = None, timing_s: float = 0.0, options: dict | None = None
) -> dict[str, Any]:
    """Load the model and evaluate it once at its starting point, as the job will; with *timing_s*, also
    time it (the estimate of the fit's cost) for at most about that long."""
    problem = load_model(path, args)
    try:
        labels = [str(label) for label in problem.labels()]
        started = time.perf_counter()
        value = problem.nllf(problem.getp())
        first_s = time.perf_counter() - started
        nllf = float(value)
    except BaseException as exc:  # noqa: B036
        raise ModelCheckError(
            f"{path}: evaluating the model failed: {type(exc).__name__}: {exc}{refused_write_hint(exc)}"
        ) from exc
    if not labels:
        raise ModelCheckError(f"{path}: the model has no fitted parameters")
    if not math.isfinite(nllf):
        raise ModelCheckError(
            f"{path}: the model's starting point evaluates to {nllf} (check data and bounds)"
        )
    found: dict[str, Any] = {"parameters": labels, "nllf": float(nllf)}
    if timing_s > 0:
        found["timing"] = time_evaluations(problem, first_s, timing_s, options or {})
    return found


TIMED_POINTS = 30  # points of the initial population, evaluated in turn
TIMED_AT_LEAST_S = 0.5  # a fast model is timed this long, over and over its points: a few evaluations of
# microseconds are mostly the first calls' caches


def time_evaluations(problem: Any, first_s: float, budget_s: float, options: dict) -> dict[str, Any]:
    """Seconds per evaluation: the median of evaluations at TIMED_POINTS points of the fit's initial
    population, each at least once and, for a fast model, in turn for TIMED_AT_LEAST_S, within
    *budget_s*; the first one (kernel compilation, caches) apart. A model whose first evaluation already
    took the budget is timed by that one alone, and the answer says so."""
    import statistics

    from bumps.initpop import generate

    times: list[float] = []
    start = np.array(problem.getp(), copy=True)
    if first_s < budget_s:
        try:
            points = generate(problem, init=options.get("init", "eps"), pop=-TIMED_POINTS)
        except Exception:  # an initializer that needs more (cov without a covariance): the start point
            points = [problem.getp()] * TIMED_POINTS
        began = time.perf_counter()
        deadline, enough = began + budget_s - first_s, began + min(TIMED_AT_LEAST_S, budget_s - first_s)
        while True:
            for point in points:
                started = time.perf_counter()
                try:
                    problem.nllf(point)
                except Exception:  # noqa: S112 - a failing point costs its time too; Bumps scores it inf
                    pass
                times.append(time.perf_counter() - started)
                if time.perf_counter() > deadline:
                    break
            if time.perf_counter() > min(deadline, enough):
                break
        problem.setp(start)  # the model as the check found it
    each = statistics.median(times) if times else first_s
    return {"first_s": first_s, "seconds_per_evaluation": each, "timed": len(times) or 1}


Mapper = Callable[[Any], Any]


MOSTLY_FAILED = 0.5  # a fit with more than this share of its evaluations failed ends FAILED


class Failures:
    """The model's failed evaluations in this process. Bumps catches what a model raises and scores the
    point as impossible (inf), so the fitter goes on and a fit of a model that always raises would end
    "completed" with chi-square NaN: count them, and keep the first traceback to show."""

    def __init__(self, problem: Any):
        self.calls = 0
        self.nonfinite = 0
        self.first: str | None = None
        model_nllf, nllf = problem.model_nllf, problem.nllf

        def counted_model_nllf() -> Any:
            try:
                return model_nllf()
            except Exception:
                if self.first is None:
                    import traceback

                    self.first = traceback.format_exc()[-8000:]
                raise

        def counted_nllf(pvec: Any = None) -> float:
            value = nllf(pvec)
            self.calls += 1
            if not math.isfinite(value):
                self.nonfinite += 1
            return value

        problem.model_nllf = counted_model_nllf  # Bumps calls both through the instance
        problem.nllf = counted_nllf

    def verdict(self, failed: int, evaluations: int, best_nllf: float) -> str | None:
        """Why the fit must end FAILED (its best point is not finite, or most evaluations failed), or None."""
        first = (self.first or "").strip().splitlines()
        cause = f": {first[-1]}" if first else " (no value: NaN or inf; any traceback is in the job's log)"
        share = f"{failed} of {evaluations} evaluations" if evaluations else f"{failed} evaluations"
        if not math.isfinite(best_nllf):
            return f"the model failed at every point the fit kept ({share} failed){cause}"
        if evaluations and failed > MOSTLY_FAILED * evaluations:
            return f"the model failed on most points ({share}){cause}"
        return None


def run_fit(
    problem: Any,
    fit_id: str,
    options: dict[str, Any],
    mapper: Mapper | None = None,
    seed: int | None = None,
    monitors: list[Any] | None = None,
    fit_state: Any = None,
    abort_test: Callable[[], bool] | None = None,
) -> tuple[Any, Result]:
    """Run one fit (or continue one from *fit_state*); returns the FitDriver and the result summary."""
    from bumps.fitters import FitDriver

    if seed is not None:
        np.random.seed(seed)
    driver = FitDriver(
        fitter_class(fit_id),
        problem=problem,
        monitors=monitors or [],
        mapper=mapper,
        abort_test=abort_test,
        **options,
    )
    start = time.perf_counter()
    x, fx = driver.fit(fit_state=fit_state)
    elapsed = time.perf_counter() - start
    return driver, summarise(driver, fit_id, x, fx, elapsed)


def summarise(driver: Any, fit_id: str, x: Any, fx: float, elapsed: float) -> Result:
    """best/mean/std per parameter: from DREAM's draws when sampling, else best and stderr."""
    problem = driver.problem
    problem.setp(x)
    labels = problem.labels()
    best = [float(v) for v in x]
    state = getattr(driver.fitter, "state", None)
    if fit_id == "dream" and state is not None:
        points = state.draw().points
        mean = [float(v) for v in points.mean(axis=0)[: len(labels)]]
        std = [float(v) for v in points.std(axis=0)[: len(labels)]]
    else:
        mean = best
        try:
            std = [float(v) for v in driver.stderr()]
        except Exception:  # covariance can fail at a degenerate point; results still stand
            std = [math.nan] * len(labels)
    return {
        "fitter": fit_id,
        "chisq": float(problem.chisq()),
        "chisq_str": problem.chisq_str(),
        "nllf": float(fx),
        "parameters": [
            {"name": n, "best": b, "mean": m, "std": s}
            for n, b, m, s in zip(labels, best, mean, std, strict=True)
        ],
        "elapsed_s": elapsed,
    }


def write_exports(driver: Any, fit_id: str, export_dir: Path) -> list[str]:
    """Bumps' own files: <name>.par always, the DREAM chain (.mc.gz) when sampling."""
    export_dir.mkdir(exist_ok=True)
    problem = driver.problem
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in (problem.name or "model"))
    written = []
    par = export_dir / f"{name}.par"
    values = zip(problem.labels(), problem.getp(), strict=True)
    write_atomic(par, "".join(f"{label} {value:.15g}\n" for label, value in values))
    written.append(par.name)
    state = getattr(driver.fitter, "state", None)
    if fit_id == "dream" and state is not None:
        from bumps.dream.state import save_state

        save_state(state, str(export_dir / name))
        written.extend(sorted(p.name for p in export_dir.glob(f"{name}-*")))
    return written

"""Bumps on both sides: check a model on the login node, run the fit in the job, summarise results.

Uses only bumps.fitproblem, bumps.fitters and bumps.dream, whose API is the
same in bumps 1.0.4 and 1.0.5 (DESIGN.md section 5).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelCheckError, UsageError
from .jobdir import write_atomic

# Population fitters that map whole generations but that Bumps leaves unregistered.
UNREGISTERED_MAPPING_FITTERS = ("PSFit", "RLFit")


def fitter_class(fit_id: str) -> Any:
    from bumps import fitters

    extra = [getattr(fitters, name) for name in UNREGISTERED_MAPPING_FITTERS if hasattr(fitters, name)]
    classes = [*fitters.FITTERS, *extra]
    for cls in classes:
        if cls.id == fit_id:
            return cls
    known = ", ".join(sorted(cls.id for cls in classes))
    raise UsageError(f"unknown fitter {fit_id!r}; choose one of: {known}")


def validate_fit_options(fit_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options checked against the fitter's own settings and coerced to their types."""
    settings = dict(fitter_class(fit_id).settings)
    clean: dict[str, Any] = {}
    for key, value in options.items():
        if key not in settings:
            names = ", ".join(sorted(settings))
            raise UsageError(f"fitter {fit_id!r} has no option {key!r}; its options are: {names}")
        clean[key] = _coerce(key, value, settings[key])
    return clean


def _coerce(key: str, value: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(default, int):
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            value = int(number)
        elif isinstance(default, float):
            value = float(value)
        else:
            return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"fit option {key}={value!r} is not a {type(default).__name__}") from None
    if value < 0:
        raise UsageError(f"fit option {key}={value!r} must not be negative")
    return value


def load_model(path: Path | str, args: list[str] | None = None) -> Any:
    """Load a Bumps model file; any failure becomes a one-line ModelCheckError."""
    from bumps.fitproblem import load_problem

    path = Path(path)
    if not path.is_file():
        raise ModelCheckError(f"model file not found: {path}")
    try:
        return load_problem(path, list(args or []))
    except SyntaxError as exc:
        raise ModelCheckError(f"{path}: syntax error at line {exc.lineno}: {exc.msg}") from exc
    except BaseException as exc:  # noqa: B036 - a model may sys.exit(); still a check failure
        raise ModelCheckError(f"{path}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc


def check_model(path: Path | str, args: list[str] | None = None) -> dict[str, Any]:
    """Load the model and evaluate it once at its starting point, as the job will."""
    problem = load_model(path, args)
    try:
        labels = problem.labels()
        nllf = problem.nllf(problem.getp())
    except BaseException as exc:  # noqa: B036
        raise ModelCheckError(f"{path}: evaluating the model failed: {type(exc).__name__}: {exc}") from exc
    if not labels:
        raise ModelCheckError(f"{path}: the model has no fitted parameters")
    if not math.isfinite(nllf):
        raise ModelCheckError(
            f"{path}: the model's starting point evaluates to {nllf} (check data and bounds)"
        )
    return {"parameters": labels, "nllf": float(nllf)}


Mapper = Callable[[Any], Any]


def run_fit(
    problem: Any,
    fit_id: str,
    options: dict[str, Any],
    mapper: Mapper | None = None,
    seed: int | None = None,
    monitors: list[Any] | None = None,
    fit_state: Any = None,
    abort_test: Callable[[], bool] | None = None,
) -> tuple[Any, dict[str, Any]]:
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


def summarise(driver: Any, fit_id: str, x: Any, fx: float, elapsed: float) -> dict[str, Any]:
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

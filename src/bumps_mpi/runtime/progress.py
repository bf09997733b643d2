"""The fit's own progress, written by rank 0 to progress.json for `status` and `watch`.

A Bumps monitor: at most one atomic write every few seconds (and one at the
end), never on the mapper's hot path. Only rank 0 runs it.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bumps.monitor import Monitor

from ..jobdir import write_json
from .checkpoint import true_step


class ProgressMonitor(Monitor):
    """Step, total steps, best nllf and chi-square, elapsed, ETA, non-finite evaluations."""

    def __init__(
        self,
        path: Path,
        problem: Any,
        fitter: str,
        steps: int,
        every_s: float = 2.0,
        restarts: int = 0,
        info: dict[str, Any] | None = None,
        stopped: Callable[[], bool] | None = None,
        failures: Callable[[], tuple[int, int]] | None = None,
    ):
        self.stopped = stopped  # true when the fit ended at a checkpoint, to continue later
        self.path = path
        self.restarts = restarts  # earlier allocations of this fit (requeues, resumes)
        self.earlier_s = float((info or {}).get("elapsed_s", 0.0))  # their time, from the checkpoint
        self.start_step = int((info or {}).get("step", 0))  # where this run resumed
        self._first_step: int | None = None  # this run's first step: the rate for the ETA
        self.problem = problem
        self.fitter = fitter
        self.steps = max(int(steps), 1)
        self.every_s = every_s
        self.failed = 0  # evaluations that gave NaN or inf (Bumps maps model failures to inf)
        self.evaluations: int | None = None
        self.failures = failures  # (failed, evaluations) of every rank, from the job; else the population's
        self._last = -math.inf
        self.unwritten = 0  # progress writes that failed (a full disk): said once

    def config_history(self, history: Any) -> None:
        history.requires(time=1, value=1, step=1, point=1, population_values=1)  # point: best, for figures

    def __call__(self, history: Any) -> None:
        if self._first_step is None and history.step:
            self._first_step = true_step(history)
        if self.failures is not None:
            self.failed, self.evaluations = self.failures()
        else:
            values = getattr(history, "population_values", None)
            if values and values[0] is not None:
                self.failed += int(sum(1 for v in values[0] if not math.isfinite(v)))
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._write(history, done=False)

    def final(self, history: Any, best: dict[str, Any]) -> None:
        if self.failures is not None:
            self.failed, self.evaluations = self.failures()
        stopped = self.stopped is not None and self.stopped()
        self._write(history, done=not stopped)  # a fit stopped at a checkpoint is not done

    def _write(self, history: Any, done: bool) -> None:
        step = max(true_step(history), self.start_step)  # a resumed run may have no step left to take
        elapsed = float(history.time[0]) if history.time else 0.0
        nllf = float(history.value[0]) if history.value else math.nan
        steps = max(self.steps, step)
        if self._first_step is None:
            self._first_step = step
        done_here = step - self._first_step + 1  # the first step seen was computed in this run too
        eta = 0.0 if done else (elapsed / done_here * (steps - step) if done_here > 0 else None)
        if self.stopped is not None and self.stopped():
            eta = None  # it waits for its next allocation: nobody knows when
        progress = {
            "fitter": self.fitter,
            "step": step,
            "steps": steps,
            "best_nllf": nllf,
            "chisq": float(self.problem.chisq(nllf=nllf)) if math.isfinite(nllf) else None,
            "elapsed_s": self.earlier_s + elapsed,
            "restarts": self.restarts,
            "eta_s": eta,
            "failed_evaluations": self.failed,
            "evaluations": self.evaluations,
            "done": done,
            "updated": time.time(),
        }
        try:
            write_json(self.path, progress)
        except OSError as exc:  # progress is for the user's eyes: a full disk must not end the fit
            if not self.unwritten:
                try:
                    print(f"bumps-mpi: cannot write {self.path.name}: {exc.strerror or exc}", file=sys.stderr)
                except OSError:
                    pass
            self.unwritten += 1

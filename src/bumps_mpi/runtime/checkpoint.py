"""Checkpoints: a fit that stops (time limit, preemption, Ctrl-C) continues later where it stopped.

One HDF5 file per job directory, written by rank 0 under a temporary name,
fsynced and renamed over the old one: a kill at any instant leaves the old
checkpoint or the new one, never a broken one. It holds the fitter's own
state (Bumps' `h5dump`: DREAM's chains, history and current population; DE's
history), numpy's global random generator and a little JSON about the run.

DREAM is stopped only where its outer loop ends (every `Dream.DE_steps`
generations): Bumps tests for the end of the chain there, so a fit resumed
from such a generation has exactly the generations the user asked for.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bumps.monitor import Monitor

from ..jobdir import CHECKPOINT_REQUEST_FILE, RUNS_FILE, STOP_FILE, JobDir, read_json, write_json

REQUEUE_EXIT = 3  # the job's exit code for "checkpointed at the time limit: requeue me"
IN_MEMORY_MAX = 256 << 20  # checkpoints up to this size are built in memory first (see save)


def _write_h5(target: Any, fit_id: str, fit_state: Any, info: dict[str, Any]) -> None:
    import h5py

    from .fit import fitter_class

    with h5py.File(target, "w") as h5:
        fitter_class(fit_id).h5dump(h5.create_group("fit_state"), fit_state)
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        h5.create_dataset("rng_keys", data=keys)
        h5.attrs["rng"] = json.dumps([name, int(pos), int(has_gauss), float(gauss)])
        h5.attrs["info"] = json.dumps({**info, "fit": fit_id})


def save(path: Path, fit_id: str, fit_state: Any, info: dict[str, Any]) -> float:
    """Write the checkpoint atomically; returns the seconds it took.

    libhdf5 writing to a full disk crashed rank 0 (SIGSEGV). So HDF5 builds the
    file in memory and Python writes it, and a full disk is an OSError (ENOSPC):
    the temporary file is removed and the previous checkpoint stays as it was.
    A large checkpoint (over 256 MB last time) would double rank 0's memory that
    way: it is written by libhdf5 directly, once the disk is seen to have twice
    its size free.
    """
    import io
    import shutil

    start = time.perf_counter()
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed while saving
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    previous = path.stat().st_size if path.exists() else 0
    try:
        if previous > IN_MEMORY_MAX:
            free = shutil.disk_usage(path.parent).free
            if free < 2 * previous:
                raise OSError(errno.ENOSPC, f"No space left on device ({free >> 20} MB free)")
            _write_h5(tmp, fit_id, fit_state, info)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        else:
            image = io.BytesIO()
            _write_h5(image, fit_id, fit_state, info)
            with open(tmp, "wb") as fh:
                fh.write(image.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash of the node
        finally:
            os.close(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return time.perf_counter() - start


def load(path: Path, fit: str | None = None, labels: list[str] | None = None) -> tuple[Any, dict[str, Any]]:
    """(fit state for FitDriver.fit(fit_state=...), info); restores numpy's random generator.

    With *fit* (and DREAM's parameter *labels*), a checkpoint of another fit is refused (ValueError): the
    file is in the job directory, where the model writes, and a requeue must continue this fit only.
    """
    import h5py

    from .fit import fitter_class

    with h5py.File(path, "r") as h5:
        info = json.loads(h5.attrs["info"])
        if fit is not None and info.get("fit") != fit:
            raise ValueError(f"the checkpoint is of a {info.get('fit')!r} fit, and this job runs {fit!r}")
        fit_state = fitter_class(info["fit"]).h5load(h5["fit_state"])
        saved = list(getattr(fit_state, "labels", None) or [])
        if labels is not None and saved and saved[: len(labels)] != list(labels):  # derived values follow
            raise ValueError(f"the checkpoint's parameters {saved} are not this model's {list(labels)}")
        name, pos, has_gauss, gauss = json.loads(h5.attrs["rng"])
        np.random.set_state((name, np.array(h5["rng_keys"]), pos, has_gauss, gauss))
    return fit_state, info


def remaining_options(fit_id: str, options: dict[str, Any], fit_state: Any) -> dict[str, Any]:
    """Fit options that make the resumed run end where the uninterrupted one would have.

    DE runs its steps on top of the saved ones: ask for the rest. DREAM runs until
    its *buffer's* generation count reaches steps + burn, and Bumps resets that
    count to the buffer size once the chain has wrapped around it (the oldest,
    burn-in generations are dropped), so resuming as is would run up to `burn`
    generations too many. Only burn can change (the buffer size follows samples),
    so burn is set to end the loop at the uninterrupted run's last generation.
    """
    from .fit import fitter_class

    settings = {**dict(fitter_class(fit_id).settings), **options}
    if fit_id == "de":
        return {**options, "steps": max(int(settings["steps"]) - int(fit_state["step"][-1]), 0)}
    if fit_id != "dream":
        return options
    from bumps.dream.core import Dream

    period = Dream.DE_steps
    steps = int(settings["steps"]) or math.ceil(int(settings["samples"]) / fit_state.Npop)
    burn = int(settings["burn"])
    last = 1 + period * math.ceil((steps + burn - 1) / period)  # the generation an uninterrupted run ends at
    buffer = period * math.ceil(steps / period)  # Bumps' chain buffer, in generations
    counted = min(fit_state.generation, buffer)  # where Bumps' own count starts on resume
    return {**options, "burn": max(counted + last - fit_state.total_generations - steps, 0)}


class StopRequest:
    """Why the fit should stop at its next checkpoint (a signal on rank 0, or the stop file), and
    whether a checkpoint is wanted without stopping (SIGUSR2, or the checkpoint-request file)."""

    def __init__(self, job: JobDir):
        self.stop_file = job.file(STOP_FILE)  # in the control directory: the batch script's, not the model's
        self.checkpoint_file = job.file(CHECKPOINT_REQUEST_FILE)
        self.reason: str | None = None
        self.requested_at: float | None = None
        self.checkpoint_wanted = False

    def install(self) -> None:
        """SIGUSR1: time limit soon; SIGTERM: preemption or kill; SIGINT: Ctrl-C (locally); SIGUSR2: save."""
        names = {signal.SIGUSR1: "time limit", signal.SIGTERM: "terminated", signal.SIGINT: "interrupted"}
        for signum, reason in names.items():
            signal.signal(signum, functools.partial(self._on_signal, reason))
        signal.signal(signal.SIGUSR2, lambda _s, _f: setattr(self, "checkpoint_wanted", True))

    def wants_checkpoint(self) -> bool:
        return self.checkpoint_wanted or self.checkpoint_file.exists()

    def checkpoint_done(self) -> None:
        self.checkpoint_wanted = False
        self.checkpoint_file.unlink(missing_ok=True)

    def _on_signal(self, reason: str, _signum: int, _frame: Any) -> None:
        self.request(reason)

    def request(self, reason: str, at: float | None = None) -> None:
        if self.reason is None:
            self.reason, self.requested_at = reason, at or time.time()

    def poll(self) -> bool:
        if self.reason is None and self.stop_file.exists():
            text = self.stop_file.read_text().split()
            at = float(text[0]) if text and _is_number(text[0]) else None
            self.request(" ".join(text[1:]) or "time limit", at)
        return self.reason is not None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


class Checkpointer(Monitor):
    """Rank 0's monitor: checkpoint every *every_s* seconds and when a stop is requested, then stop.

    The fit's abort_test is `checkpointer.stopped`, so the fit ends at the
    generation whose state was saved.
    """

    def __init__(
        self,
        path: Path,
        fit_id: str,
        stop: StopRequest,
        every_s: float,
        info: dict[str, Any],
        last_step: int | None = None,
    ):
        self.path, self.fit_id, self.stop, self.every_s = path, fit_id, stop, every_s
        self.last_step = last_step  # the fit's final step: it ends there anyway, never stop for a requeue
        self.carried = info  # carried across runs: elapsed_s of earlier runs, restarts
        self.stopped = False
        self.saved_step: int | None = None
        self.save_s: float | None = None
        self.save_error: str | None = None  # why the last save failed (a full disk): said, not fatal
        self._started = time.monotonic()
        self._last = time.monotonic()
        self._period = 1
        if fit_id == "dream":
            from bumps.dream.core import Dream

            self._period = Dream.DE_steps

    def config_history(self, history: Any) -> None:
        history.requires(step=1, time=1)

    def __call__(self, history: Any) -> None:
        step = true_step(history)
        if self.stopped or step < 1 or (step - 1) % self._period:
            return  # DREAM: only where its outer loop ends (see the module docstring)
        if self.last_step is not None and step >= self.last_step:
            return  # finishing costs less than a checkpoint, a requeue and a restart
        stopping, wanted = self.stop.poll(), self.stop.wants_checkpoint()
        if not stopping and not wanted and time.monotonic() - self._last < self.every_s:
            return
        state = self._fit_state(history)
        if state is None:
            return
        elapsed = self.carried.get("elapsed_s", 0.0) + time.monotonic() - self._started
        info = {**self.carried, "step": step, "elapsed_s": elapsed}
        try:
            self.save_s = save(self.path, self.fit_id, state, info)
        except OSError as exc:  # the fit goes on (a periodic save) or stops with this error (a stop's save)
            kept = f" (step {self.saved_step})" if self.saved_step else ""
            self.save_error = (
                f"the checkpoint at step {step} could not be saved: {exc.strerror or exc} "
                f"({self.path.parent}); the previous checkpoint{kept} is kept: free space there, then "
                "'bumps-submit resume'"
            )
            try:
                print(f"bumps-mpi: {self.save_error}", file=sys.stderr, flush=True)
            except OSError:  # the log is on the same full disk
                pass
            self._last = time.monotonic()
            self.stopped = stopping
            return
        self.save_error = None
        self.saved_step, self._last = step, time.monotonic()
        self.stopped = stopping
        if wanted:
            self.stop.checkpoint_done()

    def _fit_state(self, history: Any) -> Any:
        """The state to save here, or None where no loadable checkpoint exists yet (the stop waits)."""
        if self.fit_id == "dream":
            state = getattr(history, "fit_state", None)
            if state is not None and not len(state.CR_weight()[0]):
                return None  # step 1: no crossover update yet, and Bumps' loader fails on the empty table
            return state
        return history.snapshot()


def true_step(history: Any) -> int:
    """The fit's step counted from its very start: for DREAM, generations across every resume.

    (Bumps' own step count restarts from its buffer size when a wrapped chain is resumed.)
    """
    state = getattr(history, "fit_state", None)
    if state is not None and hasattr(state, "total_generations"):
        return int(state.total_generations)
    return int(history.step[0]) if history.step else 0


def record_run(job_dir: Path, **entry: Any) -> list[dict[str, Any]]:
    """Add to (or with `update=True`, complete) this allocation's entry in runs.json."""
    try:
        runs = read_json(job_dir / RUNS_FILE, kind=list) or []
    except Exception:  # a broken record of earlier runs: start a new one rather than fail the fit
        runs = []
    if entry.pop("update", False) and runs:
        runs[-1].update(entry)
    else:
        runs.append(entry)
    try:
        write_json(job_dir / RUNS_FILE, runs)
    except OSError:  # a record, not the fit: a full disk must not end the fit here
        pass
    return runs

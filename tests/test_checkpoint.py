"""Checkpoints: exact state at the stop, atomic under SIGKILL, and local stop-then-resume."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE, MODELS, cli, fake_job, one_line_error, wait_until

from bumps_mpi.jobdir import JobDir, control_dir
from bumps_mpi.runtime import checkpoint

SLOW = MODELS / "slow_peak.py"
OPTIONS = {"samples": 4000, "burn": 20, "pop": 5}


class _StopAt(checkpoint.StopRequest):
    """A stop asked for once the fit reaches *step* (what the time-limit trap does, at a known moment)."""

    def __init__(self, step: int):
        super().__init__(JobDir("."))
        self.step, self.at = 0, step

    def poll(self) -> bool:
        if self.step >= self.at:
            self.request("time limit")
        return self.reason is not None


class _Steps:
    def __init__(self, stop: _StopAt):
        self.stop = stop

    def config_history(self, history):
        history.requires(step=1)

    def __call__(self, history):
        self.stop.step = int(history.step[0])

    def final(self, history, best):
        pass

    def info(self, message):
        pass


def _fit_stopped_at(problem, fit_id: str, options: dict, stop_at: int, saved: Path, seed: int, **kw):
    """Run the fit with a stop asked for at *stop_at*; returns (driver, stop, checkpointer)."""
    from bumps_mpi.runtime.fit import run_fit

    stop = _StopAt(stop_at)
    checkpointer = checkpoint.Checkpointer(saved, fit_id, stop, 1e9, {}, **kw)
    driver, _ = run_fit(
        problem,
        fit_id,
        options,
        seed=seed,
        monitors=[_Steps(stop), checkpointer],
        abort_test=lambda: checkpointer.stopped,
    )
    return driver, stop, checkpointer


def _rows(state) -> dict[int, np.ndarray]:
    draws, points, _ = state.chains()
    return {int(d): points[i] for i, d in enumerate(draws)}


@pytest.mark.parametrize(
    ("stop_at", "saved_at"), [(0, 11), (1, 11), (2, 11), (10, 11), (11, 11), (12, 21), (21, 21), (40, 41)]
)
def test_every_checkpoint_dream_writes_loads_and_resumes(tmp_path, stop_at, saved_at):
    """A stop at any step gives a checkpoint that loads and resumes to the full fit. Step 1 is no
    checkpoint (Bumps cannot load a DREAM state with no crossover update yet): the stop waits for 11."""
    from bumps.fitproblem import load_problem

    from bumps_mpi.runtime.fit import run_fit

    problem = load_problem(EXAMPLE)
    saved = tmp_path / "checkpoint.h5"
    _, _, checkpointer = _fit_stopped_at(problem, "dream", OPTIONS, stop_at, saved, seed=5)
    assert checkpointer.stopped and checkpointer.saved_step == saved_at
    fit_state, info = checkpoint.load(saved)
    assert info["step"] == saved_at == fit_state.total_generations
    options = checkpoint.remaining_options("dream", OPTIONS, fit_state)
    resumed, _ = run_fit(problem, "dream", options, fit_state=fit_state)
    assert resumed.fitter.state.total_generations == 221


@pytest.mark.parametrize(("stop_at", "saved_at"), [(55, 61), (205, 211)])
def test_checkpoint_holds_the_chain_at_the_stop_and_resume_finishes_it(tmp_path, stop_at, saved_at):
    """Stopped at a requested step: the saved chain equals an uninterrupted run's up to there (fixed seed,
    NUMBA_DISABLE_JIT=1), DREAM stops at its next outer-loop boundary, and the resumed fit ends with the
    same number of generations as the uninterrupted one. At 211 the chain has wrapped around Bumps'
    200-generation buffer, whose own count then restarts (see checkpoint.remaining_options)."""
    from bumps.fitproblem import load_problem

    from bumps_mpi.runtime.fit import run_fit

    problem = load_problem(EXAMPLE)
    start = problem.getp().copy()
    full, _ = run_fit(problem, "dream", OPTIONS, seed=5)
    problem.setp(start)  # DREAM's "eps" start is the problem's current point
    saved = tmp_path / "checkpoint.h5"
    _, _, checkpointer = _fit_stopped_at(problem, "dream", OPTIONS, stop_at, saved, seed=5)
    assert checkpointer.stopped and checkpointer.saved_step == saved_at  # the next 1 + 10 k
    fit_state, info = checkpoint.load(saved)
    assert info["step"] == saved_at == fit_state.total_generations
    whole, part = _rows(full.fitter.state), _rows(fit_state)
    common = sorted(set(whole) & set(part))
    assert common and all(np.array_equal(whole[d], part[d]) for d in common)
    options = checkpoint.remaining_options("dream", OPTIONS, fit_state)
    resumed, _ = run_fit(problem, "dream", options, fit_state=fit_state)
    assert resumed.fitter.state.total_generations == full.fitter.state.total_generations == 221


def test_de_resumes_to_the_requested_number_of_steps(tmp_path):
    from bumps.fitproblem import load_problem

    from bumps_mpi.runtime.fit import run_fit

    problem, saved = load_problem(EXAMPLE), tmp_path / "checkpoint.h5"
    options = {"steps": 40, "pop": 5}
    _, _, checkpointer = _fit_stopped_at(problem, "de", options, 15, saved, seed=2)
    assert checkpointer.saved_step == 15
    fit_state, info = checkpoint.load(saved)
    resumed, _ = run_fit(
        problem, "de", checkpoint.remaining_options("de", options, fit_state), fit_state=fit_state
    )
    assert resumed.monitor_runner.history.step[0] == 40


WRITER = """
import sys, time
from pathlib import Path
from bumps_mpi.runtime import checkpoint
state, info = checkpoint.load(Path(sys.argv[1]))
target = Path(sys.argv[2])
print("ready", flush=True)
step = 0
while True:
    step += 1
    checkpoint.save(target, "dream", state, {**info, "step": step})
"""


@pytest.mark.parametrize("round_", range(3))
def test_checkpoint_killed_while_saving_is_always_loadable(tmp_path, round_):
    """SIGKILL at random moments while a process saves in a loop: the file left loads, every time."""
    from bumps.fitproblem import load_problem

    from bumps_mpi.runtime.fit import run_fit

    driver, _ = run_fit(load_problem(EXAMPLE), "dream", OPTIONS, seed=1)
    source = tmp_path / "source.h5"
    checkpoint.save(source, "dream", driver.fitter.state, {"step": 0})
    generations = checkpoint.load(source)[0].generation
    target = tmp_path / "job" / "checkpoint.h5"
    target.parent.mkdir()
    rng = random.Random(round_)
    steps = []
    for _ in range(6):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(source), str(target)], stdout=subprocess.PIPE, text=True
        )
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        if target.exists():
            state, info = checkpoint.load(target)  # raises if broken
            assert state.generation == generations
            steps.append(info["step"])
    assert steps  # at least one save finished in the six runs
    checkpoint.save(target, "dream", driver.fitter.state, {"step": -1})
    assert [p.name for p in target.parent.iterdir()] == ["checkpoint.h5"]  # stale temporaries cleaned


def _progress_step(job_dir: Path) -> int:
    try:
        return json.loads((job_dir / "progress.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _chain(job_dir: Path):
    from bumps.dream.state import load_state

    return load_state(str(job_dir / "export" / "slow_peak"))


@pytest.mark.mpi_launch
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_local_stop_then_resume_gives_the_full_chain(isolated, mpiexec, signum):
    """Ctrl-C (or SIGTERM) to `submit --local` checkpoints and stops; `resume` finishes the same fit."""
    fit = ["--samples", "8000", "--burn", "50", "--seed", "3"]
    done = cli("submit", SLOW, *fit, "--local", "--json", "--job-dir", isolated / "ref", "--", "0")
    reference = json.loads(done.stdout)  # the model's argument (its delay) comes last, after --
    assert reference["state"] == "COMPLETED"
    job_dir = isolated / "stopped"
    args = ["submit", SLOW, *fit, "--local", "-n", "2", "--job-dir", job_dir, "--", "0.002"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bumps_mpi", *map(str, args)],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: _progress_step(job_dir) >= 60 or proc.poll() is not None, "step 60", timeout=120)
    assert proc.poll() is None, "the fit ended before it could be stopped: make it longer"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "bumps-submit resume" in err and "CANCELLED" in out
    runs = json.loads((job_dir / "runs.json").read_text())
    assert runs[-1]["reason"] == {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}[signum]
    stopped_at = runs[-1]["checkpoint_step"]
    progress = json.loads((job_dir / "progress.json").read_text())
    assert 60 <= stopped_at < progress["steps"]
    assert progress["done"] is False and progress["eta_s"] is None  # stopped, to continue: not done
    assert not (job_dir / "result.json").exists()

    shown = cli("resume", job_dir, "--json", timeout=300)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    resumed = json.loads(shown.stdout)
    assert resumed["state"] == "COMPLETED" and resumed["restarts"] == 1, resumed
    runs = json.loads((job_dir / "runs.json").read_text())
    assert runs[-1]["resumed_from_step"] == stopped_at and runs[-1]["reason"] == "completed"
    ours, ref = _chain(job_dir), _chain(Path(reference["job_dir"]))
    assert (ours.generation, ours.draws) == (ref.generation, ref.draws)
    progress = json.loads((job_dir / "progress.json").read_text())
    assert (
        progress["step"]
        == progress["steps"]
        == json.loads((Path(reference["job_dir"]) / "progress.json").read_text())["step"]
    )
    assert list(
        control_dir(job_dir).glob("local.json.*")
    )  # the stopped run's record is kept, not overwritten
    again = cli("resume", job_dir)
    assert again.returncode == 1 and "already completed" in again.stderr


def test_a_stop_asked_for_at_the_last_generation_lets_the_fit_finish(tmp_path):
    """Requeueing a fit that is one checkpoint boundary from its end would cost a whole allocation."""
    from bumps.fitproblem import load_problem

    saved = tmp_path / "checkpoint.h5"  # the next boundary after 215, 221, is DREAM's last generation
    driver, stop, checkpointer = _fit_stopped_at(
        load_problem(EXAMPLE), "dream", OPTIONS, 215, saved, seed=5, last_step=221
    )
    assert stop.step == 221 and not checkpointer.stopped and driver.fitter.state.generation == 221


@pytest.mark.mpi_launch
def test_checkpoint_on_request_while_the_fit_goes_on(isolated, mpiexec):
    job_dir = isolated / "job"
    args = ["submit", SLOW, "--samples", "100000000", "--seed", "1", "--local", "--job-dir", job_dir]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bumps_mpi", *map(str, [*args, "--", "0.002"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _progress_step(job_dir) >= 30, "step 30", timeout=120)
        assert not (job_dir / "checkpoint.h5").exists()  # the periodic one is 600 s away
        asked = cli("checkpoint", job_dir)
        assert asked.returncode == 0 and "Asked" in asked.stdout, asked.stderr
        wait_until(lambda: not (job_dir / "checkpoint-request").exists(), "the checkpoint", timeout=120)
        step = checkpoint.load(job_dir / "checkpoint.h5")[1]["step"]
        assert step >= 30 and proc.poll() is None  # saved, and the fit goes on
        wait_until(lambda: _progress_step(job_dir) > step + 10, "the fit to go on", timeout=120)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    ended = cli("checkpoint", EXAMPLE.parent / "no-such-job")
    assert ended.returncode == 1 and ended.stderr.count("\n") == 1


def test_resume_loads_the_checkpoint_only_in_a_confined_child(isolated, tmp_path, landlock_abi):
    """checkpoint.h5 is the model's to write: resume parses it in a child confined as the job is, never
    in bumps-submit's own process. A checkpoint that leads outside the job (here a link) cannot be read."""
    from bumps.fitproblem import load_problem

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _fit_stopped_at(load_problem(EXAMPLE), "dream", OPTIONS, 11, elsewhere / "checkpoint.h5", seed=5)
    assert checkpoint.load(elsewhere / "checkpoint.h5")[1]["step"] == 11  # a good checkpoint, unconfined
    sandbox = {"level": "best-effort", "read": [], "max_file_mb": 64}
    job = fake_job(isolated / "jobs" / "linked", state="FAILED", result=False, sandbox=sandbox)
    (job / "checkpoint.h5").symlink_to(elsewhere / "checkpoint.h5")
    done = cli("resume", job)
    line = one_line_error(done, "checkpoint.h5 cannot be loaded", "nothing changed")
    assert "errno = 13" in line or "Permission denied" in line, line


def test_a_checkpoint_of_another_fit_is_refused_where_the_job_loads_it(tmp_path):
    """On a requeue or resume the job continues only its own fit: a checkpoint.h5 of another fitter or
    another model (the job directory is the model's to write) is refused, not continued."""
    from bumps.fitproblem import load_problem

    problem = load_problem(EXAMPLE)
    saved = tmp_path / "checkpoint.h5"
    _fit_stopped_at(problem, "dream", OPTIONS, 11, saved, seed=5)
    assert checkpoint.load(saved, "dream", problem.labels())[1]["step"] == 11
    with pytest.raises(ValueError, match="of a 'dream' fit, and this job runs 'de'"):
        checkpoint.load(saved, "de")
    with pytest.raises(ValueError, match="are not this model's"):
        checkpoint.load(saved, "dream", ["a", "b", "c", "d"])

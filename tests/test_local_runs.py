"""Local runs that lose their terminal, their supervisor or their disk: never stuck, never lost.

Real mpiexec runs with 2 ranks. A supervisor killed outright leaves the ranks
running: status must say so, cancel must stop them, and resume must continue a
stale run. A full disk (a small tmpfs, so root) must be reported, keep the old
checkpoint, and leave everything resumable once space is freed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE, FAILING_FIT, MODELS, cli, cli_json, fake_job, fill, one_line_error, wait_until

from bumps_mpi.cluster import processes
from bumps_mpi.jobdir import control_dir
from bumps_mpi.runtime import checkpoint

SLOW = MODELS / "slow_peak.py"
LONG_FIT = ["--samples", "40000", "--burn", "50", "--seed", "3"]  # about 1000 generations


def start(job_dir: Path, *extra: str, delay: str = "0.002", fit=LONG_FIT, **popen) -> subprocess.Popen:
    """`submit --local` of a slow fit in the background, as a user's terminal would run it."""
    args = ["submit", SLOW, *fit, "--local", "-n", "2", "--job-dir", job_dir, *extra, "--", delay]
    return subprocess.Popen(
        [sys.executable, "-m", "bumps_mpi", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **popen,
    )


def step(job_dir: Path) -> int:
    try:
        return json.loads((job_dir / "progress.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def rank_processes(job_dir: Path) -> list[dict]:
    return json.loads((job_dir / "ranks.json").read_text())


def nothing_left_running(job_dir: Path) -> bool:
    local = json.loads((control_dir(job_dir) / "local.json").read_text())
    return not any(processes.alive(p) for p in [local["launcher"], *rank_processes(job_dir)])


@pytest.mark.mpi_launch
def test_a_run_whose_supervisor_was_killed_is_running_cancellable_and_resumable(isolated, mpiexec):
    job_dir = isolated / "job"
    proc = start(job_dir)
    wait_until(lambda: step(job_dir) >= 20, what="progress")
    proc.kill()  # the terminal's process is gone for good; mpiexec and the ranks run on
    proc.wait()
    record = cli_json("status", job_dir)[0]
    assert record["state"] == "RUNNING" and record["exit_code"] is None, record

    cancelled = cli("cancel", job_dir)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "saved its checkpoint and stopped" in cancelled.stdout
    assert nothing_left_running(job_dir)
    record = cli_json("status", job_dir)[0]
    assert record["state"] == "CANCELLED", record
    saved = checkpoint.load(job_dir / "checkpoint.h5")[1]["step"]
    assert saved >= 20

    resumed = cli_json("resume", job_dir, timeout=300)
    assert resumed["state"] == "COMPLETED" and resumed["restarts"] == 1, resumed
    assert json.loads((job_dir / "runs.json").read_text())[-1]["resumed_from_step"] == saved


@pytest.mark.mpi_launch
def test_a_hangup_stops_the_run_with_a_checkpoint(isolated, mpiexec):
    """The terminal went away (SIGHUP): rank 0 checkpoints and stops; nothing runs on unwatched."""
    job_dir = isolated / "job"
    proc = start(job_dir, start_new_session=True)
    wait_until(lambda: step(job_dir) >= 20, what="progress")
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) != 0
    assert nothing_left_running(job_dir)
    record = cli_json("status", job_dir)[0]
    assert record["state"] == "CANCELLED", record
    assert json.loads((job_dir / "runs.json").read_text())[-1]["reason"] == "terminated"
    assert (job_dir / "checkpoint.h5").exists()


@pytest.mark.mpi_launch
def test_a_stale_run_is_reported_as_such_and_resumes(isolated, mpiexec):
    """Supervisor, mpiexec and ranks all killed: status says stale (not RUNNING forever); resume goes on."""
    job_dir = isolated / "job"
    proc = start(job_dir)
    wait_until(lambda: step(job_dir) >= 20, what="progress")
    assert cli("checkpoint", job_dir).returncode == 0
    wait_until(lambda: (job_dir / "checkpoint.h5").exists(), what="the checkpoint")
    proc.kill()
    proc.wait()
    local = json.loads((control_dir(job_dir) / "local.json").read_text())
    for process in [*rank_processes(job_dir), local["launcher"]]:
        if processes.alive(process):
            os.kill(process["pid"], signal.SIGKILL)
    wait_until(lambda: nothing_left_running(job_dir), timeout=30, what="the processes to go")
    record = cli_json("status", job_dir)[0]
    assert record["state"] == "FAILED" and record["reason"].startswith("stale:"), record
    assert "bumps-submit resume" in record["reason"]
    shown = cli("status", job_dir)
    assert "failed: stale: its processes are gone" in shown.stdout
    resumed = cli_json("resume", job_dir, timeout=300)
    assert resumed["state"] == "COMPLETED", resumed


def test_resume_loads_the_checkpoint_before_it_changes_anything(isolated):
    job = fake_job(isolated / "jobs" / "stopped", state="CANCELLED", result=False)
    (job / "checkpoint.h5").write_bytes(b"\x89HDF\r\n not really")
    (job / "error.json").write_text(json.dumps({"message": "earlier failure"}))
    before = {p.name: p.read_bytes() for p in job.iterdir() if p.is_file()}
    one_line_error(cli("resume", job), f"{job / 'checkpoint.h5'} cannot be loaded", "nothing changed")
    assert {p.name: p.read_bytes() for p in job.iterdir() if p.is_file()} == before


@pytest.mark.mpi_launch
def test_a_failed_local_run_shows_its_traceback_once(isolated, mpiexec):
    proc = cli("submit", MODELS / "fails_in_fit.py", *FAILING_FIT, "--local", "--jobs-dir", isolated / "jobs")
    assert proc.returncode == 1
    assert proc.stderr.count("Traceback (most recent call last)") == 1, proc.stderr
    assert "The fit failed on rank" in proc.stderr and "model exploded" in proc.stderr


@pytest.mark.mpi_launch
def test_a_model_that_imports_its_neighbour_runs_on_every_rank(isolated, mpiexec):
    model = MODELS / "neighbours" / "model.py"
    record = cli_json(
        "submit", model, "--local", "-n", "2", "--samples", "2000", "--jobs-dir", isolated / "jobs"
    )
    assert record["state"] == "COMPLETED", record
    # and under Bumps' own command line with our mapper
    out = isolated / "bumps-out"
    proc = subprocess.run(
        [
            mpiexec,
            "-n",
            "2",
            sys.executable,
            "-m",
            "bumps_mpi.bumps",
            str(model),
            "--fit=dream",
            "--samples=2000",
            "--batch",
            f"--export={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=isolated,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "model.par").is_file()


@pytest.mark.mpi_launch
@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o027, 0o640, 0o750), (0o022, 0o644, 0o755)])
def test_files_and_directories_follow_the_umask(isolated, mpiexec, umask, file_mode, dir_mode):
    """Every file the job writes, Bumps' exports included: a group sharing storage can read results."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bumps_mpi",
            "submit",
            str(EXAMPLE),
            "--local",
            "--samples",
            "1000",
            "--json",
            "--jobs-dir",
            str(isolated / "jobs"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(umask),
    )
    assert proc.returncode == 0, proc.stderr
    job_dir = Path(json.loads(proc.stdout)["job_dir"])
    assert (job_dir / "export").is_dir() and (job_dir / "result.json").is_file()
    for path in [job_dir, *job_dir.rglob("*")]:
        mode = path.stat().st_mode & 0o777
        assert mode == (dir_mode if path.is_dir() else file_mode), (str(path), oct(mode))
    assert (isolated / "registry.jsonl").stat().st_mode & 0o777 == file_mode


# --- a full disk ------------------------------------------------------------------------------------------


@pytest.mark.mpi_launch
def test_a_full_disk_is_reported_keeps_the_checkpoint_and_resumes(isolated, mpiexec, small_disk):
    job_dir = small_disk / "job"
    proc = start(job_dir, delay="0.005", fit=["--samples", "8000", "--burn", "50", "--seed", "3"])
    wait_until(lambda: step(job_dir) >= 20, what="progress")
    assert cli("checkpoint", job_dir).returncode == 0
    wait_until(lambda: (job_dir / "checkpoint.h5").exists(), what="the first checkpoint")
    kept = (job_dir / "checkpoint.h5").read_bytes()
    kept_step = checkpoint.load(job_dir / "checkpoint.h5")[1]["step"]
    filler = fill(small_disk)

    shown = cli("status", job_dir, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)[0]
    assert record["state"] == "RUNNING" and "no space left on the file system" in record["warning"], record
    asked = cli("checkpoint", job_dir)  # the request file itself cannot be written
    one_line_error(asked, "cannot write", "No space left on device")
    proc.send_signal(signal.SIGINT)  # stop: rank 0 tries to save, cannot, and says why
    proc.wait(timeout=120)
    assert nothing_left_running(job_dir)
    assert (job_dir / "checkpoint.h5").read_bytes() == kept  # the previous checkpoint, intact
    assert not list(job_dir.glob(".*.tmp"))  # no half-written file left behind on the full disk
    for command in ("status", "results"):
        done = cli(command, job_dir)
        assert "Traceback" not in done.stderr, done.stderr
    record = cli_json("status", job_dir)[0]
    assert record["state"] in ("FAILED", "CANCELLED") and "no space left" in record["warning"], record
    listed = cli("status")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr

    filler.unlink()
    resumed = cli("resume", job_dir, "--json", timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["state"] == "COMPLETED"
    runs = json.loads((job_dir / "runs.json").read_text())
    assert runs[-1]["resumed_from_step"] == kept_step


@pytest.mark.mpi_launch
def test_cancel_stops_a_fit_without_checkpoints_at_once(isolated, mpiexec):
    """amoeba keeps no checkpoint: cancel stops it at once through its supervisor (no 30 s wait, no kill)."""
    job_dir = isolated / "job"
    proc = start(job_dir, fit=["--fit", "amoeba", "--steps", "100000000"])
    wait_until(lambda: (job_dir / "ranks.json").exists() and step(job_dir) >= 2, what="progress")
    cancelled = cli("cancel", job_dir)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "it stopped" in cancelled.stdout and "killed" not in cancelled.stdout, cancelled.stdout
    assert proc.wait(timeout=60) != 0
    assert nothing_left_running(job_dir)
    assert cli_json("status", job_dir)[0]["state"] == "CANCELLED"


@pytest.mark.mpi_launch
def test_a_model_that_raises_on_every_evaluation_fails_with_its_traceback_and_count(isolated, mpiexec):
    """Bumps scores a model's exceptions as impossible points and goes on: the fit must still end FAILED,
    saying how many evaluations failed and why (before: COMPLETED with chi-square NaN)."""
    model = MODELS / "raises_sometimes.py"
    done = cli("submit", model, "--local", "-n", "2", "--samples", "2000", "--jobs-dir", isolated / "jobs",
               "--json", "--", "1.0")  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "FAILED", record
    error = record["error"]
    assert "the model failed at every point" in error["message"], error
    assert "RuntimeError: the model failed here on purpose" in error["message"]
    assert "the model failed here on purpose" in error["traceback"]
    saved = json.loads((Path(record["job_dir"]) / "error.json").read_text())
    assert saved["failed_evaluations"] == saved["evaluations"] > 0, saved
    assert not (Path(record["job_dir"]) / "result.json").exists()


@pytest.mark.mpi_launch
def test_a_model_that_raises_now_and_then_completes_and_says_how_often(isolated, mpiexec):
    model = MODELS / "raises_sometimes.py"
    done = cli("submit", model, "--local", "-n", "2", "--samples", "2000", "--jobs-dir", isolated / "jobs",
               "--json", "--", "0.1")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(done.stdout)
    assert record["state"] == "COMPLETED", record
    result = json.loads((Path(record["job_dir"]) / "result.json").read_text())
    failed, evaluations = result["failed_evaluations"], result["evaluations"]
    assert 0.05 * evaluations < failed < 0.15 * evaluations, (failed, evaluations)  # every rank's, counted
    shown = cli("results", record["job_dir"])
    assert f"the model failed on {failed} of {evaluations} evaluations" in shown.stdout, shown.stdout
    page = (Path(record["job_dir"]) / "report.html").read_text()
    assert f"{failed} of {evaluations}" in page


@pytest.mark.mpi_launch
def test_a_local_run_ends_at_its_time_limit_with_a_checkpoint_to_resume(isolated, mpiexec):
    """--time applies to a local run as to a Slurm allocation (before: a 5 s limit ran on past 20 s):
    rank 0 checkpoints and stops, the run ends TIMEOUT, and says how to continue."""
    fit = ["--samples", "40000", "--burn", "50", "--seed", "3"]
    done = cli("submit", MODELS / "slow_peak.py", *fit, "--local", "-n", "2", "--time", "00:00:05",
               "--jobs-dir", isolated / "jobs", "--json", "--", "0.002")  # fmt: skip
    record = json.loads(done.stdout)
    assert done.returncode == 1 and record["state"] == "TIMEOUT", done.stdout + done.stderr
    assert "time limit (5 s)" in record["reason"] and "bumps-submit resume" in record["reason"], record
    job_dir = Path(record["job_dir"])
    assert (job_dir / "checkpoint.h5").exists() and not (job_dir / "result.json").exists()
    runs = json.loads((job_dir / "runs.json").read_text())
    assert runs[-1]["reason"] == "time limit", runs
    assert nothing_left_running(job_dir)

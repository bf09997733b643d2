"""The mapper under a real mpiexec, launched: failures end the run, a dead rank is named, it never hangs.

Its values against serial, strategy by strategy, are tested in-process on every rank: tests/mpi/ (pytest-mpi).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE, MODELS

PROGRAMS = Path(__file__).parent / "mpi_programs"


BALANCE = pytest.mark.parametrize("balance", ["never", "always"], ids=["static", "guided"])


def launch(mpiexec: str, ranks: int, program: str, *args: str, timeout: float = 240, balance: str = "auto"):
    return subprocess.run(
        [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(PROGRAMS / program), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "BUMPS_MPI_BALANCE": balance},
    )


@pytest.mark.mpi_launch
@BALANCE
@pytest.mark.parametrize("mode", ["raise", "base", "kill"])
def test_failure_on_a_worker_ends_the_run(mpiexec, mode, balance):
    """The run ends non-zero well inside the 30 s bound (a hang would be the walltime)."""
    try:
        proc = launch(mpiexec, 2, "mapper_failure.py", mode, timeout=30, balance=balance)
    except subprocess.TimeoutExpired:
        pytest.fail(f"mode {mode}: the MPI run was still going after 30 s (a hang)")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "NOT REACHED" not in output
    if mode == "kill":
        # a dead process cannot report itself: mpiexec ends the run and says which process and why
        assert "BAD TERMINATION" in output and "signal 9" in output, output
    else:
        assert "rank 1 on " in output and "failed at point [13.0, 15.0]" in output, output
        assert ("bad point in the model" if mode == "raise" else "a BaseException from the model") in output


@pytest.mark.mpi_launch
def test_model_failure_during_fit_is_reported(mpiexec, isolated):
    """A failing model in a real job: error.json names the rank, host and point; the job exits non-zero."""
    proc = fail_locally("fails_in_fit.py", isolated)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout
    assert "model exploded at height=" in proc.stderr and "Traceback" in proc.stderr
    (job_dir,) = [p for p in (isolated / "jobs").iterdir() if not p.name.startswith(".")]
    import json

    error = json.loads((job_dir / "error.json").read_text())
    assert error["phase"] == "fit" and error["rank"] in (0, 1) and len(error["point"]) == 2
    assert error["point"][0] > 4.5 and "RuntimeError: model exploded" in error["traceback"]
    assert not (job_dir / "result.json").exists()


def fail_locally(model: str, isolated: Path):
    """Run a failing test model with --local -n 2 and return the finished bumps-submit process."""
    from conftest import FAILING_FIT, cli

    return cli(
        "submit",
        MODELS / model,
        "--local",
        "-n",
        "2",
        *FAILING_FIT,
        "--jobs-dir",
        isolated / "jobs",
        timeout=60,
    )


def bumps_cli(*args, mpiexec: str | None = None, ranks: int = 2, timeout: float = 120):
    module = ["-m", "bumps_mpi.bumps"] if mpiexec else ["-m", "bumps", "--parallel=1"]
    prefix = [mpiexec, "-n", str(ranks)] if mpiexec else []
    return subprocess.run(
        [*prefix, sys.executable, *module, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.mpi_launch
@pytest.mark.parametrize("fit, options", [("dream", ["--samples=2000"]), ("de", ["--steps=40"])])
def test_drop_in_for_bumps_cli_equals_serial(mpiexec, tmp_path, fit, options):
    """`mpiexec -n 3 python -m bumps_mpi.bumps MODEL`: Bumps' CLI with our mapper, same exports as serial."""
    common = [EXAMPLE, f"--fit={fit}", *options, "--seed=7", "--batch"]
    ours = bumps_cli(*common, f"--export={tmp_path / 'mpi'}", mpiexec=mpiexec, ranks=3)
    serial = bumps_cli(*common, f"--export={tmp_path / 'serial'}")
    assert ours.returncode == 0 and serial.returncode == 0, ours.stderr + serial.stderr
    assert (tmp_path / "mpi" / "peak.par").read_text() == (tmp_path / "serial" / "peak.par").read_text()


@pytest.mark.mpi_launch
def test_drop_in_failure_ends_the_run_non_zero(mpiexec, tmp_path):
    try:
        proc = bumps_cli(
            MODELS / "fails_in_fit.py",
            "--fit=dream",
            "--init=random",
            "--samples=2000",
            "--seed=3",
            "--batch",
            f"--export={tmp_path}",
            mpiexec=mpiexec,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the drop-in was still running 60 s after a model failure (a hang)")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert "RemoteError: rank " in output and "failed at point [" in output and "model exploded" in output


@pytest.mark.mpi_launch
def test_dead_rank_is_named_in_error_json(mpiexec, isolated):
    """A rank killed mid-fit: the run ends, and error.json says which rank died and how."""
    proc = fail_locally("dies_in_fit.py", isolated)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (job_dir,) = [p for p in (isolated / "jobs").iterdir() if not p.name.startswith(".")]
    error = json.loads((job_dir / "error.json").read_text())
    ranks = json.loads((job_dir / "ranks.json").read_text())
    assert [r["rank"] for r in ranks] == [0, 1]
    assert error["phase"] == "run" and error["rank"] == 1, error
    assert f"rank {error['rank']} on " in error["message"] and "died" in error["message"]
    assert "signal 9" in error["message"] or "Killed" in error["message"], error["message"]
    assert "died" in proc.stderr  # the user sees it too

"""The mapper under a real mpiexec: bit-identical to serial, and it never hangs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLE, MODELS

PROGRAMS = Path(__file__).parent / "mpi_programs"


def launch(mpiexec: str, ranks: int, program: str, *args: str, timeout: float = 240):
    return subprocess.run(
        [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(PROGRAMS / program), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.mpi_launch
@pytest.mark.parametrize("ranks", [2, 3])
def test_equivalent_to_serial(mpiexec, ranks):
    proc = launch(mpiexec, ranks, "mapper_equivalence.py", EXAMPLE, EXAMPLE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sizes = {0, 1, ranks - 1, ranks, ranks + 1, 7, 20, 101, 3001}
    assert f"OK {len(sizes) * 6 + 2} checks on {ranks} ranks" in proc.stdout  # 6 layouts a size, 2 fits


@pytest.mark.mpi_launch
@pytest.mark.parametrize("mode", ["raise", "base", "kill"])
def test_failure_on_a_worker_ends_the_run(mpiexec, mode):
    """The run ends non-zero well inside the 30 s bound (a hang would be the walltime)."""
    try:
        proc = launch(mpiexec, 2, "mapper_failure.py", mode, timeout=30)
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
    from conftest import cli

    proc = cli(
        "submit",
        MODELS / "fails_in_fit.py",
        "--local",
        "-n",
        "2",
        "--init",
        "random",
        "--seed",
        "3",
        "--samples",
        "2000",
        "--jobs-dir",
        isolated / "jobs",
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout
    assert "model exploded at height=" in proc.stderr and "Traceback" in proc.stderr
    (job_dir,) = (isolated / "jobs").iterdir()
    import json

    error = json.loads((job_dir / "error.json").read_text())
    assert error["phase"] == "fit" and error["rank"] in (0, 1) and len(error["point"]) == 2
    assert error["point"][0] > 4.5 and "RuntimeError: model exploded" in error["traceback"]
    assert not (job_dir / "result.json").exists()

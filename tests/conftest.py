"""Shared fixtures: every test gets its own registry and site config; Slurm is real or absent.

With BUMPS_MPI_REQUIRE_CLUSTER=1 (set by `make test` and CI) a missing
cluster or MPI runtime fails the Slurm and MPI tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "peak.py"
MODELS = Path(__file__).resolve().parent / "models"
REQUIRE = os.environ.get("BUMPS_MPI_REQUIRE_CLUSTER") == "1"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"}
# a small DREAM fit: 40 points a generation, 150 generations
SMALL_DREAM = ["--samples", "2000", "--burn", "100", "--seed", "7"]
# a fit whose random start reaches the failing region of the failing test models at once
FAILING_FIT = ["--init", "random", "--seed", "3", "--samples", "2000"]


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (BUMPS_MPI_REQUIRE_CLUSTER=1: this must not be skipped)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own registry, no user site file, bit-reproducible fits (DESIGN.md section 2)."""
    monkeypatch.setenv("BUMPS_MPI_REGISTRY", str(tmp_path / "registry.jsonl"))
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(tmp_path / "no-site.toml"))
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    for key in list(os.environ):
        if key.startswith("BUMPS_MPI_") and key not in (
            "BUMPS_MPI_REGISTRY",
            "BUMPS_MPI_CONFIG",
            "BUMPS_MPI_REQUIRE_CLUSTER",
        ):
            monkeypatch.delenv(key)
    return tmp_path


def cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """bumps-submit as a user runs it: a new process, its exit code, stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "bumps_mpi", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def cli_json(*args: str, **kw) -> object:
    proc = cli(*args, "--json", **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The project's cluster (scripts/slurm-cluster start), with accounting answering."""
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        acct = subprocess.run(
            ["sacctmgr", "-n", "list", "cluster"], capture_output=True, text=True, timeout=30
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        unavailable(f"no Slurm here ({exc}); start it with scripts/slurm-cluster start")
    if ping.returncode != 0 or "UP" not in ping.stdout or acct.returncode != 0:
        unavailable("the Slurm test cluster is not running; start it with scripts/slurm-cluster start")
    return True


@pytest.fixture(scope="session")
def mpiexec():
    exe = Path(sys.executable).parent / "mpiexec"
    if not exe.exists():
        unavailable("no mpiexec beside this Python: pip install mpich")
    return str(exe)


def wait_for_state(job: str, states: set[str] = TERMINAL, timeout: float = 240) -> dict:
    """Poll `status --json` (once a second) until the job reaches one of *states*; fail past *timeout*."""
    deadline = time.monotonic() + timeout
    record: dict = {}
    while time.monotonic() < deadline:
        record = cli_json("status", job)[0]
        if record["state"] in states:
            return record
        time.sleep(1)
    pytest.fail(f"job {job} did not reach {sorted(states)} in {timeout} s; last status: {record}")


def serial_fit(model: Path, fit: str, options: dict, seed: int) -> dict:
    """The same fit with plain Bumps in one process (its default serial map): the reference."""
    import numpy as np
    from bumps import fitters
    from bumps.fitproblem import load_problem

    problem = load_problem(model)
    cls = next(c for c in fitters.FITTERS if c.id == fit)
    np.random.seed(seed)
    driver = fitters.FitDriver(cls, problem=problem, monitors=[], **options)
    x, _ = driver.fit()
    problem.setp(x)
    return {"best": [float(v) for v in x], "chisq": float(problem.chisq()), "labels": problem.labels()}

"""Local mode: the same job under mpiexec here, no Slurm; it must match a serial Bumps fit exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import EXAMPLE, SMALL_DREAM, cli, cli_json, serial_fit

OPTIONS = {"samples": 2000, "burn": 100}


@pytest.mark.mpi_launch
def test_local_two_ranks_equals_serial(isolated, mpiexec):
    record = cli_json("submit", EXAMPLE, "--local", "-n", "2", *SMALL_DREAM, "--jobs-dir", isolated / "jobs")
    assert record["state"] == "COMPLETED" and record["exit_code"] == "0:0" and record["job_id"] is None
    found = cli_json("results", record["job_dir"])
    reference = serial_fit(EXAMPLE, "dream", OPTIONS, seed=7)
    assert found["ranks"] == 2 and found["fitter"] == "dream"
    assert [p["name"] for p in found["parameters"]] == reference["labels"]
    assert [p["best"] for p in found["parameters"]] == reference["best"]  # bit-identical
    assert found["chisq"] == reference["chisq"]
    for p in found["parameters"]:
        assert p["std"] > 0 and abs(p["mean"] - p["best"]) < 5 * p["std"]
    job_dir = Path(record["job_dir"])
    assert (job_dir / "export" / "peak.par").read_text().split()[0] == reference["labels"][0]
    assert any(name.endswith("chain.mc.gz") for name in found["exports"])
    assert (job_dir / "model" / "peak.py").read_text() == EXAMPLE.read_text()


@pytest.mark.mpi_launch
def test_local_listed_by_status(isolated, mpiexec):
    record = cli_json("submit", EXAMPLE, "--local", "-n", "2", *SMALL_DREAM, "--jobs-dir", isolated / "jobs")
    listed = cli_json("status")
    assert [r["job_dir"] for r in listed] == [record["job_dir"]]
    assert listed[0]["state"] == "COMPLETED" and listed[0]["chisq"] > 0
    human = cli("status")
    assert human.returncode == 0 and "COMPLETED" in human.stdout and "local" in human.stdout


@pytest.mark.mpi_launch
def test_hostile_model_path_and_jobs_dir(isolated, mpiexec):
    """Spaces, quotes, ;, $(...) in every path: the fit runs, and nothing the user did not write runs."""
    weird = isolated / 'it\'s a "dir"; touch PWNED $(touch PWNED2)'
    weird.mkdir()
    model = weird / "my model; $(touch PWNED3).py"
    shutil.copy(EXAMPLE, model)
    proc = cli(
        "submit",
        model,
        "--local",
        "-n",
        "2",
        "--name",
        "weird",
        *SMALL_DREAM,
        "--jobs-dir",
        weird / "jobs $(touch PWNED4)",
        "--json",
        cwd=isolated,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["state"] == "COMPLETED"
    assert Path(record["job_dir"]).parent == weird / "jobs $(touch PWNED4)"
    assert not list(isolated.rglob("PWNED*"))


@pytest.mark.mpi_launch
def test_model_file_name_with_a_newline(isolated, mpiexec):
    """The script never holds the model path (the job reads it from job.json), so even this one runs."""
    model = isolated / "two\nlines; $(touch PWNED).py"
    shutil.copy(EXAMPLE, model)
    record = cli_json(
        "submit",
        model,
        "--local",
        "-n",
        "2",
        "--name",
        "newline",
        *SMALL_DREAM,
        "--jobs-dir",
        isolated / "jobs",
    )
    assert record["state"] == "COMPLETED"
    assert (Path(record["job_dir"]) / "model" / model.name).is_file()
    assert not list(isolated.rglob("PWNED*"))


def test_model_name_with_odd_characters_needs_a_name(isolated):
    model = isolated / "my model.py"
    shutil.copy(EXAMPLE, model)
    proc = cli("submit", model, "--local", "--jobs-dir", isolated / "jobs")
    assert proc.returncode == 1 and "job name 'my model' is not allowed" in proc.stderr
    assert "--name" in proc.stderr and not (isolated / "jobs").exists()


@pytest.mark.mpi_launch
@pytest.mark.parametrize("flag, expected", [([], "1"), (["--threads", "2"], "2")])
def test_threads_per_rank(isolated, mpiexec, monkeypatch, flag, expected):
    """One numeric thread per rank by default, whatever the environment says; --threads changes it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    record = cli_json(
        "submit",
        EXAMPLE,
        "--local",
        "-n",
        "2",
        "--samples",
        "200",
        "--burn",
        "5",
        *flag,
        "--jobs-dir",
        isolated / "jobs",
    )
    threads = cli_json("results", record["job_dir"])["threads"]
    assert (
        threads["OMP_NUM_THREADS"]
        == threads["OPENBLAS_NUM_THREADS"]
        == threads["MKL_NUM_THREADS"]
        == expected
    )

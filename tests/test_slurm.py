"""End to end on the project's real Slurm cluster: submit, status, results, cancel."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import EXAMPLE, MODELS, SMALL_DREAM, cli, cli_json, serial_fit, wait_for_state

pytestmark = pytest.mark.slurm


def submit(isolated: Path, model: Path, *args) -> dict:
    submitted = cli_json("submit", model, *args, "--jobs-dir", isolated / "jobs", "--time", "5")
    assert submitted["job_id"].isdigit() and Path(submitted["job_dir"]).is_dir()
    return submitted


def test_fit_completes_and_equals_serial(slurm_cluster, isolated):
    submitted = submit(isolated, EXAMPLE, "--ntasks", "2", *SMALL_DREAM)
    job_id, job_dir = submitted["job_id"], Path(submitted["job_dir"])
    spec = json.loads((job_dir / "job.json").read_text())
    assert spec["slurm"]["job_id"] == job_id
    assert (job_dir / "run.sbatch").read_text().startswith("#!/bin/bash\n#SBATCH")
    # right after submit the job is never reported finished: accounting may not know it yet
    first = cli_json("status", job_id)[0]
    assert first["state"] in ("PENDING", "RUNNING", "COMPLETED") and first["job_dir"] == str(job_dir)
    record = wait_for_state(job_id)
    assert record["state"] == "COMPLETED", record
    assert record["exit_code"] == "0:0" and record["elapsed_s"] >= 0 and record["elapsed"]
    found = cli_json("results", job_id)
    reference = serial_fit(EXAMPLE, "dream", {"samples": 2000, "burn": 100}, seed=7)
    assert found["ranks"] == 2
    assert [p["best"] for p in found["parameters"]] == reference["best"]  # bit-identical to serial
    assert found["chisq"] == reference["chisq"]
    assert list(job_dir.glob("slurm-*.out")) == [job_dir / f"slurm-{job_id}.out"]
    human = cli("results", job_id)
    assert human.returncode == 0 and "chisq" in human.stdout and reference["labels"][0] in human.stdout


def test_failing_model_ends_failed_with_traceback(slurm_cluster, isolated):
    submitted = submit(
        isolated, MODELS / "fails_in_fit.py", "--init", "random", "--seed", "3", "--samples", "2000"
    )
    record = wait_for_state(submitted["job_id"])
    assert record["state"] == "FAILED" and record["exit_code"] == "1:0", record
    assert "model exploded at height=" in record["error"]["traceback"]
    assert record["error"]["point"][0] > 4.5
    shown = cli("status", submitted["job_id"])
    assert "FAILED" in shown.stdout and "RuntimeError: model exploded" in shown.stderr
    results = cli("results", submitted["job_id"])
    assert results.returncode == 1
    assert (
        "the fit failed on rank" in results.stderr and "Traceback (most recent call last)" in results.stderr
    )


def test_cancel_ends_cancelled(slurm_cluster, isolated):
    submitted = submit(isolated, EXAMPLE, "--fit-option", "samples=100000000", "--burn", "100000")
    wait_for_state(submitted["job_id"], {"RUNNING"}, timeout=120)
    proc = cli("cancel", submitted["job_id"])
    assert proc.returncode == 0 and f"Cancelled job {submitted['job_id']}" in proc.stdout
    record = wait_for_state(submitted["job_id"])
    assert record["state"] == "CANCELLED", record
    assert record["slurm_state"].startswith("CANCELLED")
    assert not (Path(submitted["job_dir"]) / "result.json").exists()


def test_hostile_paths_submitted_safely(slurm_cluster, isolated):
    weird = isolated / 'lab\'s "data"; touch PWNED $(touch PWNED2)'
    weird.mkdir()
    model = weird / "peak; $(touch PWNED3) `touch PWNED4`.py"
    shutil.copy(EXAMPLE, model)
    submitted = cli_json(
        "submit",
        model,
        "--name",
        "hostile",
        *SMALL_DREAM,
        "--time",
        "5",
        "--jobs-dir",
        weird / "jobs 'x' $(touch PWNED5)",
    )
    record = wait_for_state(submitted["job_id"])
    assert record["state"] == "COMPLETED", (record, _slurm_out(submitted["job_dir"]))
    assert cli_json("results", submitted["job_id"])["chisq"] > 0
    assert not list(isolated.rglob("PWNED*"))
    name = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobName", "-j", submitted["job_id"]],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert name == "hostile"


def test_status_lists_my_jobs_newest_first(slurm_cluster, isolated):
    first = submit(isolated, EXAMPLE, *SMALL_DREAM)
    second = submit(isolated, EXAMPLE, *SMALL_DREAM)
    listed = cli_json("status")
    assert [r["job_id"] for r in listed] == [second["job_id"], first["job_id"]]
    for job in (first, second):
        assert wait_for_state(job["job_id"])["state"] == "COMPLETED"


def _slurm_out(job_dir: str) -> str:
    return "\n".join(p.read_text() for p in Path(job_dir).glob("slurm-*.out"))


def test_dead_rank_ends_failed_and_is_named(slurm_cluster, isolated):
    submitted = submit(
        isolated, MODELS / "dies_in_fit.py", "--init", "random", "--seed", "3", "--samples", "2000"
    )
    record = wait_for_state(submitted["job_id"])
    assert record["state"] == "FAILED", record
    error = record["error"]
    assert error["phase"] == "run" and error["rank"] == 1, (error, _slurm_out(submitted["job_dir"]))
    assert f"rank {error['rank']} on " in error["message"] and "Killed" in error["message"]

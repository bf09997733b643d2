"""Bad input: one line on stderr, a non-zero exit, nothing written or overwritten."""

from __future__ import annotations

import pytest
from conftest import EXAMPLE, MODELS, cli


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else None


@pytest.mark.parametrize(
    "args, message",
    [
        ([MODELS / "does-not-exist.py"], "model file not found"),
        ([MODELS / "syntax_error.py"], "syntax error at line"),
        ([MODELS / "missing_data.py"], "no-such-data-file.dat"),
        ([EXAMPLE, "--fit", "dreem"], "unknown fitter 'dreem'; choose one of:"),
        ([EXAMPLE, "--fit", "amoeba", "--burn", "10"], "fitter 'amoeba' has no option 'burn'"),
        ([EXAMPLE, "--fit-option", "alpha=lots"], "alpha='lots' is not a float"),
        ([EXAMPLE, "--nodes", "-1"], "--nodes must be at least 1, got -1"),
        ([EXAMPLE, "--ntasks", "0"], "--ntasks must be at least 1"),
        ([EXAMPLE, "--name", "x; rm -rf ~"], "job name 'x; rm -rf ~' is not allowed"),
        ([EXAMPLE, "--partition", "a b"], "partition='a b' is not a valid Slurm value"),
        ([EXAMPLE, "--profile", "nope"], "unknown profile 'nope'"),
        ([EXAMPLE, "--local", "-n", "0"], "-n must be at least 1"),
    ],
)
def test_one_line_error_and_nothing_written(isolated, args, message):
    jobs = isolated / "jobs"
    proc = cli("submit", *args, "--jobs-dir", jobs)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bumps-submit: error: "), proc.stderr
    assert message in lines[0]
    assert not jobs.exists()
    assert not (isolated / "registry.jsonl").exists()


def test_existing_job_dir_is_not_touched(isolated):
    target = isolated / "mine"
    target.mkdir()
    (target / "result.json").write_text("precious")
    proc = cli("submit", EXAMPLE, "--job-dir", target, "--local")
    assert proc.returncode == 1
    assert "already exists" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert listing(target) == ["result.json"] and (target / "result.json").read_text() == "precious"


def test_unknown_job(isolated):
    for command in ("status", "results", "cancel"):
        proc = cli(command, "123456789")
        assert proc.returncode == 1 and "no job '123456789'" in proc.stderr


def test_dry_run_writes_nothing(isolated):
    jobs = isolated / "jobs"
    proc = cli("submit", EXAMPLE, "--jobs-dir", jobs, "--dry-run", "--ntasks", "3")
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --ntasks=3" in proc.stdout and "bumps_mpi.job" in proc.stdout
    assert not jobs.exists()


def test_sbatch_missing_is_clear(isolated, monkeypatch):
    """Outside a cluster, submit says so (and leaves no directory) instead of a traceback."""
    monkeypatch.setenv("PATH", "/nonexistent")
    jobs = isolated / "jobs"
    proc = cli("submit", EXAMPLE, "--jobs-dir", jobs)
    assert proc.returncode == 1
    assert "sbatch not found" in proc.stderr and "--local" in proc.stderr
    assert not jobs.exists()


def test_status_without_slurm_is_unknown_not_pending(isolated, monkeypatch):
    """When Slurm cannot answer, a submitted job's state is UNKNOWN with the reason, never a guess."""
    import json

    job_dir = isolated / "job"
    job_dir.mkdir()
    (job_dir / "job.json").write_text(json.dumps({"name": "peak", "slurm": {"job_id": "4242"}}))
    monkeypatch.setenv("PATH", "/nonexistent")
    record = json.loads(cli("status", job_dir, "--json").stdout)[0]
    assert record["state"] == "UNKNOWN" and record["job_id"] == "4242"
    assert "Slurm not reachable" in record["reason"] and "sacct" in record["reason"]

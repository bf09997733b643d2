"""GPUs (issue 22), tested where there is none: how a fit asks Slurm for them, which device files its
sandbox opens (read-write, since a GPU is driven by ioctl, and nothing else of /dev), and which GPUs each
rank was told it has, in ranks.json, result.json and the report. No GPU ran a fit here: see the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXAMPLE, cli, one_line_error

from bumps_mpi.sandbox import devices, policy


def test_gpus_are_asked_of_slurm_as_the_site_says(isolated):
    gres = cli("submit", EXAMPLE, "--dry-run", "--json", "--gpus", "1")
    assert gres.returncode == 0, gres.stderr
    shown = json.loads(gres.stdout)
    assert "#SBATCH --gres=gpu:1\n" in shown["script"] and shown["spec"]["sandbox"]["gpus"] == 1
    (isolated / "no-site.toml").write_text("[profiles.default]\ngpu_directive = 'gpus-per-task'\n")
    per_task = cli("submit", EXAMPLE, "--dry-run", "--gpus", "2")
    assert "#SBATCH --gpus-per-task=2\n" in per_task.stdout and "--gres" not in per_task.stdout
    none = cli("submit", EXAMPLE, "--dry-run", "--json")
    assert (
        "gpu" not in json.loads(none.stdout)["script"]
        and json.loads(none.stdout)["spec"]["sandbox"]["gpus"] == 0
    )
    one_line_error(cli("submit", EXAMPLE, "--dry-run", "--gpus", "-1"), "--gpus")
    (isolated / "no-site.toml").write_text("[profiles.default]\ngpu_directive = 'gpu'\n")
    one_line_error(
        cli("submit", EXAMPLE, "--dry-run", "--gpus", "1"), "gpu_directive", "gres or gpus-per-task"
    )


def test_the_gpu_device_files_a_job_may_open(tmp_path):
    """NVIDIA control files, the GPUs Slurm named (all when it names none), DRM nodes; no other device."""
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null", "sda", "mem"):
        (tmp_path / name).touch()
    (tmp_path / "dri").mkdir()
    (tmp_path / "dri" / "renderD128").touch()
    (tmp_path / "dri" / "card0").touch()  # a display: not a GPU job's business
    (tmp_path / "nvidia-caps").mkdir()  # a directory: every right beneath it, so never opened
    every = [tmp_path / n for n in ("nvidia-uvm", "nvidia0", "nvidia1", "nvidiactl")] + [
        tmp_path / "dri" / "renderD128"
    ]
    assert devices.gpu_device_files(str(tmp_path), {}) == [str(p) for p in every]
    step = devices.gpu_device_files(str(tmp_path), {"SLURM_STEP_GPUS": "1"})
    assert str(tmp_path / "nvidia1") in step and str(tmp_path / "nvidia0") not in step
    assert str(tmp_path / "nvidiactl") in step  # the driver's control files, whatever GPU it was given


def test_only_a_job_asking_for_gpus_may_write_their_devices(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "gpu_device_files", lambda: ["/dev/nvidia0", "/dev/nvidiactl"])
    spec = {"model": str(EXAMPLE), "sandbox": {"level": "best-effort", "gpus": 1}}
    asked = policy.job_policy(spec, 1, tmp_path)
    assert [p for p in asked.write if p.startswith("/dev/")] == [
        "/dev/shm",
        "/dev/null",
        "/dev/nvidia0",
        "/dev/nvidiactl",
    ]
    without = policy.job_policy({**spec, "sandbox": {"level": "best-effort"}}, 1, tmp_path)
    assert [p for p in without.write if p.startswith("/dev/")] == ["/dev/shm", "/dev/null"]


@pytest.mark.mpi_launch
def test_each_ranks_gpus_are_recorded_and_reported(isolated, mpiexec, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    done = cli("submit", EXAMPLE, "--local", "-n", "2", "--samples", "1000", "--seed", "1", "--json")
    assert done.returncode == 0, done.stderr
    job_dir = json.loads(done.stdout)["job_dir"]
    ranks = json.loads((Path(job_dir) / "ranks.json").read_text())
    assert [r["gpus"] for r in ranks] == [{"CUDA_VISIBLE_DEVICES": "0"}] * 2
    result = json.loads((Path(job_dir) / "result.json").read_text())
    assert result["gpus"] == {"0": {"CUDA_VISIBLE_DEVICES": "0"}, "1": {"CUDA_VISIBLE_DEVICES": "0"}}
    assert (
        "rank 0: CUDA_VISIBLE_DEVICES=0; rank 1: CUDA_VISIBLE_DEVICES=0"
        in (Path(job_dir) / "report.html").read_text()
    )

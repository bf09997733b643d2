"""Walltime-proof fits on the real cluster: checkpoint at the time limit, requeue, resume, finish.

Slurm holds a requeued job about two minutes (BeginTime) before it may run again. The tests release
that hold with `scontrol update StartTime=now`, but only 3 s after the requeue: released sooner, the
new allocation can be refused as "Job credential revoked" (seen on the test cluster). Users keep
Slurm's hold; nothing in bumps-mpi releases it.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import pytest
from conftest import MODELS, TERMINAL, cli, cli_json, sbatch_wrap

from bumps_mpi.jobdir import control_dir

pytestmark = pytest.mark.slurm

SLOW = MODELS / "slow_peak.py"
ONE_MINUTE = ["--time", "1", "--signal-grace", "15"]


def _squeue(job_id: str) -> str:
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"], capture_output=True, text=True)
    return proc.stdout.strip()


def follow(
    job_id: str,
    timeout: float,
    release: bool = True,
    until: set[str] | None = None,
    when: Callable[[dict], bool] | None = None,
) -> list[dict]:
    """Poll status about once a second until the job ends (or reaches *until*, or *when* holds),
    releasing requeue holds.

    Returns every status record seen (the states a user would have seen, in order).
    """
    until = until or TERMINAL - {"PREEMPTED"}
    seen: list[dict] = []
    held_since: float | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = cli_json("status", job_id)[0]
        seen.append(record)
        ended = record["state"] in TERMINAL and record["exit"] is None  # wait for its exit too
        if (record["state"] in until and not ended) or (when is not None and when(record)):
            return seen
        queue = _squeue(job_id)
        if release and queue.startswith("PENDING") and "BeginTime" in queue:
            held_since = held_since or time.monotonic()
            if time.monotonic() - held_since >= 3:
                subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)
                held_since = None
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not end in {timeout} s; last status {seen[-1] if seen else None}")


def _runs(job_dir: Path) -> list[dict]:
    return json.loads((job_dir / "runs.json").read_text())


def _chain(job_dir: Path):
    from bumps.dream.state import load_state

    return load_state(str(job_dir / "export" / "slow_peak"))


def test_fit_three_times_its_time_limit_requeues_itself_to_completion(slurm_cluster, isolated):
    """A fit needing ~3 one-minute allocations: COMPLETED on its own, restarts >= 2, the full chain, and a
    posterior that agrees with an uninterrupted run of the same fit."""
    fit = ["--samples", "40000", "--burn", "100", "--seed", "11"]
    done = cli("submit", SLOW, *fit, "--local", "--json", "--jobs-dir", isolated / "ref", "--", "0")
    reference = json.loads(done.stdout)
    assert reference["state"] == "COMPLETED"
    submitted = cli_json("submit", SLOW, *fit, *ONE_MINUTE, "--jobs-dir", isolated / "jobs")
    job_id, job_dir = submitted["job_id"], Path(submitted["job_dir"])
    seen = follow(job_id, timeout=600)
    final = seen[-1]
    assert final["state"] == "COMPLETED" and final["exit"] == "0", final
    assert "REQUEUED" in {r["state"] for r in seen}  # what status showed between allocations
    runs = _runs(job_dir)
    assert len(runs) >= 3 and final["restarts"] == len(runs) - 1, runs
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert earlier["reason"] == "time limit" and earlier["slurm_job_id"] == job_id
        assert later["resumed_from_step"] == earlier["checkpoint_step"]  # nothing lost in between
    assert runs[-1]["reason"] == "completed"
    progress = json.loads((job_dir / "progress.json").read_text())
    ref_dir = Path(reference["job_dir"])
    assert (
        progress["step"] == progress["steps"] == json.loads((ref_dir / "progress.json").read_text())["step"]
    )
    ours, ref = _chain(job_dir), _chain(ref_dir)
    assert (ours.generation, ours.draws) == (ref.generation, ref.draws)
    result, expected = cli_json("results", job_id), json.loads((ref_dir / "result.json").read_text())
    assert result["restarts"] == len(runs) - 1
    for got, want in zip(result["parameters"], expected["parameters"], strict=True):
        assert abs(got["mean"] - want["mean"]) < 0.5 * want["std"], (got, want)
        assert 0.7 < got["std"] / want["std"] < 1.4, (got, want)
    log = (control_dir(job_dir) / f"slurm-{job_id}.out").read_text()  # one log, appended by every allocation
    assert log.count("resuming from the checkpoint") == len(runs) - 1


def test_requeue_countdown_stops_with_a_message_and_the_checkpoint(slurm_cluster, isolated):
    fit = ["--samples", "100000000", "--burn", "100", "--ntasks", "1", "--max-requeues", "1"]
    submitted = cli_json("submit", SLOW, *fit, *ONE_MINUTE, "--jobs-dir", isolated / "jobs")
    job_dir = Path(submitted["job_dir"])
    final = follow(submitted["job_id"], timeout=400)[-1]
    assert final["state"] == "FAILED", final
    assert "requeue limit (1) spent" in final["error"]["message"]
    assert "bumps-submit resume" in final["error"]["message"]
    runs = _runs(job_dir)
    assert len(runs) == 2 and all(r["reason"] == "time limit" for r in runs)
    with h5py.File(job_dir / "checkpoint.h5", "r") as saved:
        assert json.loads(saved.attrs["info"])["step"] == runs[-1]["checkpoint_step"]

    # `resume` continues it as a new Slurm job, from that checkpoint; the old record is kept
    resumed = cli_json("resume", job_dir)
    new_id = resumed["job_id"]
    assert resumed["resumed"] and new_id != submitted["job_id"]
    assert (job_dir / "error.json").exists() is False and list(job_dir.glob("error.json.*"))
    try:

        def resumed(record: dict) -> bool:  # the third run has started and loaded the checkpoint
            runs = _runs(job_dir)
            return record["state"] == "RUNNING" and len(runs) == 3 and "resumed_from_step" in runs[-1]

        follow(new_id, 120, when=resumed)
        third = _runs(job_dir)[-1]
        assert third["slurm_job_id"] == new_id and third["resumed_from_step"] == runs[-1]["checkpoint_step"]
        listed = [r for r in cli_json("status") if r["job_dir"] == str(job_dir)]
        assert [r["job_id"] for r in listed] == [new_id]  # one line per job directory, the newest id
        assert cli_json("status", submitted["job_id"])[0]["job_id"] == new_id  # the old id still finds it
    finally:
        cli("cancel", new_id)


def test_cancel_of_a_requeued_job_leaves_no_requeue(slurm_cluster, isolated):
    fit = ["--samples", "100000000", "--burn", "100", "--ntasks", "1"]
    submitted = cli_json("submit", SLOW, *fit, *ONE_MINUTE, "--jobs-dir", isolated / "jobs")
    job_id = submitted["job_id"]
    follow(job_id, timeout=200, release=False, until={"REQUEUED"})
    cancelled = cli("cancel", job_id)
    assert cancelled.returncode == 0, cancelled.stderr
    final = follow(job_id, timeout=60, release=False)[-1]
    assert final["state"] == "CANCELLED", final
    assert _squeue(job_id) == ""  # gone from the queue: nothing left to run again
    assert len(_runs(Path(submitted["job_dir"]))) == 1


def test_preempted_fit_checkpoints_requeues_itself_and_resumes(slurm_cluster, isolated):
    """A job in the cluster's 'urgent' partition preempts ours (PreemptMode=REQUEUE, GraceTime=60, as sites
    run it): Slurm sends SIGTERM to the ranks, not the batch shell; rank 0 checkpoints, the job requeues
    itself, and once the urgent job is done it resumes from the checkpoint."""
    fit = ["--samples", "100000000", "--burn", "100", "--ntasks", "2", "--time", "10"]
    submitted = cli_json("submit", SLOW, *fit, "--jobs-dir", isolated / "jobs")
    job_id, job_dir = submitted["job_id"], Path(submitted["job_dir"])
    try:
        follow(job_id, 120, when=lambda r: (r.get("progress") or {}).get("step", 0) >= 20)
        urgent = sbatch_wrap(isolated, "sleep 5", "-p", "urgent", "-n", "2")
        seen = follow(job_id, 240, when=lambda r: r["state"] == "RUNNING" and len(_runs(job_dir)) == 2)
        assert "REQUEUED" in {r["state"] for r in seen}, seen[-1]
        first, second = _runs(job_dir)
        assert first["reason"] == "terminated" and first["checkpoint_step"] >= 20, first
        assert second["resumed_from_step"] == first["checkpoint_step"]
        done = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", urgent, "-o", "State"], capture_output=True, text=True
        )
        assert done.stdout.split() == ["COMPLETED"]
    finally:
        cli("cancel", job_id)
    assert follow(job_id, 60, release=False)[-1]["state"] == "CANCELLED"

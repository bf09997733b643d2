"""Slurm's state words and pending reasons, pinned with the words Slurm prints (no cluster needed)."""

from __future__ import annotations

import pytest

from bumps_mpi.jobstate import elapsed_seconds
from bumps_mpi.states import JobState, pending_hint


@pytest.mark.parametrize(
    "word, state",
    [
        ("COMPLETED", JobState.COMPLETED),
        ("CANCELLED by 0", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
        ("RUNNING", JobState.RUNNING),
        ("COMPLETING", JobState.RUNNING),
        ("CONFIGURING", JobState.RUNNING),
        ("REQUEUED", JobState.REQUEUED),
        ("REQUEUE_HOLD", JobState.REQUEUED),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("BOOT_FAIL", JobState.NODE_FAIL),
        ("DEADLINE", JobState.TIMEOUT),
        ("SOMETHING_NEW", JobState.UNKNOWN),
        ("", JobState.UNKNOWN),
    ],
)
def test_slurm_words(word, state):
    assert JobState.from_slurm(word) is state


def test_terminal_states():
    assert {s for s in JobState if s.terminal} == {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
    }


def test_pending_hints():
    never, text = pending_hint("QOSMaxWallDurationPerJobLimit")
    assert never and "--time" in text
    never, text = pending_hint("JobHeldUser")
    assert not never and "scontrol release" in text
    assert pending_hint("(DependencyNeverSatisfied)")[0]
    assert pending_hint("None") is None and pending_hint(None) is None and pending_hint("Whatever") is None


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("00:01:05", 65),
        ("1-02:00:00", 93600),
        ("12:34", 754),
        ("00:00:01.500", 1),
        ("INVALID", None),
        ("", None),
    ],
)
def test_elapsed(text, seconds):
    assert elapsed_seconds(text) == seconds


def test_postmortem_names_the_rank_and_keeps_an_out_of_memory_kill(tmp_path):
    """Recorded srun/slurmstepd lines (from the test cluster's real OOM run) pin the parser."""
    import json

    from bumps_mpi.postmortem import write_postmortem

    (tmp_path / "job.json").write_text("{}")
    (tmp_path / "ranks.json").write_text(json.dumps([{"rank": 0, "host": "vm", "pid": 11}]))
    log = tmp_path / "slurm-209.out"
    log.write_text(
        "srun: error: vm: task 0: Out Of Memory\n"
        "slurmstepd-vm: error: Detected 1 oom-kill event(s) in StepId=209.0. Some of your processes may "
        "have been killed by the cgroup out-of-memory handler.\n"
    )
    error = write_postmortem(tmp_path, 1, log)
    assert error["rank"] == 0 and error["killed_by"] == "OUT_OF_MEMORY"
    assert error["message"] == "rank 0 on vm died: Out Of Memory (launcher exit status 1)"
    (tmp_path / "error.json").unlink()
    log.write_text("srun: error: vm: task 1: Killed\n")
    assert "killed_by" not in write_postmortem(tmp_path, 137, log)

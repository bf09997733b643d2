"""Slurm's state words and pending reasons, pinned with the words Slurm prints (no cluster needed)."""

from __future__ import annotations

import pytest

from bumps_mpi.cluster.jobstate import elapsed_seconds
from bumps_mpi.cluster.states import JobState, pending_hint


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
    """The ends a job can reach: what `watch` stops at (conftest.TERMINAL is this set, imported)."""
    ends = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"}
    assert {s.value for s in JobState if s.terminal} == ends
    assert not any(
        s.terminal for s in (JobState.PENDING, JobState.RUNNING, JobState.REQUEUED, JobState.UNKNOWN)
    )


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

    from bumps_mpi.cluster.postmortem import write_postmortem

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


class _DbJob:
    """The attributes of pyslurm.db.Job that the pyslurm backend reads."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_pyslurm_records_read_like_sacct():
    from bumps_mpi.cluster.pyslurm_backend import record

    job = _DbJob(id=42, name="peak", state="TIMEOUT", exit_code=0, exit_code_signal=15, elapsed_time=90061)
    assert record(job) == {
        "JobIDRaw": "42",
        "JobName": "peak",
        "State": "TIMEOUT",
        "ExitCode": "0:15",
        "Elapsed": "1-01:01:01",
    }


def test_pyslurm_backend_agrees_with_sacct(slurm_cluster):
    """Where pyslurm imports (a build for this Slurm), it must say what sacct says for the same jobs."""
    pytest.importorskip("pyslurm", reason="pyslurm is not built for this Slurm (PyPI has 25.11 only)")
    import subprocess

    from bumps_mpi.cluster import pyslurm_backend, slurm

    ids = subprocess.run(
        ["sacct", "-X", "-n", "-a", "-o", "JobIDRaw", "--starttime", "now-1hour"],
        capture_output=True,
        text=True,
    ).stdout.split()[:20]
    assert ids, "no recent jobs to compare: run the Slurm tests first"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BUMPS_MPI_ACCOUNTING", "sacct")
        expected = slurm.sacct(ids)
    assert pyslurm_backend.jobs(ids) == expected


@pytest.mark.parametrize(
    "slurm_code, script_status, words",
    [
        ("0:0", None, "0"),
        ("1:0", None, "exit 1"),
        ("0:9", None, "killed by signal 9 (SIGKILL)"),
        ("0:15", None, "killed by signal 15 (SIGTERM)"),
        ("9:0", 137, "killed by signal 9 (SIGKILL)"),  # what Slurm stores for a script's exit 137
        ("15:0", 143, "killed by signal 15 (SIGTERM)"),
        ("1:0", 1, "exit 1"),
        (None, 0, "0"),  # accounting has not caught up; the script's own record is enough
        (None, -9, "killed by signal 9 (SIGKILL)"),  # a local run's mpiexec, killed
        (None, None, None),
    ],
)
def test_exit_codes_in_words(slurm_code, script_status, words):
    from bumps_mpi.cluster.states import describe_exit

    assert describe_exit(slurm_code, script_status) == words


def test_a_launcher_failure_names_no_rank_it_does_not_know(tmp_path):
    """No 'rank None (None)': when the launcher's output names no rank, the message says what is known."""
    from bumps_mpi.cluster.postmortem import write_postmortem
    from bumps_mpi.errors import JobFailed

    (tmp_path / "job.json").write_text("{}")
    log = tmp_path / "local.out"
    log.write_text("mpiexec: cannot start proxy\n")
    error = write_postmortem(tmp_path, 255, log)
    assert error["rank"] is None and error["message"].startswith(
        "the launcher failed (launcher exit status 255"
    )
    assert str(JobFailed(error)) == f"the fit failed: {error['message']}"
    assert "None" not in str(JobFailed(error))


def test_terminal_control_sequences_are_stripped():
    from bumps_mpi.text import one_line, plain

    hostile = "a\x1b[2J\x1b]0;title\x07b\rc\x00d\x9b31me\u202eevil\u2066\nnext\tline"
    assert plain(hostile) == "abcdeevil\nnext\tline"
    assert one_line(hostile) == "abcdeevil next\tline"


def test_preempted_and_node_fail_are_terminal_but_never_final():
    from bumps_mpi.cluster.states import FINAL, TERMINAL

    assert JobState.PREEMPTED.terminal and not JobState.PREEMPTED.final
    assert JobState.NODE_FAIL.terminal and not JobState.NODE_FAIL.final
    assert FINAL == TERMINAL - {JobState.PREEMPTED, JobState.NODE_FAIL}


@pytest.mark.parametrize("state", ["PREEMPTED", "NODE_FAIL"])
def test_preempted_or_node_fail_ends_for_good_once_it_has_left_the_queue(state):
    """Slurm requeues such a job in its queue; gone from it (or never requeueable), nothing will: wait,
    resume --failed and the service's limits must not wait for it forever."""
    from bumps_mpi.cluster.jobstate import ended_for_good

    assert ended_for_good({"state": state, "in_queue": False})
    assert not ended_for_good({"state": state, "in_queue": True})
    assert not ended_for_good({"state": state, "in_queue": None})  # the queue could not say
    assert not ended_for_good({"state": state})
    assert ended_for_good({"state": "FAILED"}) and not ended_for_good({"state": "FAILED", "finishing": True})


def test_a_process_from_an_earlier_boot_is_dead_and_without_proc_the_pid_decides(monkeypatch):
    import os

    from bumps_mpi.cluster import processes

    me = processes.identity()
    assert processes.alive(me) is True
    assert processes.alive({**me, "start": me["start"] + 1}) is False  # a reused pid
    assert processes.alive({**me, "boot": "an-earlier-boot"}) is False  # the machine restarted
    assert processes.alive({**me, "host": "elsewhere"}) is None  # only that host can tell
    assert processes.alive("oops") is None and processes.alive({"pid": "1"}) is None
    monkeypatch.setattr(processes, "_boot_id", lambda: None)  # no /proc: the pid alone
    assert processes.alive({"pid": os.getpid(), "host": me["host"]}) is True
    assert processes.alive({"pid": 2**22 + 12345, "host": me["host"]}) is False

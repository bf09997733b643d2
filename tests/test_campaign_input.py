"""Campaign input checked before anything is written, and array ids as Slurm prints them (no cluster)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import EXAMPLE, ROOT, cli, one_line_error

from bumps_mpi.cluster import slurm, states
from bumps_mpi.front.campaign import array_text, fits_from


def test_array_ids_expand_slurms_ranges():
    assert states.array_ids("7_[0-2,5%2]") == ["7_0", "7_1", "7_2", "7_5"]
    assert states.array_ids("7_[4]") == ["7_4"]
    assert states.array_ids("7_3") == ["7_3"] and states.array_ids("9") == ["9"]


def test_array_text():
    assert array_text([0, 1, 2, 3, 4, 5], 2) == "0-5%2"
    assert array_text([1, 4], None) == "1,4"
    assert array_text([0], 3) == "0%3"


def test_sacct_records_of_array_tasks_are_keyed_by_task(isolated, monkeypatch):
    """A pending array's tasks are one line '630_[2-3%2]' (its raw id the array's), started ones their own
    raw ids: both are found by task id, and the array's id is what is asked for, once."""
    shims = isolated / "shims"
    shims.mkdir()
    calls = isolated / "calls"
    answer = isolated / "sacct.txt"  # JobIDRaw|JobID|JobName|State|ExitCode|Elapsed, as sacct -P prints
    answer.write_text(
        "631|630_0|peak|COMPLETED|0:0|00:00:03\n632|630_1|peak|RUNNING|0:0|00:00:01\n"
        "630|630_[2-3%2]|peak|PENDING|0:0|00:00:00\n640|640|peak|FAILED|1:0|00:00:02\n"
        "650|650|peak|CANCELLED by 0|0:0|00:00:00\n"
    )
    (shims / "sacct").write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncat {answer}\n')
    (shims / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    monkeypatch.setenv("BUMPS_MPI_ACCOUNTING", "sacct")
    found = slurm.sacct(["630_0", "630_3", "640", "630_2", "650_4"])
    assert found["630_0"]["State"] == "COMPLETED" and found["630_1"]["State"] == "RUNNING"
    assert found["630_2"]["State"] == found["630_3"]["State"] == "PENDING"
    assert found["640"]["State"] == "FAILED"
    assert found["650_4"]["State"] == "CANCELLED by 0"  # cancelled before it started: the array's record
    assert calls.read_text().split()[-1] == "630,640,650"


def test_fits_from_each_args_from_and_models(tmp_path):
    for name in ("b.dat", "a.dat"):
        (tmp_path / name).write_text("1 2 3\n")
    fits, labels, reads = fits_from(EXAMPLE, ["--x={}", "end"], each=str(tmp_path / "*.dat"))
    assert [args for _, args in fits] == [[f"--x={tmp_path / n}", "end"] for n in ("a.dat", "b.dat")]
    assert reads == [[tmp_path / "a.dat"], [tmp_path / "b.dat"]]  # each fit may read its own file only
    fits, _, _ = fits_from(EXAMPLE, ["first"], each=str(tmp_path / "*.dat"))
    assert fits[0][1] == ["first", str(tmp_path / "a.dat")]
    lines = tmp_path / "args.txt"
    lines.write_text("# scans\n'two words' 1\n\n  3 4  # comment\n")
    fits, labels, _ = fits_from(EXAMPLE, ["x"], args_from=lines)
    assert [args for _, args in fits] == [["x", "two words", "1"], ["x", "3", "4"]]
    assert labels == ["'two words' 1", "3 4"]
    fits, labels, _ = fits_from(EXAMPLE, ["d"], models=[Path("other/quad.py")])
    assert [(m.name, a) for m, a in fits] == [("peak.py", ["d"]), ("quad.py", ["d"])]


@pytest.mark.parametrize(
    "options, fragments",
    [
        (["--each", "/nonexistent/*.dat"], ["--each", "matches no file"]),
        (["--args-from", "/nonexistent/args.txt"], ["--args-from", "No such file"]),
        (["--each", "*.py", "--args-from", "x"], ["exactly one of"]),
        (["--max-running", "2"], ["--max-running is for a campaign"]),
        (["--each", str(EXAMPLE), "--local"], ["--local"]),
        (["--each", str(EXAMPLE), "--max-running", "0"], ["--max-running must be at least 1"]),
    ],
)
def test_bad_campaign_options_are_one_line_errors_and_write_nothing(isolated, options, fragments):
    proc = cli("submit", EXAMPLE, *options, "--jobs-dir", isolated / "jobs")
    one_line_error(proc, *fragments)
    assert not (isolated / "jobs").exists() and not (isolated / "registry.jsonl").exists()


def test_args_from_with_bad_quoting_names_the_line(isolated):
    lines = isolated / "args.txt"
    lines.write_text("ok 1\n'unclosed\n")
    proc = cli("submit", EXAMPLE, "--args-from", lines, "--jobs-dir", isolated / "jobs")
    one_line_error(proc, "line 2", "No closing quotation")
    empty = isolated / "empty.txt"
    empty.write_text("# nothing\n\n")
    one_line_error(cli("submit", EXAMPLE, "--args-from", empty), "no argument lines")


def test_campaign_commands_on_a_single_fit_and_unknown_names(isolated):
    one_line_error(cli("resume", "999999", "--failed"), "999999")
    one_line_error(cli("results", "999999", "--csv"), "--csv is for a campaign")


def test_a_data_file_named_relative_to_here_is_found_by_the_check_and_the_job(isolated):
    """The check and the job run in their own directories: a model argument naming a file is made absolute
    (and only that file is opened to the model's sandbox)."""
    data = isolated / "data"
    data.mkdir()
    (data / "run 1.dat").write_text((ROOT / "examples" / "data" / "peak-100K.dat").read_text())
    model = ROOT / "examples" / "peak_file.py"
    proc = cli("submit", model, "--dry-run", "--json", "--", "data/run 1.dat", "0.5", cwd=isolated)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)["spec"]
    assert spec["model_args"] == [str(data / "run 1.dat"), "0.5"]
    assert str(data / "run 1.dat") in spec["sandbox"]["read"] and str(data) not in spec["sandbox"]["read"]


def test_only_the_submitters_own_file_arguments_are_opened_to_the_sandbox(tmp_path):
    """The command line and the Python API name their user's data; the job controller's users may not
    name a file of the service's host and have the confined model read it."""
    from bumps_mpi.config import load_settings
    from bumps_mpi.front.submission import JobRequest, sandbox_for

    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    mine = JobRequest(model=EXAMPLE, model_args=[str(secret), "x" * 300], own_files=True)
    assert str(secret) in sandbox_for(mine, load_settings())["read"]
    theirs = JobRequest(model=EXAMPLE, model_args=[str(secret)])
    assert str(secret) not in sandbox_for(theirs, load_settings())["read"]


def test_pyslurm_records_of_array_tasks_are_keyed_by_task():
    from types import SimpleNamespace

    from bumps_mpi.cluster.pyslurm_backend import keys

    assert keys(SimpleNamespace(id=7, array_id=None)) == ["7"]
    assert keys(SimpleNamespace(id=8, array_id=7, array_task_id=None, array_tasks_waiting=None)) == ["7_0"]
    assert keys(SimpleNamespace(id=9, array_id=7, array_task_id=3, array_tasks_waiting=None)) == ["7_3"]
    waiting = SimpleNamespace(id=7, array_id=7, array_task_id=None, array_tasks_waiting="4-5%2")
    assert keys(waiting) == ["7_4", "7_5"]

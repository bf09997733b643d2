"""Campaigns on the real cluster: many fits as one Slurm job array, followed, tabled, resumed, cancelled."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAILING_FIT, ROOT, SMALL_DREAM, TERMINAL, cli, cli_json, one_line_error, wait_until

from bumps_mpi.jobdir import control_dir

pytestmark = pytest.mark.slurm

PEAK_FILE = ROOT / "tests" / "models" / "peak_file.py"
ONE_RANK = ["--ntasks", "1"]


def submit_json(*args: object) -> dict:
    """`bumps-submit submit ... --json [-- MODEL_ARGS]`: --json goes before the model's arguments."""
    words = [str(a) for a in args]
    cut = words.index("--") if "--" in words else len(words)
    proc = cli(*words[:cut], "--json", *words[cut:])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def write_data(folder: Path, widths: list[float], explode: set[int] = frozenset()) -> list[Path]:
    """One x y dy file per peak width (peak_file.py's format); an index in *explode* fails at run time."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    x = np.linspace(-5.0, 5.0, 81)
    files = []
    for i, width in enumerate(widths):
        dy = 0.05 * np.ones_like(x)
        y = 2.0 * np.exp(-0.5 * ((x - 0.4) / width) ** 2) + 0.3 + rng.normal(0.0, dy)
        path = folder / f"peak-{i}.dat"
        np.savetxt(path, np.column_stack([x, y, dy]), header="explode" if i in explode else "x y dy")
        files.append(path)
    return files


def follow_campaign(ref: str, timeout: float, release: bool = False) -> list[dict]:
    """`status CAMPAIGN --json` about twice a second until every fit has ended; every summary seen.
    With *release*, a task held after its requeue (BeginTime) is let go 3 s later (see test_requeue)."""
    seen: list[dict] = []
    held: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        summary = cli_json("status", ref)
        summary["queue"] = _queue(summary["array_ids"])
        seen.append(summary)
        if summary["ended"] and all(r["exit"] is not None for r in summary["records"]):
            return seen
        for task, reason in summary["queue"].items():
            if release and reason == "BeginTime":
                if time.monotonic() - held.setdefault(task, time.monotonic()) >= 3:
                    subprocess.run(["scontrol", "update", f"jobid={task}", "StartTime=now"], check=True)
                    held.pop(task)
        time.sleep(0.5)
    pytest.fail(f"campaign {ref} did not end in {timeout} s; last: {seen[-1]['counts'] if seen else None}")


def _queue(arrays: list[str]) -> dict[str, str]:
    """Each pending task of these arrays and its pending reason, one line a task (squeue -r)."""
    if not arrays:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-r", "-t", "PENDING", "-j", ",".join(arrays), "-o", "%i|%r"],
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def accounting(array_id: str, tasks: list[str], timeout: float = 60) -> list[dict]:
    """The array's tasks as accounting records them, once it shows exactly *tasks*, each ended; slurmdbd
    lags the controller (from which status knew of their ends) by seconds, and may first show a task as
    its array's bare id. Fails, showing what it has, when another task appears or one never does."""
    seen: list[list[dict]] = [[]]

    def recorded() -> list[dict] | None:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", array_id, "-o", "JobID,State,Start,End"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = [dict(zip(("task", "state", "start", "end"), x.split("|"), strict=True)) for x in out.split()]
        seen[0] = rows
        found = sorted(r["task"] for r in rows)
        return rows if found == sorted(tasks) and all(r["end"] not in ("", "Unknown") for r in rows) else None

    return wait_until(recorded, lambda: f"accounting of {array_id}; it shows {seen[0]}", timeout, every=0.5)


def most_at_once(rows: list[dict]) -> int:
    """The most tasks running at the same time, from accounting's start and end times (an end at the
    second another starts counts first: Slurm's times are whole seconds)."""
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_six_fits_at_most_two_at_once_equal_six_single_submissions(slurm_cluster, isolated):
    files = write_data(isolated / "data", [0.5, 0.7, 0.9, 1.1, 1.3, 1.5])
    fit = [*SMALL_DREAM, *ONE_RANK]
    jobs = isolated / "jobs"
    done = cli_json(
        "submit", PEAK_FILE, *fit, "--each", str(isolated / "data" / "*.dat"), "--max-running", "2",
        "--jobs-dir", jobs,
    )  # fmt: skip
    array_id, campaign_dir = done["campaign_id"], Path(done["campaign_dir"])
    assert done["fits"] == 6 and campaign_dir.parent == jobs
    script = (campaign_dir / "run.sbatch").read_text()
    assert "#SBATCH --array=0-5%2" in script

    seen = follow_campaign(array_id, timeout=300)
    final = seen[-1]
    assert final["counts"] == {"COMPLETED": 6} and final["percent"] == 100.0, final["counts"]
    assert final["attention"] == []
    # from accounting: six tasks, never more than two running at once; and Slurm said why the others
    # waited: the array's own task limit (the cap itself, not a lack of CPUs)
    rows = accounting(array_id, [f"{array_id}_{i}" for i in range(6)])
    assert {r["state"] for r in rows} == {"COMPLETED"}
    assert most_at_once(rows) <= 2, rows
    reasons = {reason for summary in seen for reason in summary["queue"].values()}
    assert "JobArrayTaskLimit" in reasons, reasons

    text = cli("status", array_id)
    assert text.returncode == 0, text.stderr
    assert "6 fits: 6 COMPLETED  (100% done)" in text.stdout.splitlines()[0]
    every = cli("status", array_id, "--all").stdout
    assert all(f"{array_id}_{i}" in every for i in range(6))
    watched = cli("watch", array_id)  # ended: it says so at once, exit 0 as every fit completed
    assert watched.returncode == 0 and "6 fits: 6 COMPLETED" in watched.stderr, watched.stderr

    table = cli_json("results", campaign_dir)
    assert [row["index"] for row in table] == list(range(6))
    assert [row["label"] for row in table] == [str(f) for f in files]
    csv = cli("results", array_id, "--csv")
    assert csv.returncode == 0 and len(csv.stdout.splitlines()) == 7, csv.stderr
    assert (campaign_dir / "results.csv").read_text() == csv.stdout

    # one fit of the campaign is a job like any other
    one = cli_json("results", f"{array_id}_3")
    assert one["chisq"] == table[3]["chisq"] and one["job_dir"] == table[3]["job_dir"]

    # the same six fits submitted one by one give the same table, value for value
    singles = [
        submit_json("submit", PEAK_FILE, *fit, "--jobs-dir", isolated / "singles", "--", f) for f in files
    ]
    for submitted, row in zip(singles, table, strict=True):
        ended = wait_single(submitted["job_id"])
        assert ended == "COMPLETED"
        alone = cli_json("results", submitted["job_id"])
        assert alone["chisq"] == row["chisq"]
        assert {p["name"]: {k: p[k] for k in ("best", "mean", "std")} for p in alone["parameters"]} == row[
            "parameters"
        ]


def wait_single(job_id: str, timeout: float = 240) -> str:
    def ended() -> str | None:
        record = cli_json("status", job_id)[0]
        return record["state"] if record["state"] in TERMINAL and record["exit"] is not None else None

    return wait_until(ended, f"job {job_id} to end", timeout=timeout, every=0.5)


def test_a_bad_data_file_is_refused_before_anything_is_written(slurm_cluster, isolated):
    write_data(isolated / "data", [0.5, 0.7, 0.9])
    (isolated / "data" / "peak-1.dat").write_text("x y dy\nnot numbers at all\n")
    before = subprocess.run(["squeue", "-h", "--me", "-o", "%i"], capture_output=True, text=True).stdout
    proc = cli(
        "submit", PEAK_FILE, *SMALL_DREAM, "--each", str(isolated / "data" / "*.dat"), "--jobs-dir",
        isolated / "jobs",
    )  # fmt: skip
    line = one_line_error(proc, "fit 1 of 3", "peak-1.dat", "nothing was submitted")
    assert "Traceback" not in line
    assert not (isolated / "jobs").exists()  # no campaign directory, not even a temporary one
    assert not (isolated / "registry.jsonl").exists()
    after = subprocess.run(["squeue", "-h", "--me", "-o", "%i"], capture_output=True, text=True).stdout
    assert after == before


def test_a_fit_failing_at_run_time_others_complete_and_resume_failed_runs_only_it(slurm_cluster, isolated):
    files = write_data(isolated / "data", [0.6, 0.9, 1.2], explode={1})
    fit = [*FAILING_FIT, *ONE_RANK]
    args = isolated / "args.txt"
    args.write_text("".join(f"'{f}'  # fit {i}\n" for i, f in enumerate(files)) + "\n# a comment line\n")
    done = cli_json("submit", PEAK_FILE, *fit, "--args-from", args, "--jobs-dir", isolated / "jobs")
    array_id, campaign_dir = done["campaign_id"], done["campaign_dir"]
    final = follow_campaign(array_id, timeout=300)[-1]
    assert final["counts"] == {"COMPLETED": 2, "FAILED": 1}, final["counts"]
    assert [r["index"] for r in final["attention"]] == [1]
    shown = cli("status", array_id)
    assert "needs attention" in shown.stdout and "model exploded" in shown.stdout

    # the table is written all the same: the failed fit's row carries its error; the exit status says so
    table = cli("results", array_id, "--csv")
    assert table.returncode == 1 and "1 of 3 fits have no results" in table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 4 and "model exploded" in lines[2] and ",FAILED," in lines[2]
    assert ",COMPLETED," in lines[1] and ",COMPLETED," in lines[3]

    # mend the data, then run only the failed fit again: one new array of one task
    files[1].write_text(files[1].read_text().replace("# explode", "# x y dy"))
    again = cli_json("resume", array_id, "--failed")
    assert len(again) == 1 and again[0]["job_dir"] == str(Path(campaign_dir) / "fits" / "1")
    new_array, _, task = again[0]["job_id"].partition("_")
    assert task == "1" and new_array != array_id
    final = follow_campaign(array_id, timeout=300)[-1]
    assert final["counts"] == {"COMPLETED": 3}, final
    assert [r["job_id"] for r in final["records"]] == [f"{array_id}_0", f"{new_array}_1", f"{array_id}_2"]
    assert [r["state"] for r in accounting(new_array, [f"{new_array}_1"])] == ["COMPLETED"]  # only it ran
    assert cli("results", campaign_dir).returncode == 0
    nothing = cli("resume", campaign_dir, "--failed")
    one_line_error(nothing, "nothing to resume")


def test_each_fit_of_a_campaign_requeues_itself_at_its_time_limit(slurm_cluster, isolated):
    """Two fits, each needing two one-minute allocations: every task checkpoints, requeues and completes.

    Both at once: a task whose raw job id is the array's own once requeued the whole array with it, and
    the other task's run ended "terminated" instead of at its time limit (now each requeues its task id).
    """
    write_data(isolated / "data", [0.8, 1.1])
    fit = ["--samples", "6000", "--burn", "100", "--seed", "11", *ONE_RANK, "--time", "1"]
    done = submit_json(
        "submit", PEAK_FILE, *fit, "--signal-grace", "15", "--each", str(isolated / "data" / "*.dat"),
        "--jobs-dir", isolated / "jobs", "--", "{}", "0.005",
    )  # fmt: skip
    array_id, campaign_dir = done["campaign_id"], Path(done["campaign_dir"])
    seen = follow_campaign(array_id, timeout=600, release=True)
    history = [[(r["state"], r["slurm_state"]) for r in s["records"]] for s in seen]
    assert seen[-1]["counts"] == {"COMPLETED": 2}, [h for k, h in enumerate(history) if h != history[k - 1]]
    assert any(s["counts"].get("REQUEUED") for s in seen)
    for i in range(2):
        fit_dir = campaign_dir / "fits" / str(i)
        runs = json.loads((fit_dir / "runs.json").read_text())
        assert len(runs) >= 2 and runs[-1]["reason"] == "completed", runs
        for earlier, later in zip(runs, runs[1:], strict=False):
            assert earlier["reason"] == "time limit" and earlier["slurm_job_id"] == f"{array_id}_{i}"
            assert later["resumed_from_step"] == earlier["checkpoint_step"]
        log = (control_dir(fit_dir) / f"slurm-{array_id}_{i}.out").read_text()  # the task's own log, appended
        assert log.count("resuming from the checkpoint") == len(runs) - 1


def test_cancel_ends_every_fit_of_a_campaign(slurm_cluster, isolated):
    write_data(isolated / "data", [0.8, 1.0, 1.2])
    fit = ["--samples", "100000000", "--burn", "100", *ONE_RANK]
    done = submit_json(
        "submit", PEAK_FILE, *fit, "--each", str(isolated / "data" / "*.dat"), "--max-running", "1",
        "--jobs-dir", isolated / "jobs", "--", "{}", "0.005",
    )  # fmt: skip
    array_id = done["campaign_id"]
    wait_until(lambda: cli_json("status", array_id)["counts"].get("RUNNING") == 1, "a fit to start", 120, 0.5)
    cancelled = cli_json("cancel", array_id)
    assert cancelled["cancelled"] == 3
    final = follow_campaign(array_id, timeout=120)[-1]
    assert final["counts"] == {"CANCELLED": 3}, final["counts"]
    assert _queue([array_id]) == {}


def test_fits_that_can_never_start_are_shown_with_what_to_do(slurm_cluster, isolated):
    """Two nodes asked of a one-node partition: pending for a reason that will never clear (attention)."""
    write_data(isolated / "data", [0.8, 1.0])
    done = submit_json(
        "submit", PEAK_FILE, *SMALL_DREAM, "--nodes", "2", "--each", str(isolated / "data" / "*.dat"),
        "--jobs-dir", isolated / "jobs",
    )  # fmt: skip
    array_id = done["campaign_id"]
    try:
        summary = wait_until(
            lambda: len((found := cli_json("status", array_id))["attention"]) >= 2 and found,
            "both fits to need attention",
            timeout=60,
            every=0.5,
        )
        assert summary["counts"] == {"PENDING": 2}
        reasons = [(r["reason"], r.get("never_starts")) for r in summary["attention"]]
        assert all(never and why in ("PartitionNodeLimit", "PartitionConfig") for why, never in reasons), (
            reasons
        )
        shown = cli("status", array_id).stdout
        assert "needs attention" in shown and "cancel and resubmit" in shown, shown
    finally:
        cancelled = cli("cancel", array_id)
    assert cancelled.returncode == 0 and "Cancelled 2 fit(s)" in cancelled.stdout, cancelled.stderr
    assert follow_campaign(array_id, timeout=60)[-1]["counts"] == {"CANCELLED": 2}


def test_the_python_api_drives_a_campaign_and_reattaches_after_a_new_import(slurm_cluster, isolated):
    """As a notebook would: submit, wait, table; then, in a fresh interpreter, reattach by ids."""
    write_data(isolated / "data", [0.7, 1.0])
    notebook = f"""
import sys
import bumps_mpi
assert not {{"numpy", "bumps", "mpi4py"}} & set(sys.modules), "import bumps_mpi stays light"
campaign = bumps_mpi.submit_campaign(
    {str(PEAK_FILE)!r}, each={str(isolated / "data" / "*.dat")!r}, max_running=2,
    options={{"samples": 2000, "burn": 100}}, seed=7, resources={{"ntasks": 1}},
    jobs_dir={str(isolated / "jobs")!r},
)
try:
    campaign.wait(timeout=0.01)
    raise SystemExit("wait(timeout=0.01) returned before the fits could end")
except bumps_mpi.WaitTimeout:
    pass
assert campaign.wait(timeout=300) == {{"COMPLETED": 2}}
job = bumps_mpi.submit({str(PEAK_FILE)!r}, {str(isolated / "data" / "peak-0.dat")!r},
                       options={{"samples": 2000, "burn": 100}}, seed=7, resources={{"ntasks": 1}},
                       jobs_dir={str(isolated / "single")!r})
assert job.wait(timeout=300) == "COMPLETED"
import json
print(json.dumps({{"campaign": campaign.campaign_id, "table": campaign.table(), "job": job.job_id,
                  "chisq": job.results().chisq}}))
"""
    first = subprocess.run([sys.executable, "-c", notebook], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    found = json.loads(first.stdout)
    table = found["table"]
    assert [row["state"] for row in table] == ["COMPLETED", "COMPLETED"]
    assert found["chisq"] == table[0]["chisq"]  # the single fit of the same file: the same fit

    later = f"""
import json
import bumps_mpi
from bumps_mpi.errors import JobNotFound
campaign = bumps_mpi.Campaign.from_id({found["campaign"]!r})
job = bumps_mpi.Job.from_id({found["job"]!r})
first = bumps_mpi.Job.from_dir(campaign.table()[0]["job_dir"])
results = first.results()
try:
    bumps_mpi.Job.from_id("999999999")
    raise SystemExit("an unknown id was found")
except JobNotFound:
    pass
first = [results.chisq, results["height"].best, len(results.figures), str(results.report)]
print(json.dumps({{"table": campaign.table(), "state": job.state, "chisq": job.results().chisq,
                  "first": first}}))
"""
    second = subprocess.run([sys.executable, "-c", later], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["table"] == table and again["state"] == "COMPLETED" and again["chisq"] == found["chisq"]
    chisq, height, figures, report = again["first"]
    assert chisq == table[0]["chisq"] and height == table[0]["parameters"]["height"]["best"]
    assert figures > 0 and report.endswith("report.html")

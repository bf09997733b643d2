"""End to end on the project's real Slurm cluster: submit, status, results, cancel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    EXAMPLE,
    FAILING_FIT,
    MODELS,
    ROOT,
    SMALL_DREAM,
    check_figures_and_report,
    cli,
    cli_json,
    fake_job,
    fill,
    sbatch_wrap,
    serial_fit,
    unavailable,
    wait_for_state,
    wait_until,
)

from bumps_mpi.cluster import jobstate
from bumps_mpi.jobdir import control_dir

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
    assert (control_dir(job_dir) / "run.sbatch").read_text().startswith("#!/bin/bash\n#SBATCH")
    # right after submit the job is never reported finished: accounting may not know it yet
    first = cli_json("status", job_id)[0]
    assert first["state"] in ("PENDING", "RUNNING", "COMPLETED") and first["job_dir"] == str(job_dir)
    record = wait_for_state(job_id)
    assert record["state"] == "COMPLETED", record
    assert record["exit"] == "0" and record["elapsed_s"] >= 0  # exit_code: once accounting has caught up
    umask = os.umask(0o022)
    os.umask(umask)  # sbatch passes the submitter's umask to the job: its files follow it
    log = control_dir(job_dir) / f"slurm-{job_id}.out"  # beside the job directory, out of the model's reach
    for path in (job_dir, job_dir / "export", job_dir / "result.json", log):
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == want, (str(path), oct(path.stat().st_mode))
    found = cli_json("results", job_id)
    reference = serial_fit(EXAMPLE, "dream", {"samples": 2000, "burn": 100}, seed=7)
    assert found["ranks"] == 2
    assert [p["best"] for p in found["parameters"]] == reference["best"]  # bit-identical to serial
    assert found["chisq"] == reference["chisq"]
    assert list(control_dir(job_dir).glob("slurm-*.out")) == [log] and not list(job_dir.glob("slurm-*"))
    check_figures_and_report(job_dir)  # drawn by rank 0 at the job's end
    human = cli("results", job_id)
    assert human.returncode == 0 and "chisq" in human.stdout and reference["labels"][0] in human.stdout


def test_failing_model_ends_failed_with_traceback(slurm_cluster, isolated):
    submitted = submit(isolated, MODELS / "fails_in_fit.py", *FAILING_FIT)
    record = wait_for_state(submitted["job_id"])
    assert record["state"] == "FAILED" and record["exit"] == "exit 1", record
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
    mail = ["--mail-type", "END,FAIL", "--mail-user", "fitter@lab.example"]  # Slurm's own, passed through
    submitted = submit(isolated, EXAMPLE, "--fit-option", "samples=100000000", "--burn", "100000", *mail)
    wait_for_state(submitted["job_id"], {"RUNNING"}, timeout=120)
    shown = subprocess.run(["scontrol", "show", "job", submitted["job_id"]], capture_output=True, text=True)
    assert "MailUser=fitter@lab.example" in shown.stdout and "MailType=END,FAIL" in shown.stdout, shown.stdout
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
    deadline = time.monotonic() + 30  # the start record reaches accounting in batches: 'allocation' first
    while True:
        name = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobName", "-j", submitted["job_id"]],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if name != "allocation" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert name == "hostile"


def test_status_lists_my_jobs_newest_first(slurm_cluster, isolated):
    first = submit(isolated, EXAMPLE, *SMALL_DREAM)
    second = submit(isolated, EXAMPLE, *SMALL_DREAM)
    listed = cli_json("status")
    assert [r["job_id"] for r in listed] == [second["job_id"], first["job_id"]]
    for job in (first, second):
        assert wait_for_state(job["job_id"])["state"] == "COMPLETED"


def _slurm_out(job_dir: str) -> str:
    return "\n".join(p.read_text() for p in control_dir(Path(job_dir)).glob("slurm-*.out"))


def test_dead_rank_ends_failed_and_is_named(slurm_cluster, isolated):
    submitted = submit(isolated, MODELS / "dies_in_fit.py", *FAILING_FIT)
    record = wait_for_state(submitted["job_id"])
    assert record["state"] == "FAILED", record
    error = record["error"]
    log = _slurm_out(submitted["job_dir"])
    assert error["phase"] == "run" and error["rank"] == 1, (error, log)
    assert f"rank {error['rank']} on " in error["message"] and "Killed" in error["message"]
    # rank 0's watchdog ended the job at once, not Slurm's SIGKILL after KillWait (its own words say so)
    assert "rank 0: terminated while waiting" in log and "ending this rank" in log, log
    assert record["exit"] == "killed by signal 9 (SIGKILL)", record  # Slurm itself says 9:0


def test_progress_while_running_then_watch(slurm_cluster, isolated):
    """status shows the fit's own progress while it runs; watch follows it and exits 0 with the results."""
    submitted = submit(isolated, EXAMPLE, "--samples", "60000", "--burn", "300", "--seed", "5")
    wait_for_state(submitted["job_id"], {"RUNNING"}, timeout=120)
    record = wait_until(
        lambda: (
            (found := cli_json("status", submitted["job_id"])[0]).get("progress")
            and found["state"] == "RUNNING"
            and found
        ),
        "progress while it runs",
        timeout=120,
        every=1,
    )
    progress = record["progress"]
    assert 0 < progress["step"] <= progress["steps"] and progress["chisq"] > 0, record
    assert progress["eta_s"] is not None and 0 <= progress["percent"] <= 100
    watched = cli("watch", submitted["job_id"], "--interval", "1", timeout=600)
    assert watched.returncode == 0, watched.stderr
    assert "COMPLETED" in watched.stdout and "chisq" in watched.stdout
    assert "(None)" not in watched.stderr and "RUNNING -" not in watched.stdout
    done = cli_json("status", submitted["job_id"])[0]
    assert done["progress"]["done"] and done["progress"]["step"] == done["progress"]["steps"]
    cached = control_dir(Path(submitted["job_dir"])) / "state.json"  # once accounting's final record is in
    wait_until(lambda: cli_json("status", submitted["job_id"]) and cached.is_file(), "the cache", 60, every=1)


def test_watch_a_failing_fit_exits_non_zero(slurm_cluster, isolated):
    submitted = submit(isolated, MODELS / "fails_in_fit.py", *FAILING_FIT)
    watched = cli("watch", submitted["job_id"], "--interval", "1", timeout=300)
    assert watched.returncode == 1
    assert "FAILED" in watched.stdout and "model exploded" in watched.stderr


def test_held_job_is_pending_with_reason_and_hint(slurm_cluster, isolated, monkeypatch):
    """Submitted held through a site profile's extra directive (also checks those reach sbatch)."""
    site = isolated / "site.toml"  # any Slurm syntax sbatch reads as one option, quoting included
    site.write_text('[profiles.default]\nextra = ["--hold", "--comment=\'two words|cn[01-03]\'"]\n')
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(site))
    submitted = submit(isolated, EXAMPLE, *SMALL_DREAM)
    job_id = submitted["job_id"]
    assert "#SBATCH --hold" in (control_dir(Path(submitted["job_dir"])) / "run.sbatch").read_text()
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert "Comment=two words|cn[01-03]" in shown, shown
    try:
        record = wait_until(
            lambda: (
                (found := cli_json("status", job_id)[0]).get("reason")
                not in (None, "not yet in accounting", "None")
                and found
            ),
            "a pending reason",
            timeout=60,
            every=1,
        )
        assert record["state"] == "PENDING" and record["reason"] == "JobHeldUser", record
        assert record["never_starts"] is False and "scontrol release" in record["hint"]
        human = cli("status", job_id)
        assert "pending: JobHeldUser: held by you" in human.stdout
    finally:
        subprocess.run(["scancel", job_id], check=False)
    assert wait_for_state(job_id)["state"] == "CANCELLED"


def test_two_hundred_jobs_cost_at_most_four_accounting_calls(slurm_cluster, isolated, monkeypatch):
    """sacct in batches of 50; finished states cached in the job directory cost no query at all."""
    monkeypatch.setenv("BUMPS_MPI_ACCOUNTING", "sacct")  # the calls counted are sacct's
    finished = submit(isolated, EXAMPLE, *SMALL_DREAM)
    assert wait_for_state(finished["job_id"])["state"] == "COMPLETED"
    shims, log = isolated / "shims", isolated / "calls.log"
    shims.mkdir()
    for command in ("sacct", "squeue"):
        real = shutil.which(command)
        (shims / command).write_text(f'#!/bin/sh\necho {command} >> "{log}"\nexec "{real}" "$@"\n')
        (shims / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    template = json.loads((Path(finished["job_dir"]) / "job.json").read_text())
    for n in range(199):  # 199 more job directories, with ids accounting does not know
        job_dir = isolated / "many" / f"job{n}"
        control_dir(job_dir).mkdir(parents=True)
        job_dir.mkdir(parents=True)
        request = json.dumps({**template, "slurm": {"job_id": str(900000 + n)}})
        (control_dir(job_dir) / "request.json").write_text(request)
        registry_add(job_dir, str(900000 + n))
    (control_dir(Path(finished["job_dir"])) / "state.json").unlink(
        missing_ok=True
    )  # as if never asked before
    records = cli_json("status", "--limit", "200")
    calls = log.read_text().split()
    assert len(records) == 200 and calls.count("sacct") <= 4 and calls.count("squeue") <= 1, calls
    assert {r["state"] for r in records} == {"COMPLETED", "PENDING"}
    log.write_text("")
    assert cli_json("status", finished["job_id"])[0]["state"] == "COMPLETED"
    assert "sacct" not in log.read_text()  # cached in state.json by the first call


def registry_add(job_dir: Path, job_id: str) -> None:
    from bumps_mpi.front import registry

    registry.add({"job_id": job_id, "job_dir": str(job_dir), "name": "many", "submitted": time.time()})


def test_accounting_down_falls_back_to_the_controller_then_recovers(slurm_cluster, isolated):
    """slurmdbd stopped: a running job is still RUNNING (from squeue) with a notice; then it recovers."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    assert "ClusterName             = ci" in config  # the project's own test cluster, and no other,
    slurm_conf = next(line for line in config.splitlines() if line.startswith("SLURM_CONF")).split()[-1]
    assert Path(slurm_conf).read_text().startswith("# generated by scripts/slurm-cluster")  # is stopped here
    running = submit(
        isolated, EXAMPLE, "--ntasks", "1", "--fit-option", "samples=100000000", "--burn", "100000"
    )
    wait_for_state(running["job_id"], {"RUNNING"}, timeout=120)
    pid = Path("/run/slurmdbd.pid").read_text().strip()
    subprocess.run(["kill", pid], check=True)
    try:
        wait_until(
            lambda: subprocess.run(["sacct", "-n", "-j", "1"], capture_output=True).returncode != 0,
            "slurmdbd to stop",
            timeout=30,
            every=0.5,
        )
        shown = cli("status", running["job_id"], "--json")
        assert shown.returncode == 0, shown.stderr
        record = json.loads(shown.stdout)[0]
        assert record["state"] == "RUNNING" and "unavailable" in record["accounting"], record
        human = cli("status", running["job_id"])
        assert human.stderr.count("accounting unavailable") == 1 and "RUNNING" in human.stdout
        cancelled = cli("cancel", running["job_id"])
        assert cancelled.returncode == 0, cancelled.stderr
        record = wait_for_state(running["job_id"], exit_known=False)  # the controller's word: no exit code
        assert record["state"] == "CANCELLED" and record["accounting"], record
    finally:
        subprocess.run(["scancel", running["job_id"]], check=False)
        restart = {**os.environ, "SLURM_SKIP_SELFTEST": "1"}
        subprocess.run(
            [str(ROOT / "scripts" / "slurm-cluster"), "start"], capture_output=True, check=True, env=restart
        )
    # accounting is back and catches up with a lag: the state never goes back to RUNNING meanwhile
    state_file = control_dir(Path(running["job_dir"])) / "state.json"
    seen = []
    deadline = time.monotonic() + 120
    while not state_file.exists() and time.monotonic() < deadline:
        seen.append(cli_json("status", running["job_id"])[0]["state"])
        time.sleep(0.2)
    assert state_file.exists(), seen
    assert set(seen) <= {"CANCELLED"}, seen
    record = cli_json("status", running["job_id"])[0]
    assert record["state"] == "CANCELLED" and not record.get("accounting")


def test_time_limit_ends_timeout(slurm_cluster, isolated):
    """--time=1 (the cluster's smallest): Slurm ends the fit after about 90 s, and status says TIMEOUT.

    Particle swarm keeps no checkpoint, so it cannot requeue itself (DREAM and DE would: test_requeue.py).
    """
    submitted = cli_json(
        "submit",
        EXAMPLE,
        "--ntasks",
        "1",
        "--time",
        "1",
        "--fit",
        "ps",
        "--steps",
        "100000000",
        "--jobs-dir",
        isolated / "jobs",
    )
    record = wait_for_state(submitted["job_id"], timeout=300)
    assert record["state"] == "TIMEOUT" and record["slurm_state"] == "TIMEOUT", record
    assert record["elapsed_s"] >= 60 and not (Path(submitted["job_dir"]) / "result.json").exists()
    assert (Path(submitted["job_dir"]) / "progress.json").is_file()  # how far it got is still there


def _cgroup_memory_limits() -> bool:
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    return "proctrack/cgroup" in config and "task/cgroup" in config


def test_memory_limit_ends_out_of_memory(slurm_cluster, isolated):
    """A fit that outgrows --mem is killed by the cgroup limit: OUT_OF_MEMORY.

    Slurm marks only the step OUT_OF_MEMORY (the batch script, which survives, makes the job FAILED);
    the post-mortem reads srun's "Out Of Memory" line, so status says OUT_OF_MEMORY beside Slurm's FAILED.
    """
    if not _cgroup_memory_limits():
        unavailable("this cluster runs without cgroup plugins, so Slurm cannot enforce --mem")
    submitted = submit(isolated, MODELS / "memory_hog.py", "--mem", "400M", "--ntasks", "1", *SMALL_DREAM)
    record = wait_for_state(submitted["job_id"])
    assert record["state"] == "OUT_OF_MEMORY" and record["slurm_state"] == "FAILED", record
    assert "Out Of Memory" in record["error"]["message"] and record["error"]["rank"] == 0
    assert not (Path(submitted["job_dir"]) / "result.json").exists()


def test_dependency_pending_then_never_satisfied(slurm_cluster, isolated, monkeypatch):
    """Waiting on another job: PENDING (Dependency); once that job fails, a hint that it never starts."""
    first = submit(isolated, EXAMPLE, "--fit-option", "samples=100000000", "--burn", "100000")
    site = isolated / "site.toml"
    site.write_text(f'[profiles.default]\nextra = ["--dependency=afterok:{first["job_id"]}"]\n')
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(site))
    second = submit(isolated, EXAMPLE, *SMALL_DREAM)
    try:
        record = _wait_for_reason(second["job_id"], "Dependency")
        assert record["state"] == "PENDING" and record["never_starts"] is False, record
        subprocess.run(["scancel", first["job_id"]], check=True)
        record = _wait_for_reason(second["job_id"], "DependencyNeverSatisfied")
        assert record["state"] == "PENDING" and record["never_starts"] is True, record
        shown = cli("status", second["job_id"])
        assert "pending: DependencyNeverSatisfied: the job it depends on failed" in shown.stdout
    finally:
        subprocess.run(["scancel", first["job_id"], second["job_id"]], check=False)


def _wait_for_reason(job_id: str, reason: str, timeout: float = 60) -> dict:
    return wait_until(
        lambda: (record := cli_json("status", job_id)[0]).get("reason") == reason and record,
        f"pending reason {reason}",
        timeout,
        every=1,
    )


@pytest.mark.parametrize(
    ("resources", "reason"),
    [(["--ntasks", "64"], "PartitionConfig"), (["--nodes", "2"], "PartitionNodeLimit")],
)
def test_job_larger_than_the_cluster_pends_with_a_never_starts_hint(
    slurm_cluster, isolated, resources, reason
):
    submitted = submit(isolated, EXAMPLE, *resources, *SMALL_DREAM)
    try:
        record = _wait_for_reason(submitted["job_id"], reason)
        assert record["state"] == "PENDING" and record["never_starts"] is True, record
        assert "cancel and resubmit" in record["hint"]
    finally:
        subprocess.run(["scancel", submitted["job_id"]], check=False)


def test_memory_no_node_has_is_refused_at_submit(slurm_cluster, isolated):
    proc = cli("submit", EXAMPLE, "--mem", "100000G", "--jobs-dir", isolated / "jobs")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("bumps-submit: error: sbatch failed: Memory specification can not be sat")
    assert not (isolated / "jobs").exists() or not any((isolated / "jobs").iterdir())  # nothing left


def test_a_model_that_imports_its_neighbour_runs_under_slurm(slurm_cluster, isolated):
    submitted = submit(isolated, MODELS / "neighbours" / "model.py", *SMALL_DREAM)
    record = wait_for_state(submitted["job_id"])
    assert record["state"] == "COMPLETED", (record, _slurm_out(submitted["job_dir"]))


def test_a_job_slurm_does_not_know_is_pending_then_unknown(slurm_cluster, isolated):
    """Accounting lags sbatch by seconds, so an unknown id is PENDING at first, UNKNOWN after a while."""
    fresh = fake_job(
        isolated / "fresh", result=False, slurm={"job_id": "987654321", "submitted": time.time()}
    )
    old = fake_job(
        isolated / "old", result=False, slurm={"job_id": "987654322", "submitted": time.time() - 3600}
    )
    records = {r["job_id"]: r for r in cli_json("status", fresh, old)}
    assert records["987654321"]["state"] == "PENDING", records
    assert (
        records["987654322"]["state"] == "UNKNOWN"
        and "Slurm knows no job 987654322" in records["987654322"]["reason"]
    ), records
    assert not (control_dir(old) / "state.json").exists() and not (control_dir(fresh) / "state.json").exists()


def test_a_preempted_state_is_never_cached(slurm_cluster, isolated):
    """A job that ends PREEMPTED (here: one that may not requeue) is reported, and asked again next time."""
    job_id = sbatch_wrap(isolated, "sleep 300", "--no-requeue", "-n", "2")
    job = fake_job(isolated / "victim", result=False, slurm={"job_id": job_id, "submitted": time.time()})
    wait_for_state(str(job), {"RUNNING"}, timeout=60)
    urgent = sbatch_wrap(isolated, "sleep 1", "-p", "urgent", "-n", "2")
    try:
        record = wait_for_state(str(job), timeout=180)
        assert record["state"] == "PREEMPTED", record
        assert not (control_dir(job) / "state.json").exists()  # Slurm may still requeue it: never cached
        record = wait_until(  # squeue may show it a moment longer (completing)
            lambda: (found := cli_json("status", str(job))[0]).get("in_queue") is False and found,
            "it to leave the queue",
            timeout=60,
            every=1,
        )
        assert record["state"] == "PREEMPTED" and jobstate.ended_for_good(record), record  # gone: ended
    finally:
        subprocess.run(["scancel", job_id, urgent], check=False)


def test_a_pyslurm_failure_falls_back_to_sacct_and_says_so(slurm_cluster, isolated, monkeypatch):
    from bumps_mpi.cluster import pyslurm_backend, slurm

    job_id = sbatch_wrap(isolated, "true")
    monkeypatch.setattr(pyslurm_backend, "available", lambda: False)

    def final() -> dict | None:  # accounting's full record of a real job (its first says JobName=allocation)
        row = slurm.sacct([job_id]).get(job_id, {})
        return row if row.get("State") == "COMPLETED" and row["JobName"] != "allocation" else None

    expected = {job_id: wait_until(final, "accounting's final record", timeout=60, every=1)}

    def broken(ids):
        raise RuntimeError("RPC failed")

    monkeypatch.setattr(pyslurm_backend, "available", lambda: True)
    monkeypatch.setattr(pyslurm_backend, "jobs", broken)
    slurm.NOTICES.clear()
    found = slurm.sacct([job_id])
    assert slurm.NOTICES == ["pyslurm failed (RuntimeError: RPC failed); asked sacct instead"]
    assert found[job_id] == expected[job_id]  # sacct's own answer


def test_caching_on_a_full_disk_never_breaks_status(slurm_cluster, isolated, small_disk):
    """state.json cannot be written: status and results still answer, and say the disk is full."""
    submitted = submit(isolated, EXAMPLE, *SMALL_DREAM)
    original = Path(submitted["job_dir"])
    cached = control_dir(original) / "state.json"  # accounting's final record is in: it gets cached
    wait_until(lambda: cli_json("status", submitted["job_id"]) and cached.exists(), "the final state", 120, 1)
    copy = small_disk / "job"
    copy.mkdir()
    control_dir(copy).mkdir(parents=True)
    shutil.copy(control_dir(original) / "request.json", control_dir(copy) / "request.json")
    shutil.copy(original / "result.json", copy / "result.json")
    fill(small_disk)
    shown = cli("status", copy, "--json")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    record = json.loads(shown.stdout)[0]
    assert record["state"] == "COMPLETED" and not (control_dir(copy) / "state.json").exists(), record
    results = cli("results", copy)
    assert results.returncode == 0 and "chisq" in results.stdout, results.stderr


def test_a_cancel_slurm_refuses_leaves_no_cancel_request(slurm_cluster, isolated):
    """Left behind, the request would stop the job from requeueing at its next time limit."""
    job = fake_job(isolated / "ghost", result=False, slurm={"job_id": "987654323", "submitted": time.time()})
    done = cli("cancel", job)
    assert done.returncode == 1 and "scancel 987654323 failed: Kill job error" in done.stderr, done.stderr
    assert not (control_dir(job) / "cancel-request").exists()

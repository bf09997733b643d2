"""The estimate's arithmetic against cases computed by hand (issue 26's first step: no model is run)."""

from __future__ import annotations

import json

import pytest

from bumps_mpi.front import estimate


@pytest.mark.parametrize(
    ("fit", "options", "parameters", "generations", "population"),
    [
        # DREAM: pop 10 × 4 parameters = 40; ceil(2000 / 40) = 50 steps; 1 + 100 burn + 50 = 151
        # (the 6040 evaluations a job of tests/models/slow_peak.py with these settings reports)
        ("dream", {"samples": 2000, "burn": 100, "pop": 10}, 4, 151, 40),
        ("dream", {"samples": 6000, "burn": 100, "pop": 10}, 4, 251, 40),
        # ceil(1500 / 40) = 38 steps + 50 burn = 88: whole rounds of 10 after the first, 91 (3640 reported)
        ("dream", {"samples": 1500, "burn": 50, "pop": 10}, 4, 91, 40),
        ("dream", {"samples": 1000, "burn": 10, "pop": -25, "thin": 2}, 3, 51, 25),  # thin runs no more
        ("dream", {"samples": 100, "burn": 0, "pop": 1.5, "steps": 7}, 3, 11, 5),  # ceil(4.5); steps given
        ("de", {"steps": 50, "pop": 10}, 4, 50, 40),  # the 2000 evaluations a DE fit of peak.py reports
        ("de", {"steps": 200, "pop": 2.5}, 3, 200, 7),  # DE rounds down: int(7.5)
        ("amoeba", {"steps": 1000, "starts": 2}, 5, 2000, 1),
        ("lm", {"steps": 200}, 5, 200, 1),
    ],
)
def test_the_work_of_each_fitter(fit, options, parameters, generations, population):
    job = estimate.work(fit, options, parameters)
    assert (job.generations, job.population) == (generations, population)
    assert job.evaluations == generations * population


def test_wall_time_efficiency_and_core_hours_by_hand():
    job = estimate.Work(generations=100, population=40)
    rows = estimate.table("dream", job, seconds_per_evaluation=0.01, startup_s=10, most_ranks=8)
    assert [r.ranks for r in rows] == [1, 2, 4, 8]
    fitter = estimate.FITTER_COST["dream"][0] + 40 * estimate.FITTER_COST["dream"][1]
    each = 0.01 * estimate.JOB_EVALUATION_FACTOR  # the check's 10 ms, as the job will take it
    serial = 100 * (40 * each + fitter)  # no round trip on one rank
    assert rows[0].wall_s == pytest.approx(serial) and rows[0].efficiency == pytest.approx(1.0)
    four = 100 * (10 * each + estimate.MAPPER_ROUND_TRIP_S[4] + fitter)
    assert rows[2].wall_s == pytest.approx(four)
    assert rows[2].efficiency == pytest.approx(serial / (4 * four))
    assert rows[2].core_hours == pytest.approx(4 * (four + 10) / 3600)


def test_an_uneven_split_costs_the_largest_share():
    job = estimate.Work(generations=10, population=5)  # 5 points on 4 ranks: one rank evaluates 2
    rows = estimate.table("lm", job, 1.0, 0, 4)
    each = estimate.JOB_EVALUATION_FACTOR
    assert rows[-1].wall_s == pytest.approx(10 * (2 * each + estimate.MAPPER_ROUND_TRIP_S[4]))
    assert rows[-1].efficiency < 0.65


def test_more_ranks_than_the_table_grow_its_round_trip_linearly():
    table = estimate.MAPPER_ROUND_TRIP_S
    top, before = sorted(table)[-1], sorted(table)[-2]
    per_rank = (table[top] - table[before]) / (top - before)
    assert estimate.round_trip_s(top + 16) == pytest.approx(table[top] + 16 * per_rank)
    assert estimate.round_trip_s(3) == pytest.approx(table[2] + per_rank)


def test_auto_ranks_is_the_most_that_stay_efficient_and_one_when_none_do():
    rows = [estimate.Row(1, 100, 0.03, 1.0), estimate.Row(2, 52, 0.03, 0.96), estimate.Row(4, 30, 0.03, 0.83),
            estimate.Row(8, 20, 0.04, 0.62)]  # fmt: skip
    assert estimate.choose_ranks(rows, 0.8) == 4
    assert estimate.choose_ranks(rows, 0.97) == 1
    assert estimate.choose_ranks(rows[1:], 0.99) == 1


def test_rank_counts_are_powers_of_two_and_the_limit():
    assert estimate.rank_counts(1) == [1]
    assert estimate.rank_counts(6) == [1, 2, 4, 6]
    assert estimate.rank_counts(8) == [1, 2, 4, 8]


@pytest.mark.parametrize(
    ("wall", "startup", "safety", "limit"),
    [
        (10, 5, 1.5, "00:01:00"),  # at least a minute
        (600, 30, 1.5, "00:16:00"),  # 930 s: 15.5 min, rounded up
        (3600, 0, 2.0, "02:00:00"),
        (30 * 3600, 60, 1.0, "1-06:01:00"),
    ],
)
def test_auto_time_is_the_prediction_times_the_safety_factor_plus_start_up_rounded_up(
    wall, startup, safety, limit
):
    assert estimate.time_limit(wall, startup, safety) == limit


def test_the_json_form_has_what_the_issue_names():
    job = estimate.Work(151, 40)
    rows = estimate.table("dream", job, 0.001, 3.0, 2)
    found = estimate.as_json(rows, 2, job, 0.001, 3.0)
    assert found["evaluations"] == 6040 and found["chosen"] == 2 and found["startup_s"] == 3.0
    assert set(found["rows"][0]) == {"ranks", "wall_s", "core_hours", "efficiency"}


def test_the_dry_run_times_the_model_and_prints_the_estimate(isolated):
    from conftest import EXAMPLE, cli

    proc = cli(
        "submit", EXAMPLE, "--dry-run", "--json", "--ntasks", "2", "--samples", "2000", "--burn", "100"
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["estimate"]
    assert found["evaluations"] == 6040 and found["population"] == 40 and found["chosen"] == 2
    assert found["timed"] >= 30 and 0 < found["seconds_per_evaluation"] < 1  # a fast model, timed 0.5 s
    assert [row["ranks"] for row in found["rows"]][:2] == [1, 2]  # to auto_max_ntasks or the partition's CPUs
    text = cli("submit", EXAMPLE, "--dry-run", "--ntasks", "2", "--samples", "2000", "--burn", "100")
    assert text.stdout.startswith("#!/bin/bash") and "estimate: 6,040 evaluations" in text.stderr
    assert "<- these settings" in [line for line in text.stderr.splitlines() if line.startswith("      2")][0]


def test_a_model_that_takes_seconds_per_evaluation_is_timed_within_the_checks_budget(isolated):
    """1.5 s an evaluation against the check's 3 s for timing: the first one and at most two more."""
    from conftest import cli, write_model

    slow = write_model(
        isolated / "slow.py",
        "import time\n",
        "_nllf = FitProblem.nllf\n"
        "def nllf(self, pvec=None):\n    time.sleep(1.5)\n    return _nllf(self, pvec)\n"
        "FitProblem.nllf = nllf\nproblem = FitProblem(model)\n",
    )
    proc = cli("submit", slow, "--dry-run", "--json", "--check-timeout", "60")
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["estimate"]
    assert found["seconds_per_evaluation"] >= 1.4 and found["first_s"] >= 1.4 and found["timed"] <= 2


def _settings(**values):
    from bumps_mpi.config import Settings

    base = {"ntasks": "auto", "time": "auto", "auto_efficiency": 0.8, "auto_time_factor": 1.5}
    base |= {"max_requeues": 10, "signal_grace": 120, "auto_max_ntasks": 64}
    return Settings(base | values, {})


def _found():
    rows = [(1, 1000, 1.0), (2, 510, 0.98), (4, 270, 0.93), (8, 160, 0.78)]
    return {
        "rows": [{"ranks": r, "wall_s": w, "core_hours": 0.0, "efficiency": e} for r, w, e in rows],
        "chosen": 1,
        "startup_s": 5.0,
    }


def test_auto_chooses_the_most_efficient_ranks_and_their_time_by_hand():
    from bumps_mpi.front import sizing

    found = _found()
    chosen = sizing.choose(_settings(), found, None)
    # 4 ranks (0.93; 8 ranks fall to 0.78); 270 s × 1.5 + 5 s start-up + 120 s signal grace = 530 s: 9 min
    assert chosen["ntasks"] == 4 and chosen["time"] == "00:09:00"
    assert (
        found["chosen"] == 4 and found["auto"]["runs"] == 1 and found["auto"]["chose"] == ["ntasks", "time"]
    )
    assert chosen.sources["ntasks"] == "--ntasks auto"
    # a short fit: 5 minutes (a job's start can take longer than the estimate's start-up)
    short = {**_found(), "rows": [{"ranks": 1, "wall_s": 20, "core_hours": 0, "efficiency": 1.0}]}
    assert sizing.choose(_settings(ntasks=1), short, None)["time"] == "00:05:00"  # 70 s; 5 min at least
    longer = {**_found(), "rows": [{"ranks": 1, "wall_s": 150, "core_hours": 0, "efficiency": 1.0}]}
    assert sizing.choose(_settings(ntasks=1), longer, None)["time"] == "00:06:00"  # 225 + 5 + 120 s


def test_auto_time_stays_within_the_partitions_limit_and_requeues_through_the_rest():
    from bumps_mpi.cluster.slurm import Partition
    from bumps_mpi.front import sizing

    short = Partition("short", cpus_per_node=2, nodes=1, max_time_s=300)
    found = _found()
    chosen = sizing.choose(_settings(), found, short)
    # 405 s of fitting; each 5-minute run fits 300 - 120 (grace) - 5 (start-up) = 175 s: 3 runs
    assert chosen["time"] == "00:05:00" and found["auto"]["runs"] == 3
    assert found["auto"]["partition"] == {"name": "short", "max_time_s": 300}
    with pytest.raises(Exception, match="3 runs of partition short's limit 00:05:00.*max_requeues=1") as err:
        sizing.choose(_settings(max_requeues=1), _found(), short)
    assert "partition with a longer limit" in str(err.value)
    assert sizing.most_ranks(_settings(nodes=1), short) == 2  # the job's node's CPUs
    assert sizing.most_ranks(_settings(nodes=3, auto_max_ntasks=4), Partition("p", 2, 8, None)) == 4


def test_a_hand_chosen_time_the_estimate_says_is_too_short_is_named():
    from bumps_mpi.front import sizing

    settings = _settings(ntasks=2, time="00:05:00", max_requeues=1)
    found = {**_found(), "chosen": 2}  # 510 s × 1.5 = 765 s at 175 s a run: 5 runs
    warning = sizing.fits_in_time(settings, found)
    assert warning and "5 runs of --time 00:05:00" in warning and "a longer --time" in warning
    assert sizing.fits_in_time(_settings(ntasks=2, time="00:30:00"), found) is None
    with pytest.raises(Exception, match="3 runs"):  # --ntasks auto with that time: 4 ranks, 3 runs; 1 requeue
        sizing.choose(_settings(time="00:05:00", max_requeues=1), _found(), None)


SLOW = ["--samples", "2000", "--burn", "100"]


def test_ntasks_and_time_auto_in_the_script_and_the_request(isolated):
    from conftest import EXAMPLE, cli

    env = {"BUMPS_MPI_AUTO_MAX_NTASKS": "4", "BUMPS_MPI_AUTO_EFFICIENCY": "0.5"}
    proc = cli("submit", EXAMPLE, *SLOW, "--ntasks", "auto", "--time", "auto", "--dry-run", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    found, spec = out["estimate"], out["spec"]
    assert max(row["ranks"] for row in found["rows"]) <= 4
    best = max(row["ranks"] for row in found["rows"] if row["efficiency"] >= 0.5)
    assert found["chosen"] == best == spec["resources"]["ntasks"]
    assert f"#SBATCH --ntasks={best}\n" in out["script"]
    assert f"#SBATCH --time={found['auto']['time']}\n" in out["script"]
    assert spec["estimate"]["auto"]["chose"] == ["ntasks", "time"]
    text = cli("submit", EXAMPLE, *SLOW, "--ntasks", "auto", "--dry-run", env=env)
    assert "<- --ntasks auto (efficiency at least 0.5)" in text.stderr


def test_auto_refuses_a_fit_its_limits_cannot_hold_and_writes_nothing(isolated):
    from conftest import MODELS, cli, one_line_error

    slow = [MODELS / "slow_peak.py", *SLOW, "--ntasks", "auto", "--time", "00:01:00", "--max-requeues", "0"]
    env = {"BUMPS_MPI_AUTO_MAX_NTASKS": "2"}  # 151 generations × 20 points × 10 ms: 30 s; 45 s with the
    # factor against 60 - 30 (grace) - 5 s a run: 2 runs, and no requeue allowed
    proc = cli("submit", *slow, "--dry-run", "--jobs-dir", isolated / "jobs", "--", "0.01", env=env)
    one_line_error(proc, "estimated to take", "longer than its time limit 00:01:00", "fewer samples")
    assert not (isolated / "jobs").exists()
    bad = cli("submit", MODELS / "slow_peak.py", "--ntasks", "many", "--dry-run")
    assert bad.returncode == 2 and "'many' is not a whole number or 'auto'" in bad.stderr
    wrong = cli("estimate", MODELS / "slow_peak.py", env={"BUMPS_MPI_AUTO_EFFICIENCY": "80"})
    one_line_error(wrong, "auto_efficiency (from environment variable BUMPS_MPI_AUTO_EFFICIENCY)=80.0")


def test_estimate_takes_submits_line_and_writes_nothing(isolated):
    from conftest import EXAMPLE, cli

    proc = cli("estimate", EXAMPLE, *SLOW, "--ntasks", "2", "--jobs-dir", isolated / "jobs")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("estimate: 6,040 evaluations") and "<- these settings" in proc.stdout
    found = json.loads(cli("estimate", EXAMPLE, *SLOW, "--json").stdout)
    assert found["evaluations"] == 6040 and found["chosen"] == 2  # the packaged ntasks
    assert set(found["rows"][0]) == {"ranks", "wall_s", "core_hours", "efficiency"}
    assert not (isolated / "jobs").exists()


def test_a_model_that_sleeps_at_import_is_timed_by_its_evaluations(isolated):
    from conftest import cli, write_model

    model = write_model(isolated / "sleepy.py", "import time\ntime.sleep(2)\n")
    found = json.loads(cli("estimate", model, "--json", "--check-timeout", "20").stdout)
    assert found["first_s"] < 1 and found["seconds_per_evaluation"] < 1 and found["timed"] > 1


@pytest.mark.mpi_launch
def test_the_estimate_never_changes_the_fit_and_results_compare_it_with_the_run(isolated, mpiexec):
    """The same fit and seed, submitted with --time auto (timed, its estimate recorded) and with a time
    by hand: the same chi-square and parameters; results and the report show estimated against measured."""
    from conftest import EXAMPLE, cli, cli_json

    from bumps_mpi.jobdir import control_dir

    fit = [EXAMPLE, "--samples", "1500", "--burn", "50", "--seed", "11", "--local", "-n", "2"]
    timed = cli("submit", *fit, "--time", "auto", "--job-dir", isolated / "auto")
    plain = cli("submit", *fit, "--time", "00:30:00", "--job-dir", isolated / "plain")
    assert timed.returncode == 0 and plain.returncode == 0, timed.stderr + plain.stderr
    request = json.loads((control_dir(isolated / "auto") / "request.json").read_text())
    assert request["estimate"]["auto"]["chose"] == ["time"] and request["estimate"]["chosen"] == 2
    assert request["local"]["time_limit_s"] >= 60  # the chosen limit holds the local run too
    assert "estimate" not in json.loads((control_dir(isolated / "plain") / "request.json").read_text())
    first, second = cli_json("results", isolated / "auto"), cli_json("results", isolated / "plain")
    assert first["chisq"] == second["chisq"] and first["parameters"] == second["parameters"]
    compared = first["prediction"]
    assert compared["ranks"] == 2 and second["prediction"] is None
    assert compared["predicted"]["evaluations"] == compared["measured"]["evaluations"] == 91 * 40
    assert 0 < compared["measured"]["efficiency"] <= 1 and compared["wall_ratio"] > 0
    shown = cli("results", isolated / "auto").stdout
    assert "estimate:  at submission, on 2 ranks" in shown and "parallel efficiency" in shown
    assert "Estimate against the run" in (isolated / "auto" / "report.html").read_text()


@pytest.mark.slurm
def test_auto_on_the_cluster_stays_within_the_partitions_limits_and_runs(slurm_cluster, isolated):
    """Partition 'short' (a 5-minute limit, nodes of a few CPUs): a fit estimated longer than its limit
    gets the limit and requeues through the rest, or is refused before anything is queued; a small fit
    with --ntasks auto --time auto is submitted, recorded, and runs to the end."""
    from conftest import MODELS, cli, cli_json, one_line_error, wait_for_state

    from bumps_mpi.cluster.slurm import partition
    from bumps_mpi.jobdir import control_dir

    short = partition("short")
    assert short is not None and short.max_time_s == 300 and short.cpus_per_node >= 1
    long_fit = [MODELS / "slow_peak.py", "--samples", "200000", "--partition", "short", "--jobs-dir"]
    long_fit += [isolated / "jobs", "--ntasks", "auto", "--time", "auto"]
    shown = cli("submit", *long_fit, "--dry-run", "--max-requeues", "100", "--json", "--", "0.01")
    assert shown.returncode == 0, shown.stderr
    planned = json.loads(shown.stdout)
    found = planned["estimate"]
    assert found["auto"]["time"] == "00:05:00" and found["auto"]["runs"] > 1
    assert found["auto"]["partition"] == {"name": "short", "max_time_s": 300}
    assert planned["spec"]["resources"]["ntasks"] <= short.cpus_per_node  # one node's CPUs
    refused = cli("submit", *long_fit, "--max-requeues", "1", "--", "0.01")
    one_line_error(refused, "runs of partition short's limit 00:05:00", "max_requeues=1")
    assert not (isolated / "jobs").exists()
    small = [MODELS / "slow_peak.py", "--samples", "2000", "--burn", "100", "--seed", "3"]
    submitted = cli_json("submit", *small, "--partition", "short", "--ntasks", "auto", "--time", "auto",
                         "--jobs-dir", isolated / "jobs")  # fmt: skip
    request = json.loads((control_dir(submitted["job_dir"]) / "request.json").read_text())
    ranks, limit = request["estimate"]["chosen"], request["estimate"]["auto"]["time"]
    script = (control_dir(submitted["job_dir"]) / "run.sbatch").read_text()
    assert f"#SBATCH --ntasks={ranks}\n" in script and f"#SBATCH --time={limit}\n" in script
    assert wait_for_state(submitted["job_id"])["state"] == "COMPLETED"
    compared = cli_json("results", submitted["job_id"])["prediction"]
    assert compared["ranks"] == ranks and compared["measured"]["evaluations"] == 151 * 40


def test_a_campaign_is_estimated_once_per_model_with_its_total(isolated):
    from conftest import EXAMPLE, MODELS, ROOT, cli

    fit = ["--samples", "2000", "--burn", "100"]
    each = [
        "estimate",
        ROOT / "examples" / "peak_file.py",
        "--each",
        ROOT / "examples" / "data" / "*.dat",
        *fit,
    ]
    found = json.loads(cli(*each, "--ntasks", "2", "--json").stdout)  # four data files, one model
    assert [m["fits"] for m in found["models"]] == [4] and found["fits"] == 4
    assert found["total"]["evaluations"] == 4 * 6040 and found["total"]["ranks"] == 2
    two = ["estimate", EXAMPLE, "--model", MODELS / "slow_peak.py", *fit]
    found = json.loads(cli(*two, "--ntasks", "2", "--json").stdout)
    assert [m["fits"] for m in found["models"]] == [1, 1] and found["costliest"] == str(
        MODELS / "slow_peak.py"
    )
    rows = [next(r for r in m["estimate"]["rows"] if r["ranks"] == 2) for m in found["models"]]
    assert found["total"]["core_hours"] == pytest.approx(rows[0]["core_hours"] + rows[1]["core_hours"])
    shown = cli("submit", *two[1:], "--ntasks", "auto", "--time", "auto", "--dry-run", "--json")
    planned = json.loads(shown.stdout)
    chosen = next(m for m in planned["estimate"]["models"] if m["model"] == found["costliest"])["estimate"][
        "auto"
    ]
    assert f"#SBATCH --ntasks={chosen['ntasks']}\n" in planned["script"]
    assert f"#SBATCH --time={chosen['time']}\n" in planned["script"]
    text = cli("submit", *each[1:], "--dry-run")
    assert "campaign: 4 fits, 24,160 evaluations" in text.stderr and text.stdout.startswith("#!/bin/bash")

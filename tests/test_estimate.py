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
        ("dream", {"samples": 1000, "burn": 10, "pop": -25, "thin": 2}, 3, 1 + 10 + 40 * 2, 25),
        ("dream", {"samples": 100, "burn": 0, "pop": 1.5, "steps": 7}, 3, 8, 5),  # ceil(4.5); steps given
        ("de", {"steps": 200, "pop": 2.5}, 3, 201, 7),  # DE rounds down: int(7.5)
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
    fitter = estimate.FITTER_S_PER_GENERATION["dream"]
    serial = 100 * (40 * 0.01 + fitter)  # no round trip on one rank
    assert rows[0].wall_s == pytest.approx(serial) and rows[0].efficiency == pytest.approx(1.0)
    four = 100 * (10 * 0.01 + estimate.MAPPER_ROUND_TRIP_S[4] + fitter)
    assert rows[2].wall_s == pytest.approx(four)
    assert rows[2].efficiency == pytest.approx(serial / (4 * four))
    assert rows[2].core_hours == pytest.approx(4 * (four + 10) / 3600)


def test_an_uneven_split_costs_the_largest_share():
    job = estimate.Work(generations=10, population=5)  # 5 points on 4 ranks: one rank evaluates 2
    rows = estimate.table("lm", job, 1.0, 0, 4)
    assert rows[-1].wall_s == pytest.approx(10 * (2 * 1.0 + estimate.MAPPER_ROUND_TRIP_S[4]))
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
    assert 1 <= found["timed"] <= 30 and 0 < found["seconds_per_evaluation"] < 1
    assert [row["ranks"] for row in found["rows"]] == [1, 2, 4, 8]
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

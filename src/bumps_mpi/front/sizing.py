"""A fit's size, from the model check's timing: its estimate (bumps_mpi.front.estimate) on the rank
counts the site and the partition allow, and, for `--ntasks auto` and `--time auto`, the ranks and time
limit chosen from it. A fit the limits cannot hold, even through its requeues, is refused here, on the
login node, with what to change, rather than found out after a day in the queue."""

from __future__ import annotations

import math
from typing import Any

from ..cluster import slurm
from ..cluster.render import limit_seconds, signal_seconds
from ..config import AUTO, AUTO_KEYS, Settings
from ..errors import UsageError
from . import estimate

JOB_START_S = 5.0  # a job's start and its figures around the fit (docs/benchmarks.md: start 1.5-2.4 s)
# --time auto never asks for less: a job's start on a busy shared file system (imports, the sandbox, MPI)
# can take far longer than the estimate's start-up, and a short fit cut off by its limit pays a requeue
SHORTEST_AUTO_TIME_S = 300


def auto_keys(settings: Settings) -> list[str]:
    """The settings (ntasks, time) the estimate is to choose."""
    return [key for key in AUTO_KEYS if settings.get(key) == AUTO]


def placeholder(settings: Settings) -> Settings:
    """The settings with 'auto' replaced by plain values, to check the rest of the script before the
    model check (the script is rendered again with the chosen values)."""
    plain = Settings(dict(settings), settings.sources)
    plain.update({key: {"ntasks": 1, "time": "01:00:00"}[key] for key in auto_keys(settings)})
    return plain


def partition_of(settings: Settings) -> slurm.Partition | None:
    """The partition the fit would go to, where Slurm can say."""
    return slurm.partition(settings.get("partition") or None)


def most_ranks(settings: Settings, partition: slurm.Partition | None) -> int:
    """The most ranks the estimate considers: auto_max_ntasks, and no more CPUs than the job's nodes of
    the partition have."""
    most = int(settings["auto_max_ntasks"])
    if partition is not None:
        nodes = min(int(settings.get("nodes") or 1), max(1, partition.nodes))
        most = min(most, nodes * partition.cpus_per_node // max(1, int(settings.get("cpus_per_task") or 1)))
    return max(1, most)


def estimate_of(
    fit: str, checked: dict[str, Any], settings: Settings, partition: slurm.Partition | None
) -> dict[str, Any]:
    """The fit's cost on 1, 2, 4, ... ranks from a timed model check's timing."""
    timing = checked["timing"]
    job = estimate.work(fit, checked.get("fit_options") or {}, len(checked["parameters"]))
    asked = settings.get("ntasks")
    ranks = int(asked) if asked not in (None, AUTO) else None
    each, startup = float(timing["seconds_per_evaluation"]), JOB_START_S + float(timing["first_s"])
    rows = estimate.table(fit, job, each, startup, most_ranks(settings, partition), also=ranks)
    found = estimate.as_json(rows, ranks or 1, job, each, startup)
    return {**found, "first_s": timing["first_s"], "timed": timing["timed"]}


def choose(settings: Settings, found: dict[str, Any], partition: slurm.Partition | None) -> Settings:
    """The settings with 'auto' ntasks and time chosen from *found*, which records the choice ("auto");
    a UsageError when the limits cannot hold the fit."""
    wanted = auto_keys(settings)
    chosen = Settings(dict(settings), dict(settings.sources))
    rows = [estimate.Row(**row) for row in found["rows"]]
    threshold = float(settings["auto_efficiency"])
    if "ntasks" in wanted:
        chosen["ntasks"] = estimate.choose_ranks(rows, threshold)
        chosen.sources["ntasks"] = "--ntasks auto"
    ranks = int(chosen["ntasks"])
    row = next(r for r in rows if r.ranks == ranks)
    factor = float(settings["auto_time_factor"])
    limit_s = partition.max_time_s if partition is not None else None
    if "time" in wanted:
        fit_s = row.wall_s * factor + found["startup_s"]  # and the signal's grace, at most half the limit
        grace = min(int(settings["signal_grace"]), fit_s)
        needed = estimate.time_limit(row.wall_s, found["startup_s"] + grace, factor, SHORTEST_AUTO_TIME_S)
        if limit_s is not None and (limit_seconds(needed) or 0) > limit_s:
            needed = estimate.clock(limit_s)  # the partition's limit; the fit requeues through the rest
        chosen["time"] = needed
        chosen.sources["time"] = "--time auto"
    runs = _runs_needed(row.wall_s * factor, found["startup_s"], chosen, settings)
    if runs - 1 > int(settings["max_requeues"]):
        raise UsageError(too_long(row, runs, chosen, partition, wanted))
    found["chosen"] = ranks
    found["auto"] = {
        "chose": wanted,
        "ntasks": ranks,
        "time": chosen.get("time"),
        "efficiency_threshold": threshold,
        "time_factor": factor,
        "most_ranks": most_ranks(settings, partition),
        "partition": None if partition is None else {"name": partition.name, "max_time_s": limit_s},
        "runs": runs,
    }
    return chosen


def _runs_needed(fit_s: float, startup_s: float, chosen: Settings, settings: Settings) -> int:
    """How many runs of the time limit a fit of *fit_s* seconds takes (each requeue checkpoints
    signal_grace before the limit and starts again)."""
    limit = limit_seconds(chosen.get("time"))
    if limit is None:
        return 1
    per_run = limit - signal_seconds(int(settings["signal_grace"]), chosen.get("time")) - startup_s
    return math.ceil(fit_s / per_run) if per_run > 0 else 10**6


def too_long(
    row: estimate.Row,
    runs: int,
    chosen: Settings,
    partition: slurm.Partition | None,
    wanted: list[str],
    factor: float | None = None,
    hint: str | None = None,
) -> str:
    """Why the time limit and its requeues cannot hold the fit, and what to change (*hint*, else the
    command line's options)."""
    factor = float(chosen["auto_time_factor"]) if factor is None else factor
    where = f"partition {partition.name}'s limit" if "time" in wanted and partition else "--time"
    margin = (
        f" ({estimate.clock(row.wall_s * factor)} with auto_time_factor {factor:g})" if factor != 1 else ""
    )
    allowed = int(chosen["max_requeues"])
    limit = (
        f"{runs} runs of {where} {chosen.get('time')}, and max_requeues={allowed} allows {allowed + 1}"
        if allowed
        else f"longer than its time limit {chosen.get('time')}"
    )
    default = (
        "ask for fewer samples or steps, a larger --max-requeues"
        + (", more --ntasks" if "ntasks" not in wanted else "")
        + (" or a longer --time" if "time" not in wanted else " or a partition with a longer limit")
    )
    return (
        f"the fit is estimated to take {estimate.clock(row.wall_s)} on {row.ranks} ranks{margin}: {limit}; "
        + (hint or default)
    )


def fits_in_time(
    settings: Settings, found: dict[str, Any], factor: float | None = None, hint: str | None = None
) -> str | None:
    """For settings chosen by hand: why the estimate (times *factor*, else auto_time_factor) says their
    time limit and its requeues cannot hold the fit (None when they can, or there is no limit)."""
    row = next((r for r in found["rows"] if r["ranks"] == found["chosen"]), None)
    if row is None:
        return None
    factor = float(settings["auto_time_factor"]) if factor is None else factor
    runs = _runs_needed(row["wall_s"] * factor, found["startup_s"], settings, settings)
    if runs - 1 <= int(settings["max_requeues"]):
        return None
    return too_long(estimate.Row(**row), runs, settings, None, [], factor, hint)


def campaign_estimate(
    fit: str,
    specs: list[Any],
    timings: dict[int, dict[str, Any]],
    settings: Settings,
    partition: slurm.Partition | None,
) -> dict[str, Any]:
    """A campaign's estimate: each model's (timed once, on its first fit; each of its fits records it)
    and, at the settings' ranks, the campaign's total."""
    models = []
    for i, checked in sorted(timings.items()):
        found = estimate_of(fit, checked, settings, partition)
        same = [spec for spec in specs if spec["model"] == specs[i]["model"]]
        for spec in same:
            spec["estimate"] = found
        models.append({"model": specs[i]["model"], "fits": len(same), "estimate": found})
    costliest = max(models, key=lambda m: m["estimate"]["rows"][0]["wall_s"])  # on one rank
    campaign = {"models": models, "fits": len(specs), "costliest": costliest["model"]}
    if settings.get("ntasks") != AUTO:
        campaign_total(campaign, int(settings.get("ntasks") or 1))
    return campaign


def costliest(campaign: dict[str, Any]) -> dict[str, Any]:
    """The estimate of the campaign's costliest model, which --ntasks/--time auto choose from."""
    return next(m["estimate"] for m in campaign["models"] if m["model"] == campaign["costliest"])


def campaign_total(campaign: dict[str, Any], ranks: int) -> None:
    """The campaign's total on *ranks* a fit: every fit of each model at its estimate's row."""
    rows = [(m["fits"], m["estimate"], next(r for r in m["estimate"]["rows"] if r["ranks"] == ranks))
            for m in campaign["models"]]  # fmt: skip
    campaign["chosen"] = ranks
    campaign["total"] = {
        "ranks": ranks,
        "evaluations": sum(n * found["evaluations"] for n, found, _ in rows),
        "fit_hours": sum(n * row["wall_s"] for n, _, row in rows) / 3600,
        "core_hours": sum(n * row["core_hours"] for n, _, row in rows),
    }

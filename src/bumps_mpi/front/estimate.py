"""What a fit will cost, before it is queued: its evaluations from the fitter's settings, and from the
model's measured time per evaluation and what is known of the mapper, its wall time, core-hours and
parallel efficiency on 1, 2, 4, ... ranks; the rank count and time limit `--ntasks auto` and
`--time auto` choose from them. Arithmetic only: the timing of the model is the model check's.

The mapper splits each generation's population statically over the ranks (rank 0 evaluates its share
too), so a generation of P points on N ranks costs ceil(P/N) evaluations plus the mapper's round trip,
and the fitter's own work between generations runs on rank 0 alone.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

# The mapper's round trip per generation (scatter the points, gather the values), in seconds, by ranks
# on one node: 2 ranks as measured by bench/mapper_bench.py on the 2-vCPU VM (about 12 µs a call,
# docs/benchmarks.md); 4 and more extrapolated from it (each rank adds a request pair), to be replaced by
# `make bench`'s figures on a machine with more cores. More ranks than listed grow linearly. A second
# host adds about 20 µs (docs/benchmarks.md, several nodes): nothing against a model's milliseconds.
MAPPER_ROUND_TRIP_S = {1: 0.0, 2: 12e-6, 4: 20e-6, 8: 35e-6, 16: 65e-6}
DE_STEPS = 10  # DREAM's generations between its checks for the end (bumps.dream.core.Dream.DE_steps)
# The fitter's own work on rank 0 between generations, which no rank count shortens: (seconds per
# generation, seconds per point of its population). Measured with examples/peak.py (about 25 µs an
# evaluation) on one rank of the 2-vCPU VM, Bumps 1.0.5: DREAM 0.52, 6.7 and 26 ms a generation at 10, 200
# and 800 chains; DE 0.72 and 8.8 ms at 40 and 400 (docs/benchmarks.md, the estimate).
FITTER_COST = {"dream": (2.4e-4, 3.2e-5), "de": (0.0, 2.2e-5)}
# An evaluation in the job takes longer than the check's timing of it: the check repeats a few points
# with warm caches, the job's come between the fitter's own work over a spreading population. Measured
# by bench/estimate_bench.py on the 2-vCPU VM: 1.18 to 1.45 times (examples/peak.py, Bumps' decay
# example, examples/sasmodels; two runs each), docs/benchmarks.md.
JOB_EVALUATION_FACTOR = 1.2


@dataclass(frozen=True)
class Row:
    """One rank count's prediction."""

    ranks: int
    wall_s: float  # the fit's own time (what result.json's elapsed_s measures)
    core_hours: float  # ranks × (wall + start-up), as an allocation is charged
    efficiency: float  # serial time / (ranks × wall)


@dataclass(frozen=True)
class Work:
    """The fit's work: how many generations of how many points (one point per generation for the
    fitters that evaluate one at a time)."""

    generations: int
    population: int

    @property
    def evaluations(self) -> int:
        return self.generations * self.population


def population(options: dict[str, Any], parameters: int) -> int:
    """Bumps' population for DREAM and DE: pop per parameter (rounded up), or -pop in all."""
    pop = float(options.get("pop", 10))
    return int(math.ceil(pop * parameters)) if pop > 0 else int(-pop)


def work(fit: str, options: dict[str, Any], parameters: int) -> Work:
    """The generations and population of a fit with these (checked, complete) options, as Bumps runs it:
    DREAM: the initial population, then burn-in and samples/population generations, in whole rounds of
    DE_STEPS (Bumps' DreamFit.max_steps; thinning keeps fewer, it does not run more); DE: its steps, the
    first population included; the others: about one point per step (Bumps counts their steps, not their
    evaluations: amoeba's restarts and lm's Jacobians make this a rough figure)."""
    if fit == "dream":
        size = population(options, parameters)
        steps = int(options.get("steps") or 0) or -(-int(options.get("samples", 10000)) // size)
        rounds = -(-(steps + int(options.get("burn", 100)) - 1) // DE_STEPS)
        return Work(1 + rounds * DE_STEPS, size)
    if fit == "de":  # Bumps' DE rounds its population down, int(pop × parameters); its steps count its
        size = max(1, int(float(options.get("pop", 10)) * parameters))  # first population
        return Work(max(1, int(options.get("steps", 1000))), size)
    steps = int(options.get("steps", 1000)) * max(1, int(options.get("starts", 1)))
    return Work(steps, 1)


def round_trip_s(ranks: int) -> float:
    """The mapper's round trip per generation on *ranks* (the table, extended linearly past its end)."""
    if ranks in MAPPER_ROUND_TRIP_S:
        return MAPPER_ROUND_TRIP_S[ranks]
    known = sorted(MAPPER_ROUND_TRIP_S)
    below = max(k for k in known if k <= ranks)
    top, before = known[-1], known[-2]
    per_rank = (MAPPER_ROUND_TRIP_S[top] - MAPPER_ROUND_TRIP_S[before]) / (top - before)
    return MAPPER_ROUND_TRIP_S[below] + per_rank * (ranks - below)


def wall_s(fit: str, job: Work, seconds_per_evaluation: float, ranks: int) -> float:
    """The fit's own time on *ranks*: per generation, the largest share of the population, the mapper's
    round trip (none on one rank) and the fitter's own work."""
    share = -(-job.population // ranks)
    seconds_per_evaluation *= JOB_EVALUATION_FACTOR
    per_generation, per_point = FITTER_COST.get(fit, (0.0, 0.0))
    fitter = per_generation + per_point * job.population
    return job.generations * (share * seconds_per_evaluation + round_trip_s(ranks) + fitter)


def rank_counts(most: int, also: int | None = None) -> list[int]:
    """1, 2, 4, ... up to *most*, *most* itself, and *also* (the rank count asked for)."""
    counts, n = {max(1, most)} | ({also} if also else set()), 1
    while n < most:
        counts.add(n)
        n *= 2
    return sorted(counts)


def table(
    fit: str,
    job: Work,
    seconds_per_evaluation: float,
    startup_s: float,
    most_ranks: int,
    also: int | None = None,
) -> list[Row]:
    """One row per rank count up to *most_ranks* (and *also*)."""
    serial = wall_s(fit, job, seconds_per_evaluation, 1)
    rows = []
    for ranks in rank_counts(most_ranks, also):
        wall = wall_s(fit, job, seconds_per_evaluation, ranks)
        efficiency = serial / (ranks * wall) if wall > 0 else 1.0
        rows.append(Row(ranks, wall, ranks * (wall + startup_s) / 3600, min(efficiency, 1.0)))
    return rows


def choose_ranks(rows: list[Row], threshold: float) -> int:
    """The most ranks whose efficiency stays at or above *threshold* (1 if none does)."""
    good = [row.ranks for row in rows if row.efficiency >= threshold]
    return max(good) if good else 1


def time_limit(wall: float, startup_s: float, safety: float, minimum_s: float = 60) -> str:
    """A Slurm time limit for a fit predicted to take *wall* seconds: times *safety*, plus start-up,
    rounded up to whole minutes (at least *minimum_s*), as D-HH:MM:SS or HH:MM:SS."""
    seconds = max(minimum_s, wall * safety + startup_s)
    return clock(60 * math.ceil(seconds / 60))


def clock(seconds: float) -> str:
    """Seconds as Slurm writes a time: HH:MM:SS, or D-HH:MM:SS from a day (whole seconds, rounded up)."""
    minutes, secs = divmod(int(math.ceil(seconds)), 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:{secs:02d}" if days else f"{hours:02d}:{mins:02d}:{secs:02d}"


def as_json(
    rows: list[Row], chosen: int, job: Work, seconds_per_evaluation: float, startup_s: float
) -> dict[str, Any]:
    """The estimate as `--json` gives it."""
    return {
        "rows": [asdict(row) for row in rows],
        "chosen": chosen,
        "evaluations": job.evaluations,
        "generations": job.generations,
        "population": job.population,
        "seconds_per_evaluation": seconds_per_evaluation,  # as the check timed it
        "job_seconds_per_evaluation": seconds_per_evaluation * JOB_EVALUATION_FACTOR,  # as the job will
        "startup_s": startup_s,
    }

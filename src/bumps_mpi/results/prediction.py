"""The estimate a fit was submitted with (request.json, trusted) against what its run measured
(result.json, the model's to write: numbers checked, shown, never decided on): wall time, evaluations,
evaluations per second and parallel efficiency, so users and the project learn how good it is."""

from __future__ import annotations

import math
from typing import Any

from ..records import Request, Result


def _number(value: Any) -> float | None:
    """A finite, non-negative number from result.json, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def compared(spec: Request, result: Result | None) -> dict[str, Any] | None:
    """{"ranks", "predicted": {...}, "measured": {...}, "wall_ratio"}, or None for a fit submitted
    without an estimate (or without a result). The measured efficiency is the model's time (rank 0's
    per evaluation, times the evaluations) over the ranks' time: what the allocation spent fitting."""
    found = spec.get("estimate")
    if not isinstance(found, dict) or not result:
        return None
    ranks = spec.get("local", {}).get("ranks") or spec.get("resources", {}).get("ntasks")
    row = next((r for r in found.get("rows", []) if r.get("ranks") == ranks), None)
    if row is None or not isinstance(ranks, int):
        return None
    predicted = {
        "wall_s": row["wall_s"],
        "evaluations": found["evaluations"],
        "evaluations_per_s": found["evaluations"] / row["wall_s"] if row["wall_s"] else None,
        "efficiency": row["efficiency"],
        "seconds_per_evaluation": found.get("job_seconds_per_evaluation", found["seconds_per_evaluation"]),
    }
    wall, run = _number(result.get("elapsed_s")), _number(result.get("run_elapsed_s"))
    evaluations, each = _number(result.get("evaluations")), _number(result.get("seconds_per_evaluation"))
    per_s = evaluations / run if evaluations and run else None
    restarts = _number(result.get("restarts")) or 0
    measured = {  # a requeued fit: its wall time is all its runs', the rest its last run's
        "wall_s": wall,
        "evaluations": None if restarts else evaluations,
        "evaluations_per_s": per_s,
        "efficiency": min(1.0, evaluations * each / (ranks * run)) if evaluations and each and run else None,
        "seconds_per_evaluation": each,
    }
    ratio = wall / row["wall_s"] if wall is not None and row["wall_s"] else None
    return {
        "ranks": ranks,
        "predicted": predicted,
        "measured": measured,
        "wall_ratio": ratio,
        "runs": 1 + restarts,
    }


def lines(found: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, predicted, measured) for people: the CLI's results and the report show these rows."""
    predicted, measured = found["predicted"], found["measured"]

    def shown(value: Any, form: str) -> str:
        return "-" if value is None else form.format(value)

    rows = [
        ("fit's wall time", "{:.1f} s", "wall_s"),
        ("evaluations", "{:,.0f}", "evaluations"),
        ("evaluations per second", "{:,.0f}", "evaluations_per_s"),
        ("time per evaluation", "{:.3g} s", "seconds_per_evaluation"),
        ("parallel efficiency", "{:.2f}", "efficiency"),
    ]
    return [(what, shown(predicted[key], form), shown(measured[key], form)) for what, form, key in rows]

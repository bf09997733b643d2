"""A campaign's results: one row per fit (its label, state, chi-square, each parameter's best, mean and
std, or why it has none), as CSV (results.csv) and as the campaign's report and figures
(bumps_mpi.results.campaign_report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cluster.states import JobState
from ..errors import BumpsMpiError
from ..jobdir import FIGURES_DIR, JobDir, write_atomic
from .campaign import load, status


def table(path: Path) -> list[dict[str, Any]]:
    """One row per fit: index, label, job id, state, chi-square, each parameter's best/mean/std, error."""
    rows = []
    for record in status(path)["records"]:
        job = JobDir(record["job_dir"])
        row: dict[str, Any] = {
            "index": record["index"],
            "label": record["label"],
            "job_id": record["job_id"],
            "state": record["state"],
            "chisq": None,
            "parameters": {},
            "error": None,
            "job_dir": record["job_dir"],
        }
        try:
            result = job.result
        except BumpsMpiError as exc:
            result, row["error"] = None, str(exc)
        if result is not None:
            row["chisq"] = result["chisq"]
            row["parameters"] = {
                p["name"]: {"best": p["best"], "mean": p["mean"], "std": p["std"]}
                for p in result["parameters"]
            }
        elif row["error"] is None:
            row["error"] = _why_no_result(record)
        rows.append(row)
    return rows


def write_report(path: Path, rows: list[dict[str, Any]]) -> Path | None:
    """The campaign's report.html (bumps_mpi.results.campaign_report); None if it could not be written
    (a read-only campaign directory: the table is still printed)."""
    from ..results import campaign_report

    try:
        return campaign_report.write(path, str(load(path).get("name") or path.name), rows)
    except OSError:
        return None


def plot(path: Path, rows: list[dict[str, Any]], out: Path | None, fmt: str) -> list[Path]:
    """`plot CAMPAIGN`: the report's figures as files, in *out* (default: the campaign's figures/)."""
    from ..results import campaign_report

    return campaign_report.figures_to(out or path / FIGURES_DIR, rows, fmt)


def _why_no_result(record: dict[str, Any]) -> str:
    if record.get("error"):
        return str(record["error"].get("message"))
    if record.get("unreadable"):
        return str(record["unreadable"])
    state = record["state"]
    if not JobState(state).terminal or record.get("finishing"):
        return f"no result yet: {state}"
    why = f" ({record['reason']})" if record.get("reason") else ""
    return f"ended {state}{why} without results"


def flat(rows: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The table as CSV columns: a best, mean and std column for each parameter, in first-seen order."""
    names = list(dict.fromkeys(n for row in rows for n in row["parameters"]))
    columns = ["index", "label", "job_id", "state", "chisq"]
    columns += [f"{n} {stat}" for n in names for stat in ("best", "mean", "std")]
    columns += ["error", "job_dir"]
    out = []
    for row in rows:
        line = {k: row[k] for k in ("index", "label", "job_id", "state", "chisq", "error", "job_dir")}
        for n in names:
            for stat in ("best", "mean", "std"):
                line[f"{n} {stat}"] = row["parameters"].get(n, {}).get(stat)
        out.append(line)
    return columns, out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> str:
    """The table as CSV text, also kept as results.csv in the campaign directory (atomically)."""
    import csv
    import io

    columns, lines = flat(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([_inert(c) for c in columns])
    writer.writerows([[_inert(line[c]) for c in columns] for line in lines])
    text = buffer.getvalue()
    try:
        write_atomic(path / "results.csv", text)
    except OSError:
        pass  # a read-only campaign directory: the table is still printed
    return text


def _inert(value: Any) -> Any:
    """A cell a spreadsheet will not run: text that starts like a formula (a parameter's name or an
    error is the model's to choose) gets a leading quote; numbers and empty cells are left as they are."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value

"""report.html: one self-contained page per fit, to open from a laptop after `scp`.

Job facts, the parameter table (best, mean, std, 68% and 95% intervals),
chi-square, the figures (PNG, embedded as data: URIs) and, for a failed fit,
the error with its traceback. No script and no outside address: a content
security policy allows only the embedded images and the inline style. Every
string that comes from the model or the job's files (parameter names, model
and file names, messages, tracebacks) is HTML-escaped: a model is someone's
code, and its names must never become markup.
"""

from __future__ import annotations

import base64
import datetime
import json
import time
from html import escape
from pathlib import Path
from typing import Any

from ..jobdir import (
    ERROR_FILE,
    FIGURES_DIR,
    PROGRESS_FILE,
    REPORT_FILE,
    RUNS_FILE,
    JobDir,
    read_json,
    write_atomic,
)
from ..records import Request, Result, Status
from ..text import ranks_on_hosts
from ..version import __version__
from .figures import FIGURE_MAX_BYTES, manifest_of

FIGURES_MAX_BYTES = 128 << 20  # all figures of one report together

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.state { display: inline-block; padding: 0.1em 0.6em; border-radius: 0.3em; background: #ddd; }
.COMPLETED { background: #cfe8cf; } .FAILED, .OUT_OF_MEMORY, .TIMEOUT, .NODE_FAIL { background: #f3c6c6; }
.note { background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.5em 1em; }
table { border-collapse: collapse; } td, th { padding: 0.25em 0.8em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, monospace; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
footer { margin-top: 3em; color: #777; font-size: 0.9em; }
"""
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _number(value: Any) -> str:
    if value is None:
        return "–"
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError):
        return escape(str(value))


def _interval(pair: Any) -> str:
    if not pair or None in pair:
        return "–"
    return f"[{_number(pair[0])}, {_number(pair[1])}]"


def _when(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "–"
    return datetime.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M:%S")


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in pairs if v not in (None, "")
    )


def _parameters(result: Result | None, manifest: dict | None) -> str:
    stats = (manifest or {}).get("stats")
    if stats:
        where = (manifest or {}).get("source", {})
        caption = "from DREAM's draws" + ("" if where.get("kind") == "result" else f" ({where.get('label')})")
        rows = [(s["name"], s["best"], s["mean"], s["std"], s["p68"], s["p95"]) for s in stats]
    elif result is not None:
        caption = "best fit; the intervals are mean ± std and mean ± 1.96 std (normal approximation)"
        rows = []
        for p in result["parameters"]:
            mean, std = p.get("mean"), p.get("std")
            ok = isinstance(mean, (int, float)) and isinstance(std, (int, float))
            p68 = [mean - std, mean + std] if ok else None
            p95 = [mean - 1.96 * std, mean + 1.96 * std] if ok else None
            rows.append((p["name"], p.get("best"), mean, std, p68, p95))
    else:
        return "<p>No parameter values yet: the fit has neither a result nor a checkpoint.</p>"
    body = "".join(
        f"<tr><td>{escape(str(name))}</td><td class='num'>{_number(best)}</td>"
        f"<td class='num'>{_number(mean)}</td>"
        f"<td class='num'>{_number(std)}</td><td class='num'>{_interval(p68)}</td>"
        f"<td class='num'>{_interval(p95)}</td></tr>"
        for name, best, mean, std, p68, p95 in rows
    )
    head = "".join(
        f"<th>{h}</th>" for h in ("parameter", "best", "mean", "std", "68% interval", "95% interval")
    )
    head = f"<tr>{head}</tr>"
    return f"<p>{escape(caption)}</p><table>{head}{body}</table>"


def _figures(job: JobDir, manifest: dict | None) -> str:
    if not manifest or not manifest.get("figures"):
        return "<p>No figures were drawn.</p>"
    parts, total = [], 0
    for figure in manifest["figures"]:  # sane (figures.manifest_of): plain names, each once, text titles
        path = job.file(FIGURES_DIR) / figure["file"]
        if path.suffix != ".png":
            continue
        try:  # the job's figures are the model's to write: never through a link, never without a cap
            png = job.read_beneath(f"{FIGURES_DIR}/{path.name}", FIGURE_MAX_BYTES)
        except OSError:
            continue
        total += len(png)
        if total > FIGURES_MAX_BYTES:
            break
        data = base64.b64encode(png).decode("ascii")
        title = escape(figure.get("title", path.stem))
        parts.append(
            f"<figure><img src='data:image/png;base64,{data}' alt='{title}'>"
            f"<figcaption>{title}</figcaption></figure>"
        )
    problems = "".join(f"<li>{escape(p)}</li>" for p in manifest.get("problems", []))
    if problems:
        parts.append(f"<p>Some figures could not be drawn:</p><ul>{problems}</ul>")
    return "".join(parts) or "<p>No figures were drawn.</p>"


def _failed(result: Result | None, error: dict | None) -> str | None:
    """'N of M' evaluations where the model raised or gave no finite value (Bumps went on past them)."""
    for record in (result, error):
        if record and isinstance(record.get("failed_evaluations"), int):
            return f"{record['failed_evaluations']} of {record.get('evaluations')}"
    return None


def _error(error: dict | None) -> str:
    if error is None:
        return ""
    where = ""
    if error.get("rank") is not None:
        where = f" on rank {error['rank']}" + (f" ({error.get('host')})" if error.get("host") else "")
    point = f"<p>at point {escape(json.dumps(error['point']))}</p>" if error.get("point") is not None else ""
    trace = f"<pre>{escape(error.get('traceback') or '')}</pre>" if error.get("traceback") else ""
    message = escape(str(error.get("message")))
    return f"<h2>Error</h2><p>The fit failed{escape(where)}: {message}</p>{point}{trace}"


def build(job: JobDir, record: Status) -> str:
    """The page's HTML for *job*, whose status is *record* (cluster.jobstate's, or the job's own)."""
    spec, result = job.spec, job.result
    error = _read(job, ERROR_FILE)
    progress = _read(job, PROGRESS_FILE)
    runs = _read(job, RUNS_FILE, kind=list) or []
    manifest = manifest_of(job)
    name = spec.get("name") or job.path.name
    state = str(record.get("state") or "UNKNOWN")
    slurm = spec.get("slurm", {})
    ranks = (
        (result or {}).get("ranks")
        or spec.get("local", {}).get("ranks")
        or spec.get("resources", {}).get("ntasks")
    )
    facts = [
        ("model", spec.get("model")),
        ("model arguments", " ".join(spec.get("model_args", []))),
        ("fitter", spec.get("fit")),
        ("fit options", json.dumps(spec.get("fit_options", {}), sort_keys=True)),
        ("seed", spec.get("seed")),
        ("ranks", ranks),
        ("hosts", ranks_on_hosts(record["hosts"]) if record.get("hosts") else None),
        ("GPUs", _gpus(result)),
        ("threads per rank", spec.get("threads")),
        ("Slurm job", slurm.get("job_id") or "local run"),
        ("earlier Slurm jobs", ", ".join(map(str, slurm.get("earlier_job_ids", [])))),
        ("state", state),
        ("exit", record.get("exit")),
        ("submitted", _when(slurm.get("submitted", spec.get("created")))),
        ("first run started", _when(runs[0].get("started")) if runs else None),
        ("finished", _when((result or {}).get("finished"))),
        ("fit time", f"{result['elapsed_s']:.1f} s" if result and "elapsed_s" in result else None),
        ("restarts", (progress or {}).get("restarts", max(len(runs) - 1, 0))),
        ("failed evaluations", _failed(result, error)),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(spec.get("versions", {}).items()))),
        ("sandbox", _sandbox(result, spec)),
        ("job directory", str(job.path)),
        (
            "figures",
            f"{(manifest or {}).get('source', {}).get('label')}, drawn in {(manifest or {}).get('seconds')} s"
            if manifest
            else None,
        ),
    ]
    summary = ""
    if result is not None:
        summary = (
            f"<p>χ² = <b>{escape(str(result.get('chisq_str')))}</b> ({escape(str(result.get('fitter')))}, "
            f"{float(result.get('elapsed_s') or 0):.1f} s on {escape(str(ranks))} ranks)</p>"
        )
    source = (manifest or {}).get("source", {})
    note = (
        f"<p class='note'>Figures and values {escape(str(source.get('label')))}.</p>"
        if source.get("kind") not in (None, "result")
        else ""
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{POLICY}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(name)}: bumps-mpi report</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{escape(name)}</h1><p><span class='state {escape(state)}'>{escape(state)}</span> "
        f"{escape(str(spec.get('model')))}</p></header>{note}{summary}"
        f"<h2>Parameters</h2>{_parameters(result, manifest)}"
        f"{_error(error)}"
        f"<h2>Figures</h2>{_figures(job, manifest)}{_prediction(spec, result)}"
        f"<h2>Job</h2><table>{_rows(facts)}</table>"
        f"<footer>Written by bumps-mpi {escape(__version__)} on {_when(time.time())}.</footer>"
        "</body></html>\n"
    )


def _prediction(spec: Request, result: Result | None) -> str:
    """The estimate the fit was submitted with, against the run (when it had one)."""
    from .prediction import compared, lines

    found = compared(spec, result)
    if found is None:
        return ""
    rows = "".join(
        f"<tr><th>{escape(what)}</th><td>{escape(p)}</td><td>{escape(m)}</td></tr>"
        for what, p, m in lines(found)
    )
    return (
        f"<h2>Estimate against the run</h2><p>Estimated at submission for {found['ranks']} ranks from the "
        "model check's timing; measured by the run.</p>"
        f"<table><tr><th></th><th>estimated</th><th>measured</th></tr>{rows}</table>"
    )


def _gpus(result: Result | None) -> str | None:
    """Which GPUs each rank was given (result.json: rank -> the runtime's and Slurm's names), one line."""
    given = (result or {}).get("gpus")
    if not isinstance(given, dict):
        return None
    lines = []
    for rank in sorted(given, key=str):
        names = given[rank] if isinstance(given[rank], dict) else {}
        lines.append(f"rank {rank}: " + ", ".join(f"{k}={v}" for k, v in names.items()))
    return "; ".join(lines)


def _sandbox(result: Result | None, spec: Request) -> str:
    from ..sandbox.policy import describe

    if result is not None and result.get("sandbox"):
        return describe(result["sandbox"])
    asked = (spec.get("sandbox") or {}).get("level")
    return f"{asked} (asked for; enforced as the job runs)" if asked else "off"


def _read(job: JobDir, name: str, kind: type = dict) -> Any:
    try:
        return read_json(job.file(name), kind=kind)
    except Exception:  # a broken side file leaves its part of the page empty, not the page unwritten
        return None


def write(job: JobDir, record: Status) -> Path:
    """Write report.html in the job directory (atomically); its path."""
    path = job.file(REPORT_FILE)
    write_atomic(path, build(job, record))
    return path

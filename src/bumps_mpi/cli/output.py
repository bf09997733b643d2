"""How bumps-submit prints jobs, campaigns and results for people (--json prints the records as they are)."""

from __future__ import annotations

import sys
from typing import Any

from ..cluster.states import JobState
from ..errors import where
from ..records import ProgressView, Status
from ..text import one_line, ranks_on_hosts
from .group import echo, emit_json


def show_ended(record: Status, as_json: bool, shown_live: bool) -> None:
    """A local run (or its resume) has ended: its status and results, or why it failed; exit 1 unless done."""
    from ..front import api

    if as_json:
        emit_json(record)
    else:
        print_status([record])
        if record["state"] == JobState.COMPLETED.value:
            print_results(api.results(record["job_dir"]))
    if record["state"] != JobState.COMPLETED.value:
        print_error(record, traceback=not shown_live)  # a live run has shown its traceback already
        sys.exit(1)


def counts_text(summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items())
    return f"{summary['fits']} fits: {counts}  ({summary['percent']:.0f}% done)"


def print_campaign(summary: dict[str, Any], every: bool) -> None:
    """One line of counts and progress, then the fits that need attention (or, with *every*, all)."""
    arrays = ", ".join(summary["array_ids"]) or "-"
    echo(f"campaign {summary['name']}  {counts_text(summary)}  array {arrays}")
    echo(f"  directory: {summary['campaign_dir']}")
    shown = summary["records"] if every else summary["attention"]
    if shown:
        echo("" if every else "needs attention:")
        echo(f"{'FIT':>4}  {'JOB':>10}  {'STATE':<13} {'PROGRESS':>8}  {'CHISQ':>10}  ARGUMENT")
    for r in shown:
        percent = (r.get("progress") or {}).get("percent")
        chisq = f"{r['chisq']:.4g}" if r.get("chisq") is not None else "-"
        done = f"{percent:.0f}%" if percent is not None else "-"
        job_id = r["job_id"] or "-"
        label = one_line(r["label"])
        echo(f"{r['index']:>4}  {job_id:>10}  {r['state']:<13} {done:>8}  {chisq:>10}  {label}")
        why = (r.get("error") or {}).get("message") or r.get("unreadable") or r.get("reason")
        if why and (not every or r in summary["attention"]):
            hint = f": {r['hint']}" if r.get("hint") else ""
            echo(f"{'':>6}{one_line(why)}{hint}")


def print_table(rows: list[dict[str, Any]]) -> None:
    names = list(dict.fromkeys(n for row in rows for n in row["parameters"]))
    head = "".join(f"  {one_line(n)[:14]:>14}" for n in names)
    echo(f"{'FIT':>4}  {'STATE':<10} {'CHISQ':>10}{head}  ARGUMENT")
    for row in rows:
        chisq = f"{row['chisq']:.4g}" if row["chisq"] is not None else "-"
        cells = ""
        for n in names:
            p = row["parameters"].get(n)
            cell = f"{p['best']:.5g}±{p['std']:.2g}" if p else "-"
            cells += f"  {cell:>14}"
        echo(f"{row['index']:>4}  {row['state']:<10} {chisq:>10}{cells}  {one_line(row['label'])}")
        if row["error"]:
            echo(f"{'':>6}{one_line(row['error'])}")


def print_status(records: list[Status]) -> None:
    if not records:
        echo("No jobs yet: submit one with 'bumps-submit submit MODEL'.")
        return
    echo(f"{'JOB':>8}  {'STATE':<13} {'EXIT':<8} {'ELAPSED':>10}  {'NAME':<20} DIRECTORY")
    for r in records:
        job_id = r["job_id"] if r["job_id"] is not None else "local"
        echo(
            f"{job_id:>8}  {r['state']:<13} {short_exit(r.get('exit')):<8} {r['elapsed'] or '-':>10}  "
            f"{r['name'] or '-':<20} {r['job_dir']}"
        )
        if r.get("reason"):
            hint = f": {r['hint']}" if r.get("hint") else ""
            echo(f"{'':>10}{r['state'].lower()}: {one_line(r['reason'])}{hint}")
        if r.get("warning"):
            echo(f"{'':>10}warning: {one_line(r['warning'])}", err=True)
        progress = r.get("progress")
        if progress and r["state"] in (JobState.RUNNING.value, JobState.REQUEUED.value):
            restarts = f"  restarts {r['restarts']}" if r.get("restarts") else ""
            echo(f"{'':>10}{progress_text(progress)}{restarts}")
        if r.get("node_failure"):
            echo(f"{'':>10}{one_line(r['node_failure'])}")
        hosts = r.get("hosts")
        if hosts and len(hosts) > 1:  # one host needs no line: the several-node runs are what this is for
            echo(f"{'':>10}{ranks_on_hosts(hosts)}")


def short_exit(text: str | None) -> str:
    """'exit 1' -> '1', 'killed by signal 9 (SIGKILL)' -> 'SIGKILL' (the whole text is in --json)."""
    if not text:
        return "-"
    if text.startswith("killed by signal"):
        return text.rpartition("(")[2].rstrip(")") if "(" in text else "sig " + text.split()[-1]
    return text.removeprefix("exit ")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def progress_text(p: ProgressView) -> str:
    """45%  step 450/1000  chisq 1.23  ETA 3m12s"""
    chisq = f"  chisq {p['chisq']:.4g}" if p.get("chisq") is not None else ""
    failed = f"  failed evaluations {p['failed_evaluations']}" if p.get("failed_evaluations") else ""
    eta = duration(p.get("eta_s"))
    return f"{p['percent']:.0f}%  step {p['step']}/{p['steps']}{chisq}  ETA {eta}{failed}"


def print_error(record: Status, traceback: bool = True) -> None:
    error = record.get("error")
    if error:
        echo(f"\nThe fit failed{where(error)}: {one_line(error.get('message'))}", err=True)
        if error.get("point") is not None:
            echo(f"at point {error['point']}", err=True)
        if traceback:
            echo((error.get("traceback") or "").rstrip(), err=True)


def print_results(found: dict[str, Any]) -> None:
    from pathlib import Path

    echo(
        f"\nFit: {found['fitter']}   chisq = {found['chisq_str']}   "
        f"({found['elapsed_s']:.1f} s on {found.get('ranks', '?')} ranks)"
    )
    names = [one_line(p["name"]) for p in found["parameters"]]
    width = max([len(n) for n in names] + [9])
    echo(f"{'parameter':<{width}}  {'best':>14}  {'mean':>14}  {'std':>12}")
    for name, p in zip(names, found["parameters"], strict=True):
        echo(f"{name:<{width}}  {p['best']:>14.6g}  {p['mean']:>14.6g}  {p['std']:>12.4g}")
    if found.get("failed_evaluations"):
        echo(
            f"warning:   the model failed on {found['failed_evaluations']} of {found.get('evaluations')} "
            "evaluations (Bumps scores them as impossible points; the job's log has the tracebacks)"
        )
    if found.get("prediction"):
        print_prediction(found["prediction"])
    echo(f"directory: {found['job_dir']}")
    if found.get("sandbox"):
        from ..sandbox.policy import describe

        echo(f"sandbox:   {describe(found['sandbox'])}")
    if found.get("figures"):
        echo(f"figures:   {len(found['figures'])} in {Path(found['figures'][0]).parent}")
    if found.get("report"):
        echo(f"report:    {found['report']}")
    else:
        echo(f"report:    bumps-submit report {found['job_dir']}")
    if found.get("session"):
        echo(f"viewer:    bumps-submit open {found['job_dir']}  (Bumps' webview on its session file)")


def print_prediction(found: dict[str, Any]) -> None:
    """The estimate the fit was submitted with, against this run."""
    from ..results.prediction import lines

    ratio = f" (took {found['wall_ratio']:.2f} × the estimate)" if found.get("wall_ratio") else ""
    runs = f"; {found['runs']:.0f} runs: rates from the last" if found.get("runs", 1) > 1 else ""
    echo(f"estimate:  at submission, on {found['ranks']} ranks, against the run{ratio}{runs}")
    echo(f"  {'':<24}  {'estimated':>12}  {'measured':>12}")
    for what, predicted, measured in lines(found):
        echo(f"  {what:<24}  {predicted:>12}  {measured:>12}")

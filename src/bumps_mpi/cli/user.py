"""The user's commands after submit: status, watch, results, resume, plot, open, report, checkpoint,
cancel, config. Each parses its options, calls the front (bumps_mpi.front), and prints (cli.output)."""

from __future__ import annotations

import sys

import click

from ..cluster.states import JobState
from ..errors import BumpsMpiError
from ..text import one_line
from .campaigns import campaign_of, campaign_results, watch_campaign
from .following import follow, notices, resumable, since_time
from .group import echo, emit_json, main, stderr
from .output import (
    print_campaign,
    print_error,
    print_results,
    print_status,
    show_ended,
)


@main.command()
@click.argument("jobs", nargs=-1)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="With no JOB: how many (0: all).",
)
@click.option(
    "--state",
    "state",
    type=click.Choice([s.value for s in JobState], case_sensitive=False),
    help="With no JOB: only jobs in this state.",
)
@click.option("--since", help="With no JOB: only jobs submitted since (30m, 2h, 3d, 2026-11-25).")
@click.option("--all", "every", is_flag=True, help="For a campaign: every fit, not only those that need you.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(
    jobs: tuple[str, ...], limit: int, state: str | None, since: str | None, every: bool, as_json: bool
) -> None:
    """State of JOB(s) (Slurm id or job directory); no JOB: my recent jobs, newest first.

    A campaign (its array's id or directory): one line of counts and progress,
    then the fits that need attention (--all: every fit).
    """
    from ..front import api

    found = campaign_of(jobs[0]) if len(jobs) == 1 else None
    if found is not None:
        if state or since:
            raise BumpsMpiError("--state and --since filter the list of your jobs; a campaign: use --all")
        summary = found.status()
        notices()
        if as_json:
            emit_json(summary)
        else:
            print_campaign(summary, every)
        return

    records = api.status(list(jobs), limit=limit, state=state, since=since_time(since))
    notices()
    notice = next((r["accounting"] for r in records if r.get("accounting")), None)
    if notice:
        echo(f"bumps-submit: accounting {notice}, for the jobs it still knows", err=True)
    broken = [r for r in records if r.get("unreadable")]
    if as_json:
        emit_json(records)
    else:
        if not records and (state or since):
            echo("No jobs match: try without --state/--since.")
        else:
            print_status(records)
        if len(jobs) == 1 and not broken:
            print_error(records[0])
    for record in broken:
        echo(f"bumps-submit: {'error' if jobs else 'warning'}: {one_line(record['unreadable'])}", err=True)
    if jobs and broken:
        sys.exit(1)


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--csv", "as_csv", is_flag=True, help="A campaign's table as CSV (also kept as results.csv).")
def results(job: str, as_json: bool, as_csv: bool) -> None:
    """Best parameters, uncertainties and chi-square of a finished fit.

    A campaign: one table, a row per fit (its argument, state, chi-square, each
    parameter's best/mean/std, and its error if it has no results); the table is
    written even when some fits failed, and the exit status is then 1. It also
    writes the campaign's report.html: each parameter across the fits, their
    chi-square, the table and a link to each fit's report.
    """
    from ..front import api

    found_campaign = campaign_of(job)
    if found_campaign is not None:
        campaign_results(found_campaign, as_json, as_csv)
        return
    if as_csv:
        raise BumpsMpiError("--csv is for a campaign's table; use --json for one fit")
    found = api.results(job)
    if as_json:
        emit_json(found)
    else:
        print_results(found)


@main.command()
@click.argument("job")
@click.option(
    "--interval",
    type=float,
    default=2.0,
    show_default=True,
    help="First polling interval in seconds; it backs off to 30 s while nothing changes.",
)
def watch(job: str, interval: float) -> None:
    """Follow JOB until it ends, with a progress bar; exit 0 only if the fit completed.

    Ctrl-C stops watching, not the job.
    """
    from ..front import api

    found = campaign_of(job)
    if found is not None:
        watch_campaign(found, max(interval, 0.2))
        return
    try:
        record = follow(job, max(interval, 0.2))
    except KeyboardInterrupt:
        echo(f"\nStopped watching; job {job} goes on.", err=True)
        sys.exit(130)
    print_status([record])
    if record["state"] == JobState.COMPLETED.value:
        print_results(api.results(job))
        return
    print_error(record)
    sys.exit(1)


@main.command()
@click.argument("job")
@click.option("-n", "ranks", type=int, help="For a local job: MPI ranks [as before].")
@click.option("--failed", is_flag=True, help="A campaign: run again only its fits that failed or timed out.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def resume(job: str, ranks: int | None, failed: bool, as_json: bool) -> None:
    """Continue a stopped DREAM or DE fit from its checkpoint (here if it ran here, else resubmitted).

    A campaign: `resume CAMPAIGN --failed` resubmits its fits that failed or timed
    out as one new job array, each from its checkpoint where it has one.
    """
    from ..front import api
    from ..front.resume import resume as resume_fit

    found = campaign_of(job)
    if found is not None:
        if not failed:
            raise BumpsMpiError(f"{job} is a campaign: 'resume {job} --failed' runs its failed fits again")
        again = found.resume_failed()
        if as_json:
            emit_json([{"job_id": j.job_id, "job_dir": str(j.job_dir)} for j in again])
        else:
            array = again[0].job_id.partition("_")[0] if again and again[0].job_id else "?"
            ids = ", ".join(str(j.job_id) for j in again)
            echo(f"Resubmitted {len(again)} fit(s) as job array {array}: {ids}")
        return
    if failed:
        raise BumpsMpiError(f"--failed is for a campaign, and {job} is one fit: 'bumps-submit resume {job}'")

    jobdir = api.resolve(job)
    live = None if as_json else stderr
    done = resume_fit(jobdir, ranks, live, warn=stderr)
    if done.get("resumed"):
        if as_json:
            emit_json(done)
        else:
            echo(f"Resubmitted as job {done['job_id']}\n  directory: {done['job_dir']}")
        return
    show_ended(done, as_json, shown_live=live is not None)


@main.command()
@click.argument("job")
@click.option(
    "--out", type=click.Path(file_okay=False), help="Directory for the figures [the job's figures/]."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["png", "svg", "pdf"]),
    default="png",
    show_default=True,
    help="File format.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plot(job: str, out: str | None, fmt: str, as_json: bool) -> None:
    """Draw the fit's figures with Bumps' own plotting code and print their paths.

    A running, stopped or failed fit is drawn from its last checkpoint (or the
    model's starting point), and its figures say so. A campaign: every fitted
    parameter across its fits, and their chi-square (its report's figures).
    """
    from ..front import api

    found_campaign = campaign_of(job)
    if found_campaign is not None:
        from pathlib import Path

        from ..front import campaign_table

        rows = found_campaign.table()
        where = None if out is None else Path(out)
        paths = campaign_table.plot(found_campaign.campaign_dir, rows, where, fmt)
        if as_json:
            emit_json({"figures": [str(p) for p in paths]})
        for path in [] if as_json else paths:
            echo(str(path))
        return
    drawn = api.plot(job, out, fmt)
    if as_json:
        emit_json(drawn)
        return
    source = drawn["source"]
    if source["kind"] != "result":
        echo(f"bumps-submit: note: drawn {source['label']}", err=True)
    for problem in drawn["problems"]:
        echo(f"bumps-submit: warning: not drawn: {one_line(problem)}", err=True)
    for figure in drawn["figures"]:
        echo(f"{drawn['directory']}/{figure['file']}")


@main.command(name="open")
@click.argument("job")
@click.option("--port", type=int, default=0, help="Port on 127.0.0.1 for the viewer [a free one].")
def open_(job: str, port: int) -> None:
    """Open a finished fit in Bumps' own viewer (its webview), on this machine's loopback only.

    The viewer loads the fit's session.h5, which the job wrote, so which your
    model could have written: open only your own fits. It runs confined (the
    full sandbox, required): it writes only the job directory and your library
    cache, connects nowhere, and may listen only on its port. Bumps' webview has
    no login: other accounts on this machine can reach it while it runs. Point
    your browser at the address it prints (from a laptop: ssh -L); Ctrl-C stops it.
    """
    from ..front import api

    found = api.resolve(job)
    viewer = api.viewer(found, port)
    echo(f"Bumps' viewer of {found.path}: {viewer['url']} (Ctrl-C to stop)")
    try:
        sys.exit(viewer["process"].wait())
    except KeyboardInterrupt:
        viewer["process"].terminate()
        viewer["process"].wait()


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def report(job: str, as_json: bool) -> None:
    """Write report.html in the job directory (facts, parameters, figures, error) and print its path.

    One self-contained file: copy it to a laptop and open it in a browser.
    """
    from ..front import api

    done = api.report(job)
    if as_json:
        emit_json(done)
        return
    if done["source"]["kind"] != "result":
        echo(f"bumps-submit: note: figures and values {done['source']['label']}", err=True)
    echo(done["report"])


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def checkpoint(job: str, as_json: bool) -> None:
    """Ask a running DREAM or DE fit to save its checkpoint now (at its next boundary); it goes on."""
    from ..front import api

    done = api.request_checkpoint(job)
    if as_json:
        emit_json(done)
    else:
        echo(f"Asked {job} for a checkpoint: checkpoint.h5 in {done['job_dir']} within a few generations")


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cancel(job: str, as_json: bool) -> None:
    """Cancel a submitted job, or stop a local run (DREAM and DE checkpoint first, to resume later).

    A campaign: every fit still pending or running.
    """
    from ..front import api

    found = campaign_of(job)
    if found is not None:
        count = found.cancel()
        if as_json:
            emit_json({"campaign_dir": str(found.campaign_dir), "cancelled": count})
        else:
            echo(f"Cancelled {count} fit(s) of campaign {found.campaign_dir}")
        return

    done = api.cancel(job)
    if as_json:
        emit_json(done)
    elif done["job_id"] is not None:
        echo(f"Cancelled job {done['job_id']}")
    else:
        how = {
            "stopped": "it saved its checkpoint and stopped" if resumable(done) else "it stopped",
            "killed": "it did not stop in time and was killed",
            "stale": "its processes were already gone",
        }[done["how"]]
        echo(f"Cancelled the local run in {done['job_dir']}: {how}")


@main.command()
@click.option("--profile", help="Site profile to show [the default profile].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def config(profile: str | None, as_json: bool) -> None:
    """The settings a submit would use, and where each comes from (option, variable, file, defaults)."""
    from ..config import load_settings, user_config_path

    settings = load_settings(profile)
    if as_json:
        emit_json({"profile": settings["profile"], "settings": dict(settings), "sources": settings.sources})
        return
    echo(f"profile {settings['profile']} (site file: {user_config_path()})")
    for key in sorted(k for k in settings if k != "profile"):
        echo(f"  {key:<17} {settings[key]!r:<32} {settings.sources.get(key, '')}")

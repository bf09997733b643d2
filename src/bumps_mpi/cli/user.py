"""The user's commands: submit, status, watch, results, resume, plot, open, report, checkpoint, cancel,
config. Each parses its options, calls the front (bumps_mpi.front), and prints (bumps_mpi.cli.output)."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..cluster.states import JobState
from ..errors import BumpsMpiError
from ..text import one_line, plain
from .group import echo, emit_json, main, stderr
from .output import (
    counts_text,
    print_campaign,
    print_error,
    print_results,
    print_status,
    print_table,
    progress_text,
    show_ended,
)

FIT_FLAGS = ("steps", "samples", "burn", "pop", "init", "thin")


def _parse_fit_options(pairs: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--fit-option")
        options[key] = value
    return options


def _paths(flag: str, dest: str, metavar: str, text: str) -> Any:
    """A repeatable option that names paths."""
    return click.option(
        flag, dest, multiple=True, type=click.Path(), metavar=metavar, help=f"{text[:-1]} (repeatable)."
    )


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("model", type=click.Path())
@click.argument("model_args", nargs=-1)
@click.option("--fit", "fit", help="Bumps fitter id: dream (the default), de, amoeba, lm, ...")
@click.option("--steps", type=int, help="Fit steps (generations for DREAM and DE).")
@click.option("--samples", type=int, help="DREAM: number of draws.")
@click.option("--burn", type=int, help="DREAM: burn-in generations.")
@click.option("--pop", type=float, help="Population size per parameter (DREAM: negative for a total).")
@click.option("--init", help="DREAM: population initializer (eps, lhs, cov, random).")
@click.option("--thin", type=int, help="DREAM: thinning.")
@click.option(
    "--fit-option", "fit_option", multiple=True, metavar="KEY=VALUE", help="Any other fitter setting."
)
@click.option("--seed", type=int, help="Random seed, for a reproducible fit.")
@click.option("--nodes", type=int, help="Slurm nodes.")
@click.option("--ntasks", type=int, help="MPI ranks (Slurm tasks).")
@click.option("--time", "time_", help="Slurm time limit, e.g. 02:00:00.")
@click.option("--partition", help="Slurm partition.")
@click.option("--account", help="Slurm account.")
@click.option("--qos", help="Slurm QOS.")
@click.option("--mem", help="Memory per node, e.g. 8G.")
@click.option("--gpus", type=int, help="GPUs per fit (per node, or per task: site setting gpu_directive).")
@click.option(
    "--mail-type", help="Slurm mails you when the job does this: END, FAIL, BEGIN, ALL, ... (comma-separated)"
)
@click.option("--mail-user", help="Where Slurm's mail goes [you, on the cluster].")
@click.option("--threads", type=int, help="Numeric-library threads per rank.")
@click.option("--checkpoint-every", type=int, metavar="SECONDS", help="DREAM/DE checkpoint interval.")
@click.option(
    "--signal-grace", type=int, metavar="SECONDS", help="Checkpoint and requeue this long before the limit."
)
@click.option("--max-requeues", type=int, help="Time limits to requeue through before stopping.")
@click.option("--check-timeout", type=int, metavar="SECONDS", help="Time limit of the model check here.")
@click.option(
    "--sandbox",
    type=click.Choice(["best-effort", "require", "off"]),
    help="Confine the model to its job (Landlock) [site setting sandbox].",
)
@_paths("--read", "read_paths", "PATH", "A path the confined model may read besides its own directory.")
@_paths("--write", "write_paths", "PATH", "A path the confined model may write besides its job and cache.")
@click.option("--profile", help="Site profile from your site.toml.")
@click.option("--name", help="Job name [the model file's name].")
@click.option("--jobs-dir", type=click.Path(), help="Where job directories are made [site setting jobs_dir].")
@click.option("--job-dir", type=click.Path(), help="Exact job directory (must not exist).")
@click.option(
    "--each",
    metavar="GLOB",
    help="A campaign: one fit per matching file, given to the model in place of {} (else last).",
)
@click.option(
    "--args-from",
    type=click.Path(dir_okay=False),
    help="A campaign: one fit per line of FILE, its words added to the model's arguments.",
)
@_paths("--model", "more_models", "FILE", "A campaign: one fit per model file, MODEL and each --model.")
@click.option(
    "--max-running", type=int, metavar="K", help="A campaign: at most K of its fits run at once (Slurm's %K)."
)
@click.option("--dry-run", is_flag=True, help="Check and print the sbatch script; write and submit nothing.")
@click.option("--local", is_flag=True, help="Run now under mpiexec here, without Slurm.")
@click.option("-n", "ranks", type=int, help="With --local: number of MPI ranks [site setting local_ranks].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def submit(
    model: str,
    model_args: tuple[str, ...],
    fit: str | None,
    fit_option: tuple[str, ...],
    seed: int | None,
    time_: str | None,
    profile: str | None,
    name: str | None,
    jobs_dir: str | None,
    job_dir: str | None,
    dry_run: bool,
    local: bool,
    ranks: int | None,
    as_json: bool,
    read_paths: tuple[str, ...],
    write_paths: tuple[str, ...],
    each: str | None,
    args_from: str | None,
    more_models: tuple[str, ...],
    max_running: int | None,
    **flags: Any,
) -> None:
    """Check MODEL, then submit it to Slurm (or run it here with --local).

    MODEL_ARGS are passed to the model file (put them after `--`). Defaults come
    from your site profile and the packaged defaults: `bumps-submit config`.

    With --each, --args-from or --model it is a campaign: many fits as one Slurm
    job array, each checked before anything is submitted; follow it with
    `status`, `watch`, `results`, `cancel` and `resume --failed` on its id.
    """
    from pathlib import Path

    from ..front import submission

    fit_options = {k: flags.pop(k) for k in FIT_FLAGS if flags.get(k) is not None}
    for k in FIT_FLAGS:
        flags.pop(k, None)
    fit_options.update(_parse_fit_options(fit_option))
    resources = {k: v for k, v in flags.items() if v is not None}
    if time_ is not None:
        resources["time"] = time_
    request = submission.JobRequest(
        model=Path(model),
        model_args=list(model_args),
        **({} if fit is None else {"fit": fit}),  # the default fitter is JobRequest's
        fit_options=fit_options,
        seed=seed,
        name=name,
        jobs_dir=None if jobs_dir is None else Path(jobs_dir),
        job_dir=None if job_dir is None else Path(job_dir),
        profile=profile,
        resources=resources,
        read=[Path(p).absolute() for p in read_paths],
        write=[Path(p).absolute() for p in write_paths],
        own_files=True,
    )
    if each is not None or args_from is not None or more_models or max_running is not None:
        _submit_campaign(request, each, args_from, more_models, max_running, local, dry_run, as_json)
        return
    if dry_run:
        prepared = submission.prepare(request)
        for note in prepared.notes:
            stderr(f"bumps-submit: warning: {note}")
        if as_json:
            emit_json({"job_dir": str(prepared.target), "script": prepared.script, "spec": prepared.spec})
        else:
            click.echo(prepared.script, nl=False)
        return
    if local:
        live = None if as_json else stderr
        record = submission.run_local(request, ranks, echo=live, warn=stderr)
        show_ended(record, as_json, shown_live=live is not None)
        return
    submitted = submission.submit(request)
    for note in submitted.pop("notes", []):
        stderr(f"bumps-submit: warning: {note}")
    if as_json:
        emit_json(submitted)
    else:
        echo(f"Submitted job {submitted['job_id']}\n  directory: {submitted['job_dir']}")


def _submit_campaign(
    request: Any,
    each: str | None,
    args_from: str | None,
    more_models: tuple[str, ...],
    max_running: int | None,
    local: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    from pathlib import Path

    from ..front import campaign

    if local:
        raise BumpsMpiError("a campaign runs as a Slurm job array: --local runs one fit (drop --each ...)")
    if each is None and args_from is None and not more_models:
        raise BumpsMpiError("--max-running is for a campaign: add --each, --args-from or --model")
    fits, labels, reads = campaign.fits_from(
        request.model,
        request.model_args,
        each=each,
        args_from=None if args_from is None else Path(args_from),
        models=[Path(m) for m in more_models] or None,
    )
    wanted = campaign.CampaignRequest(fits, request, max_running, labels, reads)
    if dry_run:
        prepared = campaign.prepare(wanted)
        if as_json:
            emit_json({"campaign_dir": str(prepared.target), "script": prepared.script, **prepared.record})
        else:
            click.echo(prepared.script, nl=False)
        return
    submitted = campaign.submit(wanted)
    if as_json:
        emit_json(submitted)
    else:
        echo(
            f"Submitted campaign {submitted['campaign_id']}: {submitted['fits']} fits as one job array\n"
            f"  directory: {submitted['campaign_dir']}\n"
            f"  follow it: bumps-submit status {submitted['campaign_id']}"
        )


def _campaign(ref: str) -> Any:
    """The Campaign *ref* names (its directory or its array's id), or None when it names a single job."""
    from ..front import campaign

    found = campaign.find(ref)
    if found is None:
        return None
    from ..front.jobs import Campaign

    return Campaign(found)


def _since(text: str | None) -> float | None:
    """'30m', '2h', '3d' ago, or a date 'YYYY-MM-DD[THH:MM]', as a Unix time."""
    if text is None:
        return None
    import datetime

    units = {"m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return time.time() - float(text[:-1]) * units[text[-1]]
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use 30m, 2h, 3d or a date like 2026-11-25", param_hint="--since"
        ) from None


def _notices() -> None:
    """Fallbacks and skipped registry lines: said once per command, on stderr."""
    from ..cluster import slurm
    from ..front import registry

    for line in dict.fromkeys(registry.SKIPPED):
        echo(f"bumps-submit: warning: skipped {line}", err=True)
    for line in dict.fromkeys(slurm.NOTICES):
        echo(f"bumps-submit: warning: {line}", err=True)


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

    found = _campaign(jobs[0]) if len(jobs) == 1 else None
    if found is not None:
        if state or since:
            raise BumpsMpiError("--state and --since filter the list of your jobs; a campaign: use --all")
        summary = found.status()
        _notices()
        if as_json:
            emit_json(summary)
        else:
            print_campaign(summary, every)
        return

    records = api.status(list(jobs), limit=limit, state=state, since=_since(since))
    _notices()
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

    found_campaign = _campaign(job)
    if found_campaign is not None:
        _campaign_results(found_campaign, as_json, as_csv)
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

    found = _campaign(job)
    if found is not None:
        _watch_campaign(found, max(interval, 0.2))
        return
    try:
        record = _follow(job, max(interval, 0.2))
    except KeyboardInterrupt:
        echo(f"\nStopped watching; job {job} goes on.", err=True)
        sys.exit(130)
    print_status([record])
    if record["state"] == JobState.COMPLETED.value:
        print_results(api.results(job))
        return
    print_error(record)
    sys.exit(1)


def _follow(job: str, interval: float) -> dict[str, Any]:
    """Poll status with a bounded back-off; draw progress while the fit reports it."""
    from ..front import api

    bar: Any = None
    last: Any = None
    wait = interval
    try:
        while True:
            record = api.status([job])[0]
            if record.get("unreadable"):
                raise BumpsMpiError(record["unreadable"])
            progress = record.get("progress")
            if JobState(record["state"]).terminal:
                return record
            if progress and record["state"] == JobState.RUNNING.value:
                if bar is None:
                    bar = click.progressbar(
                        length=progress["steps"],
                        label=f"job {job} {progress.get('steps')} steps",
                        file=sys.stderr,
                        show_eta=False,
                    )
                    bar.__enter__()
                restarts = f"  restarts {record['restarts']}" if record.get("restarts") else ""
                bar.label = one_line(f"job {job}  {progress_text(progress)}{restarts}")
                bar.update(max(0, (progress["step"] or 0) - bar.pos))
            elif (record["state"], record.get("reason")) != last:
                reason = f" ({one_line(record['reason'])})" if record.get("reason") else ""
                echo(f"job {job}: {record['state']}{reason}", err=True)
            key = (record["state"], progress and progress.get("step"))
            wait = interval if key != last else min(wait * 1.5, 30.0)
            last = key if progress else (record["state"], record.get("reason"))
            time.sleep(wait)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


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

    found = _campaign(job)
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

    found_campaign = _campaign(job)
    if found_campaign is not None:
        from pathlib import Path

        from ..front import campaign

        rows = found_campaign.table()
        paths = campaign.plot(found_campaign.campaign_dir, rows, None if out is None else Path(out), fmt)
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
    model could have written: open only your own fits. It runs confined as the
    job's ranks did (it writes only the job directory and listens only on its
    port). Point your browser at the address it prints (from a laptop: ssh -L);
    Ctrl-C stops it.
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

    found = _campaign(job)
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
            "stopped": "it saved its checkpoint and stopped" if _resumable(done) else "it stopped",
            "killed": "it did not stop in time and was killed",
            "stale": "its processes were already gone",
        }[done["how"]]
        echo(f"Cancelled the local run in {done['job_dir']}: {how}")


def _resumable(done: dict[str, Any]) -> bool:
    from pathlib import Path

    from ..jobdir import CHECKPOINT_FILE

    return (Path(done["job_dir"]) / CHECKPOINT_FILE).exists()


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


def _campaign_results(found: Any, as_json: bool, as_csv: bool) -> None:
    """The table on stdout (text, CSV or JSON); exit 1 after it when some fits have no results."""
    from ..front import campaign

    rows = found.table()
    written = campaign.write_report(found.campaign_dir, rows)
    if as_json:
        emit_json(rows)
    elif as_csv:
        click.echo(plain(campaign.write_csv(found.campaign_dir, rows)), nl=False)
    else:
        print_table(rows)
        if written is not None:
            echo(f"report: {written}")
    missing = [r for r in rows if r["chisq"] is None]
    if missing:
        echo(
            f"bumps-submit: {len(missing)} of {len(rows)} fits have no results; their rows say why", err=True
        )
        sys.exit(1)


def _watch_campaign(found: Any, interval: float) -> None:
    """A line whenever the counts change, until every fit has ended; exit 1 unless all completed."""
    last, wait = None, interval
    try:
        while True:
            summary = found.status()
            line = counts_text(summary)
            if line != last:
                echo(f"campaign {summary['name']}: {line}", err=True)
            wait = interval if line != last else min(wait * 1.5, 30.0)
            last = line
            if summary["ended"]:
                break
            time.sleep(wait)
    except KeyboardInterrupt:
        echo("\nStopped watching; the campaign goes on.", err=True)
        sys.exit(130)
    print_campaign(summary, every=False)
    if summary["counts"].get(JobState.COMPLETED.value, 0) != summary["fits"]:
        sys.exit(1)

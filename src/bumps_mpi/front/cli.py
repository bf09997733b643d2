"""bumps-submit: the command line. Parses options, calls bumps_mpi.api, prints.

Errors from the API are one line on stderr and exit code 1, followed where
there is one by what the user's code printed (a failed model check) or its
traceback (a failed fit); click's own usage errors exit 2. Everything printed
that a model controls (names, messages, tracebacks, output) is stripped of
terminal control sequences.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..cluster.states import JobState
from ..errors import BumpsMpiError, JobFailed, where
from ..text import one_line, plain
from ..version import __version__

FIT_FLAGS = ("steps", "samples", "burn", "pop", "init", "thin")


def echo(text: object = "", err: bool = False, nl: bool = True) -> None:
    click.echo(plain(text), err=err, nl=nl)


def _emit_json(obj: Any) -> None:
    import json  # here, not at the top: `--help` and plain `status` start faster without it

    click.echo(json.dumps(obj, indent=2, sort_keys=True, allow_nan=True))


def _fail(message: str, details: str | None = None) -> None:
    echo(f"bumps-submit: error: {one_line(message)}", err=True)
    if details:
        echo(details.rstrip(), err=True)
    sys.exit(1)


class _Group(click.Group):
    """Turns every BumpsMpiError into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobFailed as exc:
            _fail(str(exc), exc.error.get("traceback"))
        except BumpsMpiError as exc:
            details = None
            if exc.output:
                lines = "\n".join(f"  | {line}" for line in exc.output.splitlines())
                details = f"what the model printed (last lines):\n{lines}"
            _fail(str(exc), details)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bumps-submit")
def main() -> None:
    """Submit Bumps fits to Slurm (or run them here under MPI) and follow them to their results."""


def _parse_fit_options(pairs: tuple[str, ...]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--fit-option")
        options[key] = value
    return options


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
@click.option(
    "--read",
    "read_paths",
    multiple=True,
    type=click.Path(),
    metavar="PATH",
    help="A path the confined model may read besides its own directory (repeatable).",
)
@click.option(
    "--write",
    "write_paths",
    multiple=True,
    type=click.Path(),
    metavar="PATH",
    help="A path the confined model may write besides its job and your library cache (repeatable).",
)
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
@click.option(
    "--model",
    "more_models",
    multiple=True,
    type=click.Path(),
    metavar="FILE",
    help="A campaign: one fit per model file, MODEL and each --model (repeatable), same arguments.",
)
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

    from . import submission

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
            _stderr(f"bumps-submit: warning: {note}")
        if as_json:
            _emit_json({"job_dir": str(prepared.target), "script": prepared.script, "spec": prepared.spec})
        else:
            click.echo(prepared.script, nl=False)
        return
    if local:
        live = None if as_json else _stderr
        record = submission.run_local(request, ranks, echo=live, warn=_stderr)
        _show_ended(record, as_json, shown_live=live is not None)
        return
    submitted = submission.submit(request)
    for note in submitted.pop("notes", []):
        _stderr(f"bumps-submit: warning: {note}")
    if as_json:
        _emit_json(submitted)
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

    from . import campaign

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
            _emit_json({"campaign_dir": str(prepared.target), "script": prepared.script, **prepared.record})
        else:
            click.echo(prepared.script, nl=False)
        return
    submitted = campaign.submit(wanted)
    if as_json:
        _emit_json(submitted)
    else:
        echo(
            f"Submitted campaign {submitted['campaign_id']}: {submitted['fits']} fits as one job array\n"
            f"  directory: {submitted['campaign_dir']}\n"
            f"  follow it: bumps-submit status {submitted['campaign_id']}"
        )


def _campaign(ref: str) -> Any:
    """The Campaign *ref* names (its directory or its array's id), or None when it names a single job."""
    from . import campaign

    found = campaign.find(ref)
    if found is None:
        return None
    from .jobs import Campaign

    return Campaign(found)


def _stderr(line: str) -> None:
    echo(line, err=True)


def _show_ended(record: dict[str, Any], as_json: bool, shown_live: bool) -> None:
    """A local run (or its resume) has ended: its status and results, or why it failed; exit 1 unless done."""
    from . import api

    if as_json:
        _emit_json(record)
    else:
        _print_status([record])
        if record["state"] == JobState.COMPLETED.value:
            _print_results(api.results(record["job_dir"]))
    if record["state"] != JobState.COMPLETED.value:
        _print_error(record, traceback=not shown_live)  # a live run has shown its traceback already
        sys.exit(1)


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
    from . import registry

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
    from . import api

    found = _campaign(jobs[0]) if len(jobs) == 1 else None
    if found is not None:
        if state or since:
            raise BumpsMpiError("--state and --since filter the list of your jobs; a campaign: use --all")
        summary = found.status()
        _notices()
        if as_json:
            _emit_json(summary)
        else:
            _print_campaign(summary, every)
        return

    records = api.status(list(jobs), limit=limit, state=state, since=_since(since))
    _notices()
    notice = next((r["accounting"] for r in records if r.get("accounting")), None)
    if notice:
        echo(f"bumps-submit: accounting {notice}, for the jobs it still knows", err=True)
    broken = [r for r in records if r.get("unreadable")]
    if as_json:
        _emit_json(records)
    else:
        if not records and (state or since):
            echo("No jobs match: try without --state/--since.")
        else:
            _print_status(records)
        if len(jobs) == 1 and not broken:
            _print_error(records[0])
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
    from . import api

    found_campaign = _campaign(job)
    if found_campaign is not None:
        _campaign_results(found_campaign, as_json, as_csv)
        return
    if as_csv:
        raise BumpsMpiError("--csv is for a campaign's table; use --json for one fit")
    found = api.results(job)
    if as_json:
        _emit_json(found)
    else:
        _print_results(found)


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
    from . import api

    found = _campaign(job)
    if found is not None:
        _watch_campaign(found, max(interval, 0.2))
        return
    try:
        record = _follow(job, max(interval, 0.2))
    except KeyboardInterrupt:
        echo(f"\nStopped watching; job {job} goes on.", err=True)
        sys.exit(130)
    _print_status([record])
    if record["state"] == JobState.COMPLETED.value:
        _print_results(api.results(job))
        return
    _print_error(record)
    sys.exit(1)


def _follow(job: str, interval: float) -> dict[str, Any]:
    """Poll status with a bounded back-off; draw progress while the fit reports it."""
    from . import api

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
                bar.label = one_line(f"job {job}  {_progress_text(progress)}{restarts}")
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
    from . import api
    from .resume import resume as resume_fit

    found = _campaign(job)
    if found is not None:
        if not failed:
            raise BumpsMpiError(f"{job} is a campaign: 'resume {job} --failed' runs its failed fits again")
        again = found.resume_failed()
        if as_json:
            _emit_json([{"job_id": j.job_id, "job_dir": str(j.job_dir)} for j in again])
        else:
            array = again[0].job_id.partition("_")[0] if again and again[0].job_id else "?"
            ids = ", ".join(str(j.job_id) for j in again)
            echo(f"Resubmitted {len(again)} fit(s) as job array {array}: {ids}")
        return
    if failed:
        raise BumpsMpiError(f"--failed is for a campaign, and {job} is one fit: 'bumps-submit resume {job}'")

    jobdir = api.resolve(job)
    live = None if as_json else _stderr
    done = resume_fit(jobdir, ranks, live, warn=_stderr)
    if done.get("resumed"):
        if as_json:
            _emit_json(done)
        else:
            echo(f"Resubmitted as job {done['job_id']}\n  directory: {done['job_dir']}")
        return
    _show_ended(done, as_json, shown_live=live is not None)


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
    from . import api

    found_campaign = _campaign(job)
    if found_campaign is not None:
        from pathlib import Path

        from . import campaign

        rows = found_campaign.table()
        paths = campaign.plot(found_campaign.campaign_dir, rows, None if out is None else Path(out), fmt)
        if as_json:
            _emit_json({"figures": [str(p) for p in paths]})
        for path in [] if as_json else paths:
            echo(str(path))
        return
    drawn = api.plot(job, out, fmt)
    if as_json:
        _emit_json(drawn)
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
    from . import api

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
    from . import api

    done = api.report(job)
    if as_json:
        _emit_json(done)
        return
    if done["source"]["kind"] != "result":
        echo(f"bumps-submit: note: figures and values {done['source']['label']}", err=True)
    echo(done["report"])


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def checkpoint(job: str, as_json: bool) -> None:
    """Ask a running DREAM or DE fit to save its checkpoint now (at its next boundary); it goes on."""
    from . import api

    done = api.request_checkpoint(job)
    if as_json:
        _emit_json(done)
    else:
        echo(f"Asked {job} for a checkpoint: checkpoint.h5 in {done['job_dir']} within a few generations")


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cancel(job: str, as_json: bool) -> None:
    """Cancel a submitted job, or stop a local run (DREAM and DE checkpoint first, to resume later).

    A campaign: every fit still pending or running.
    """
    from . import api

    found = _campaign(job)
    if found is not None:
        count = found.cancel()
        if as_json:
            _emit_json({"campaign_dir": str(found.campaign_dir), "cancelled": count})
        else:
            echo(f"Cancelled {count} fit(s) of campaign {found.campaign_dir}")
        return

    done = api.cancel(job)
    if as_json:
        _emit_json(done)
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
        _emit_json({"profile": settings["profile"], "settings": dict(settings), "sources": settings.sources})
        return
    echo(f"profile {settings['profile']} (site file: {user_config_path()})")
    for key in sorted(k for k in settings if k != "profile"):
        echo(f"  {key:<17} {settings[key]!r:<32} {settings.sources.get(key, '')}")


@main.group(invoke_without_command=True)
@click.option("--host", help="Address to listen on [127.0.0.1; beyond loopback only with authentication].")
@click.option("--port", type=int, help="Port [8470].")
@click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Where the service keeps its records and fits."
)
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="The service's TOML configuration."
)
@click.pass_context
def serve(
    ctx: click.Context, host: str | None, port: int | None, data_dir: str | None, config_path: str | None
) -> None:
    """Run the job controller: web pages and a JSON API through which a group submits and follows fits."""
    ctx.obj = {"config": _service_config(config_path, host=host, port=port, data_dir=data_dir)}
    if ctx.invoked_subcommand is not None:
        return
    try:
        import uvicorn

        from ..service import create_app
    except ImportError as exc:
        raise BumpsMpiError(
            f"the job controller needs its extra: pip install 'bumps-mpi[service]' ({exc})"
        ) from None
    config = ctx.obj["config"]
    echo(
        f"bumps-mpi job controller on http://{config.host}:{config.port} (data in {config.data_dir})",
        err=True,
    )
    # proxy_headers off: who a request comes from is the service's own business (auth.py), never a header's
    uvicorn.run(
        create_app(config), host=config.host, port=config.port, log_level="warning", proxy_headers=False
    )


def _service_config(path: str | None, **overrides: Any) -> Any:
    from pathlib import Path

    from ..service.settings import load

    return load(Path(path) if path else None, **overrides)


@serve.group()
def token() -> None:
    """The job controller's users and their tokens."""


@token.command(name="add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="An administrator: sees and cancels every fit.")
@click.pass_context
def token_add(ctx: click.Context, name: str, admin: bool) -> None:
    """Make a token for NAME (made if new) and print it: it is shown this once, stored only as a hash."""
    import re

    from ..service.store import Store

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}", name):
        raise BumpsMpiError(f"user name {name!r} is not allowed: letters, digits and ._@- (at most 64)")
    click.echo(Store.of(ctx.obj["config"]).add_token(name, admin))


@token.command(name="revoke")
@click.argument("name")
@click.pass_context
def token_revoke(ctx: click.Context, name: str) -> None:
    """Revoke every token of NAME and end their sessions now."""
    from ..service.store import Store

    count = Store.of(ctx.obj["config"]).revoke(name)
    echo(f"revoked {count} token(s) of {name}")


@serve.command(name="worker-token")
@click.pass_context
def worker_token(ctx: click.Context) -> None:
    """Make a one-time token with which one worker registers (dispatch mode); it is shown this once."""
    from ..service.dispatch import Queue
    from ..service.store import Store

    config = ctx.obj["config"]
    click.echo(Queue(config, Store.of(config)).registration_token())


@serve.command(name="worker-list")
@click.pass_context
def worker_list(ctx: click.Context) -> None:
    """The registered workers: name, id, labels, capacity, last heartbeat, fits in flight."""
    from ..service.dispatch import Queue
    from ..service.store import Store

    config = ctx.obj["config"]
    for row in Queue(config, Store.of(config)).workers():
        seen = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["last_seen"]))
            if row["last_seen"]
            else "never"
        )
        labels = ",".join(f"{k}={v}" for k, v in row["labels"].items()) or "-"
        echo(f"{row['name']:<20} {row['id']:<11} {labels:<24} capacity {row['capacity']:<3} "
             f"in flight {row['in_flight']:<3} last seen {seen}")  # fmt: skip


@serve.command(name="worker-revoke")
@click.argument("worker")
@click.pass_context
def worker_revoke(ctx: click.Context, worker: str) -> None:
    """Revoke WORKER (name or id): its credential stops working, its fits go back to the queue."""
    from ..service.dispatch import Queue
    from ..service.store import Store

    config = ctx.obj["config"]
    count = Queue(config, Store.of(config)).revoke_worker(worker)
    if not count:
        raise BumpsMpiError(f"no worker {worker!r}: see 'bumps-submit serve worker-list'")
    echo(f"revoked {count} worker(s) named {worker}; their fits go back to the queue")


@main.command()
@click.option("--controller", required=True, help="The job controller's URL (https://...).")
@click.option("--capacity", type=int, default=1, show_default=True, help="Fits in flight here at most.")
@click.option("--profile", help="Site profile the fits are submitted with (Slurm).")
@click.option("--local", is_flag=True, help="Run the fits here under mpiexec instead of Slurm.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="What fits may ask for.")
@click.option("--name", help="This worker's name [the host name].")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    default="~/.local/share/bumps-mpi/worker",
    show_default=True,
    help="Its credential and its fits in flight.",
)
@click.option("--registration-token", envvar="BUMPS_MPI_REGISTRATION_TOKEN", help="To register, once.")
def worker(
    controller: str, capacity: int, profile: str | None, local: bool, labels: tuple[str, ...],
    name: str | None, state_dir: str, registration_token: str | None,
) -> None:  # fmt: skip
    """Pull fits from a job controller in dispatch mode and run them on this cluster (or here)."""
    from pathlib import Path

    from ..service.worker import Worker

    if capacity < 1:
        raise BumpsMpiError(f"--capacity must be at least 1, got {capacity}")
    found = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise BumpsMpiError(f"--label {label!r}: give KEY=VALUE")
        found[key] = value
    if not controller.startswith(("http://", "https://")):
        raise BumpsMpiError(f"--controller {controller!r}: give the controller's http(s) URL")
    runner = Worker(
        controller, Path(state_dir).expanduser(), capacity, found, profile, local, name,
        registration_token, say=lambda line: echo(f"bumps-submit worker: {line}", err=True),
    )  # fmt: skip
    echo(f"bumps-submit worker: pulling up to {capacity} fit(s) from {controller}", err=True)
    runner.run()


@token.command(name="list")
@click.pass_context
def token_list(ctx: click.Context) -> None:
    """Every token's user, role and dates (never the token)."""
    from ..service.store import Store

    for row in Store.of(ctx.obj["config"]).tokens():
        state = "revoked" if row["revoked"] else "active"
        role = "admin" if row["admin"] else "user"
        since = time.strftime("%Y-%m-%d", time.localtime(row["created"]))
        echo(f"{row['user']:<24} {role:<6} {state:<8} since {since}")


@main.group(name="sandbox")
def sandbox_group() -> None:
    """The sandbox that confines every model to its job: what this kernel enforces, an AppArmor profile."""


@sandbox_group.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def sandbox_status(as_json: bool) -> None:
    """What the sandbox can enforce on this machine's kernel (Landlock ABI), at each level."""
    from ..config import load_settings
    from ..sandbox import landlock

    abi = landlock.abi_version()
    level = load_settings()["sandbox"]
    features = {
        "files (read-only environment, read-write job directory)": 1,
        "truncation": 3,
        "TCP bind and connect": 4,
        "signals and abstract Unix sockets": 6,
    }
    found = {"abi": abi, "level": level, "features": {name: abi >= need for name, need in features.items()}}
    if as_json:
        _emit_json(found)
        return
    echo(f"Landlock ABI {abi} on this kernel; sandbox level here: {level}")
    for name, need in features.items():
        echo(f"  {'yes' if abi >= need else 'no ':<4} {name} (ABI {need})")


@sandbox_group.command(name="apparmor-profile")
@click.option("--jobs-root", type=click.Path(), help="Where the account's job directories are [jobs_dir].")
def sandbox_apparmor_profile(jobs_root: str | None) -> None:
    """Print an AppArmor profile for the account that runs jobs (paths from this installation)."""
    import os
    from pathlib import Path

    from ..config import load_settings
    from ..sandbox.policy import apparmor_profile

    root = jobs_root or os.path.expandvars(os.path.expanduser(load_settings()["jobs_dir"]))
    click.echo(apparmor_profile(str(Path(root).absolute())), nl=False)


def _counts_text(summary: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in summary["counts"].items())
    return f"{summary['fits']} fits: {counts}  ({summary['percent']:.0f}% done)"


def _print_campaign(summary: dict[str, Any], every: bool) -> None:
    """One line of counts and progress, then the fits that need attention (or, with *every*, all)."""
    arrays = ", ".join(summary["array_ids"]) or "-"
    echo(f"campaign {summary['name']}  {_counts_text(summary)}  array {arrays}")
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


def _campaign_results(found: Any, as_json: bool, as_csv: bool) -> None:
    """The table on stdout (text, CSV or JSON); exit 1 after it when some fits have no results."""
    from . import campaign

    rows = found.table()
    written = campaign.write_report(found.campaign_dir, rows)
    if as_json:
        _emit_json(rows)
    elif as_csv:
        click.echo(plain(campaign.write_csv(found.campaign_dir, rows)), nl=False)
    else:
        _print_table(rows)
        if written is not None:
            echo(f"report: {written}")
    missing = [r for r in rows if r["chisq"] is None]
    if missing:
        echo(
            f"bumps-submit: {len(missing)} of {len(rows)} fits have no results; their rows say why", err=True
        )
        sys.exit(1)


def _print_table(rows: list[dict[str, Any]]) -> None:
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


def _watch_campaign(found: Any, interval: float) -> None:
    """A line whenever the counts change, until every fit has ended; exit 1 unless all completed."""
    last, wait = None, interval
    try:
        while True:
            summary = found.status()
            line = _counts_text(summary)
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
    _print_campaign(summary, every=False)
    if summary["counts"].get(JobState.COMPLETED.value, 0) != summary["fits"]:
        sys.exit(1)


def _print_status(records: list[dict[str, Any]]) -> None:
    if not records:
        echo("No jobs yet: submit one with 'bumps-submit submit MODEL'.")
        return
    echo(f"{'JOB':>8}  {'STATE':<13} {'EXIT':<8} {'ELAPSED':>10}  {'NAME':<20} DIRECTORY")
    for r in records:
        job_id = r["job_id"] if r["job_id"] is not None else "local"
        echo(
            f"{job_id:>8}  {r['state']:<13} {_short_exit(r.get('exit')):<8} {r['elapsed'] or '-':>10}  "
            f"{r['name'] or '-':<20} {r['job_dir']}"
        )
        if r.get("reason"):
            hint = f": {r['hint']}" if r.get("hint") else ""
            echo(f"{'':>10}{r['state'].lower()}: {one_line(r['reason'])}{hint}")
        if r.get("warning"):
            echo(f"{'':>10}warning: {one_line(r['warning'])}", err=True)
        if r.get("progress") and r["state"] in (JobState.RUNNING.value, JobState.REQUEUED.value):
            restarts = f"  restarts {r['restarts']}" if r.get("restarts") else ""
            echo(f"{'':>10}{_progress_text(r['progress'])}{restarts}")


def _short_exit(text: str | None) -> str:
    """'exit 1' -> '1', 'killed by signal 9 (SIGKILL)' -> 'SIGKILL' (the whole text is in --json)."""
    if not text:
        return "-"
    if text.startswith("killed by signal"):
        return text.rpartition("(")[2].rstrip(")") if "(" in text else "sig " + text.split()[-1]
    return text.removeprefix("exit ")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _progress_text(p: dict[str, Any]) -> str:
    """45%  step 450/1000  chisq 1.23  ETA 3m12s"""
    chisq = f"  chisq {p['chisq']:.4g}" if p.get("chisq") is not None else ""
    failed = f"  failed evaluations {p['failed_evaluations']}" if p.get("failed_evaluations") else ""
    eta = _duration(p.get("eta_s"))
    return f"{p['percent']:.0f}%  step {p['step']}/{p['steps']}{chisq}  ETA {eta}{failed}"


def _print_error(record: dict[str, Any], traceback: bool = True) -> None:
    error = record.get("error")
    if error:
        echo(f"\nThe fit failed{where(error)}: {one_line(error.get('message'))}", err=True)
        if error.get("point") is not None:
            echo(f"at point {error['point']}", err=True)
        if traceback:
            echo((error.get("traceback") or "").rstrip(), err=True)


def _print_results(found: dict[str, Any]) -> None:
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

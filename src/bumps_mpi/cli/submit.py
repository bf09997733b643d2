"""`bumps-submit submit`: one fit, or a campaign of many as one job array (--each, --args-from,
--model); checked before anything is written, then submitted or run here."""

from __future__ import annotations

from typing import Any

import click

from ..errors import BumpsMpiError
from .group import echo, emit_json, main, stderr
from .output import (
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


class _RanksOrAuto(click.ParamType):
    """--ntasks: a whole number, or 'auto' (chosen from the model's estimate)."""

    name = "N|auto"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value == "auto" or isinstance(value, int):
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number or 'auto'", param, ctx)


REQUEST_OPTIONS = [
    click.argument("model", type=click.Path()),
    click.argument("model_args", nargs=-1),
    click.option("--fit", "fit", help="Bumps fitter id: dream (the default), de, amoeba, lm, ..."),
    click.option("--steps", type=int, help="Fit steps (generations for DREAM and DE)."),
    click.option("--samples", type=int, help="DREAM: number of draws."),
    click.option("--burn", type=int, help="DREAM: burn-in generations."),
    click.option("--pop", type=float, help="Population size per parameter (DREAM: negative for a total)."),
    click.option("--init", help="DREAM: population initializer (eps, lhs, cov, random)."),
    click.option("--thin", type=int, help="DREAM: thinning."),
    click.option(
        "--fit-option", "fit_option", multiple=True, metavar="KEY=VALUE", help="Any other fitter setting."
    ),
    click.option("--seed", type=int, help="Random seed, for a reproducible fit."),
    click.option("--nodes", type=int, help="Slurm nodes."),
    click.option(
        "--ntasks",
        type=_RanksOrAuto(),
        help="MPI ranks (Slurm tasks); auto: the most the estimate keeps efficient (auto_efficiency).",
    ),
    click.option(
        "--time", "time_", help="Slurm time limit, e.g. 02:00:00; auto: the estimate × auto_time_factor."
    ),
    click.option("--partition", help="Slurm partition."),
    click.option("--account", help="Slurm account."),
    click.option("--qos", help="Slurm QOS."),
    click.option("--mem", help="Memory per node, e.g. 8G."),
    click.option(
        "--gpus", type=int, help="GPUs per fit (per node, or per task: site setting gpu_directive)."
    ),
    click.option(
        "--mail-type",
        help="Slurm mails you when the job does this: END, FAIL, BEGIN, ALL, ... (comma-separated)",
    ),
    click.option("--mail-user", help="Where Slurm's mail goes [you, on the cluster]."),
    click.option("--threads", type=int, help="Numeric-library threads per rank."),
    click.option("--checkpoint-every", type=int, metavar="SECONDS", help="DREAM/DE checkpoint interval."),
    click.option(
        "--signal-grace",
        type=int,
        metavar="SECONDS",
        help="Checkpoint and requeue this long before the limit.",
    ),
    click.option("--max-requeues", type=int, help="Time limits to requeue through before stopping."),
    click.option("--check-timeout", type=int, metavar="SECONDS", help="Time limit of the model check here."),
    click.option(
        "--sandbox",
        type=click.Choice(["best-effort", "require", "off"]),
        help="Confine the model to its job (Landlock) [site setting sandbox].",
    ),
    _paths("--read", "read_paths", "PATH", "A path the confined model may read besides its own directory."),
    _paths(
        "--write", "write_paths", "PATH", "A path the confined model may write besides its job and cache."
    ),
    click.option("--profile", help="Site profile from your site.toml."),
    click.option("--name", help="Job name [the model file's name]."),
    click.option(
        "--jobs-dir", type=click.Path(), help="Where job directories are made [site setting jobs_dir]."
    ),
    click.option("--job-dir", type=click.Path(), help="Exact job directory (must not exist)."),
    click.option(
        "--each",
        metavar="GLOB",
        help="A campaign: one fit per matching file, given to the model in place of {} (else last).",
    ),
    click.option(
        "--args-from",
        type=click.Path(dir_okay=False),
        help="A campaign: one fit per line of FILE, its words added to the model's arguments.",
    ),
    _paths("--model", "more_models", "FILE", "A campaign: one fit per model file, MODEL and each --model."),
    click.option(
        "--max-running",
        type=int,
        metavar="K",
        help="A campaign: at most K of its fits run at once (Slurm's %K).",
    ),
]


def request_options(command: Any) -> Any:
    """The options of a fit request, shared by submit and estimate (estimate takes submit's line)."""
    for option in reversed(REQUEST_OPTIONS):
        command = option(command)
    return command


def _request(
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
    read_paths: tuple[str, ...],
    write_paths: tuple[str, ...],
    **flags: Any,
) -> Any:
    """The JobRequest of a command line."""
    from pathlib import Path

    from ..front import submission

    fit_options = {k: flags.pop(k) for k in FIT_FLAGS if flags.get(k) is not None}
    for k in FIT_FLAGS:
        flags.pop(k, None)
    fit_options.update(_parse_fit_options(fit_option))
    resources = {k: v for k, v in flags.items() if v is not None}
    if time_ is not None:
        resources["time"] = time_
    fitter: dict[str, Any] = {} if fit is None else {"fit": fit}  # the default fitter is JobRequest's
    return submission.JobRequest(
        model=Path(model),
        model_args=list(model_args),
        **fitter,
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


@main.command(context_settings={"ignore_unknown_options": False})
@request_options
@click.option("--dry-run", is_flag=True, help="Check and print the sbatch script; write and submit nothing.")
@click.option("--local", is_flag=True, help="Run now under mpiexec here, without Slurm.")
@click.option("-n", "ranks", type=int, help="With --local: number of MPI ranks [site setting local_ranks].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def submit(
    each: str | None,
    args_from: str | None,
    more_models: tuple[str, ...],
    max_running: int | None,
    dry_run: bool,
    local: bool,
    ranks: int | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Check MODEL, then submit it to Slurm (or run it here with --local).

    MODEL_ARGS are passed to the model file (put them after `--`). Defaults come
    from your site profile and the packaged defaults: `bumps-submit config`.
    `--ntasks auto` and `--time auto` are chosen from the model's estimate
    (`bumps-submit estimate`).

    With --each, --args-from or --model it is a campaign: many fits as one Slurm
    job array, each checked before anything is submitted; follow it with
    `status`, `watch`, `results`, `cancel` and `resume --failed` on its id.
    """
    from ..front import submission

    request = _request(**options)
    if each is not None or args_from is not None or more_models or max_running is not None:
        _submit_campaign(request, each, args_from, more_models, max_running, local, dry_run, as_json)
        return
    if dry_run:
        _dry_run(request, as_json)
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


@main.command()
@request_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def estimate(
    each: str | None,
    args_from: str | None,
    more_models: tuple[str, ...],
    max_running: int | None,
    as_json: bool,
    **options: Any,
) -> None:
    """Time MODEL and estimate its fit: evaluations, wall time, core-hours and efficiency on 1, 2, 4, ...
    ranks, and the row your settings (or --ntasks auto) pick.

    Takes submit's arguments: put `estimate` in place of `submit` on the line
    you would submit. Nothing is written or submitted. The model is loaded and
    timed here, confined as the job will be (up to 3 s of evaluations).
    """
    from ..front import submission

    request = _request(**options)
    if each is not None or args_from is not None or more_models or max_running is not None:
        found = _campaign(request, each, args_from, more_models, max_running).estimate
        lines = campaign_estimate_lines(found)
    else:
        found = submission.prepare(request, estimate=True).estimate
        lines = estimate_lines(found)
    if as_json:
        emit_json(found)
    else:
        for line in lines:
            echo(line)


def _dry_run(request: Any, as_json: bool) -> None:
    """Every check, then the script that would be submitted (and, with --json, the request)."""
    from ..front import submission

    prepared = submission.prepare(request, estimate=True)
    for note in prepared.notes:
        stderr(f"bumps-submit: warning: {note}")
    if as_json:
        emit_json(
            {
                "job_dir": str(prepared.target),
                "script": prepared.script,
                "spec": prepared.spec,
                "estimate": prepared.estimate,
            }
        )
    else:
        click.echo(prepared.script, nl=False)
        for line in estimate_lines(prepared.estimate):
            stderr(line)


def estimate_lines(found: dict | None) -> list[str]:
    """The estimate as a table, for people (stderr: the script on stdout stays a script)."""
    if not found:
        return []
    each, auto = found["seconds_per_evaluation"], found.get("auto") or {}
    timed = f"median of {found['timed']}" if found["timed"] > 1 else "timed once: the model is slow"
    lines = [
        f"estimate: {found['evaluations']:,} evaluations ({found['generations']:,} generations of "
        f"{found['population']}), {_seconds(each)} each ({timed}; the first took "
        f"{_seconds(found['first_s'])}); start-up and figures about {_seconds(found['startup_s'])}",
        "  ranks  fit's wall time  core-hours  efficiency",
    ]
    picked = (
        f"   <- --ntasks auto (efficiency at least {auto['efficiency_threshold']:g})"
        if "ntasks" in auto.get("chose", [])
        else "   <- these settings"
    )
    for row in found["rows"]:
        lines.append(
            f"  {row['ranks']:5d}  {_seconds(row['wall_s']):>15}  {row['core_hours']:10.3g}  "
            f"{row['efficiency']:10.2f}{picked if row['ranks'] == found['chosen'] else ''}"
        )
    if "time" in auto.get("chose", []):
        runs = f", in {auto['runs']} runs (requeued from its checkpoint)" if auto["runs"] > 1 else ""
        lines.append(
            f"time limit: {auto['time']} (--time auto: the wall time × {auto['time_factor']:g} and start-up, "
            f"in whole minutes{runs})"
        )
    return lines


def campaign_estimate_lines(found: dict | None) -> list[str]:
    """A campaign's estimate: each model's table (timed once), then the total."""
    if not found:
        return []
    lines = []
    for model in found["models"]:
        lines.append(f"model {model['model']}: {model['fits']} fits")
        lines += ["  " + line for line in estimate_lines(model["estimate"])]
    total = found.get("total")
    if total:
        lines.append(
            f"campaign: {found['fits']} fits, {total['evaluations']:,} evaluations, "
            f"{_seconds(total['fit_hours'] * 3600)} of fitting on {total['ranks']} ranks each, "
            f"{total['core_hours']:.3g} core-hours"
        )
    return lines


def _seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


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
    from ..front import campaign

    if local:
        raise BumpsMpiError("a campaign runs as a Slurm job array: --local runs one fit (drop --each ...)")
    if dry_run:
        prepared = _campaign(request, each, args_from, more_models, max_running)
        if as_json:
            shown = {"campaign_dir": str(prepared.target), "script": prepared.script, **prepared.record}
            emit_json({**shown, "estimate": prepared.estimate})
        else:
            click.echo(prepared.script, nl=False)
            for line in campaign_estimate_lines(prepared.estimate):
                stderr(line)
        return
    submitted = campaign.submit(_wanted(request, each, args_from, more_models, max_running))
    if as_json:
        emit_json(submitted)
    else:
        echo(
            f"Submitted campaign {submitted['campaign_id']}: {submitted['fits']} fits as one job array\n"
            f"  directory: {submitted['campaign_dir']}\n"
            f"  follow it: bumps-submit status {submitted['campaign_id']}"
        )


def _wanted(
    request: Any,
    each: str | None,
    args_from: str | None,
    more_models: tuple[str, ...],
    max_running: int | None,
) -> Any:
    """The campaign a command line asks for."""
    from pathlib import Path

    from ..front import campaign

    if each is None and args_from is None and not more_models:
        raise BumpsMpiError("--max-running is for a campaign: add --each, --args-from or --model")
    fits, labels, reads = campaign.fits_from(
        request.model,
        request.model_args,
        each=each,
        args_from=None if args_from is None else Path(args_from),
        models=[Path(m) for m in more_models] or None,
    )
    return campaign.CampaignRequest(fits, request, max_running, labels, reads)


def _campaign(
    request: Any,
    each: str | None,
    args_from: str | None,
    more_models: tuple[str, ...],
    max_running: int | None,
) -> Any:
    """Every check of the campaign, with its estimate (each model timed once); nothing written."""
    from ..front import campaign

    return campaign.prepare(_wanted(request, each, args_from, more_models, max_running), estimate=True)

"""Campaigns: many fits in one submission, as one Slurm job array.

A campaign directory holds campaign.json (its fits: model, arguments, label;
the arrays that ran them), the array's run.sbatch, and fits/<i>/, an ordinary
job directory for each fit (task i of the array): every single-fit command
works on one fit. Every fit passes the model check before anything is written,
so a bad data file among forty fails at once, naming it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..cluster import jobstate, slurm
from ..cluster.states import JobState
from ..errors import BumpsMpiError, JobNotFound, SubmitError, UsageError
from ..jobdir import (
    CAMPAIGN_FILE,
    CAMPAIGN_LOCK,
    CANCEL_FILE,
    CHECKPOINT_FILE,
    FITS_DIR,
    JOB_FILE,
    RESUMABLE_FITTERS,
    SCRIPT_FILE,
    JobDir,
    current_umask,
    exclusive,
    read_json,
    write_atomic,
)
from ..records import Request, Status
from . import registry, submission

PLACEHOLDER = "{}"  # in the model's arguments, where --each puts each file (else it goes last)


@dataclass
class CampaignRequest:
    """The fits (model and arguments each) and what they share: the fit, resources, name, place."""

    fits: list[tuple[Path, list[str]]]
    common: submission.JobRequest  # its model and model_args are the first fit's; the rest is shared
    max_running: int | None = None  # Slurm's %K: at most this many of the campaign's fits run at once
    labels: list[str] = field(default_factory=list)  # what tells each fit apart (its file, its line)
    reads: list[list[Path]] = field(default_factory=list)  # per fit, more the model may read (--each's file)

    def __post_init__(self) -> None:
        if self.max_running is not None and self.max_running < 1:
            raise UsageError(f"--max-running must be at least 1, got {self.max_running}")
        if not self.fits:
            raise UsageError("a campaign needs at least one fit")


def fits_from(
    model: Path,
    args: list[str],
    each: str | None = None,
    args_from: Path | None = None,
    models: list[Path] | None = None,
) -> tuple[list[tuple[Path, list[str]]], list[str], list[list[Path]]]:
    """The campaign's fits, their labels and what each may read, from --each, --args-from or --model."""
    if sum(x is not None and x != [] for x in (each, args_from, models)) != 1:
        raise UsageError("a campaign takes exactly one of --each GLOB, --args-from FILE, or --model FILE")
    if each is not None:
        import glob

        found = sorted(glob.glob(os.path.expanduser(each), recursive=True))
        if not found:
            raise UsageError(f"--each {each!r} matches no file")
        files = [Path(f).absolute() for f in found]  # the check and the job run in their own directories
        return [(model, _substitute(args, str(f))) for f in files], found, [[f] for f in files]
    if args_from is not None:
        lines = _argument_lines(Path(args_from))
        labels = [shlex.join(words) for words in lines]
        return [(model, [*args, *words]) for words in lines], labels, [[] for _ in lines]
    assert models
    every = [model, *models]
    names = [m.name for m in every]
    labels = names if len(set(names)) == len(names) else [str(m) for m in every]
    return [(m, list(args)) for m in every], labels, [[] for _ in every]


def _substitute(args: list[str], value: str) -> list[str]:
    if any(PLACEHOLDER in a for a in args):
        return [a.replace(PLACEHOLDER, value) for a in args]
    return [*args, value]


def _argument_lines(path: Path) -> list[list[str]]:
    """One fit per line, split as the shell would; blank lines and # comments skipped."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--args-from {path}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise UsageError(f"--args-from {path} line {number}: {exc}") from None
        if words:
            lines.append(words)
    if not lines:
        raise UsageError(f"--args-from {path} has no argument lines (one fit per line)")
    return lines


def array_text(indices: list[int], max_running: int | None) -> str:
    """Slurm's --array value: '0-5%2', or '1,4' for some of the tasks."""
    if indices == list(range(len(indices))) and len(indices) > 1:
        text = f"0-{len(indices) - 1}"
    else:
        text = ",".join(str(i) for i in indices)
    return f"{text}%{max_running}" if max_running else text


@dataclass
class PreparedCampaign:
    """A campaign whose every fit passed its checks: where it goes, its record, script and fits' job.json."""

    target: Path
    record: dict[str, Any]
    script: str
    specs: list[Request]
    estimate: dict[str, Any] | None = None  # each model's estimate and the campaign's total (front.sizing)


def prepare(request: CampaignRequest, estimate: bool = False) -> PreparedCampaign:
    """Every check of every fit, cheapest first; nothing is written. With *estimate*, or `--ntasks
    auto`/`--time auto`, the first fit of each model is timed too: the campaign's estimate, once per
    model, and the auto choice from its costliest model (the array's fits share their resources)."""
    from . import sizing

    settings, name, target = submission.place(request.common)
    indices = list(range(len(request.fits)))
    array = array_text(indices, request.max_running)
    auto = sizing.auto_keys(settings)
    script = submission.render(sizing.placeholder(settings), name, target, array)
    labels = request.labels or [shlex.join(args) for _, args in request.fits]
    timed = set()
    if estimate or auto:
        firsts: dict[Path, int] = {}
        for i, (model, _) in enumerate(request.fits):
            firsts.setdefault(model.resolve(), i)
        timed = set(firsts.values())
    timings: dict[int, dict[str, Any]] = {}
    specs = _check_all(request, labels, settings, name, target, timed, timings)
    found = None
    if timed:
        partition = sizing.partition_of(settings)
        found = sizing.campaign_estimate(request.common.fit, specs, timings, settings, partition)
        if auto:
            settings = sizing.choose(settings, sizing.costliest(found), partition)
            script = submission.render(settings, name, target, array)
            sizing.campaign_total(found, int(settings["ntasks"]))
            for spec in specs:
                spec["resources"] = submission.resources_of(settings)
    record = {
        "name": name,
        "created": time.time(),
        "max_running": request.max_running,
        "fits": [
            {"index": i, "label": labels[i], "model": str(m.resolve()), "args": a, "dir": f"{FITS_DIR}/{i}"}
            for i, (m, a) in enumerate(request.fits)
        ],
        "arrays": [],
    }
    return PreparedCampaign(target, record, script, specs, found)


def submit(request: CampaignRequest) -> dict[str, Any]:
    """Check every fit, write the campaign directory, sbatch its array; {campaign_id, campaign_dir, fits}."""
    slurm.require("sbatch")
    prepared = prepare(request)
    target = prepared.target
    _create(target, prepared.record, prepared.script, prepared.specs, request)
    try:
        array_id = slurm.sbatch(target / SCRIPT_FILE, target)
    except slurm.SubmitUncertain:
        raise
    except KeyboardInterrupt:
        raise SubmitError(
            f"interrupted while sbatch ran: the array may be queued; {target} is kept"
        ) from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # never submitted: leave no orphan directory
        raise
    indices = list(range(len(prepared.specs)))
    _record(target, array_id, indices)
    return {"campaign_id": array_id, "campaign_dir": str(target), "fits": len(indices)}


def _check_all(
    request: CampaignRequest,
    labels: list[str],
    settings: Any,
    name: str,
    target: Path,
    timed: set[int] | None = None,
    timings: dict[int, dict[str, Any]] | None = None,
) -> list[Request]:
    """The model check of every fit, a few at a time (those in *timed* timed too: their checks go into
    *timings* by index, for the estimate); the first failure (in the fits' order) names its fit."""

    def check(i: int) -> Request:
        model, args = request.fits[i]
        more = request.reads[i] if request.reads else []
        one = replace(request.common, model=model, model_args=args, read=[*request.common.read, *more])
        confinement = submission.sandbox_for(one, settings)  # its own data file is readable
        checked = submission.check_model(one, settings, confinement, timed=i in (timed or ()))
        spec = submission.spec_of(one, f"{name}_{i}", checked, settings, confinement)
        spec["campaign"] = {"dir": str(target), "index": i, "label": labels[i]}
        if timings is not None and "timing" in checked:
            timings[i] = checked
        return spec

    from concurrent.futures import ThreadPoolExecutor, as_completed  # here: status never needs them

    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    futures = {pool.submit(check, i): i for i in range(len(request.fits))}
    specs: dict[int, Request] = {}
    try:
        for future in as_completed(futures):
            i = futures[future]
            try:
                specs[i] = future.result()
            except BumpsMpiError as exc:  # the first to fail ends the checks: say which fit, at once
                exc.args = (f"fit {i} of {len(futures)} ({labels[i]}): {exc}; nothing was submitted",)
                raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C or a failure: no more checks start
    return [specs[i] for i in range(len(request.fits))]


def _create(
    target: Path,
    record: dict[str, Any],
    script: str,
    specs: list[Request],
    request: CampaignRequest,
) -> None:
    """Build the whole campaign under a temporary name, then rename: it is complete or absent."""
    import tempfile

    staging: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
        os.chmod(staging, 0o777 & ~current_umask())
        write_atomic(staging / CAMPAIGN_FILE, _json(record))
        write_atomic(staging / SCRIPT_FILE, script)
        (staging / FITS_DIR).mkdir()
        for i, spec in enumerate(specs):
            submission.create_job_dir(
                staging / FITS_DIR / str(i), {JOB_FILE: _json(spec)}, request.fits[i][0]
            )
        os.rename(staging, target)
    except BaseException as exc:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)  # Ctrl-C included: no half-made campaign is left
        if not isinstance(exc, (OSError, BumpsMpiError)):
            raise
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot create campaign directory {target}: {why}") from None


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _record(
    target: Path, array_id: str, indices: list[int], earlier: dict[int, list[str]] | None = None
) -> None:
    """The array is queued: each fit's job.json, campaign.json and the registry learn its ids."""
    now = time.time()
    problems = []
    for i in indices:
        job = JobDir(target / FITS_DIR / str(i))
        entry: dict[str, Any] = {"job_id": f"{array_id}_{i}", "submitted": now}
        if earlier and earlier.get(i):
            entry["earlier_job_ids"] = earlier[i]
        try:
            job.update_spec(slurm=entry)
        except OSError as exc:
            problems.append(f"fit {i}: {exc.strerror or exc}")
        _register(
            problems, job_id=f"{array_id}_{i}", job_dir=str(job.path), name=job.spec["name"], submitted=now
        )
    campaign = load(target)
    campaign["arrays"].append({"job_id": array_id, "tasks": indices, "submitted": now})
    try:
        write_atomic(target / CAMPAIGN_FILE, _json(campaign))
    except OSError as exc:
        problems.append(f"{CAMPAIGN_FILE}: {exc.strerror or exc}")
    _register(
        problems, job_id=array_id, job_dir=str(target), name=campaign["name"], campaign=True, submitted=now
    )
    if problems:
        raise BumpsMpiError(
            f"array {array_id} is queued (campaign {target}), but its ids could not be recorded: "
            f"{'; '.join(dict.fromkeys(problems))}; follow it with 'squeue -j {array_id}'"
        )


def _register(problems: list[str], **entry: Any) -> None:
    try:
        registry.add(entry)
    except BumpsMpiError as exc:  # the array is queued all the same: say so with the rest
        problems.append(str(exc))


def load(path: Path) -> dict[str, Any]:
    """campaign.json, shape-checked."""
    data = read_json(path / CAMPAIGN_FILE)
    if not isinstance(data, dict) or not isinstance(data.get("fits"), list):
        raise JobNotFound(f"{path / CAMPAIGN_FILE} is not a bumps-mpi campaign record")
    data.setdefault("arrays", [])
    return data


def find(ref: str) -> Path | None:
    """The campaign directory *ref* names (the directory, or an array id bumps-submit submitted), or None."""
    path = Path(ref)
    if (path / CAMPAIGN_FILE).is_file():
        return path.absolute()
    if path.exists():
        return None
    for entry in registry.entries():
        if entry.get("campaign") and str(entry.get("job_id")) == ref:
            return Path(entry["job_dir"])
    return None


def jobs(path: Path) -> list[JobDir]:
    return [JobDir(path / f["dir"]) for f in load(path)["fits"]]


def status(path: Path) -> dict[str, Any]:
    """Counts by state, overall progress, the fits that need attention, and every fit's record."""
    campaign = load(path)
    records = jobstate.status([JobDir(path / f["dir"]) for f in campaign["fits"]])
    for fit, record in zip(campaign["fits"], records, strict=True):
        record["index"], record["label"] = fit["index"], fit["label"]
    counts = Counter(r["state"] for r in records)
    percent = sum(_percent(r) for r in records) / max(len(records), 1)
    return {
        "campaign_dir": str(path),
        "name": campaign["name"],
        "array_ids": [a["job_id"] for a in campaign["arrays"]],
        "max_running": campaign.get("max_running"),
        "fits": len(records),
        "counts": dict(sorted(counts.items())),
        "percent": round(percent, 1),
        "ended": all(jobstate.ended_for_good(r) or lost(r) for r in records),
        "attention": [r for r in records if needs_attention(r)],
        "records": records,
    }


def _percent(record: Status) -> float:
    if record["state"] == JobState.COMPLETED.value:
        return 100.0
    progress = record.get("progress")
    return float(progress["percent"] or 0.0) if progress else 0.0


def lost(record: Status) -> bool:
    """A fit that will never say more: its directory unreadable, or a job Slurm has no record of
    (not one that Slurm cannot be asked about now): waiting for it would never end."""
    gone = record["state"] == JobState.UNKNOWN.value and str(record.get("reason")).startswith(
        "Slurm knows no"
    )
    return gone or bool(record.get("unreadable"))


def needs_attention(record: Status) -> bool:
    """Ended without results, pending for a reason that will never clear, lost, or UNKNOWN."""
    state = JobState(record["state"])
    failed = state.terminal and state is not JobState.COMPLETED
    return failed or state is JobState.UNKNOWN or bool(record.get("never_starts")) or lost(record)


def failed_fits(path: Path) -> list[JobDir]:
    """What resume --failed runs again: the fits that ended for good without results, failed, timed out,
    or preempted or lost with a node and gone from the queue (a cancelled one was your decision: resume it
    by its id; a preempted one still in the queue requeues itself)."""
    wanted = []
    for record in status(path)["records"]:
        state = JobState(record["state"])
        ended = jobstate.ended_for_good(record)
        again = state not in (JobState.COMPLETED, JobState.CANCELLED)
        if ended and again and not _has_result(JobDir(record["job_dir"])):
            wanted.append(JobDir(record["job_dir"]))
    return wanted


def _has_result(job: JobDir) -> bool:
    """Whether the fit wrote a readable result (one that cannot be read is none: run it again)."""
    try:
        return job.result is not None
    except BumpsMpiError:
        return False


def resume_failed(path: Path) -> list[dict[str, Any]]:
    """resume --failed: choose the fits that failed and run them again, under the campaign's lock (two at
    once would resubmit the same fits into the same directories)."""
    with locked(path):
        return resubmit(path, failed_fits(path))


def locked(path: Path) -> Any:
    """The campaign's resume lock: one resume (of it, or of one of its fits) at a time."""
    busy = f"campaign {path} is being resumed by another command right now; see 'bumps-submit status {path}'"
    return exclusive(path / CAMPAIGN_LOCK, busy)


def resubmit(path: Path, fits: list[JobDir]) -> list[dict[str, Any]]:
    """Run *fits* of the campaign again as a new array of just their tasks, each from its checkpoint
    where it has one; [{job_id, job_dir, resumed}] per fit. The caller holds the campaign's lock
    (locked()) from its choice of the fits to here."""
    if not fits:
        raise UsageError(f"no fit of campaign {path} has failed: there is nothing to resume")
    slurm.require("sbatch")
    campaign = load(path)
    indices = [int(job.spec["campaign"]["index"]) for job in fits]
    saved = [j for j in fits if j.file(CHECKPOINT_FILE).exists() and j.spec.get("fit") in RESUMABLE_FITTERS]
    if saved:
        submission.check_checkpoints(saved)  # all in one confined child
    earlier, aside = {}, []
    try:
        for i, job in zip(indices, fits, strict=True):
            aside += submission.set_aside(job)
            record = job.spec.get("slurm") or {}
            earlier[i] = [
                *record.get("earlier_job_ids", []),
                *([record["job_id"]] if record.get("job_id") else []),
            ]
        array = array_text(indices, campaign.get("max_running"))
        array_id = slurm.sbatch(path / SCRIPT_FILE, path, array=array)
    except OSError as exc:
        submission.put_back(aside)
        raise BumpsMpiError(
            f"cannot resume in {path}: {exc.strerror or exc}; nothing was submitted"
        ) from None
    except slurm.SubmitUncertain:
        raise  # it may be queued: the fits' last ends stay set aside, as the new run would set them
    except BaseException:
        submission.put_back(aside)  # never submitted: the table still shows why each fit ended
        raise
    _record(path, array_id, indices, earlier)
    return [
        {"job_id": f"{array_id}_{i}", "job_dir": str(job.path), "resumed": True}
        for i, job in zip(indices, fits, strict=True)
    ]


def cancel(path: Path) -> dict[str, Any]:
    """Cancel every fit still pending or running, by its task id, in one scancel; never a fit that has
    written its result (it is only drawing its figures) nor one that has ended."""
    done = status(path)
    live = [r for r in done["records"] if r["job_id"] and not jobstate.ended_for_good(r)]  # Slurm's word
    if not live:
        return {"campaign_dir": str(path), "cancelled": 0, "job_ids": []}
    requests = [JobDir(r["job_dir"]).file(CANCEL_FILE) for r in live]  # in each fit's control directory
    for request in requests:
        try:
            write_atomic(request, f"{time.time()}\n")  # a fit at its time limit must not requeue now
        except OSError:
            pass
    ids = [str(r["job_id"]) for r in live]
    try:
        slurm.scancel(*ids)
    except BaseException:
        for request in requests:  # not cancelled: they may requeue at their time limit as usual
            request.unlink(missing_ok=True)
        raise
    return {"campaign_dir": str(path), "cancelled": len(live), "job_ids": ids}

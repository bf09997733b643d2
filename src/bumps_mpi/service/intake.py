"""Taking a fit in, for the API and the submit page alike: the form and its files, the user's limits
and quotas, the upload saved under the fit's model directory, the check and the submission (or the
retry of an interrupted one, by its Idempotency-Key)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from ..cluster.render import limit_seconds
from ..errors import UsageError
from ..text import plain
from . import notify, uploads
from .auth import User
from .controller import Controller
from .runner import fit_dir
from .schemas import LimitReached

FIT_FIELDS = ("samples", "burn", "steps", "pop", "init", "thin")
CHECK_WAIT_S = 20  # how long a submission waits for one of the service's model checks


async def parsed(c: Controller, request: Request) -> tuple[dict[str, str], Any, list, Any]:
    """The form's text fields and its files: model, data (any number), archive."""
    try:
        form = await request.form(max_files=c.config.upload_max_files + 2)
    except Exception as exc:  # not multipart, or past the parser's limits
        raise HTTPException(400, f"send the fit as multipart/form-data ({exc})") from None
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    uploaded = [v for v in form.getlist("data") if not isinstance(v, str)]
    model, archive = form.get("model"), form.get("archive")
    return (
        fields,
        None if isinstance(model, str) else model,
        uploaded,
        None if isinstance(archive, str) else archive,
    )


async def create(
    c: Controller,
    user: User,
    form: dict[str, Any],
    model: UploadFile | None,
    data: list[UploadFile],
    archive: UploadFile | None,
    idem_key: str | None,
) -> tuple[dict, bool]:  # fmt: skip
    """A new fit from the form, within the user's and the service's limits: (its row, whether new)."""
    config, store = c.config, c.store
    limits = config.limits_for(user.name)
    ntasks, time_limit = _resources(form, limits)
    active = await asyncio.to_thread(store.active)
    running = [f for f in active if f["owner"] == user.name and f["phase"] != "interrupted"]
    if len(running) >= limits.max_fits:
        raise LimitReached(
            f"you have {len(running)} fits running, the most this service allows: wait for one"
        )
    await asyncio.to_thread(quota, c, user, limits)
    here = [f for f in active if f["phase"] in ("submitting", "submitted")]
    if config.backend == "local" and len(here) >= config.max_running:
        raise LimitReached(f"this service runs {len(here)} fits, the most it runs at once: try again later")
    wanted = await asyncio.to_thread(  # a DNS lookup: never on the event loop
        notify.check_request, config, form.get("notify_email") or None, form.get("notify_webhook") or None
    )
    request_record = _request_record(form, ntasks, time_limit)
    display = (model.filename if model else archive.filename if archive else None) or "fit"
    # each check is a process here: a submission waits a little for its turn (the form's estimate of
    # the same fit may be finishing), a burst is refused
    if not await asyncio.to_thread(c.checks.acquire, True, CHECK_WAIT_S):
        raise LimitReached(f"this service checks {config.max_checks} models at once: try again shortly")
    try:
        return await _submitted(
            c, user, display, request_record, idem_key, wanted, form, model, data, archive
        )
    finally:
        c.checks.release()


def _resources(form: dict[str, Any], limits: Any) -> tuple[int | None, str | None]:
    """The ranks and time limit asked for, within the user's limits."""
    ntasks = _int(form.get("ntasks"), "ntasks")
    if ntasks is not None and not 1 <= ntasks <= limits.max_ranks:
        raise UsageError(f"ntasks {ntasks}: this service allows 1 to {limits.max_ranks} ranks for you")
    time_limit = form.get("time") or None
    if time_limit and (limit_seconds(time_limit) or 1e18) > (limit_seconds(limits.max_time) or 1e18):
        raise UsageError(f"time {time_limit!r}: this service allows at most {limits.max_time} for you")
    return ntasks, time_limit


def _request_record(form: dict[str, Any], ntasks: int | None, time_limit: str | None) -> dict[str, Any]:
    """What the user asked for, as the store records it (the model's name is added once saved)."""
    return {
        "model": "",
        "args": _arguments(form.get("args") or ""),
        "fit": form.get("fit") or "dream",
        "options": {k: form[k] for k in FIT_FIELDS if form.get(k) not in (None, "")},
        "seed": _int(form.get("seed"), "seed"),
        "ntasks": ntasks,
        "time": time_limit,
        "wants": _labels(form.get("labels") or ""),  # dispatch: what a worker must offer
    }


async def estimate(
    c: Controller, user: User, form: dict[str, Any], model: UploadFile | None, data: list[UploadFile],
    archive: UploadFile | None,
) -> dict[str, Any]:  # fmt: skip
    """What the form's fit would cost, before it is submitted: its model checked and timed as a
    submission's is (confined, in a scratch directory removed after), the estimate on 1, 2, 4, ... up to
    the user's ranks, and why it would be refused (None when it would not)."""
    import secrets

    limits = c.config.limits_for(user.name)
    ntasks, time_limit = _resources(form, limits)
    record = _request_record(form, ntasks, time_limit)
    if c.config.backend == "dispatch":
        raise UsageError("this service's fits run on remote workers' clusters: it has no estimate to give")
    if not c.checks.acquire(blocking=False):
        raise LimitReached(f"this service checks {c.config.max_checks} models at once: try again shortly")
    scratch = f"estimate-{secrets.token_hex(6)}"
    try:
        record["model"] = await run_in_threadpool(_receive, c, scratch, form, model, data, archive)
        fit = {"id": scratch, "owner": user.name, "request": json.dumps(record)}
        return await run_in_threadpool(c.runner.estimate, fit)
    finally:
        c.checks.release()
        shutil.rmtree(fit_dir(c.config, scratch), ignore_errors=True)


def quota(c: Controller, user: User, limits: Any) -> None:
    """A user's fits kept and bytes stored, within their quota (a clear refusal: delete some)."""
    kept = c.store.fits(user.name, limit=limits.max_kept + 1)
    if len(kept) >= limits.max_kept:
        raise UsageError(f"you keep {len(kept)} fits, the most this service keeps for you: delete some")
    stored = sum(_bytes_under(fit_dir(c.config, f["id"])) for f in kept)
    if stored >= limits.max_stored_mb << 20:
        raise UsageError(
            f"your fits hold {stored >> 20} MB, the most this service keeps for you is "
            f"{limits.max_stored_mb} MB: delete some"
        )


async def _submitted(
    c: Controller, user: User, display: str, request_record: dict, idem_key: str | None, wanted: dict,
    form: dict, model: UploadFile | None, data: list[UploadFile], archive: UploadFile | None,
) -> tuple[dict, bool]:  # fmt: skip
    """Record the fit, save its upload, check and submit it (or continue an interrupted one)."""
    store, runner = c.store, c.runner
    label = plain(" ".join((form.get("label") or "").split()))[:60]  # the user's name, else the model's
    fit, new = store.new_fit(user.name, label or Path(display).stem[:60], request_record, idem_key, wanted)
    if not new:
        if fit["phase"] == "interrupted" and store.take_interrupted(fit["id"]):  # one retry continues it
            return await run_in_threadpool(runner.resubmit, fit), True
        return fit, False
    try:
        request_record["model"] = await run_in_threadpool(_receive, c, fit["id"], form, model, data, archive)
        store.update_fit(fit["id"], request=json.dumps(request_record))
        recorded = store.fit(fit["id"])
        assert recorded is not None  # made above; only its owner deletes it, never while it is submitting
        return await run_in_threadpool(runner.submit, recorded), True
    except BaseException:
        if (store.fit(fit["id"]) or {}).get("phase") in ("submitting", "rejected"):  # never submitted
            shutil.rmtree(fit_dir(c.config, fit["id"]), ignore_errors=True)
            store.update_fit(fit["id"], phase="rejected")
        raise  # interrupted (Slurm may have queued it): its files stay, for a retry with its key


def _receive(
    c: Controller, fit_id: str, form: dict, model: UploadFile | None, data: list[UploadFile],
    archive: UploadFile | None,
) -> str:  # fmt: skip
    """Save the upload under fits/<id>/model; the model file's name there."""
    config = c.config
    target = fit_dir(config, fit_id) / "model"
    target.mkdir(parents=True)
    budget = uploads.Budget(
        config.upload_max_mb << 20, config.upload_max_files, config.upload_max_unzipped_mb << 20
    )
    if archive is not None and archive.filename:
        saved = uploads.save(
            archive.file, fit_dir(config, fit_id), "upload.zip", budget, config.upload_max_mb
        )
        unpacked = uploads.unzip(saved, target, budget, config.upload_max_unzipped_mb)
        saved.unlink()
        names = [str(p.relative_to(target)) for p in unpacked]
        chosen = (
            form.get("model_name") or ([n for n in names if n.endswith(".py") and "/" not in n] or [""])[0]
        )
        if str(uploads.safe_name(chosen or "missing.py")) not in names:
            raise UsageError(
                f"the zip has no model file {chosen!r}: name it in model_name (files: {', '.join(names)})"
            )
        return chosen
    if model is None or not model.filename:
        raise UsageError("upload a model file (model) or a zip of the model and its data (archive)")
    saved = uploads.save(model.file, target, model.filename, budget, config.upload_max_mb)
    for item in data:  # names as sent, checked: a relative path keeps its folders, '..' is refused
        if item.filename:
            uploads.save(item.file, target, item.filename, budget, config.upload_max_mb)
    return str(saved.relative_to(target))


def _bytes_under(path: Path) -> int:
    """The bytes of the regular files under *path* (no link followed; files that go meanwhile skipped)."""
    total, todo = 0, [path]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    todo.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


def _int(value: Any, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} {value!r} is not a whole number") from None


def _arguments(text: str) -> list[str]:
    """The model's arguments: a JSON list of strings, or words separated by spaces."""
    if not text.startswith("["):
        return text.split()
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if not isinstance(found, list) or not all(isinstance(a, str) for a in found):
        raise UsageError(f"args {text[:80]!r}: give words separated by spaces, or a JSON list of strings")
    return found


def _labels(text: str) -> dict[str, str]:
    """`cluster=hpc1,site=ill` as a dict; a clear error for anything else."""
    found = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if (
            not sep
            or not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", key)
            or not re.fullmatch(r"[^,=]{1,100}", value)
        ):
            raise UsageError(f"labels {text!r}: give key=value pairs separated by commas (cluster=hpc1)")
        found[key] = value
    return found

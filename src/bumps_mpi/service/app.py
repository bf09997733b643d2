"""The job controller: an ASGI application (FastAPI) with a versioned JSON API and web pages.

    uvicorn --factory bumps_mpi.service:create_app     # reads $BUMPS_MPI_SERVICE_CONFIG
    bumps-submit serve [--host H] [--port P] [--data-dir DIR] [--config FILE]

API, for scripts (OpenAPI at /api/v1/openapi.json): submit (multipart), list mine,
one fit with its progress and results, live progress as Server-Sent Events,
cancel, delete, files. Pages, for browsers: log in, my fits (live), one fit
(live progress, figures, parameters, traceback, downloads, cancel, delete),
submit. Everything the pages need is served here: no CDN, no outside address.
Every string from a model is escaped (Jinja2's autoescape; text, never markup,
in the pages' script) and the report is served under a sandboxing CSP.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import secrets
import shutil
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ..cluster.render import limit_seconds
from ..errors import BumpsMpiError, UsageError
from ..jobdir import FIGURES_DIR, REPORT_FILE, JobDir
from ..text import plain
from ..version import __version__
from . import files, notify, uploads
from .auth import COOKIE, Auth, User
from .dispatch import Queue
from .monitor import Monitor
from .runner import Runner, fit_dir, job_of
from .settings import ServiceConfig, load
from .store import Store
from .supervise import alive_ids

HERE = Path(__file__).resolve().parent
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SAFE = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}
REPORT_POLICY = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"
DOWNLOADS = ("result.json", "error.json", REPORT_FILE, "local.out")  # besides export/, figures/, logs
# every download: the browser must never run it nor guess its type; only PNG figures are shown inline
DOWNLOAD_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}
FIT_FIELDS = ("samples", "burn", "steps", "pop", "init", "thin")
STREAM_S = 3600  # an event stream's longest life: a client that still wants it reconnects
MAX_STREAMS_PER_USER = 8  # event streams one user may hold open at once
_FILE = {"type": "string", "format": "binary"}
SUBMIT_SCHEMA = {  # the form the submit endpoint reads itself (after authentication), for OpenAPI
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "model": {**_FILE, "description": "the model file (.py)"},
                        "data": {"type": "array", "items": _FILE, "description": "its data files"},
                        "archive": {**_FILE, "description": "or one zip of the model and its data"},
                        "model_name": {"type": "string", "description": "the model file in the zip"},
                        "args": {"type": "string", "description": "the model's arguments"},
                        "fit": {"type": "string", "default": "dream"},
                        **{
                            name: {"type": "string"}
                            for name in ("samples", "burn", "steps", "pop", "init", "thin")
                        },
                        "seed": {"type": "integer"},
                        "ntasks": {"type": "integer"},
                        "time": {"type": "string", "description": "Slurm time limit, e.g. 00:30:00"},
                        "labels": {
                            "type": "string",
                            "description": "dispatch: key=value,... a worker must have",
                        },
                        "notify_email": {"type": "string"},
                        "notify_webhook": {"type": "string"},
                    },
                }
            }
        },
    },
    "responses": {  # what is sent besides 201: the same fit again, a bad request, a limit
        "200": {"description": "the fit made earlier with this Idempotency-Key"},
        "422": {
            "description": "the request or its model is refused (the model check's output with it)",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"detail": {"type": "string"}, "output": {"type": ["string", "null"]}},
                    }
                }
            },
        },
        "429": {
            "description": "a limit of yours is reached (fits running at once): send it again later",
            "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
        },
    },
}


class FitOut(BaseModel):
    """A fit as the API lists it."""

    id: str
    owner: str
    name: str
    created: float
    state: str
    phase: str
    job_id: str | None = None
    chisq: float | None = None
    message: str | None = None
    worker: str | None = None  # dispatch: the worker of the current (or last) attempt
    attempt: int = 0


class FitDetail(FitOut):
    """One fit: its progress while it runs, its results when done, its error when failed."""

    reason: str | None = None
    progress: dict[str, Any] | None = None
    parameters: list[dict[str, Any]] | None = None
    chisq_str: str | None = None
    error: dict[str, Any] | None = None
    figures: list[str] = []
    files: list[str] = []
    sandbox: dict[str, Any] | None = None
    failed_evaluations: int | None = None  # where the model raised or gave no value (Bumps went on)
    evaluations: int | None = None


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


class LimitReached(UsageError):
    """A user's limit (fits running at once) refuses a request that is fine in itself: 429, try later."""

    retry_after_s = 30


def owner_only(data_dir: Path) -> None:
    """The data directory holds every user's models, data and results: no other account may enter it.
    One of ours that others can is closed (and said); one that is not ours is refused."""
    info = data_dir.stat()
    if not info.st_mode & 0o077:
        return
    if info.st_uid != os.geteuid():
        raise UsageError(
            f"data directory {data_dir} belongs to another account and others can read it: "
            "give the service a directory of its own"
        )
    data_dir.chmod(0o700)
    print(f"bumps-mpi service: {data_dir} was open to other accounts; now only this one", file=sys.stderr)


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """The application; without *config*, from $BUMPS_MPI_SERVICE_CONFIG (a file) or the defaults."""
    if config is None:
        path = os.environ.get("BUMPS_MPI_SERVICE_CONFIG")
        config = load(Path(path) if path else None)
    os.umask(0o077)  # the store, the secret and every fit's files: the service's own account only
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    owner_only(config.data_dir)
    os.environ["BUMPS_MPI_REGISTRY"] = str(config.data_dir / "registry.jsonl")  # the service's own list
    store = Store.of(config)
    auth = Auth(config, store)
    queue = Queue(config, store)
    runner = Runner(config, store, queue)
    monitor = Monitor(config, store, queue)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        for line in runner.reconcile():
            print(f"bumps-mpi service: {line}", flush=True)
        monitor.start()
        yield
        monitor.stop()

    app = FastAPI(
        title="bumps-mpi job controller",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # the interactive docs load their scripts from a CDN: none here
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_mb=config.upload_max_mb)
    app.state.config, app.state.store, app.state.auth = config, store, auth
    app.state.runner, app.state.monitor = runner, monitor
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        """A bug or a broken file: a short answer with the usual headers, the traceback in the log."""
        import traceback

        traceback.print_exception(exc)
        body = {"detail": f"the service failed: {type(exc).__name__}; its log has the details"}
        return JSONResponse(body, status_code=500, headers={"Content-Security-Policy": PAGE_POLICY, **SAFE})

    @app.middleware("http")
    async def headers(request: Request, call_next):  # noqa: ANN001, ANN202
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
        response.headers.update(SAFE)
        return response

    # --- who -------------------------------------------------------------------------------------------

    def who(request: Request) -> User | None:
        client = request.client.host if request.client else None
        server = request.scope.get("server") or (None,)
        return auth.identify(dict(request.headers), dict(request.cookies), client, server[0])

    def api_user(request: Request) -> User:
        user = who(request)
        if user is None:
            raise HTTPException(
                401, "authenticate: Authorization: Bearer TOKEN", headers={"WWW-Authenticate": "Bearer"}
            )
        return user

    def changing(request: Request, user: User, csrf: str | None) -> None:
        if not auth.csrf_ok(user, csrf or request.headers.get("x-csrf-token")):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")

    def visible(fit_id: str, user: User) -> dict:
        fit = store.fit(fit_id)
        if fit is None or not (user.admin or fit["owner"] == user.name):
            raise HTTPException(404, f"no fit {fit_id!r}")  # another's fit does not exist, for you
        return fit

    # --- what --------------------------------------------------------------------------------------------

    def summary(fit: dict) -> FitOut:
        state = fit.get("state") or ("PENDING" if fit["phase"] == "submitting" else "UNKNOWN")
        if fit["phase"] == "interrupted":
            state = "UNKNOWN"
        return FitOut(
            id=fit["id"], owner=fit["owner"], name=fit["name"], created=fit["created"], state=state,
            phase=fit["phase"], job_id=fit.get("job_id"), chisq=fit.get("chisq"), message=fit.get("message"),
            worker=fit.get("worker"), attempt=fit.get("attempt") or 0,
        )  # fmt: skip

    def detail(fit: dict) -> FitDetail:
        out = FitDetail(**summary(fit).model_dump())
        job = job_of(config, fit)
        if job is None:
            return out
        record = monitor.record(fit) or {}
        out.state = record.get("state", out.state)
        out.progress = finite(record.get("progress"))
        out.reason = plain(record["reason"]) if record.get("reason") else None
        if record.get("error"):  # the model's words: text, without terminal control sequences
            out.error = {k: plain(v) if isinstance(v, str) else v for k, v in record["error"].items()}
        try:
            result = job.result
        except BumpsMpiError:
            result = None
        if result is not None:
            out.parameters = [{**p, "name": plain(p["name"])} for p in result["parameters"]]
            out.chisq, out.chisq_str = result["chisq"], result["chisq_str"]
            out.sandbox = result.get("sandbox")
        try:
            error = job.error
        except BumpsMpiError:
            error = None
        counted = result or error or out.progress or {}  # the job's own word: numbers only
        for key in ("failed_evaluations", "evaluations"):
            value = counted.get(key) if isinstance(counted, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(out, key, value)
        out.files = downloads(job)
        out.figures = [
            n.split("/", 1)[1] for n in out.files if n.startswith(f"{FIGURES_DIR}/") and n.endswith(".png")
        ]
        return out

    def over(fit: dict) -> bool:
        """Nothing more will change: its end recorded (report written, notifications sent), or never run."""
        return bool(fit.get("ended")) or fit["phase"] in ("rejected", "interrupted", "deleted")

    def downloads(job: JobDir) -> list[str]:
        """What a fit offers for download: regular files only (no links followed), in a fixed set; the
        Slurm log from the control directory (one of that name in the job directory is the model's)."""
        found = list(files.regular_files(job.path))
        wanted = set(DOWNLOADS)
        logs = [n for n in files.regular_files(job.control) if n.startswith("slurm-") and n.endswith(".out")]
        return [
            name for name in found
            if name in wanted or name.startswith(("export/", f"{FIGURES_DIR}/", "logs/"))  # logs: a worker's
        ] + logs  # fmt: skip

    def open_in(fit: dict, relative: str) -> tuple[Any, int]:
        """A download opened once, beneath the job directory, through no link: (file, size)."""
        job = job_of(config, fit)
        if job is None or relative not in downloads(job):
            raise HTTPException(404, f"no file {relative!r} in this fit")
        try:
            base = job.file(relative).parent if "/" not in relative else job.path  # a log: its control dir
            handle = files.open_beneath(base, relative)
        except OSError:
            raise HTTPException(404, f"no file {relative!r} in this fit") from None
        return handle, os.fstat(handle.fileno()).st_size

    inside = re.compile(re.escape(str(config.data_dir / "fits")) + r"/[0-9a-f]+/(model|job)(/|\b)")
    service_paths = re.compile(re.escape(str(config.data_dir)) + r"\S*")

    def public(text: str | None) -> str | None:
        """A message without the service's own paths: the user's file names, as they sent them."""
        if text is None:
            return None
        text = inside.sub(lambda m: "" if m.group(2) == "/" else f"the fit's {m.group(1)} directory", text)
        return plain(service_paths.sub("(the service's files)", text))

    # --- submitting ---------------------------------------------------------------------------------------

    async def create(
        user: User,
        form: dict[str, Any],
        model: UploadFile | None,
        data: list[UploadFile],
        archive: UploadFile | None,
        idem_key: str | None,
    ) -> tuple[dict, bool]:  # fmt: skip
        limits = config.limits_for(user.name)
        ntasks = _int(form.get("ntasks"), "ntasks")
        if ntasks is not None and not 1 <= ntasks <= limits.max_ranks:
            raise UsageError(f"ntasks {ntasks}: this service allows 1 to {limits.max_ranks} ranks for you")
        time_limit = form.get("time") or None
        if time_limit and (limit_seconds(time_limit) or 1e18) > (limit_seconds(limits.max_time) or 1e18):
            raise UsageError(f"time {time_limit!r}: this service allows at most {limits.max_time} for you")
        active = await asyncio.to_thread(store.active)
        running = [f for f in active if f["owner"] == user.name and f["phase"] != "interrupted"]
        if len(running) >= limits.max_fits:
            raise LimitReached(
                f"you have {len(running)} fits running, the most this service allows: wait for one"
            )
        await asyncio.to_thread(quota, user, limits)
        here = [f for f in active if f["phase"] in ("submitting", "submitted")]
        if config.backend == "local" and len(here) >= config.max_running:
            raise LimitReached(
                f"this service runs {len(here)} fits, the most it runs at once: try again later"
            )
        wanted = await asyncio.to_thread(  # a DNS lookup: never on the event loop
            notify.check_request, config, form.get("notify_email") or None, form.get("notify_webhook") or None
        )
        options = {k: form[k] for k in FIT_FIELDS if form.get(k) not in (None, "")}
        args = form.get("args") or ""
        request_record = {
            "model": "",
            "args": _arguments(args),
            "fit": form.get("fit") or "dream",
            "options": options,
            "seed": _int(form.get("seed"), "seed"),
            "ntasks": ntasks,
            "time": time_limit,
            "wants": _labels(form.get("labels") or ""),  # dispatch: what a worker must offer
        }
        display = (model.filename if model else archive.filename if archive else None) or "fit"
        if not checks.acquire(blocking=False):  # each check is a process here: a burst waits its turn
            raise LimitReached(f"this service checks {config.max_checks} models at once: try again shortly")
        try:
            return await submitted(
                user, display, request_record, idem_key, wanted, form, model, data, archive
            )
        finally:
            checks.release()

    def quota(user: User, limits: Any) -> None:
        """A user's fits kept and bytes stored, within their quota (a clear refusal: delete some)."""
        kept = store.fits(user.name, limit=limits.max_kept + 1)
        if len(kept) >= limits.max_kept:
            raise UsageError(f"you keep {len(kept)} fits, the most this service keeps for you: delete some")
        stored = sum(_bytes_under(fit_dir(config, f["id"])) for f in kept)
        if stored >= limits.max_stored_mb << 20:
            raise UsageError(
                f"your fits hold {stored >> 20} MB, the most this service keeps for you is "
                f"{limits.max_stored_mb} MB: delete some"
            )

    async def submitted(
        user: User, display: str, request_record: dict, idem_key: str | None, wanted: dict, form: dict,
        model: UploadFile | None, data: list[UploadFile], archive: UploadFile | None,
    ) -> tuple[dict, bool]:  # fmt: skip
        """Record the fit, save its upload, check and submit it (or continue an interrupted one)."""
        fit, new = store.new_fit(user.name, Path(display).stem[:60], request_record, idem_key, wanted)
        if not new:
            if fit["phase"] == "interrupted" and store.take_interrupted(fit["id"]):  # one retry continues it
                return await run_in_threadpool(runner.resubmit, fit), True
            return fit, False
        try:
            request_record["model"] = await run_in_threadpool(receive, fit["id"], form, model, data, archive)
            store.update_fit(fit["id"], request=json.dumps(request_record))
            return await run_in_threadpool(runner.submit, store.fit(fit["id"])), True
        except BaseException:
            if (store.fit(fit["id"]) or {}).get("phase") in ("submitting", "rejected"):  # never submitted
                shutil.rmtree(fit_dir(config, fit["id"]), ignore_errors=True)
                store.update_fit(fit["id"], phase="rejected")
            raise  # interrupted (Slurm may have queued it): its files stay, for a retry with its key

    def receive(
        fit_id: str, form: dict, model: UploadFile | None, data: list[UploadFile], archive: UploadFile | None
    ) -> str:
        """Save the upload under fits/<id>/model; the model file's name there."""
        target = fit_dir(config, fit_id) / "model"
        target.mkdir(parents=True)
        budget = uploads.Budget(
            config.upload_max_mb << 20, config.upload_max_files, config.upload_max_unzipped_mb << 20
        )
        if archive is not None and archive.filename:
            saved = uploads.save(
                archive.file, fit_dir(config, fit_id), "upload.zip", budget, config.upload_max_mb
            )
            files = uploads.unzip(saved, target, budget, config.upload_max_unzipped_mb)
            saved.unlink()
            names = [str(p.relative_to(target)) for p in files]
            chosen = (
                form.get("model_name")
                or ([n for n in names if n.endswith(".py") and "/" not in n] or [""])[0]
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

    # --- API -----------------------------------------------------------------------------------------------

    @app.get("/api/v1/me")
    def me(user: User = Depends(api_user)) -> dict[str, Any]:
        return {"name": user.name, "admin": user.admin, "csrf": auth.csrf(user)}

    @app.get("/api/v1/fits", response_model=list[FitOut])
    def list_fits(
        state: str | None = None, owner: str | None = None, limit: int = 200, user: User = Depends(api_user)
    ) -> list[FitOut]:
        who_ = (owner if owner else None) if user.admin else user.name
        return [summary(f) for f in store.fits(who_, state=state, limit=max(1, min(limit, 1000)))]

    @app.post("/api/v1/fits", response_model=FitOut, status_code=201, openapi_extra=SUBMIT_SCHEMA)
    async def submit_fit(
        request: Request, idempotency_key: str | None = Header(None), user: User = Depends(api_user)
    ) -> Any:
        form, model, data, archive = await parsed(request)  # only once the user is known
        changing(request, user, form.get("csrf"))
        try:
            fit, new = await create(user, form, model, data, archive, idempotency_key)
        except LimitReached as exc:  # not the request's fault: the same request later will do
            retry = {"Retry-After": str(LimitReached.retry_after_s)}
            return JSONResponse({"detail": public(str(exc)), "output": None}, status_code=429, headers=retry)
        except BumpsMpiError as exc:
            return JSONResponse({"detail": public(str(exc)), "output": public(exc.output)}, status_code=422)
        return JSONResponse(
            summary(store.fit(fit["id"]) or fit).model_dump(), status_code=201 if new else 200
        )

    async def parsed(request: Request) -> tuple[dict[str, str], Any, list, Any]:
        """The form's text fields and its files: model, data (any number), archive."""
        try:
            form = await request.form(max_files=config.upload_max_files + 2)
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

    @app.get("/api/v1/fits/{fit_id}", response_model=FitDetail)
    def one_fit(fit_id: str, user: User = Depends(api_user)) -> FitDetail:
        return detail(visible(fit_id, user))

    checks = threading.BoundedSemaphore(config.max_checks)  # model checks at once, all users together
    streams: dict[str, int] = {}
    streams_lock = threading.Lock()  # open event streams per user (one user's tabs must not starve others)

    @app.get("/api/v1/fits/{fit_id}/events")
    def events(fit_id: str, user: User = Depends(api_user)) -> StreamingResponse:
        fit = visible(fit_id, user)
        with streams_lock:
            if streams.get(user.name, 0) >= MAX_STREAMS_PER_USER:
                raise HTTPException(
                    429,
                    f"you have {MAX_STREAMS_PER_USER} event streams open: close one",
                    headers={"Retry-After": "15"},
                )
        return StreamingResponse(
            stream(fit["id"], user.name),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
        )

    def look(fit_id: str) -> tuple[dict | None, dict | None]:
        """(the fit's row, what its event shows): the monitor's record and the store, never a walk of
        its directory; in a worker thread, never on the event loop."""
        current = store.fit(fit_id)
        if current is None:
            return None, None
        out = summary(current).model_dump(include={"state", "chisq", "message"})
        record = (monitor.record(current) if job_of(config, current) is not None else None) or {}
        out["state"] = record.get("state", out["state"])
        out["progress"] = finite(record.get("progress"))
        out["reason"] = plain(record["reason"]) if record.get("reason") else None
        if isinstance(record.get("chisq"), float):
            out["chisq"] = record["chisq"]
        return current, finite(out)

    async def stream(fit_id: str, who: str) -> AsyncIterator[str]:
        """Server-Sent Events: the fit's state and progress whenever they change; `end` when it ends (or
        is deleted). Async: an open stream holds no thread; it ends after STREAM_S (clients reconnect)."""
        with streams_lock:  # counted from its first byte to its end: a stream that never began is none
            streams[who] = streams.get(who, 0) + 1
        try:
            async for text in _stream(fit_id):
                yield text
        finally:
            with streams_lock:
                streams[who] = max(streams.get(who, 1) - 1, 0)

    async def _stream(fit_id: str) -> AsyncIterator[str]:
        last, seen, until = None, -1, time.monotonic() + STREAM_S
        quiet = time.monotonic()
        while time.monotonic() < until:
            if monitor.round != seen:
                seen = monitor.round
                current, shown = await asyncio.to_thread(look, fit_id)
                if current is None:  # deleted meanwhile
                    break
                if shown != last:
                    yield f"data: {json.dumps(shown)}\n\n"
                    last, quiet = shown, time.monotonic()
                if over(current):
                    break
            if time.monotonic() - quiet > 15:
                yield ": still here\n\n"
                quiet = time.monotonic()
            await asyncio.sleep(0.25)
        yield "event: end\ndata: {}\n\n"

    @app.post("/api/v1/fits/{fit_id}/cancel", status_code=202)
    def cancel_fit(request: Request, fit_id: str, user: User = Depends(api_user)) -> dict[str, Any]:
        changing(request, user, None)
        fit = visible(fit_id, user)
        try:
            runner.cancel(fit)
        except BumpsMpiError as exc:
            raise HTTPException(409, public(str(exc))) from None
        return {"id": fit_id, "cancelled": True}

    @app.delete("/api/v1/fits/{fit_id}", status_code=204)
    def delete_fit(request: Request, fit_id: str, user: User = Depends(api_user)) -> None:
        changing(request, user, None)
        remove(visible(fit_id, user))

    def remove(fit: dict) -> None:
        if fit["phase"] == "submitting":  # its submission would record it again after the delete
            raise HTTPException(409, "the fit is being submitted: wait a moment, then cancel or delete it")
        if fit["phase"] in ("queued", "leased") or (fit["phase"] == "submitted" and alive_ids([fit])):
            raise HTTPException(409, "the fit is still running: cancel it first, then delete it")
        runner.delete(fit)

    @app.get("/api/v1/fits/{fit_id}/files/{relative:path}")
    def download(fit_id: str, relative: str, user: User = Depends(api_user)) -> StreamingResponse:
        handle, size = open_in(visible(fit_id, user), relative)
        name = Path(relative).name
        figure = relative.startswith(f"{FIGURES_DIR}/") and name.endswith(".png")
        disposition = "inline" if figure else f"attachment; filename*=UTF-8''{quote(name)}"
        return StreamingResponse(
            files.chunks(handle),
            media_type="image/png" if figure else "application/octet-stream",
            headers={**DOWNLOAD_HEADERS, "Content-Disposition": disposition, "Content-Length": str(size)},
        )

    def admin_user(request: Request) -> User:
        user = api_user(request)
        if not user.admin:
            raise HTTPException(403, "for administrators")
        return user

    if config.backend == "dispatch":
        from .dispatch_api import router

        app.include_router(router(queue, admin_user, monitor.ended_elsewhere))

    # --- pages ---------------------------------------------------------------------------------------------

    def page(
        request: Request, name: str, user: User | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        csrf = auth.csrf(user) if user else ""
        return templates.TemplateResponse(
            request, name, {"user": user, "csrf": csrf, "version": __version__, **context}, status_code=status
        )

    def page_user(request: Request) -> User:
        user = who(request)
        if user is None:
            raise HTTPException(303, headers={"Location": "/login"})
        return user

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request) -> HTMLResponse:
        return page(request, "login.html", None, auth_mode=config.auth)

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: str = Form("")) -> Any:
        client = auth.client_address(dict(request.headers), request.client.host if request.client else None)
        try:
            found = auth.login(token, client)
        except PermissionError as exc:
            return page(request, "login.html", None, status=429, error=str(exc), auth_mode=config.auth)
        if found is None:
            return page(
                request,
                "login.html",
                None,
                status=401,
                error="that token is not valid",
                auth_mode=config.auth,
            )
        session, _ = found
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE, session, httponly=True, samesite="strict", secure=config.secure_cookies, max_age=12 * 3600
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, csrf: str = Form(""), user: User = Depends(page_user)) -> Any:
        changing(request, user, csrf)
        if user.session:
            store.end_session(user.session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request, user: User = Depends(page_user)) -> HTMLResponse:
        fits = [summary(f) for f in store.fits(None if user.admin else user.name)]
        return page(request, "fits.html", user, fits=fits)

    @app.get("/fits/{fit_id}", response_class=HTMLResponse, include_in_schema=False)
    def fit_page(request: Request, fit_id: str, user: User = Depends(page_user)) -> HTMLResponse:
        fit = visible(fit_id, user)
        return page(request, "fit.html", user, fit=detail(fit), terminal=over(fit))

    @app.get("/fits/{fit_id}/report", include_in_schema=False)
    def report_page(fit_id: str, user: User = Depends(page_user)) -> StreamingResponse:
        handle, size = open_in(visible(fit_id, user), REPORT_FILE)
        headers = {"Content-Security-Policy": REPORT_POLICY, "Content-Length": str(size)}
        return StreamingResponse(files.chunks(handle), media_type="text/html", headers=headers)

    def submit_form_page(request: Request, user: User, status: int = 200, **context: Any) -> HTMLResponse:
        limits, mail = config.limits_for(user.name), bool(config.mail_host)
        idem = secrets.token_hex(8)  # one per form shown: a second click sends the same submission again
        return page(
            request, "submit.html", user, status=status, limits=limits, mail=mail, idem=idem, **context
        )

    @app.get("/submit", response_class=HTMLResponse, include_in_schema=False)
    def submit_page(request: Request, user: User = Depends(page_user)) -> HTMLResponse:
        return submit_form_page(request, user)

    @app.post("/submit", include_in_schema=False)
    async def submit_form(request: Request, user: User = Depends(page_user)) -> Any:
        form, model, data, archive = await parsed(request)
        changing(request, user, form.get("csrf"))
        try:
            fit, _ = await create(user, form, model, data, archive, form.get("idempotency_key") or None)
        except BumpsMpiError as exc:
            status = 429 if isinstance(exc, LimitReached) else 422
            return submit_form_page(
                request, user, status=status, error=public(str(exc)), output=public(exc.output)
            )
        return RedirectResponse(f"/fits/{fit['id']}", status_code=303)

    @app.post("/fits/{fit_id}/cancel", include_in_schema=False)
    def cancel_form(
        request: Request, fit_id: str, csrf: str = Form(""), user: User = Depends(page_user)
    ) -> Any:
        changing(request, user, csrf)
        try:
            runner.cancel(visible(fit_id, user))
        except BumpsMpiError:
            pass  # it has ended meanwhile: the page shows how
        return RedirectResponse(f"/fits/{fit_id}", status_code=303)

    @app.post("/fits/{fit_id}/delete", include_in_schema=False)
    def delete_form(
        request: Request, fit_id: str, csrf: str = Form(""), user: User = Depends(page_user)
    ) -> Any:
        changing(request, user, csrf)
        remove(visible(fit_id, user))
        return RedirectResponse("/", status_code=303)

    return app


class BodyLimit:
    """Refuse a request body over *limit* bytes as it arrives (413), with or without a Content-Length:
    the form parser would otherwise spool any size to disk before a handler could say no."""

    def __init__(self, app: Any, max_mb: int):
        self.app, self.max_mb = app, max_mb
        self.limit = (max_mb << 20) + (1 << 20)  # the files, and room for the form's other fields

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith("/api/v1/dispatch/"):
            return await self.app(scope, receive, send)  # workers' uploads: their own limit, streamed
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(send, self.max_mb)
        seen, refused = 0, False

        async def counted() -> dict:
            """The body as it comes; past the limit, our 413 goes out and the app sees a disconnect."""
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    await _too_large(send, self.max_mb)
                    return {"type": "http.disconnect"}
            return message

        async def quiet(message: dict) -> None:
            if not refused:  # after our 413, whatever the app answers goes nowhere
                await send(message)

        await self.app(scope, counted, quiet)


async def _too_large(send: Any, max_mb: int) -> None:
    body = json.dumps({"detail": f"the upload is larger than the {max_mb} MB this service accepts"}).encode()
    await send(
        {"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": body})


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


def finite(value: Any) -> Any:
    """*value* with every NaN or infinity as None: JSON has no such numbers (browsers refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


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

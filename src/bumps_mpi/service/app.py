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

import json
import os
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from ..errors import UsageError
from ..front import registry
from ..version import __version__
from .api import api_router
from .controller import Controller
from .events import Streams
from .pages import pages_router
from .settings import ServiceConfig, load

HERE = Path(__file__).resolve().parent
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
SAFE = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY"}


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


def when(t: float | None) -> str:
    """A time as people read it, with its time zone (the service's): 2026-12-07 14:03 UTC."""
    return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(t)) if t else "-"


def duration(seconds: float | None) -> str:
    """1 h 02 min, 3 min 05 s, 42 s; '-' when not known."""
    if seconds is None or not seconds >= 0:
        return "-"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """The application; without *config*, from $BUMPS_MPI_SERVICE_CONFIG (a file) or the defaults."""
    if config is None:
        path = os.environ.get("BUMPS_MPI_SERVICE_CONFIG")
        config = load(Path(path) if path else None)
    os.umask(0o077)  # the store, the secret and every fit's files: the service's own account only
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    owner_only(config.data_dir)
    registry.use(config.data_dir / "registry.jsonl")  # the service's own list of the jobs it submits
    c = Controller.of(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202
        for line in c.runner.reconcile():
            print(f"bumps-mpi service: {line}", flush=True)
        c.monitor.start()
        yield
        c.monitor.stop()

    app = FastAPI(
        title="bumps-mpi job controller",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # the interactive docs load their scripts from a CDN: none here
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_mb=config.upload_max_mb)
    app.state.config, app.state.store, app.state.auth = config, c.store, c.auth
    app.state.runner, app.state.monitor = c.runner, c.monitor
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["when"] = when
    templates.env.filters["duration"] = duration
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def for_a_person(request: Request) -> bool:
        """A browser's page (HTML errors), not the API or a worker (JSON errors)."""
        return not request.url.path.startswith("/api/")

    def error_page(request: Request, status: int, message: str) -> Response:
        user = c.who(request)
        context = {"user": user, "csrf": c.auth.csrf(user) if user else "", "version": __version__}
        return templates.TemplateResponse(
            request, "error.html", {**context, "status": status, "message": message}, status_code=status
        )

    @app.exception_handler(HTTPException)
    async def refused(request: Request, exc: HTTPException) -> Response:
        """A person gets a page that says what happened and where to go; a script gets JSON."""
        if exc.status_code < 400 or not for_a_person(request):
            return await http_exception_handler(request, exc)
        return error_page(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        """A bug or a broken file: a short answer with the usual headers, the traceback in the log."""
        import traceback

        traceback.print_exception(exc)
        message = f"the service failed: {type(exc).__name__}; its log has the details"
        headers = {"Content-Security-Policy": PAGE_POLICY, **SAFE}
        if for_a_person(request):
            response = error_page(request, 500, message)
            response.headers.update(headers)
            return response
        return JSONResponse({"detail": message}, status_code=500, headers=headers)

    @app.middleware("http")
    async def headers(request: Request, call_next):  # noqa: ANN001, ANN202
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
        for name, value in SAFE.items():  # the report's frame says SAMEORIGIN itself
            response.headers.setdefault(name, value)
        return response

    app.include_router(api_router(c, Streams(c)))
    if config.backend == "dispatch":
        from .dispatch_api import router

        app.include_router(router(c.queue, c.admin_user, c.monitor.ended_elsewhere))
    app.include_router(pages_router(c, templates))
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

"""The job controller's parts, held once per application, and what both the API and the pages ask of
them: who is asking (dependencies for FastAPI), whether they may see or change a fit, and a fit as they
see it (summary, detail, its downloads, messages without the service's own paths)."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request

from ..errors import BumpsMpiError
from ..jobdir import FIGURES_DIR, REPORT_FILE, JobDir
from ..text import plain
from . import files
from .auth import Auth, User
from .dispatch import Queue
from .monitor import Monitor
from .runner import Runner, job_of
from .schemas import FitDetail, FitOut, finite
from .settings import ServiceConfig
from .store import Store
from .supervise import alive_ids

DOWNLOADS = ("result.json", "error.json", REPORT_FILE, "local.out")  # besides export/, figures/, logs


@dataclass
class Controller:
    """The store, the authority, the queue, the runner and the monitor of one application."""

    config: ServiceConfig
    store: Store
    auth: Auth
    queue: Queue
    runner: Runner
    monitor: Monitor
    checks: threading.BoundedSemaphore = field(init=False)  # model checks at once, all users together

    def __post_init__(self) -> None:
        self.checks = threading.BoundedSemaphore(self.config.max_checks)
        fits = re.escape(str(self.config.data_dir / "fits"))
        self._inside = re.compile(fits + r"/[0-9a-f]+/(model|job)(/|\b)")
        self._service_paths = re.compile(re.escape(str(self.config.data_dir)) + r"\S*")

    @classmethod
    def of(cls, config: ServiceConfig) -> Controller:
        store = Store.of(config)
        queue = Queue(config, store)
        return cls(config, store, Auth(config, store), queue, Runner(config, store, queue),
                   Monitor(config, store, queue))  # fmt: skip

    # --- who (FastAPI dependencies) --------------------------------------------------------------------

    def who(self, request: Request) -> User | None:
        client = request.client.host if request.client else None
        server = request.scope.get("server") or (None,)
        return self.auth.identify(dict(request.headers), dict(request.cookies), client, server[0])

    def api_user(self, request: Request) -> User:
        user = self.who(request)
        if user is None:
            raise HTTPException(
                401, "authenticate: Authorization: Bearer TOKEN", headers={"WWW-Authenticate": "Bearer"}
            )
        return user

    def page_user(self, request: Request) -> User:
        user = self.who(request)
        if user is None:
            raise HTTPException(303, headers={"Location": "/login"})
        return user

    def admin_user(self, request: Request) -> User:
        user = self.api_user(request)
        if not user.admin:
            raise HTTPException(403, "for administrators")
        return user

    def changing(self, request: Request, user: User, csrf: str | None) -> None:
        if not self.auth.csrf_ok(user, csrf or request.headers.get("x-csrf-token")):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")

    def visible(self, fit_id: str, user: User) -> dict:
        fit = self.store.fit(fit_id)
        if fit is None or not (user.admin or fit["owner"] == user.name):
            raise HTTPException(404, f"no fit {fit_id!r}")  # another's fit does not exist, for you
        return fit

    # --- what they see ---------------------------------------------------------------------------------

    def summary(self, fit: dict) -> FitOut:
        state = fit.get("state") or ("PENDING" if fit["phase"] == "submitting" else "UNKNOWN")
        if fit["phase"] == "interrupted":
            state = "UNKNOWN"
        return FitOut(
            id=fit["id"], owner=fit["owner"], name=fit["name"], created=fit["created"], state=state,
            phase=fit["phase"], job_id=fit.get("job_id"), chisq=fit.get("chisq"), message=fit.get("message"),
            worker=fit.get("worker"), attempt=fit.get("attempt") or 0,
        )  # fmt: skip

    def detail(self, fit: dict) -> FitDetail:
        out = FitDetail(**self.summary(fit).model_dump())
        job = job_of(self.config, fit)
        if job is None:
            return out
        record = self.monitor.record(fit) or {}
        out.state = record.get("state", out.state)
        out.progress = finite(record.get("progress"))
        out.reason = plain(record["reason"]) if record.get("reason") else None
        shown = record.get("error")
        if shown:  # the model's words: text, without terminal control sequences
            out.error = {k: plain(v) if isinstance(v, str) else v for k, v in shown.items()}
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
        out.files = self.downloads(job)
        out.figures = [
            n.split("/", 1)[1] for n in out.files if n.startswith(f"{FIGURES_DIR}/") and n.endswith(".png")
        ]
        return out

    @staticmethod
    def over(fit: dict) -> bool:
        """Nothing more will change: its end recorded (report written, notifications sent), or never run."""
        return bool(fit.get("ended")) or fit["phase"] in ("rejected", "interrupted", "deleted")

    @staticmethod
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

    def open_in(self, fit: dict, relative: str) -> tuple[Any, int]:
        """A download opened once, beneath the job directory, through no link: (file, size)."""
        job = job_of(self.config, fit)
        if job is None or relative not in self.downloads(job):
            raise HTTPException(404, f"no file {relative!r} in this fit")
        try:
            base = job.file(relative).parent if "/" not in relative else job.path  # a log: its control dir
            handle = files.open_beneath(base, relative)
        except OSError:
            raise HTTPException(404, f"no file {relative!r} in this fit") from None
        return handle, os.fstat(handle.fileno()).st_size

    def public(self, text: str | None) -> str | None:
        """A message without the service's own paths: the user's file names, as they sent them."""
        if text is None:
            return None
        text = self._inside.sub(
            lambda m: "" if m.group(2) == "/" else f"the fit's {m.group(1)} directory", text
        )
        return plain(self._service_paths.sub("(the service's files)", text))

    def remove(self, fit: dict) -> None:
        """Delete a fit that is not being submitted or running (409 otherwise: cancel it first)."""
        if fit["phase"] == "submitting":  # its submission would record it again after the delete
            raise HTTPException(409, "the fit is being submitted: wait a moment, then cancel or delete it")
        if fit["phase"] in ("queued", "leased") or (fit["phase"] == "submitted" and alive_ids([fit])):
            raise HTTPException(409, "the fit is still running: cancel it first, then delete it")
        self.runner.delete(fit)

"""The job controller's parts, held once per application, and what both the API and the pages ask of
them: who is asking (dependencies for FastAPI), whether they may see or change a fit, and a fit as they
see it (summary, detail, its downloads, messages without the service's own paths)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, Request

from ..cluster.states import JobState
from ..errors import BumpsMpiError
from ..jobdir import FIGURES_DIR, REPORT_FILE, JobDir
from ..text import plain
from . import files
from .auth import Auth, User
from .dispatch import Queue
from .monitor import Monitor
from .redact import Redactor
from .runner import Runner, job_of
from .schemas import FitDetail, FitOut, finite
from .settings import ServiceConfig
from .store import Store
from .supervise import alive_ids

DOWNLOADS = ("result.json", "error.json", REPORT_FILE, "local.out")  # besides export/, figures/, logs
MANIFEST_MAX_BYTES = 1 << 20  # figures/figures.json: the model writes it too
LOG_TAIL_BYTES = 32 << 10  # of a fit's log, shown on its page
REPORT_MAX_BYTES = 64 << 20  # a report with its figures inline; more is a download, not a page


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
        self.redact = Redactor(self.config.data_dir)

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
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            back = "" if here == "/" else f"?next={quote(here, safe='')}"  # then back here
            raise HTTPException(303, headers={"Location": f"/login{back}"})
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
        state = fit.get("state") or ("PENDING" if fit["phase"] in ("submitting", "queued") else "UNKNOWN")
        if fit["phase"] == "interrupted":
            state = "UNKNOWN"
        if fit["phase"] == "rejected":
            state = "REJECTED"
        asked = _request(fit)
        return FitOut(
            id=fit["id"], owner=fit["owner"], name=fit["name"], created=fit["created"], state=state,
            phase=fit["phase"], job_id=fit.get("job_id"), chisq=fit.get("chisq"),
            message=self.public(fit.get("message")), worker=fit.get("worker"),
            attempt=fit.get("attempt") or 0, fitter=str(asked.get("fit") or "dream"),
        )  # fmt: skip

    def detail(self, fit: dict) -> FitDetail:
        out = FitDetail(**self.summary(fit).model_dump())
        asked = _request(fit)
        out.settings = {str(k): str(v) for k, v in (asked.get("options") or {}).items()}
        if asked.get("seed") is not None:
            out.settings["seed"] = str(asked["seed"])
        out.time_limit = asked.get("time") or self.config.limits_for(fit["owner"]).max_time
        out.ranks = asked.get("ntasks")
        job = job_of(self.config, fit)
        if job is None:
            return out
        record = self.monitor.record(fit) or {}
        out.state = record.get("state", out.state)
        out.progress = finite(record.get("progress"))
        out.reason = self.public(record.get("reason"))
        out.elapsed_s = finite(record.get("elapsed_s"))
        out.convergence = self.monitor.convergence(fit["id"])
        shown = record.get("error")
        if shown:  # the model's words: text, without terminal control sequences or the service's paths
            out.error = self.redact.value(dict(shown))
        self._results(out, job)
        out.files = self.downloads(job)
        out.figures, out.captions = self.figures(job, out.files)
        out.drawing = bool(record.get("finishing")) or (  # its processes end after its figures
            out.state == "COMPLETED" and not self.over(fit) and REPORT_FILE not in out.files
        )
        return out

    def _results(self, out: FitDetail, job: JobDir) -> None:
        """What the job's result.json or error.json say: numbers and names only, checked."""
        try:
            result = job.result
        except BumpsMpiError:
            result = None
        if result is not None:
            out.parameters = [{**p, "name": plain(p["name"])} for p in result["parameters"]]
            out.chisq, out.chisq_str = result["chisq"], result["chisq_str"]
            out.sandbox = self.redact.value(result.get("sandbox"))
            for key in ("started", "finished", "elapsed_s"):
                value = result.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    setattr(out, key, finite(float(value)))
            if isinstance(result.get("ranks"), int):
                out.ranks = result["ranks"]
            if isinstance(result.get("first_failure"), str):
                out.first_failure = self.public(result["first_failure"][-8000:])
        try:
            error = job.error
        except BumpsMpiError:
            error = None
        counted = result or error or out.progress or {}  # the job's own word: numbers only
        for key in ("failed_evaluations", "evaluations"):
            value = counted.get(key) if isinstance(counted, dict) else None
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(out, key, value)
        if out.ranks is None:
            ranks = job.spec.get("local", {}).get("ranks") or job.spec.get("ntasks")
            out.ranks = ranks if isinstance(ranks, int) else None

    def figures(self, job: JobDir, offered: list[str]) -> tuple[list[str], list[str]]:
        """The PNG figures in the report's order with its captions (figures.json, which the model can
        write: names only among the files offered, captions as text), the others after them by name."""
        pngs = [n.split("/", 1)[1] for n in offered if n.startswith(f"{FIGURES_DIR}/") and n.endswith(".png")]
        captions: dict[str, str] = {}  # in the report's order
        try:
            with files.open_beneath(job.path, f"{FIGURES_DIR}/figures.json") as handle:
                manifest = json.loads(handle.read(MANIFEST_MAX_BYTES + 1)[:MANIFEST_MAX_BYTES])
            for entry in manifest.get("figures", []) if isinstance(manifest, dict) else []:
                name, title = entry.get("file"), entry.get("title")
                if isinstance(name, str) and name in pngs:
                    captions.setdefault(name, plain(title)[:300] if isinstance(title, str) else name)
        except (OSError, ValueError, AttributeError):
            pass  # no manifest, or a broken one: the files by name
        for name in pngs:
            captions.setdefault(name, name)
        return list(captions), list(captions.values())

    def log_tail(self, fit: dict, offered: list[str]) -> tuple[str, str] | None:
        """(the log's name, its last lines, without the service's paths) for the fit's page, or None;
        *offered*: its downloads, as detail() listed them (the directory is walked once a page)."""
        logs = [n for n in offered if n == "local.out" or n.startswith("slurm-")]
        if not logs:
            return None
        try:
            handle, size = self.open_in(fit, logs[-1], offered)
        except HTTPException:
            return None
        with handle:
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            text = handle.read(LOG_TAIL_BYTES).decode("utf-8", errors="replace")
        lines = text.splitlines()[1 if size > LOG_TAIL_BYTES else 0 :][-200:]
        return logs[-1], self.public("\n".join(lines)) or ""

    def report(self, fit: dict) -> bytes:
        """The fit's report, without the service's paths (the model can write it: shown sandboxed)."""
        handle, size = self.open_in(fit, REPORT_FILE)
        if size > REPORT_MAX_BYTES:
            handle.close()
            raise HTTPException(413, "the report is too large to show here: download it from the fit's page")
        with handle:
            text = handle.read(REPORT_MAX_BYTES).decode("utf-8", errors="replace")
        return (self.public(text) or "").encode()

    def terminal(self, state: str) -> bool:
        try:
            return JobState(state).terminal
        except ValueError:
            return state in ("REJECTED",)

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

    def open_in(self, fit: dict, relative: str, offered: list[str] | None = None) -> tuple[Any, int]:
        """A download opened once, beneath the job directory, through no link: (file, size); *offered*:
        the fit's downloads if already listed."""
        job = job_of(self.config, fit)
        if job is None or relative not in (self.downloads(job) if offered is None else offered):
            raise HTTPException(404, f"no file {relative!r} in this fit")
        try:
            base = job.file(relative).parent if "/" not in relative else job.path  # a log: its control dir
            handle = files.open_beneath(base, relative)
        except OSError:
            raise HTTPException(404, f"no file {relative!r} in this fit") from None
        return handle, os.fstat(handle.fileno()).st_size

    def public(self, text: str | None) -> str | None:
        """A message without the service's own paths: the user's file names, as they sent them."""
        return self.redact.text(text)

    def resume(self, fit: dict) -> None:
        """Continue a stopped fit from its checkpoint (the runner's checks: a clear refusal)."""
        self.runner.resume(fit)
        self.monitor.ending.pop(fit["id"], None)

    def remove(self, fit: dict) -> None:
        """Delete a fit that is not being submitted or running (409 otherwise: cancel it first)."""
        if fit["phase"] == "submitting":  # its submission would record it again after the delete
            raise HTTPException(409, "the fit is being submitted: wait a moment, then cancel or delete it")
        if fit["phase"] in ("queued", "leased") or (fit["phase"] == "submitted" and alive_ids([fit])):
            raise HTTPException(409, "the fit is still running: cancel it first, then delete it")
        self.runner.delete(fit)


def _request(fit: dict) -> dict[str, Any]:
    """What the user asked for (the service's own record), or nothing if it cannot be read."""
    try:
        asked = json.loads(fit.get("request") or "{}")
    except ValueError:
        return {}
    return asked if isinstance(asked, dict) else {}

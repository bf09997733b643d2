"""The job controller's JSON API, for scripts (OpenAPI at /api/v1/openapi.json): who am I, my fits,
submit (multipart), one fit with its progress and results, its live events, cancel, delete, files."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import BumpsMpiError
from ..jobdir import FIGURES_DIR
from . import files, intake
from .auth import User
from .controller import Controller
from .events import Streams
from .schemas import ESTIMATE_SCHEMA, SUBMIT_SCHEMA, FitDetail, FitOut, LimitReached

# every download: the browser must never run it nor guess its type; only PNG figures are shown inline
DOWNLOAD_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}


def _refused(c: Controller, exc: BumpsMpiError) -> JSONResponse:
    """A submission or an estimate refused: 429 with Retry-After when the service is busy (the same
    request later will do), else 422 with the reason and the check's output."""
    if isinstance(exc, LimitReached):
        retry = {"Retry-After": str(LimitReached.retry_after_s)}
        return JSONResponse({"detail": c.public(str(exc)), "output": None}, status_code=429, headers=retry)
    return JSONResponse({"detail": c.public(str(exc)), "output": c.public(exc.output)}, status_code=422)


def api_router(c: Controller, streams: Streams) -> APIRouter:
    routes = APIRouter(prefix="/api/v1")

    @routes.get("/me")
    def me(user: User = Depends(c.api_user)) -> dict[str, Any]:
        """Who the token or session is: name, admin, and the csrf token a cookie session's scripts send as
        X-CSRF-Token."""
        return {"name": user.name, "admin": user.admin, "csrf": c.auth.csrf(user)}

    @routes.get("/fits", response_model=list[FitOut])
    def list_fits(
        state: str | None = None, owner: str | None = None, limit: int = 200, user: User = Depends(c.api_user)
    ) -> list[FitOut]:
        """My fits, newest first (an administrator's: everyone's, or one owner's), optionally in one state;
        at most limit (1-1000)."""
        who_ = (owner if owner else None) if user.admin else user.name
        return [c.summary(f) for f in c.store.fits(who_, state=state, limit=max(1, min(limit, 1000)))]

    @routes.post("/fits", response_model=FitOut, status_code=201, openapi_extra=SUBMIT_SCHEMA)
    async def submit_fit(
        request: Request, idempotency_key: str | None = Header(None), user: User = Depends(c.api_user)
    ) -> Any:
        """Submit a fit (multipart: model and data, or archive; args, label, fitter settings, ntasks, time,
        notifications). Its model is checked and timed first; send an Idempotency-Key and repeat it when
        no answer came: the same key never makes a second fit (200 with the first)."""
        form, model, data, archive = await intake.parsed(c, request)  # only once the user is known
        c.changing(request, user, form.get("csrf"))
        try:
            fit, new = await intake.create(c, user, form, model, data, archive, idempotency_key)
        except BumpsMpiError as exc:
            return _refused(c, exc)
        return JSONResponse(
            c.summary(c.store.fit(fit["id"]) or fit).model_dump(), status_code=201 if new else 200
        )

    @routes.post("/estimate", openapi_extra=ESTIMATE_SCHEMA)
    async def estimate_fit(request: Request, user: User = Depends(c.api_user)) -> Any:
        """What the fit this form would submit costs (nothing is submitted): {"estimate": {"rows":
        [{"ranks", "wall_s", "core_hours", "efficiency"}, ...], "chosen", "evaluations", ...},
        "refused": why a submission would be refused, or null, "time_limit", "limits"}."""
        form, model, data, archive = await intake.parsed(c, request)
        c.changing(request, user, form.get("csrf"))
        try:
            return await intake.estimate(c, user, form, model, data, archive)
        except BumpsMpiError as exc:
            return _refused(c, exc)

    @routes.get("/fits/{fit_id}", response_model=FitDetail)
    def one_fit(fit_id: str, user: User = Depends(c.api_user)) -> FitDetail:
        """One of my fits: its state, progress, results, error and files (another user's fit is 404)."""
        return c.detail(c.visible(fit_id, user))

    @routes.get("/fits/{fit_id}/events")
    def events(fit_id: str, user: User = Depends(c.api_user)) -> StreamingResponse:
        """Server-Sent Events: the fit's state, reason, progress and chi-square whenever they change, then
        event: end. At most 8 streams per user at once (429 past that)."""
        fit = c.visible(fit_id, user)
        streams.room_for(user.name)
        return StreamingResponse(
            streams.stream(fit["id"], user.name),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store"},
        )

    @routes.post("/fits/{fit_id}/cancel", status_code=202)
    def cancel_fit(request: Request, fit_id: str, user: User = Depends(c.api_user)) -> dict[str, Any]:
        """Cancel a fit that is queued or running; a DREAM or DE fit can then resume from its checkpoint."""
        c.changing(request, user, None)
        fit = c.visible(fit_id, user)
        try:
            c.runner.cancel(fit)
        except BumpsMpiError as exc:
            raise HTTPException(409, c.public(str(exc))) from None
        return {"id": fit_id, "cancelled": True}

    @routes.post("/fits/{fit_id}/resume", status_code=202)
    def resume_fit(request: Request, fit_id: str, user: User = Depends(c.api_user)) -> dict[str, Any]:
        """Continue a stopped fit (its time limit, a cancel) from its checkpoint."""
        c.changing(request, user, None)
        fit = c.visible(fit_id, user)
        try:
            c.resume(fit)
        except BumpsMpiError as exc:
            raise HTTPException(409, c.public(str(exc))) from None
        return {"id": fit_id, "resumed": True}

    @routes.delete("/fits/{fit_id}", status_code=204)
    def delete_fit(request: Request, fit_id: str, user: User = Depends(c.api_user)) -> None:
        """Delete an ended fit and its files (a fit still running is refused: cancel it first)."""
        c.changing(request, user, None)
        c.remove(c.visible(fit_id, user))

    @routes.get("/fits/{fit_id}/files/{relative:path}")
    def download(fit_id: str, relative: str, user: User = Depends(c.api_user)) -> StreamingResponse:
        """One file of the fit, by its path in the fit's directory (report.html, export/..., result.json):
        an attachment, except the PNG figures; never through a link."""
        handle, size = c.open_in(c.visible(fit_id, user), relative)
        name = Path(relative).name
        figure = relative.startswith(f"{FIGURES_DIR}/") and name.endswith(".png")
        disposition = "inline" if figure else f"attachment; filename*=UTF-8''{quote(name)}"
        return StreamingResponse(
            files.chunks(handle),
            media_type="image/png" if figure else "application/octet-stream",
            headers={**DOWNLOAD_HEADERS, "Content-Disposition": disposition, "Content-Length": str(size)},
        )

    return routes

"""The job controller's pages, for browsers: log in and out, my fits (live, with filters), one fit (a
summary, live progress and convergence, figures in the report's order, parameters, the first failure,
the log's tail, downloads, cancel, resume, delete after a confirmation), its report, submit (defaults
and help on every field; values kept after an error). Every string from a model is escaped (Jinja2's
autoescape); the report is served under a sandboxing CSP, framed by a page of ours."""

from __future__ import annotations

import datetime
import functools
import re
import secrets
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from ..errors import BumpsMpiError
from ..version import __version__
from . import intake
from .auth import COOKIE, User
from .controller import Controller
from .schemas import LimitReached

REPORT_POLICY = (
    "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"
)
LIST_STATES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


@functools.cache
def fitters() -> list[dict[str, Any]]:
    """Bumps' fitters with their defaults, for the form (read once; Bumps is imported only then)."""
    try:
        from bumps.fitters import FITTERS
    except ImportError:  # the form still works; its placeholders are empty
        return [{"id": i, "name": i, "settings": {}} for i in ("dream", "de", "amoeba", "lm", "newton")]
    found = [{"id": f.id, "name": f.name, "settings": dict(f.settings)} for f in FITTERS]
    return sorted(found, key=lambda f: f["id"] != "dream")  # DREAM, the default, first


def safe_next(target: str | None) -> str:
    """A page of this service to go to after logging in: a local path only, never another site."""
    if not target or not re.fullmatch(r"/(?![/\\])[!-~]*", target) or "\\" in target:
        return "/"  # printable ASCII only: a tab or newline a browser drops could make it //elsewhere
    return target


def pages_router(c: Controller, templates: Jinja2Templates) -> APIRouter:
    routes = APIRouter(include_in_schema=False)
    config, auth = c.config, c.auth

    def page(
        request: Request, name: str, user: User | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        csrf = auth.csrf(user) if user else ""
        return templates.TemplateResponse(
            request, name, {"user": user, "csrf": csrf, "version": __version__, **context}, status_code=status
        )

    _login_routes(routes, c, page)

    @routes.get("/favicon.ico")
    def favicon() -> RedirectResponse:
        return RedirectResponse("/static/favicon.svg", status_code=301)

    @routes.get("/", response_class=HTMLResponse)
    def home(
        request: Request, state: str = "", name: str = "", since: str = "", user: User = Depends(c.page_user)
    ) -> HTMLResponse:
        fits = [c.summary(f) for f in c.store.fits(None if user.admin else user.name, limit=1000)]
        shown = _filtered(fits, state, name, since)
        filters = {"state": state, "name": name, "since": since}
        return page(
            request, "fits.html", user, fits=shown[:200], total=len(fits), filters=filters, states=LIST_STATES
        )

    @routes.get("/fits/{fit_id}", response_class=HTMLResponse)
    def fit_page(request: Request, fit_id: str, user: User = Depends(c.page_user)) -> HTMLResponse:
        fit = c.visible(fit_id, user)
        detail = c.detail(fit)
        return page(
            request, "fit.html", user, fit=detail, terminal=c.over(fit), log=c.log_tail(fit, detail.files),
            running=not c.terminal(detail.state) and not detail.drawing,
        )  # fmt: skip

    @routes.get("/fits/{fit_id}/report", response_class=HTMLResponse)
    def report_page(request: Request, fit_id: str, user: User = Depends(c.page_user)) -> HTMLResponse:
        fit = c.visible(fit_id, user)
        c.open_in(fit, "report.html")[0].close()  # a 404 page of ours when there is none yet
        return page(request, "report.html", user, fit=c.summary(fit))

    @routes.get("/fits/{fit_id}/report.html")
    def report_file(fit_id: str, user: User = Depends(c.page_user)) -> Response:
        body = c.report(c.visible(fit_id, user))
        headers = {"Content-Security-Policy": REPORT_POLICY, "X-Frame-Options": "SAMEORIGIN"}
        return Response(body, media_type="text/html", headers=headers)

    def submit_form_page(request: Request, user: User, status: int = 200, **context: Any) -> HTMLResponse:
        limits, mail = config.limits_for(user.name), bool(config.mail_host)
        idem = secrets.token_hex(8)  # one per form shown: a second click sends the same submission again
        ranks = min(2, limits.max_ranks) if config.backend != "local" else config.local_ranks
        return page(
            request, "submit.html", user, status=status, limits=limits, mail=mail, idem=idem,
            fitters=fitters(), default_ranks=ranks, values=context.pop("values", {}), **context,
        )  # fmt: skip

    @routes.get("/submit", response_class=HTMLResponse)
    def submit_page(request: Request, user: User = Depends(c.page_user)) -> HTMLResponse:
        return submit_form_page(request, user)

    @routes.post("/submit")
    async def submit_form(request: Request, user: User = Depends(c.page_user)) -> Any:
        form, model, data, archive = await intake.parsed(c, request)
        c.changing(request, user, form.get("csrf"))
        try:
            fit, _ = await intake.create(
                c, user, form, model, data, archive, form.get("idempotency_key") or None
            )
        except BumpsMpiError as exc:
            status = 429 if isinstance(exc, LimitReached) else 422
            sent = [f.filename for f in (model, archive, *data) if f is not None and f.filename]
            return submit_form_page(
                request, user, status=status, error=c.public(str(exc)), output=c.public(exc.output),
                values=form, sent=sent,
            )  # fmt: skip
        return RedirectResponse(f"/fits/{fit['id']}", status_code=303)

    _action_routes(routes, c, page)
    return routes


def _filtered(fits: list, state: str, name: str, since: str) -> list:
    """The fits with this state, a name containing *name* (any case), submitted on or after *since*."""
    try:
        after = datetime.date.fromisoformat(since) if since else None
    except ValueError:
        after = None
    start = datetime.datetime.combine(after, datetime.time()).timestamp() if after else None
    return [
        f for f in fits
        if (not state or f.state == state)
        and (not name or name.lower() in f.name.lower() or f.id.startswith(name.lower()))
        and (start is None or f.created >= start)
    ]  # fmt: skip


def _action_routes(routes: APIRouter, c: Controller, page: Any) -> None:
    """Cancel, resume, and delete (after a page that asks)."""

    @routes.post("/fits/{fit_id}/cancel")
    def cancel_form(
        request: Request, fit_id: str, csrf: str = Form(""), user: User = Depends(c.page_user)
    ) -> Any:
        c.changing(request, user, csrf)
        try:
            c.runner.cancel(c.visible(fit_id, user))
        except BumpsMpiError:
            pass  # it has ended meanwhile: the page shows how
        return RedirectResponse(f"/fits/{fit_id}", status_code=303)

    @routes.post("/fits/{fit_id}/resume")
    def resume_form(
        request: Request, fit_id: str, csrf: str = Form(""), user: User = Depends(c.page_user)
    ) -> Any:
        c.changing(request, user, csrf)
        try:
            c.resume(c.visible(fit_id, user))
        except BumpsMpiError as exc:
            raise HTTPException(409, c.public(str(exc))) from None
        return RedirectResponse(f"/fits/{fit_id}", status_code=303)

    @routes.get("/fits/{fit_id}/delete", response_class=HTMLResponse)
    def delete_page(request: Request, fit_id: str, user: User = Depends(c.page_user)) -> HTMLResponse:
        fit = c.visible(fit_id, user)
        return page(request, "delete.html", user, fit=c.summary(fit))

    @routes.post("/fits/{fit_id}/delete")
    def delete_form(
        request: Request, fit_id: str, csrf: str = Form(""), user: User = Depends(c.page_user)
    ) -> Any:
        c.changing(request, user, csrf)
        c.remove(c.visible(fit_id, user))
        return RedirectResponse("/", status_code=303)


def _login_routes(routes: APIRouter, c: Controller, page: Any) -> None:
    """Log in (a token, or the proxy's word) and out; after logging in, the page first asked for."""
    config, auth = c.config, c.auth

    @routes.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:  # noqa: A002 - the usual name
        return page(request, "login.html", None, auth_mode=config.auth, next=safe_next(next))

    @routes.post("/login")
    def login(request: Request, token: str = Form(""), next: str = Form("/")) -> Any:  # noqa: A002
        client = auth.client_address(dict(request.headers), request.client.host if request.client else None)
        target = safe_next(next)
        try:
            found = auth.login(token, client)
        except PermissionError as exc:
            return page(
                request, "login.html", None, status=429, error=str(exc), auth_mode=config.auth, next=target
            )
        if found is None:
            error = "that token is not valid"
            return page(
                request, "login.html", None, status=401, error=error, auth_mode=config.auth, next=target
            )
        session, _ = found
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE, session, httponly=True, samesite="strict", secure=config.secure_cookies, max_age=12 * 3600
        )
        return response

    @routes.post("/logout")
    def logout(request: Request, csrf: str = Form(""), user: User = Depends(c.page_user)) -> Any:
        c.changing(request, user, csrf)
        if user.session:
            c.store.end_session(user.session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

"""The job controller's pages, for browsers: log in and out, my fits (live), one fit (live progress,
figures, parameters, traceback, downloads, cancel, delete), its report, submit. Every string from a
model is escaped (Jinja2's autoescape); the report is served under a sandboxing CSP."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates

from ..errors import BumpsMpiError
from ..jobdir import REPORT_FILE
from ..version import __version__
from . import files, intake
from .auth import COOKIE, User
from .controller import Controller
from .schemas import LimitReached

REPORT_POLICY = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'"


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

    @routes.get("/", response_class=HTMLResponse)
    def home(request: Request, user: User = Depends(c.page_user)) -> HTMLResponse:
        fits = [c.summary(f) for f in c.store.fits(None if user.admin else user.name)]
        return page(request, "fits.html", user, fits=fits)

    @routes.get("/fits/{fit_id}", response_class=HTMLResponse)
    def fit_page(request: Request, fit_id: str, user: User = Depends(c.page_user)) -> HTMLResponse:
        fit = c.visible(fit_id, user)
        return page(request, "fit.html", user, fit=c.detail(fit), terminal=c.over(fit))

    @routes.get("/fits/{fit_id}/report")
    def report_page(fit_id: str, user: User = Depends(c.page_user)) -> StreamingResponse:
        handle, size = c.open_in(c.visible(fit_id, user), REPORT_FILE)
        headers = {"Content-Security-Policy": REPORT_POLICY, "Content-Length": str(size)}
        return StreamingResponse(files.chunks(handle), media_type="text/html", headers=headers)

    def submit_form_page(request: Request, user: User, status: int = 200, **context: Any) -> HTMLResponse:
        limits, mail = config.limits_for(user.name), bool(config.mail_host)
        idem = secrets.token_hex(8)  # one per form shown: a second click sends the same submission again
        return page(
            request, "submit.html", user, status=status, limits=limits, mail=mail, idem=idem, **context
        )

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
            return submit_form_page(
                request, user, status=status, error=c.public(str(exc)), output=c.public(exc.output)
            )
        return RedirectResponse(f"/fits/{fit['id']}", status_code=303)

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

    @routes.post("/fits/{fit_id}/delete")
    def delete_form(
        request: Request, fit_id: str, csrf: str = Form(""), user: User = Depends(c.page_user)
    ) -> Any:
        c.changing(request, user, csrf)
        c.remove(c.visible(fit_id, user))
        return RedirectResponse("/", status_code=303)

    return routes


def _login_routes(routes: APIRouter, c: Controller, page: Any) -> None:
    """Log in (a token, or the proxy's word) and out."""
    config, auth = c.config, c.auth

    @routes.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> HTMLResponse:
        return page(request, "login.html", None, auth_mode=config.auth)

    @routes.post("/login")
    def login(request: Request, token: str = Form("")) -> Any:
        client = auth.client_address(dict(request.headers), request.client.host if request.client else None)
        try:
            found = auth.login(token, client)
        except PermissionError as exc:
            return page(request, "login.html", None, status=429, error=str(exc), auth_mode=config.auth)
        if found is None:
            error = "that token is not valid"
            return page(request, "login.html", None, status=401, error=error, auth_mode=config.auth)
        session, _ = found
        response = RedirectResponse("/", status_code=303)
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

"""The dispatcher's HTTP side (/api/v1/workers, /api/v1/dispatch): what workers call, with their credential.

Every call about a fit carries the lease; one that is not the fit's current lease
is answered 409 (the worker lets the fit go). Time is the controller's: a claim
and a heartbeat answer with `expires_in` seconds, never a timestamp.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from .caches import cache_key
from .dispatch import Fenced, Queue
from .uploads import Refused

FILE_LIMIT = 4 << 30  # one result file or checkpoint: exports of long DREAM chains are large


class Registration(BaseModel):
    token: str
    name: str
    labels: dict[str, str] = {}
    capacity: int = 1


class ClaimRequest(BaseModel):
    labels: dict[str, str] = {}
    capacity: int = 1


class Heartbeat(BaseModel):
    lease: str
    worker: str | None = None
    state: str | None = None
    reason: str | None = None
    progress: dict[str, Any] | None = None
    job_id: str | None = None


class Completion(BaseModel):
    lease: str
    state: str
    message: str | None = None


def router(queue: Queue, admin_user: Any, on_end: Any) -> APIRouter:
    """The routes; *admin_user* is the dependency for an administrator, *on_end(fit_id)* runs after an end."""
    routes = APIRouter()

    def worker(request: Request) -> dict:
        bearer = request.headers.get("authorization", "")
        found = queue.worker_for(bearer[7:].strip()) if bearer.lower().startswith("bearer ") else None
        if found is None:
            raise HTTPException(
                401, "a worker's credential is needed", headers={"WWW-Authenticate": "Bearer"}
            )
        return found

    def fenced(fit_id: str, lease: str, who: dict) -> dict:
        try:
            return queue.fenced(fit_id, lease, who)
        except Fenced as exc:
            raise HTTPException(409, str(exc)) from None

    @routes.post("/api/v1/workers/register", status_code=201)
    def register(body: Registration) -> dict[str, str]:
        """A worker registers once with a one-time registration token: its labels and capacity are fixed
        here, and its credential is returned once."""
        if not 1 <= body.capacity <= 1000 or not body.name or len(body.name) > 100:
            raise HTTPException(422, "capacity 1-1000 and a name of at most 100 characters, please")
        try:
            worker_id, credential = queue.register(body.token, body.name, body.labels, body.capacity)
        except PermissionError as exc:
            raise HTTPException(403, str(exc)) from None
        return {"worker_id": worker_id, "credential": credential}

    @routes.get("/api/v1/workers")
    def workers(_admin: Any = Depends(admin_user)) -> list[dict[str, Any]]:
        """Administrators: every worker's labels, capacity, last heartbeat and fits in flight."""
        return queue.workers()

    @routes.post("/api/v1/dispatch/claim")
    def claim(body: ClaimRequest, who: dict = Depends(worker)) -> Any:
        """The oldest queued fit this worker's labels and ranks can take, under a new lease (204: none)."""
        fit = queue.claim(who, body.labels, max(1, body.capacity), queue.config.claim_wait_s)
        if fit is None:
            return Response(status_code=204)
        request = json.loads(fit["request"])
        has_checkpoint = queue.checkpoint_of(fit) is not None
        return {
            "fit": fit["id"], "lease": fit["lease"], "attempt": fit["attempt"],
            "expires_in": queue.config.lease_s, "request": request, "has_checkpoint": has_checkpoint,
            "cache_key": cache_key(fit["owner"]),  # the owner's library cache on the worker, not their name
        }  # fmt: skip

    _fit_routes(routes, queue, worker, fenced, on_end)
    _upload_routes(routes, queue, worker, fenced)
    return routes


def _fit_routes(routes: APIRouter, queue: Queue, worker: Any, fenced: Any, on_end: Any) -> None:
    """A claimed fit's own: its bundle, its last checkpoint, heartbeats, its end."""

    @routes.get("/api/v1/dispatch/fits/{fit_id}/bundle")
    def bundle(fit_id: str, lease: str, who: dict = Depends(worker)) -> Response:
        """The claimed fit's upload (its model and data files) as a zip, for the lease's holder only."""
        fenced(fit_id, lease, who)
        model = queue.fit_dir(fit_id) / "model"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(model.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    zf.write(path, path.relative_to(model).as_posix())
        return Response(buffer.getvalue(), media_type="application/zip")

    @routes.get("/api/v1/dispatch/fits/{fit_id}/checkpoint")
    def get_checkpoint(fit_id: str, lease: str, who: dict = Depends(worker)) -> FileResponse:
        """The fit's newest checkpoint from an earlier attempt, to continue from (404: start afresh)."""
        path = queue.checkpoint_of(fenced(fit_id, lease, who))
        if path is None:
            raise HTTPException(404, "no checkpoint for this fit")
        return FileResponse(path, media_type="application/x-hdf5")

    @routes.post("/api/v1/dispatch/fits/{fit_id}/heartbeat")
    def heartbeat(fit_id: str, body: Heartbeat, who: dict = Depends(worker)) -> dict[str, Any]:
        """Renew the lease with the fit's state and progress; 409 when the lease is no longer the fit's
        (the worker then cancels its job)."""
        report = body.model_dump(exclude={"lease"})
        try:
            return queue.heartbeat(fit_id, body.lease, who, report)
        except Fenced as exc:
            raise HTTPException(409, str(exc)) from None

    @routes.post("/api/v1/dispatch/fits/{fit_id}/complete")
    def complete(fit_id: str, body: Completion, who: dict = Depends(worker)) -> dict[str, Any]:
        """The attempt's end, once its files are uploaded: they become the fit's job directory, once."""
        try:
            accepted = queue.complete(fit_id, body.lease, who, body.state, body.message)
        except Fenced as exc:
            raise HTTPException(409, str(exc)) from None
        except (Refused, ValueError) as exc:
            raise HTTPException(422, str(exc)) from None
        if accepted:
            on_end(fit_id)
        return {"fit": fit_id, "accepted": accepted}


def _upload_routes(routes: APIRouter, queue: Queue, worker: Any, fenced: Any) -> None:
    """A claimed fit's files and checkpoints, streamed up with their SHA-256, each whole or not at all."""

    async def _body(request: Request) -> Any:
        """The request's body in a temporary file (in memory while small), up to FILE_LIMIT."""
        spool = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115 - handed on, closed there
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > FILE_LIMIT:
                spool.close()
                raise HTTPException(413, f"a file larger than {FILE_LIMIT >> 20} MB")
            spool.write(chunk)
        spool.seek(0)
        return spool

    def _sha(request: Request) -> str:
        digest = request.headers.get("x-content-sha256", "")
        if len(digest) != 64:
            raise HTTPException(422, "send the file's SHA-256 in X-Content-SHA256")
        return digest.lower()

    @routes.put("/api/v1/dispatch/fits/{fit_id}/files/{relative:path}")
    async def put_file(
        request: Request, fit_id: str, relative: str, lease: str, who: dict = Depends(worker)
    ) -> Any:
        """One file of the attempt, with its SHA-256 (X-Content-SHA256); stored whole or not at all."""
        fit = await run_in_threadpool(fenced, fit_id, lease, who)
        body, digest = await _body(request), _sha(request)
        try:
            with body:
                _, new = await run_in_threadpool(queue.put_file, fit, relative, digest, body, FILE_LIMIT)
        except Refused as exc:
            raise HTTPException(422, str(exc)) from None
        return JSONResponse({"stored": relative, "new": new}, status_code=201 if new else 200)

    @routes.put("/api/v1/dispatch/fits/{fit_id}/checkpoint")
    async def put_checkpoint(request: Request, fit_id: str, lease: str, who: dict = Depends(worker)) -> Any:
        """The attempt's newest checkpoint, with its SHA-256; the controller keeps only the newest."""
        fit = await run_in_threadpool(fenced, fit_id, lease, who)
        body, digest = await _body(request), _sha(request)
        try:
            with body:
                new = await run_in_threadpool(queue.put_checkpoint, fit, digest, body, FILE_LIMIT)
        except Refused as exc:
            raise HTTPException(422, str(exc)) from None
        except Fenced as exc:
            raise HTTPException(409, str(exc)) from None
        return JSONResponse({"stored": "checkpoint.h5", "new": new}, status_code=201 if new else 200)

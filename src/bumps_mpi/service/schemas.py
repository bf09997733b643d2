"""The job controller's wire format: what the JSON API answers (FitOut, FitDetail), the submit form as
OpenAPI describes it, and the refusal that means "later" (429). Shared by the API and the pages."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from ..errors import UsageError

_FILE = {"type": "string", "format": "binary"}
# the header of a busy answer (429): send the same request again after this many seconds
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
# the form the submit endpoint reads itself (after authentication), for OpenAPI
SUBMIT_SCHEMA: dict[str, Any] = {
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
                        "label": {"type": "string", "description": "a name for the fit (else the model's)"},
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
            "headers": RETRY_AFTER,
        },
    },
}

ESTIMATE_SCHEMA = {  # the same form; nothing is submitted, so no fit made earlier and no limit of fits
    "requestBody": SUBMIT_SCHEMA["requestBody"],
    "responses": {
        "200": {"description": "the estimate, and why a submission would be refused (or null)"},
        "422": SUBMIT_SCHEMA["responses"]["422"],
        "429": {
            "description": "the service is busy checking other models: send it again later",
            "headers": RETRY_AFTER,
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
    fitter: str = "dream"


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
    first_failure: str | None = None  # the traceback of the first failed evaluation
    settings: dict[str, str] = {}  # the fitter's options as asked, and the seed
    ranks: int | None = None
    time_limit: str | None = None
    started: float | None = None
    finished: float | None = None
    elapsed_s: float | None = None
    convergence: list[list[float]] = []  # [step, best chi-square] as the service saw them, while it ran
    captions: list[str] = []  # each figure's caption, in the order of figures (the report's)
    drawing: bool = False  # completed; its figures and report are being drawn


class LimitReached(UsageError):
    """A user's limit (fits running at once) refuses a request that is fine in itself: 429, try later."""

    retry_after_s = 30


def finite(value: Any) -> Any:
    """*value* with every NaN or infinity as None: JSON has no such numbers (browsers refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value

"""The worker's side of the dispatcher's wire: JSON over HTTP(S) to the job controller, with the
worker's credential; what an answer means for the worker (unreachable, lease gone, revoked)."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ..errors import BumpsMpiError

BACKOFF_MAX_S = 30.0  # the longest wait between tries when the controller does not answer


class Unreachable(Exception):
    """The controller did not answer (down, restarting, or the network): try again later."""


class Gone(Exception):
    """The controller refused the lease (409): another attempt owns the fit."""


class Revoked(BumpsMpiError):
    """The controller refused this worker's credential (401): revoked, or registered elsewhere."""


class ControllerClient:
    """The controller's dispatch API, with this worker's credential."""

    def __init__(self, url: str, credential: str | None = None):
        self.url, self.credential = url.rstrip("/"), credential

    def call(
        self, method: str, path: str, payload: Any = None, raw: Any = None, timeout: float = 60,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:  # fmt: skip
        """*raw*: bytes, or an open file sent in blocks from where it stands (give its Content-Length)."""
        data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else None)
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        request.add_header(
            "Content-Type", "application/octet-stream" if raw is not None else "application/json"
        )
        if self.credential:
            request.add_header("Authorization", f"Bearer {self.credential}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - the site's URL
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if exc.code == 409:
                raise Gone(detail_of(body)) from None
            if exc.code == 401 and self.credential:
                raise Revoked(
                    "the controller refused this worker's credential (revoked?): register it again with "
                    "a new --registration-token, after removing its worker.json"
                ) from None
            if exc.code >= 500 or exc.code == 429:
                raise Unreachable(f"{exc.code} {detail_of(body)}") from None
            raise BumpsMpiError(
                f"the controller refused {method} {path}: {exc.code} {detail_of(body)}"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # cut off mid-answer too
            raise Unreachable(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None

    def json(self, method: str, path: str, payload: Any = None, timeout: float = 60) -> Any:
        status, body = self.call(method, path, payload, timeout=timeout)
        return json.loads(body) if status != 204 and body else None


def detail_of(body: bytes) -> str:
    try:
        return str(json.loads(body).get("detail"))
    except (ValueError, AttributeError):
        return body[:200].decode("utf-8", "replace")

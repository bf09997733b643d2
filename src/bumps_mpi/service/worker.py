"""`bumps-submit worker`: pull fits from a job controller in dispatch mode and run them here.

Outbound HTTP(S) only. The worker registers once with a one-time token and keeps
its credential in its state directory (0600). It claims fits (long polling) while
it has fewer than `capacity` in flight, downloads each fit's model (and the
checkpoint of an earlier attempt), submits it through the same submission layer
as the command line (to Slurm with a site profile, or locally), then every third
of the lease: sends a heartbeat with the fit's state and progress, uploads a new
checkpoint when there is one; at the end uploads the result files and reports the
final state. Every call carries the lease. A refused lease (another attempt owns
the fit), or no accepted heartbeat for a whole lease (cut off from the
controller), makes the worker cancel its job and let the fit go: nothing of it is
sent afterwards.

A restarted worker finds its fits in `inflight/` and renews their leases (or, if
they are gone, cancels their jobs) instead of abandoning them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .attempt import Attempt
from .wire import BACKOFF_MAX_S, ControllerClient, Revoked, Unreachable


class Worker:
    def __init__(
        self, url: str, state_dir: Path, capacity: int, labels: dict[str, str], profile: str | None,
        local: bool, name: str | None = None, registration_token: str | None = None,
        say: Any = print,
    ):  # fmt: skip
        self.state_dir, self.capacity, self.labels = state_dir, capacity, labels
        self.profile, self.local, self.say = profile, local, say
        self.name = name or socket.gethostname()
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.state_dir / "inflight").mkdir(exist_ok=True)
        self.attempts: dict[str, Attempt] = {}
        self.stop = threading.Event()
        self.controller = ControllerClient(url, self._registered(url, registration_token))

    def _registered(self, url: str, token: str | None) -> str:
        """The credential: saved, or from registering now (again after a pause while nobody answers)."""
        backoff = 1.0
        while True:
            try:
                return self._credential(url, token)
            except Unreachable as exc:
                self.say(f"the controller did not answer ({exc}); registering again in {backoff:.0f} s")
                time.sleep(backoff)
                backoff = min(2 * backoff, BACKOFF_MAX_S)

    def _credential(self, url: str, token: str | None) -> str:
        saved = self.state_dir / "worker.json"
        if saved.exists():
            return json.loads(saved.read_text())["credential"]
        if not token:
            raise UsageError(
                f"this worker is not registered ({saved} is missing): give --registration-token "
                "(an administrator makes one with 'bumps-submit serve worker-token')"
            )
        answer = ControllerClient(url).json(
            "POST",
            "/api/v1/workers/register",
            {"token": token, "name": self.name, "labels": self.labels, "capacity": self.capacity},
        )
        fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "w") as fh:
            json.dump({"worker": answer["worker_id"], "credential": answer["credential"], "url": url}, fh)
        self.say(f"registered as worker {answer['worker_id']} ({self.name})")
        return answer["credential"]

    def run(self) -> None:
        for saved in sorted((self.state_dir / "inflight").glob("*.json")):
            attempt = Attempt(self, json.loads(saved.read_text()))
            self.say(f"fit {attempt.fit_id}: attempt {attempt.number} found again, renewing its lease")
            self._start(attempt)
        backoff = 1.0
        while not self.stop.is_set():
            self.attempts = {k: a for k, a in self.attempts.items() if a.is_alive()}
            if len(self.attempts) >= self.capacity:
                self.stop.wait(1.0)
                continue
            try:
                claim = self.controller.json(
                    "POST",
                    "/api/v1/dispatch/claim",
                    {"labels": self.labels, "capacity": self.capacity},
                    timeout=90,
                )
                backoff = 1.0
            except Revoked:
                self.stop.set()
                for attempt in list(self.attempts.values()):
                    attempt.join(timeout=120)  # each cancels its job on its next call, and lets go
                raise
            except Exception as exc:  # never die of an answer: back off and ask again
                self.say(f"the controller did not answer ({exc}); again in {backoff:.0f} s")
                self.stop.wait(backoff)
                backoff = min(2 * backoff, BACKOFF_MAX_S)
                continue
            if claim:
                record = {
                    "fit": claim["fit"], "lease": claim["lease"], "attempt": claim["attempt"],
                    "expires_in": claim["expires_in"], "request": claim["request"],
                    "has_checkpoint": claim["has_checkpoint"], "job_dir": None,
                    "cache_key": claim.get("cache_key"),
                }  # fmt: skip
                self._start(Attempt(self, record))

    def _start(self, attempt: Attempt) -> None:
        """Run a claimed attempt. An older attempt of the same fit still here (its lease expired while it
        ran, and the fit came back) is superseded: it stops its job and lets go. Attempts are counted by
        (fit, attempt), alive ones against --capacity, so the fit's return never runs two at once."""
        for older in self.attempts.values():
            if older.fit_id == attempt.fit_id and older.number < attempt.number:
                older.superseded.set()
        running = {a.base for a in self.attempts.values() if a.is_alive()}
        for stale in (self.state_dir / "fits").glob(f"{attempt.fit_id}-*"):  # earlier attempts' copies
            if stale != attempt.base and stale not in running:
                shutil.rmtree(stale, ignore_errors=True)
        attempt.save()
        self.attempts[f"{attempt.fit_id}-{attempt.number}"] = attempt
        attempt.start()

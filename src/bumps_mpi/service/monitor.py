"""Following every running fit with one status query per round, for all pages, streams and clients.

Every `poll_s` seconds the monitor asks the job-state layer about the fits still
running (one batched sacct and squeue for Slurm, the recorded processes for local
runs), keeps the newest record of each in memory for pages, the API and the
event streams (so fifty clients polling cost no query of their own), stores the
state and chi-square in the records, and when a fit ends, marks it ended and
sends its notifications, once.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from ..cluster import jobstate
from ..cluster.states import JobState
from . import notify
from .runner import job_of
from .settings import ServiceConfig
from .store import Store


class Monitor:
    def __init__(self, config: ServiceConfig, store: Store):
        self.config, self.store = config, store
        self.records: dict[str, dict[str, Any]] = {}  # fit id -> its newest status record
        self.ending: dict[str, float] = {}  # fit id -> when its directory first showed it had ended
        self.round = 0  # increases after every poll: event streams wait on it
        self.changed = threading.Condition()
        self.problems: list[str] = []  # notifications that could not be sent, for the log
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bumps-mpi-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # a round that failed (Slurm down): the next one tries again
                self.problems.append(f"monitor: {type(exc).__name__}: {exc}")
            self._stop.wait(self.config.poll_s)

    def poll(self) -> None:
        fits = [f for f in self.store.active() if f["phase"] == "submitted"]
        jobs = [(fit, job) for fit in fits if (job := job_of(self.config, fit)) is not None]
        records = jobstate.status([job for _, job in jobs]) if jobs else []
        for (fit, job), record in zip(jobs, records, strict=True):
            state = record["state"]
            changes: dict[str, Any] = {}
            if state != fit.get("state"):
                changes["state"] = state
            if record.get("chisq") is not None and record["chisq"] != fit.get("chisq"):
                changes["chisq"] = record["chisq"]
            if self._over(fit["id"], record):
                changes["ended"] = time.time()
                self._report(job, record)
                told = threading.Thread(target=self._tell, args=(fit, record), daemon=True)
                told.start()  # a slow mail server must not hold up the others' states
            if changes:
                self.store.update_fit(fit["id"], **changes)
            self.records[fit["id"]] = record  # shown once its report is written and its end recorded
        with self.changed:
            self.round += 1
            self.changed.notify_all()

    def _over(self, fit_id: str, record: dict[str, Any]) -> bool:
        """Has the fit ended for good? Final state, and for Slurm its exit known: the directory shows the
        end while rank 0 still draws the figures; accounting that never says is waited for a minute."""
        state = record["state"]
        if not JobState(state).terminal or state in (JobState.PREEMPTED.value, JobState.NODE_FAIL.value):
            return False
        if not record.get("job_id") or record.get("exit") is not None:
            return True
        first = self.ending.setdefault(fit_id, time.monotonic())
        return time.monotonic() - first > 60

    def _tell(self, fit: dict, record: dict[str, Any]) -> None:
        self.problems.extend(notify.send(self.config, fit, record))

    def _report(self, job: Any, record: dict[str, Any]) -> None:
        """The fit's report.html, from its figures as the job drew them (HTML only: no model code runs)."""
        from ..results import report

        try:
            report.write(job, record)
        except Exception as exc:  # a report is a convenience: the fit's result stands without it
            self.problems.append(f"report of {job.path}: {type(exc).__name__}: {exc}")

    def record(self, fit: dict) -> dict[str, Any] | None:
        """The newest status of a fit: the monitor's while it runs (None before its first round), else
        read now (an ended fit's state is final and cached by the job-state layer)."""
        if not fit.get("ended"):
            return self.records.get(fit["id"])
        self.records.pop(fit["id"], None)
        job = job_of(self.config, fit)
        return None if job is None else jobstate.status([job])[0]

    def wait(self, after: int, timeout: float) -> int:
        """Block until a round newer than *after* (or *timeout*); the round now."""
        with self.changed:
            self.changed.wait_for(lambda: self.round > after, timeout=timeout)
            return self.round

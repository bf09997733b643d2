"""Following every running fit with one status query per round, for all pages, streams and clients.

Every `poll_s` seconds the monitor asks the job-state layer about the fits still
running (one batched sacct and squeue for Slurm, the recorded processes for local
runs), keeps the newest record of each in memory for pages, the API and the
event streams (so fifty clients polling cost no query of their own), stores the
state and chi-square in the records, and when a fit ends, marks it ended and
sends its notifications, once. A fit whose files say it ended while the service knows its processes
or its Slurm job to be alive has not ended (the files are the model's to write).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import Any, cast

from ..cluster import jobstate
from ..cluster.states import JobState
from ..records import ErrorView, Status
from . import notify
from .dispatch import Queue
from .runner import job_of
from .settings import ServiceConfig
from .store import Store
from .supervise import alive_ids

FINISHING = "finishing: writing its results, figures and report"
HISTORY_POINTS = 400  # of a fit's convergence kept
HISTORY_FITS = 1000  # fits whose convergence is kept, the newest


class Monitor:
    def __init__(self, config: ServiceConfig, store: Store, queue: Queue):
        self.config, self.store, self.queue = config, store, queue
        self.records: dict[str, Status] = {}  # fit id -> its newest status record
        self.history: dict[str, list[list[float]]] = {}  # fit id -> [step, best chi-square] seen running
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
                self.problem(f"monitor: {type(exc).__name__}: {exc}")
            self._stop.wait(self.config.poll_s)

    def problem(self, text: str) -> None:
        """Say it in the service's log; keep the last few for whoever asks."""
        print(f"bumps-mpi service: {text}", file=sys.stderr, flush=True)
        self.problems = [*self.problems[-99:], text]

    def poll(self) -> None:
        if self.config.backend == "dispatch":
            for fit_id in self.queue.expire():  # leases past their expiry: queued again, or ended
                fit = self.store.fit(fit_id)
                if fit and fit.get("ended"):
                    self.ended_elsewhere(fit_id)
        fits = [f for f in self.store.active() if f["phase"] == "submitted"]
        jobs = [(fit, job) for fit in fits if (job := job_of(self.config, fit)) is not None]
        records = self._status([job for _, job in jobs])
        running = alive_ids([fit for fit, _ in jobs]) if jobs else set()
        for (fit, _), record in zip(jobs, records, strict=True):
            if fit["id"] in running and jobstate.ended_for_good(record):
                # its records say it ended; its processes still run: it has not, yet
                record = {**record, "state": "RUNNING", "finishing": True, "reason": FINISHING}
            elif fit["id"] in running and record["state"] == "UNKNOWN" and not fit.get("job_id"):
                record = {**record, "state": "PENDING", "reason": "starting"}  # its ranks are on their way
            self._remember(fit["id"], record)
            changes: dict[str, Any] = {}
            if record["state"] != fit.get("state"):
                changes["state"] = record["state"]
            if isinstance(record.get("chisq"), float) and record["chisq"] != fit.get("chisq"):
                changes["chisq"] = record["chisq"]
            over = self._over(fit["id"], record)
            if over:
                changes["ended"] = time.time()
            if changes:
                self.store.update_fit(fit["id"], **changes)
            self.records[fit["id"]] = record  # shown once its end is recorded
            if over:  # told once its end is recorded: a failed update never tells twice
                threading.Thread(target=self._tell, args=(fit, record), daemon=True).start()
        with self.changed:
            self.round += 1
            self.changed.notify_all()

    def _remember(self, fit_id: str, record: Status) -> None:
        """Keep the best chi-square at each new step seen, for the fit page's convergence plot."""
        progress: dict[str, Any] = dict(record.get("progress") or {})
        step, chisq = progress.get("step"), progress.get("chisq")
        if not isinstance(step, int) or not isinstance(chisq, float) or not math.isfinite(chisq):
            return
        seen = self.history.setdefault(fit_id, [])
        if seen and seen[-1][0] >= step:
            return
        seen.append([float(step), chisq])
        if len(seen) > HISTORY_POINTS:  # a long fit: every other point of the older half goes
            half = len(seen) // 2
            seen[:half] = seen[:half:2]
        while len(self.history) > HISTORY_FITS:
            self.history.pop(next(iter(self.history)))

    def convergence(self, fit_id: str) -> list[list[float]]:
        return list(self.history.get(fit_id, []))

    def _status(self, jobs: list) -> list[Status]:
        """One batched status query; if one job's files break it, each job on its own (UNKNOWN if broken)."""
        try:
            return jobstate.status(jobs) if jobs else []
        except Exception as exc:
            self.problem(f"status of {len(jobs)} fits: {type(exc).__name__}: {exc}; asking one by one")
        records: list[Status] = []
        for job in jobs:
            try:
                records.append(jobstate.status([job])[0])
            except Exception as exc:
                records.append(
                    {"state": "UNKNOWN", "reason": f"its files cannot be read ({type(exc).__name__})"}
                )
        return records

    def _over(self, fit_id: str, record: Status) -> bool:
        """Has the fit ended for good? (accounting that never tells the exit is waited for a minute)"""
        if jobstate.ended_for_good(record):
            return True
        if not JobState(record["state"]).terminal or record["state"] in ("PREEMPTED", "NODE_FAIL"):
            return False
        first = self.ending.setdefault(fit_id, time.monotonic())
        return time.monotonic() - first > 60

    def ended_elsewhere(self, fit_id: str) -> None:
        """A dispatched fit has ended (its worker completed it, or it ran out of attempts): tell its user."""
        fit = self.store.fit(fit_id)
        if fit is not None:
            record = Status(state=fit["state"], chisq=fit.get("chisq"))
            threading.Thread(target=self._tell, args=(fit, record), daemon=True).start()

    def _tell(self, fit: dict, record: Status) -> None:
        for problem in notify.send(self.config, fit, record):
            self.problem(problem)

    def record(self, fit: dict) -> Status | None:
        """The newest status of a fit: the monitor's while it runs (None before its first round), a
        dispatched fit's from its worker's heartbeats, else read now (an ended fit's state is final)."""
        if fit["phase"] in ("queued", "leased", "done"):
            return dispatched(self.config, fit)
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


def dispatched(config: ServiceConfig, fit: dict) -> Status:
    """A dispatched fit's status: waiting, its worker's last heartbeat, or how it ended."""
    remote = json.loads(fit.get("remote") or "{}")
    if fit["phase"] == "queued":
        again = f" (attempt {fit['attempt'] + 1})" if fit.get("attempt") else ""
        return {"state": "PENDING", "reason": fit.get("message") or f"waiting for a worker{again}"}
    if fit["phase"] == "leased":
        state = remote.get("state") or "PENDING"
        return {"state": state, "reason": remote.get("reason"), "progress": remote.get("progress")}
    job = job_of(config, fit)
    return {
        "state": fit.get("state") or "UNKNOWN",
        "reason": fit.get("message"),
        "progress": remote.get("progress"),
        "error": cast("ErrorView | None", job.error if job is not None else None),
    }

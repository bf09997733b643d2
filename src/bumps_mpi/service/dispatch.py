"""The central dispatcher's rules: workers on remote clusters pull fits under leases, and none is lost.

A fit in dispatch mode is `queued` until a worker claims it; the claim gives a lease
(a random id), the next attempt number and an expiry by the controller's clock. The
worker renews the lease with heartbeats (with the fit's state and progress) and sends
every call with the lease id: a call with a lease that is not the fit's current one,
or whose expiry has passed, is refused (fencing), so a worker that lost its lease
can never overwrite a newer attempt's files. A lease that expires returns the fit
to the queue; the next attempt continues from the last checkpoint a worker uploaded.
After `max_attempts` the fit ends FAILED with the reason.

Files come up per attempt into `fits/<id>/attempts/<n>/` (each written to a temporary
name, checked against its SHA-256, renamed: a partial upload is never visible, and a
repeated one is harmless); the accepted "complete" renames that directory to the
fit's `job/` once: exactly one result per fit. Checkpoints go to
`fits/<id>/checkpoints/<n>.h5` the same way, and count only if the lease was still
current when the upload ended.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

from ..cluster.states import JobState
from ..jobdir import read_regular
from .files import RESULTS_LIMIT
from .settings import ServiceConfig
from .store import Store, digest
from .uploads import Refused, safe_name

CHUNK = 1 << 16
ATTEMPT_MARK = ".attempt"  # in an attempt's directory: which attempt it holds


class Fenced(Exception):
    """A call under a lease that is not (or no longer) the fit's: refused, and the worker must let go."""


class Queue:
    def __init__(self, config: ServiceConfig, store: Store):
        self.config, self.store = config, store
        self.arrived = threading.Condition()  # claims wait on it (long polling)
        self.generation = 0

    # --- workers ------------------------------------------------------------------------------------------

    def registration_token(self) -> str:
        """A one-time token with which one worker registers (made by an administrator)."""
        token = "reg-" + secrets.token_urlsafe(24)
        with self.store.write() as db:
            db.execute("INSERT INTO registrations(hash, created) VALUES (?, ?)", (digest(token), time.time()))
        return token

    def register(self, token: str, name: str, labels: dict[str, str], capacity: int) -> tuple[str, str]:
        """Trade a registration token (once) for (worker id, credential)."""
        worker_id, credential = "w-" + secrets.token_hex(4), "wkr-" + secrets.token_urlsafe(32)
        with self.store.write() as db:
            taken = db.execute(  # once: a second use, even at the same moment, finds it used
                "UPDATE registrations SET used = ? WHERE hash = ? AND used IS NULL RETURNING hash",
                (time.time(), digest(token)),
            ).fetchone()
            if taken is None:
                raise PermissionError("that registration token is not valid (or was used already)")
            db.execute(
                "INSERT INTO workers(id, name, credential, labels, capacity, registered) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (worker_id, name, digest(credential), json.dumps(labels), capacity, time.time()),
            )
        return worker_id, credential

    def revoke_worker(self, ref: str) -> int:
        """Remove a worker (by id or name): its credential stops working at once, and its fits' leases
        end now, so they go back to the queue at the next round; how many workers."""
        with self.store.write() as db:
            ids = [r["id"] for r in db.execute("SELECT id FROM workers WHERE id = ? OR name = ?", (ref, ref))]
            for worker_id in ids:
                db.execute(
                    "UPDATE fits SET lease_expires = 0 WHERE worker = ? AND phase = 'leased'", (worker_id,)
                )
                db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))
        return len(ids)

    def worker_for(self, credential: str) -> dict | None:
        rows = self.store.read("SELECT * FROM workers WHERE credential = ?", (digest(credential),))
        return dict(rows[0]) if rows else None

    def workers(self) -> list[dict[str, Any]]:
        """Every worker's health: last heartbeat, fits in flight, labels and capacity."""
        rows = self.store.read(
            "SELECT w.id, w.name, w.labels, w.capacity, w.registered, w.last_seen, "
            "(SELECT COUNT(*) FROM fits f WHERE f.worker = w.id AND f.phase = 'leased') AS in_flight "
            "FROM workers w ORDER BY w.name"
        )
        return [{**dict(r), "labels": json.loads(r["labels"])} for r in rows]

    # --- the queue ---------------------------------------------------------------------------------------

    def enqueue(self, fit_id: str, wants: dict[str, str]) -> None:
        self.store.update_fit(fit_id, phase="queued", wants=json.dumps(wants), state="PENDING")
        self.wake()

    def wake(self) -> None:
        with self.arrived:
            self.generation += 1
            self.arrived.notify_all()

    def claim(self, worker: dict, labels: dict[str, str], capacity: int, wait_s: float) -> dict | None:
        """The oldest queued fit this worker may take, leased to it; None after *wait_s* with none."""
        deadline = time.monotonic() + wait_s
        while True:
            with self.arrived:
                seen = self.generation
            found = self._claim_now(worker, labels, capacity)
            if found is not None or time.monotonic() >= deadline:
                return found
            with self.arrived:
                if self.generation == seen:  # nothing new since the look: wait for a fit or the deadline
                    self.arrived.wait(timeout=deadline - time.monotonic())

    def _claim_now(self, worker: dict, labels: dict[str, str], capacity: int) -> dict | None:
        """Claim for *worker* within what it registered with: a claim may ask for less, never more."""
        now = time.time()
        capacity = min(capacity, int(worker["capacity"]))
        labels = json.loads(worker["labels"])  # the labels it registered with, not what a claim says
        with self.store.write() as db:
            db.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (now, worker["id"]))
            held = db.execute(
                "SELECT COUNT(*) AS n FROM fits WHERE worker = ? AND phase = 'leased'", (worker["id"],)
            ).fetchone()["n"]
            if held >= capacity:
                return None
            offset = 0
            while True:  # the oldest queued fit this worker suits, a page at a time
                page = db.execute(  # PostgreSQL: rows another controller is claiming are skipped
                    "SELECT * FROM fits WHERE phase = 'queued' ORDER BY created LIMIT 200 OFFSET ?"
                    + self.store.skip_locked,
                    (offset,),
                ).fetchall()
                if not page:
                    return None
                offset += len(page)
                for row in page:
                    if _suits(dict(row), labels):
                        return self._lease(db, dict(row), worker, now)

    def _lease(self, db: Any, row: dict, worker: dict, now: float) -> dict | None:
        lease = "lease-" + secrets.token_hex(12)
        claimed = db.execute(
            "UPDATE fits SET phase = 'leased', lease = ?, lease_expires = ?, attempt = attempt + 1, "
            "worker = ?, remote = NULL WHERE id = ? AND phase = 'queued' RETURNING *",
            (lease, now + self.config.lease_s, worker["id"], row["id"]),
        ).fetchone()
        if claimed is not None:
            db.execute(
                "INSERT INTO attempts(fit, attempt, worker, claimed) VALUES (?, ?, ?, ?)",
                (row["id"], claimed["attempt"], worker["id"], now),
            )
        return None if claimed is None else dict(claimed)

    def fenced(self, fit_id: str, lease: str, worker: dict) -> dict:
        """The fit, if *lease* is its current, unexpired lease held by *worker*; else Fenced."""
        rows = self.store.read("SELECT * FROM fits WHERE id = ?", (fit_id,))
        fit = dict(rows[0]) if rows else None
        if fit is None or fit["phase"] != "leased" or fit["lease"] != lease or fit["worker"] != worker["id"]:
            raise Fenced(f"lease {lease!r} is not the lease of fit {fit_id!r}: let the fit go")
        if fit["lease_expires"] < time.time():
            self.expire()
            raise Fenced(f"lease {lease!r} of fit {fit_id!r} has expired: let the fit go")
        return fit

    def heartbeat(self, fit_id: str, lease: str, worker: dict, report: dict[str, Any]) -> dict[str, Any]:
        """Renew the lease and record the fit's state; whether the user asked to cancel it."""
        now = time.time()
        with self.store.write() as db:
            renewed = db.execute(
                "UPDATE fits SET lease_expires = ?, remote = ?, state = ? WHERE id = ? AND lease = ? "
                "AND worker = ? AND phase = 'leased' AND lease_expires >= ? RETURNING cancel",
                (now + self.config.lease_s, json.dumps(report), report.get("state") or "PENDING",
                 fit_id, lease, worker["id"], now),
            ).fetchone()  # fmt: skip
            db.execute("UPDATE workers SET last_seen = ? WHERE id = ?", (now, worker["id"]))
        if renewed is None:
            self.fenced(fit_id, lease, worker)  # says why
            raise Fenced(f"lease {lease!r} of fit {fit_id!r} is gone")
        return {"expires_in": self.config.lease_s, "cancel": bool(renewed["cancel"])}

    def expire(self) -> list[str]:
        """Return every fit whose lease has expired to the queue (or end it after max_attempts); what.

        Each change names the lease and its expiry again: a fit completed, renewed or claimed meanwhile
        (by another controller, on PostgreSQL) is left alone."""
        now, said = time.time(), []
        with self.store.write() as db:
            rows = db.execute(
                "SELECT * FROM fits WHERE phase = 'leased' AND lease_expires < ?" + self.store.skip_locked,
                (now,),
            ).fetchall()
            for row in rows:
                still = "WHERE id = ? AND phase = 'leased' AND lease = ? AND lease_expires < ? RETURNING id"
                key = (row["id"], row["lease"], now)
                if row["cancel"]:
                    done = db.execute(
                        "UPDATE fits SET phase = 'done', lease = NULL, state = 'CANCELLED', ended = ?, "
                        "message = 'cancelled (its worker was lost)' " + still,
                        (now, *key),
                    ).fetchone()
                elif row["attempt"] >= self.config.max_attempts:
                    message = (
                        f"gave up after {row['attempt']} attempts: each worker that ran it stopped answering "
                        f"for {self.config.lease_s:.0f} s (the fit may crash its workers)"
                    )
                    done = db.execute(
                        "UPDATE fits SET phase = 'done', lease = NULL, state = 'FAILED', ended = ?, "
                        "message = ? " + still,
                        (now, message, *key),
                    ).fetchone()
                else:
                    message = f"attempt {row['attempt']} lost its worker: waiting for another"
                    done = db.execute(
                        "UPDATE fits SET phase = 'queued', lease = NULL, state = 'PENDING', message = ? "
                        + still,
                        (message, *key),
                    ).fetchone()
                if done is not None:
                    db.execute(
                        "UPDATE attempts SET ended = ?, outcome = 'expired' WHERE fit = ? AND attempt = ?",
                        (now, row["id"], row["attempt"]),
                    )
                    said.append(row["id"])
        if said:
            self.wake()
        return said

    def cancel(self, fit: dict) -> None:
        """Cancel a queued fit now; a leased one at its worker's next heartbeat."""
        with self.store.write() as db:
            db.execute(
                "UPDATE fits SET phase = 'done', state = 'CANCELLED', ended = ? "
                "WHERE id = ? AND phase = 'queued'",
                (time.time(), fit["id"]),
            )
            db.execute("UPDATE fits SET cancel = 1 WHERE id = ? AND phase = 'leased'", (fit["id"],))

    # --- files ----------------------------------------------------------------------------------------------

    def fit_dir(self, fit_id: str) -> Path:
        return self.config.data_dir / "fits" / fit_id

    def put_file(
        self, fit: dict, relative: str, sha256: str, stream: BinaryIO, limit: int
    ) -> tuple[Path, bool]:
        """One result file of the current attempt, whole or not at all; (its path, True if new)."""
        name = safe_name(relative)
        base = self.fit_dir(fit["id"]) / "attempts" / str(fit["attempt"])
        used = sum(p.stat().st_size for p in base.rglob("*") if p.is_file() and p != base / name)
        if used >= RESULTS_LIMIT:
            raise Refused(f"this fit's results are past the {RESULTS_LIMIT >> 20} MB this service keeps")
        return _receive(base / name, sha256, stream, min(limit, RESULTS_LIMIT - used))

    def put_checkpoint(self, fit: dict, sha256: str, stream: BinaryIO, limit: int) -> bool:
        """The attempt's newest checkpoint; kept for the next attempt only while the lease is current."""
        path = self.fit_dir(fit["id"]) / "checkpoints" / f"{fit['attempt']}.h5"
        _, new = _receive(path, sha256, stream, limit)
        with self.store.write() as db:
            kept = db.execute(
                "UPDATE fits SET checkpoint_attempt = ? WHERE id = ? AND lease = ? AND phase = 'leased' "
                "RETURNING id",
                (fit["attempt"], fit["id"], fit["lease"]),
            ).fetchone()
        if kept is None:
            raise Fenced(f"lease {fit['lease']!r} of fit {fit['id']!r} is gone: its checkpoint is not kept")
        for older in path.parent.glob("*.h5"):  # only the newest good checkpoint is ever continued from
            if older != path:
                older.unlink(missing_ok=True)
        return new

    def checkpoint_of(self, fit: dict) -> Path | None:
        """The checkpoint the next attempt continues from, if a worker sent one."""
        if fit.get("checkpoint_attempt") is None:
            return None
        path = self.fit_dir(fit["id"]) / "checkpoints" / f"{fit['checkpoint_attempt']}.h5"
        return path if path.is_file() else None

    def complete(self, fit_id: str, lease: str, worker: dict, state: str, message: str | None) -> bool:
        """The attempt's end, accepted once: its files become the fit's job directory. False: a repeat."""
        rows = self.store.read("SELECT * FROM fits WHERE id = ?", (fit_id,))
        if rows and rows[0]["done_lease"] == lease:
            return False  # the same complete, sent again after a lost answer
        fit = self.fenced(fit_id, lease, worker)
        if not JobState(state).terminal:
            raise Refused(f"complete with state {state!r}: a fit completes in a final state")
        attempt_dir = self.fit_dir(fit_id) / "attempts" / str(fit["attempt"])
        job = self.fit_dir(fit_id) / "job"
        moved = not attempt_dir.exists() and _attempt_of(job) == fit["attempt"]  # a stop came mid-way
        if not moved:
            attempt_dir.mkdir(parents=True, exist_ok=True)
            (attempt_dir / ATTEMPT_MARK).write_text(str(fit["attempt"]))
        chisq = None
        try:
            chisq = json.loads(read_regular((job if moved else attempt_dir) / "result.json")).get("chisq")
        except (OSError, ValueError, AttributeError):
            chisq = None
        if isinstance(chisq, bool) or not isinstance(chisq, (int, float)) or not math.isfinite(chisq):
            chisq = None  # the model's file: only a finite number is recorded
        now = time.time()
        with self.store.write() as db:
            done = db.execute(
                "UPDATE fits SET phase = 'done', state = ?, ended = ?, lease = NULL, done_lease = ?, "
                "chisq = ?, message = ?, job_dir = ? WHERE id = ? AND lease = ? AND phase = 'leased' "
                "RETURNING id",
                (state, now, lease, chisq, message, str(job), fit_id, lease),
            ).fetchone()
            if done is None:
                raise Fenced(f"lease {lease!r} of fit {fit_id!r} is gone")
            db.execute(
                "UPDATE attempts SET ended = ?, outcome = ? WHERE fit = ? AND attempt = ?",
                (now, f"completed {state}", fit_id, fit["attempt"]),
            )
            if not moved:  # the files of an attempt that never completed are never the fit's
                for partial in attempt_dir.rglob(".*.part"):  # uploads a stop cut short (_receive's names)
                    partial.unlink(missing_ok=True)
                if job.exists():
                    shutil.rmtree(job)
                os.replace(attempt_dir, job)
        for older in (self.fit_dir(fit_id) / "attempts").glob("*"):  # attempts that never completed
            shutil.rmtree(older, ignore_errors=True)
        return True


def _attempt_of(job: Path) -> int | None:
    try:
        return int((job / ATTEMPT_MARK).read_text())
    except (OSError, ValueError):
        return None


def _suits(fit: dict, labels: dict[str, str]) -> bool:
    """Does a worker with *labels* suit this fit? Every label it asks for, and ranks within max_ranks."""
    wants = json.loads(fit.get("wants") or "{}")
    if any(labels.get(key) != value for key, value in wants.items()):
        return False
    ranks = json.loads(fit["request"]).get("ntasks")
    most = labels.get("max_ranks")
    return not (ranks and most and str(most).isdigit() and int(ranks) > int(most))


def _receive(path: Path, sha256: str, stream: BinaryIO, limit: int) -> tuple[Path, bool]:
    """Write *stream* to *path* through a temporary name, checked against *sha256*; (path, True if new)."""
    if path.is_file() and _sha256(path) == sha256:
        return path, False  # the same upload again: harmless
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    hasher, size = hashlib.sha256(), 0
    try:
        with open(temporary, "xb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise Refused(f"{path.name} is larger than the {limit >> 20} MB this service accepts")
                hasher.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if hasher.hexdigest() != sha256:
            raise Refused(
                f"{path.name} arrived with SHA-256 {hasher.hexdigest()}, not {sha256}: send it again"
            )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path, True


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()

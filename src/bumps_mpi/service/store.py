"""The job controller's records: users, their tokens and sessions, fits, in SQLite (one writer process).

SQLite is the embedded store (DESIGN.md section 7): WAL, one connection guarded by
a lock (the service is one process; its request threads take turns), and every
write in a `BEGIN IMMEDIATE` transaction. Tokens and session ids are kept only as
SHA-256 hashes: they are random 256-bit secrets, so a hash is all a lookup needs,
and a copy of the database gives no one a way in.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    admin INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    label TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name),
    csrf TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fits (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    phase TEXT NOT NULL,          -- submitting, submitted, rejected, interrupted, deleted
    state TEXT,                   -- the last state the monitor saw (bumps_mpi.cluster.states)
    job_dir TEXT,
    job_id TEXT,
    request TEXT NOT NULL,        -- the submission, as JSON, to submit it again after an interruption
    idem_key TEXT,
    notify TEXT,                  -- {"email": ..., "webhook": ...}
    ended REAL,                   -- when the monitor saw its end (and sent its notifications)
    chisq REAL,
    message TEXT,
    UNIQUE (owner, idem_key)
);
CREATE INDEX IF NOT EXISTS fits_owner ON fits(owner, created);
"""


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One transaction that takes the write lock at once (a deferred one that upgrades can fail)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def read(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- users and tokens ----------------------------------------------------------------------------

    def ensure_user(self, name: str, admin: bool = False) -> None:
        with self.write() as db:
            db.execute(
                "INSERT OR IGNORE INTO users(name, admin, created) VALUES (?, ?, ?)",
                (name, int(admin), time.time()),
            )
            if admin:
                db.execute("UPDATE users SET admin = 1 WHERE name = ?", (name,))

    def add_token(self, user: str, admin: bool = False, label: str = "") -> str:
        """A new token for *user* (made if new); the token itself is returned once and never stored."""
        token = secrets.token_urlsafe(32)
        self.ensure_user(user, admin)
        with self.write() as db:
            db.execute(
                "INSERT INTO tokens(hash, user, label, created) VALUES (?, ?, ?, ?)",
                (digest(token), user, label or user, time.time()),
            )
        return token

    def revoke(self, user: str) -> int:
        with self.write() as db:
            return db.execute(
                "UPDATE tokens SET revoked = ? WHERE user = ? AND revoked IS NULL", (time.time(), user)
            ).rowcount

    def tokens(self) -> list[dict[str, Any]]:
        rows = self.read(
            "SELECT t.user, u.admin, t.created, t.revoked FROM tokens t JOIN users u ON u.name = t.user "
            "ORDER BY t.created"
        )
        return [dict(r) for r in rows]

    def user_for_token(self, token: str) -> sqlite3.Row | None:
        rows = self.read(
            "SELECT u.name, u.admin FROM tokens t JOIN users u ON u.name = t.user "
            "WHERE t.hash = ? AND t.revoked IS NULL",
            (digest(token),),
        )
        return rows[0] if rows else None

    def is_admin(self, user: str) -> bool:
        rows = self.read("SELECT admin FROM users WHERE name = ?", (user,))
        return bool(rows and rows[0]["admin"])

    # --- sessions -------------------------------------------------------------------------------------

    def new_session(self, user: str, lifetime_s: float = 12 * 3600) -> tuple[str, str]:
        """(session id for the cookie, CSRF token for the forms)."""
        session, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self.write() as db:
            db.execute("DELETE FROM sessions WHERE expires < ?", (time.time(),))
            db.execute(
                "INSERT INTO sessions(hash, user, csrf, expires) VALUES (?, ?, ?, ?)",
                (digest(session), user, csrf, time.time() + lifetime_s),
            )
        return session, csrf

    def session(self, session: str) -> sqlite3.Row | None:
        rows = self.read(
            "SELECT s.user AS name, s.csrf, u.admin FROM sessions s JOIN users u ON u.name = s.user "
            "WHERE s.hash = ? AND s.expires > ?",
            (digest(session), time.time()),
        )
        return rows[0] if rows else None

    def end_session(self, session: str) -> None:
        with self.write() as db:
            db.execute("DELETE FROM sessions WHERE hash = ?", (digest(session),))

    # --- fits -----------------------------------------------------------------------------------------

    def new_fit(
        self, owner: str, name: str, request: dict, idem_key: str | None, notify: dict
    ) -> tuple[dict, bool]:
        """(the fit, True if new): an Idempotency-Key seen before for this owner gives its fit back."""
        with self.write() as db:
            if idem_key:
                row = db.execute(
                    "SELECT * FROM fits WHERE owner = ? AND idem_key = ?", (owner, idem_key)
                ).fetchone()
                if row is not None:
                    return dict(row), False
            fit_id = secrets.token_hex(5)
            db.execute(
                "INSERT INTO fits(id, owner, name, created, phase, request, idem_key, notify) "
                "VALUES (?, ?, ?, ?, 'submitting', ?, ?, ?)",
                (fit_id, owner, name, time.time(), json.dumps(request), idem_key, json.dumps(notify)),
            )
            return dict(db.execute("SELECT * FROM fits WHERE id = ?", (fit_id,)).fetchone()), True

    def update_fit(self, fit_id: str, **fields: Any) -> None:
        if not fields:
            return
        names = ", ".join(f"{k} = ?" for k in fields)
        with self.write() as db:
            db.execute(f"UPDATE fits SET {names} WHERE id = ?", (*fields.values(), fit_id))

    def fit(self, fit_id: str) -> dict | None:
        rows = self.read("SELECT * FROM fits WHERE id = ? AND phase != 'deleted'", (fit_id,))
        return dict(rows[0]) if rows else None

    def fits(self, owner: str | None, state: str | None = None, limit: int = 200) -> list[dict]:
        """Newest first: one owner's, or everyone's (owner None)."""
        sql, args = "SELECT * FROM fits WHERE phase NOT IN ('deleted', 'rejected')", []
        if owner is not None:
            sql, args = sql + " AND owner = ?", [owner]
        if state:
            sql, args = sql + " AND state = ?", [*args, state]
        rows = self.read(sql + " ORDER BY created DESC LIMIT ?", (*args, limit))
        return [dict(r) for r in rows]

    def active(self) -> list[dict]:
        """Fits whose state may still change (and those being submitted)."""
        rows = self.read(
            "SELECT * FROM fits WHERE phase IN ('submitting', 'submitted', 'interrupted') AND ended IS NULL"
        )
        return [dict(r) for r in rows]

    def delete_fit(self, fit_id: str) -> None:
        self.update_fit(fit_id, phase="deleted")

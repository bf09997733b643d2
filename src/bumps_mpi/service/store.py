"""The job controller's records: users, their tokens and sessions, fits, in SQLite (one writer process).

SQLite is the embedded store: WAL, one connection guarded by
a lock (the service is one process; its request threads take turns), and every
write in a `BEGIN IMMEDIATE` transaction. Tokens and session ids are kept only as
SHA-256 hashes: they are random 256-bit secrets, so a hash is all a lookup needs,
and a copy of the database gives no one a way in.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import UsageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    admin INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES users(name),
    label TEXT NOT NULL,
    created REAL NOT NULL,
    revoked REAL
);
CREATE TABLE IF NOT EXISTS sessions (
    hash TEXT PRIMARY KEY,
    username TEXT NOT NULL REFERENCES users(name),
    csrf TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS fits (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    created REAL NOT NULL,
    phase TEXT NOT NULL,          -- submitting, submitted, rejected, interrupted, deleted, queued, leased,
                                  -- done (dispatch mode)
    state TEXT,                   -- the last state the monitor saw (bumps_mpi.cluster.states)
    job_dir TEXT,
    job_id TEXT,
    request TEXT NOT NULL,        -- the submission, as JSON, to submit it again after an interruption
    idem_key TEXT,
    notify TEXT,                  -- {"email": ..., "webhook": ...}
    ended REAL,                   -- when the monitor saw its end (and sent its notifications)
    chisq REAL,
    message TEXT,
    -- dispatch mode (bumps_mpi.service.dispatch): who runs it, under which lease, how it goes there
    attempt INTEGER NOT NULL DEFAULT 0,
    lease TEXT,                   -- the current lease's id, NULL while queued or ended
    lease_expires REAL,           -- by the controller's clock, never a worker's
    worker TEXT,                  -- the worker of the current (or last) attempt
    wants TEXT,                   -- labels the fit asks of a worker, as JSON
    remote TEXT,                  -- the last heartbeat: state, reason, progress, cluster job id (JSON)
    cancel INTEGER NOT NULL DEFAULT 0,
    checkpoint_attempt INTEGER,   -- the attempt whose checkpoint is kept (fits/<id>/checkpoint.h5)
    done_lease TEXT,              -- the lease whose "complete" was accepted (a retry of it is harmless)
    supervisor TEXT,              -- a local run's supervisor: pid, start time, host, boot (JSON)
    UNIQUE (owner, idem_key)
);
CREATE INDEX IF NOT EXISTS fits_owner ON fits(owner, created);
CREATE INDEX IF NOT EXISTS fits_phase ON fits(phase, created);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    credential TEXT NOT NULL UNIQUE,  -- SHA-256 of the worker's credential
    labels TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    registered REAL NOT NULL,
    last_seen REAL
);
CREATE TABLE IF NOT EXISTS registrations (
    hash TEXT PRIMARY KEY,            -- SHA-256 of a one-time registration token
    created REAL NOT NULL,
    used REAL
);
CREATE TABLE IF NOT EXISTS attempts (   -- every claim, for the record (and the tests)
    fit TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT NOT NULL,
    claimed REAL NOT NULL,
    ended REAL,
    outcome TEXT,                     -- completed STATE, expired, refused
    PRIMARY KEY (fit, attempt)
);
"""


ADDED_COLUMNS = [  # (column, type) added to fits after its first release, for older data directories
    ("attempt", "INTEGER NOT NULL DEFAULT 0"), ("lease", "TEXT"), ("lease_expires", "REAL"),
    ("worker", "TEXT"), ("wants", "TEXT"), ("remote", "TEXT"), ("cancel", "INTEGER NOT NULL DEFAULT 0"),
    ("checkpoint_attempt", "INTEGER"), ("done_lease", "TEXT"), ("supervisor", "TEXT"),
]  # fmt: skip


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    """The records, in SQLite (a path: the embedded default) or PostgreSQL (a postgresql:// URL: for a
    controller on more than one host). The SQL is written once, in the dialect both share; `?` becomes
    psycopg's `%s`, REAL becomes DOUBLE PRECISION, and claims lock rows with SKIP LOCKED."""

    def __init__(self, target: Path | str):
        self._lock = threading.RLock()
        self.postgres = str(target).startswith(("postgresql://", "postgres://"))
        self.skip_locked = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
        if self.postgres:
            self._db = _postgres(str(target))
            self.url = str(target)
            schema = SCHEMA.replace(" REAL", " DOUBLE PRECISION")  # 4-byte floats would round timestamps
            for statement in filter(str.strip, schema.split(";")):  # (no ";" inside SCHEMA's comments)
                self._db.execute(statement)
            self._migrate()
            return
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))  # every user's records: ours
        if path.stat().st_uid == os.geteuid():
            path.chmod(0o600)  # SQLite gives its -wal and -shm files the database's own permissions
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Columns added since a data directory was made (CREATE TABLE IF NOT EXISTS adds none)."""
        have = {row["name"] for row in self.read("PRAGMA table_info(fits)")} if not self.postgres else None
        if not self.postgres:  # the first release named the token's and session's owner "user"
            for table in ("tokens", "sessions"):
                if "user" in {row["name"] for row in self.read(f"PRAGMA table_info({table})")}:
                    self._db.execute(f'ALTER TABLE {table} RENAME COLUMN "user" TO username')
        for column, kind in ADDED_COLUMNS:
            if self.postgres:
                kind = kind.replace("REAL", "DOUBLE PRECISION")
                self._db.execute(f"ALTER TABLE fits ADD COLUMN IF NOT EXISTS {column} {kind}")
            elif column not in (have or set()):
                self._db.execute(f"ALTER TABLE fits ADD COLUMN {column} {kind}")

    @classmethod
    def of(cls, config: Any) -> Store:
        """The service's store: its `database` URL, else SQLite in its data directory."""
        return cls(config.database or config.data_dir / "service.sqlite")

    @contextmanager
    def write(self) -> Iterator[Any]:
        """One transaction that takes the write lock at once (a deferred one that upgrades can fail)."""
        with self._lock:
            if self.postgres:
                self._reconnect_if_lost()
                with self._db.transaction():
                    yield _Dialect(self._db)
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _reconnect_if_lost(self) -> None:
        """PostgreSQL restarted or failed over: a new connection, rather than failing every request."""
        if self._db.closed or self._db.broken:
            self._db = _postgres(self.url)

    def read(self, sql: str, args: tuple = ()) -> list[Any]:
        with self._lock:
            if self.postgres:
                self._reconnect_if_lost()
            return (
                _Dialect(self._db).execute(sql, args).fetchall()
                if self.postgres
                else self._db.execute(sql, args).fetchall()
            )

    # --- users and tokens ----------------------------------------------------------------------------

    def ensure_user(self, name: str, admin: bool = False) -> None:
        with self.write() as db:
            db.execute(
                "INSERT INTO users(name, admin, created) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
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
                "INSERT INTO tokens(hash, username, label, created) VALUES (?, ?, ?, ?)",
                (digest(token), user, label or user, time.time()),
            )
        return token

    def revoke(self, user: str) -> int:
        """Revoke every token of *user* and end their sessions now; how many tokens."""
        with self.write() as db:
            db.execute("DELETE FROM sessions WHERE username = ?", (user,))
            return db.execute(
                "UPDATE tokens SET revoked = ? WHERE username = ? AND revoked IS NULL", (time.time(), user)
            ).rowcount

    def tokens(self) -> list[dict[str, Any]]:
        rows = self.read(
            'SELECT t.username AS "user", u.admin, t.created, t.revoked FROM tokens t '
            "JOIN users u ON u.name = t.username "
            "ORDER BY t.created"
        )
        return [dict(r) for r in rows]

    def user_for_token(self, token: str) -> sqlite3.Row | None:
        rows = self.read(
            "SELECT u.name, u.admin FROM tokens t JOIN users u ON u.name = t.username "
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
                "INSERT INTO sessions(hash, username, csrf, expires) VALUES (?, ?, ?, ?)",
                (digest(session), user, csrf, time.time() + lifetime_s),
            )
        return session, csrf

    def session(self, session: str) -> sqlite3.Row | None:
        rows = self.read(
            "SELECT s.username AS name, s.csrf, u.admin FROM sessions s JOIN users u ON u.name = s.username "
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
            "SELECT * FROM fits WHERE phase IN ('submitting', 'submitted', 'interrupted', 'queued', 'leased')"
            " AND ended IS NULL"
        )
        return [dict(r) for r in rows]

    def take_interrupted(self, fit_id: str) -> bool:
        """Move an interrupted fit back to submitting, if it still is interrupted: only one retry does."""
        with self.write() as db:
            return (
                db.execute(
                    "UPDATE fits SET phase = 'submitting' WHERE id = ? AND phase = 'interrupted'", (fit_id,)
                ).rowcount
                == 1
            )

    def delete_fit(self, fit_id: str) -> None:
        self.update_fit(fit_id, phase="deleted")


def _postgres(url: str) -> Any:
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError:
        raise UsageError(
            "a postgresql:// database needs psycopg: pip install 'bumps-mpi[postgres]'"
        ) from None
    try:
        return psycopg.connect(url, autocommit=True, row_factory=dict_row, connect_timeout=30)
    except psycopg.Error as exc:
        raise UsageError(f"cannot reach the database {url.split('@')[-1]}: {exc}") from None


class _Dialect:
    """A psycopg connection that takes the SQL as written for SQLite (`?` placeholders)."""

    def __init__(self, db: Any):
        self.db = db

    def execute(self, sql: str, args: tuple | list = ()) -> Any:
        return self.db.execute(sql.replace("?", "%s"), args)

    def executemany(self, sql: str, rows: list) -> Any:
        cursor = self.db.cursor()
        cursor.executemany(sql.replace("?", "%s"), rows)
        return cursor

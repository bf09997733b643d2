"""Who is asking: a token (scripts), a session cookie (browsers), or an authenticating reverse proxy.

- Tokens come from an administrator (`bumps-submit serve token add NAME`), sent as
  `Authorization: Bearer TOKEN`; the browser trades one for a session cookie at
  /login (HttpOnly, SameSite=Strict, Secure behind TLS).
- Every request that changes something and rides on a cookie carries a CSRF token
  (a form field or the X-CSRF-Token header), an HMAC of the session with the
  service's own secret; a request with a bearer token needs none (a browser never
  sends one by itself).
- With auth = "proxy", the user name comes from `proxy_header`, and only from the
  addresses in `trusted_proxies`; with auth = "none" (loopback only) everyone is
  the administrator "local".
- Failed logins are limited per client address (behind a trusted proxy, the address it forwards):
  after 10 in 5 minutes, 429. Uvicorn's own X-Forwarded-For handling is off (`serve`), so an address
  is never taken from a header except here.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .settings import LOOPBACK, ServiceConfig
from .store import Store

COOKIE = "bumps_session"
FAILURES_ALLOWED, FAILURE_WINDOW_S = 10, 300


@dataclass
class User:
    name: str
    admin: bool
    session: str | None = None  # the cookie's session id, when that is how they came
    via_token: bool = False


class Auth:
    def __init__(self, config: ServiceConfig, store: Store):
        self.config, self.store = config, store
        self.secret = _secret(config.data_dir / "secret")
        self._failures: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def identify(
        self, headers: dict[str, str], cookies: dict[str, str], client: str | None, server: str | None = None
    ) -> User | None:
        if self.config.auth == "none":  # loopback only: reached there, and named so (no DNS rebinding)
            host = headers.get("host", "").rsplit(":", 1)[0].strip("[]")
            if server not in LOOPBACK or host not in LOOPBACK:
                return None
            return User("local", True)
        if self.config.auth == "proxy":
            name = headers.get(self.config.proxy_header.lower())
            if not name or client not in self.config.trusted_proxies:
                return None
            self.store.ensure_user(name)
            return User(name, name in self.config.admins)  # the configuration says who, now
        bearer = headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            row = self.store.user_for_token(bearer[7:].strip())
            return User(row["name"], bool(row["admin"]), via_token=True) if row else None
        session = cookies.get(COOKIE)
        if session:
            row = self.store.session(session)
            return User(row["name"], bool(row["admin"]), session=session) if row else None
        return None

    def client_address(self, headers: dict[str, str], peer: str | None) -> str:
        """Whom to count failed logins against: the peer, or behind a trusted proxy the address it saw."""
        forwarded = headers.get("x-forwarded-for", "")
        if peer in self.config.trusted_proxies and forwarded:
            return forwarded.split(",")[-1].strip()
        return peer or "?"

    def csrf(self, user: User) -> str:
        """The form token for this user's session (or for a proxy's or loopback's user)."""
        basis = f"{user.name}:{user.session or self.config.auth}"
        return hmac.new(self.secret, basis.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, user: User, given: str | None) -> bool:
        return user.via_token or (given is not None and hmac.compare_digest(given, self.csrf(user)))

    def login(self, token: str, client: str) -> tuple[str, User] | None:
        """Trade a token for a session; None when it is wrong. Raises PermissionError when rate-limited."""
        self._check_rate(client)
        row = self.store.user_for_token(token.strip())
        if row is None:
            self._fail(client)
            return None
        session, _ = self.store.new_session(row["name"])
        return session, User(row["name"], bool(row["admin"]), session=session)

    def _check_rate(self, client: str) -> None:
        with self._lock:
            failures = self._failures.get(client)
            while failures and failures[0] < time.monotonic() - FAILURE_WINDOW_S:
                failures.popleft()
            if failures is not None and len(failures) >= FAILURES_ALLOWED:
                raise PermissionError("too many failed logins from this address: wait a few minutes")

    def _fail(self, client: str) -> None:
        with self._lock:
            self._failures.setdefault(client, collections.deque()).append(time.monotonic())
            if len(self._failures) > 10_000:  # forget the addresses whose failures are all old
                cutoff = time.monotonic() - FAILURE_WINDOW_S
                self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > cutoff}


def _secret(path: Path) -> bytes:
    """The service's own secret (for CSRF tokens): made once, readable only by the service."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as fh:
            fh.write(secret)
        return secret

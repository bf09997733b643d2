"""The job controller's configuration: one TOML file, every value checked when the service starts.

[service]                      # where it listens, where it keeps its records, how fits run
host = "127.0.0.1"             # anything but loopback needs authentication
port = 8470
data_dir = "~/.local/share/bumps-mpi/service"
database = ""                  # SQLite in data_dir; or postgresql://user@host/db for several hosts
backend = "local"              # local: mpiexec here; slurm: sbatch, with the site profile below;
                               # dispatch: fits wait here for workers on other clusters to pull them
lease_s = 180                  # dispatch: a claim's lease (renewed by heartbeats)
profile = "default"            # bumps-mpi site profile for Slurm (partition, account, ...)
auth = "token"                 # token | proxy | none (none: loopback only)
proxy_header = "X-Remote-User" # auth = "proxy": the user name an authenticating proxy sets...
trusted_proxies = ["127.0.0.1"]  # ...and the only addresses it is believed from
admins = []                    # auth = "proxy": these users are administrators
base_url = ""                  # how users reach it, for links in notifications
max_running = 8                # local backend: fits running here at once, all users together
max_checks = 2                 # model checks at once, all users together
local_ranks = 2                # MPI ranks of a fit that asks for none
poll_s = 2.0                   # seconds between the monitor's looks at the fits in flight
max_attempts = 3               # dispatch: attempts before a fit whose workers keep dying ends FAILED
claim_wait_s = 20              # dispatch: how long a worker's claim waits for a fit (long polling)
nice = 10                      # fits and checks run this much below the service's own priority
secure_cookies = false         # true behind TLS (the reverse proxy's)
[uploads]
max_mb = 50                    # per request
max_files = 50
max_unzipped_mb = 200          # a zip's content, in all
[limits]                       # for every user, unless [users.NAME] says otherwise
max_ranks = 8
max_time = "04:00:00"
max_fits = 4                   # in flight at once
max_kept = 1000                # fits kept, ended ones included (delete some to submit more)
max_stored_mb = 20480          # what one user's fits may hold on the service's disk
[users.alice]
account = "lab-a"              # her Slurm account
max_ranks = 32
[mail]
host = ""                      # the site's mail server; empty: no email
port = 25
sender = "bumps-mpi@localhost"
[webhooks]
allowed_hosts = []             # hosts a fit's webhook may call; empty: any
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError

LOOPBACK = ("127.0.0.1", "::1", "localhost")
SECTIONS = ("service", "uploads", "limits", "users", "mail", "webhooks")


@dataclass
class Limits:
    max_ranks: int = 8
    max_time: str = "04:00:00"
    max_fits: int = 4
    account: str | None = None
    max_kept: int = 1000  # fits kept (ended ones included): delete some to submit more
    max_stored_mb: int = 20480  # what a user's fits may hold on the service's disk, uploads and results


@dataclass
class ServiceConfig:
    host: str = "127.0.0.1"
    port: int = 8470
    data_dir: Path = field(default_factory=lambda: Path("~/.local/share/bumps-mpi/service").expanduser())
    backend: str = "local"
    profile: str | None = None
    auth: str = "token"
    proxy_header: str = "X-Remote-User"
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    admins: list[str] = field(default_factory=list)
    base_url: str = ""
    secure_cookies: bool = False
    upload_max_mb: int = 50
    upload_max_files: int = 50
    upload_max_unzipped_mb: int = 200
    limits: Limits = field(default_factory=Limits)
    users: dict[str, Limits] = field(default_factory=dict)
    mail_host: str = ""
    mail_port: int = 25
    mail_sender: str = "bumps-mpi@localhost"
    webhook_hosts: list[str] = field(default_factory=list)
    local_ranks: int = 2
    poll_s: float = 2.0
    database: str = ""  # a postgresql:// URL; empty: SQLite in data_dir
    lease_s: float = 180.0  # dispatch: a claim's lease, renewed by each heartbeat (a third of it apart)
    max_attempts: int = 3  # dispatch: attempts before a fit whose workers keep dying ends FAILED
    claim_wait_s: float = 20.0  # dispatch: how long a claim waits for a fit (long polling)
    max_running: int = 8  # local backend: fits running on this host at once, all users together
    max_checks: int = 2  # model checks at once, all users together (each is a process on this host)
    nice: int = 10  # fits and checks run this much below the service's own priority

    def limits_for(self, user: str) -> Limits:
        return self.users.get(user, self.limits)

    def check(self) -> ServiceConfig:
        if self.backend not in ("local", "slurm", "dispatch"):
            raise UsageError(f"[service] backend={self.backend!r}: use local, slurm or dispatch")
        if self.max_running < 1 or self.max_checks < 1 or not 0 <= self.nice <= 19:
            raise UsageError("[service] max_running and max_checks must be at least 1, nice 0 to 19")
        if self.lease_s < 3 or self.max_attempts < 1:
            raise UsageError("[service] lease_s must be at least 3 (seconds) and max_attempts at least 1")
        if self.auth not in ("token", "proxy", "none"):
            raise UsageError(f"[service] auth={self.auth!r}: use token, proxy or none")
        if self.auth == "none" and self.host not in LOOPBACK:
            raise UsageError(
                f'[service] refuses to listen on {self.host} without authentication: use auth = "token" '
                '(or "proxy"), or listen on 127.0.0.1'
            )
        if not 0 < self.port < 65536:
            raise UsageError(f"[service] port={self.port}: use 1-65535")
        return self


def _table(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise UsageError(f"{path}: [{name}] must be a table")
    return value


def _limits(values: dict[str, Any], base: Limits, where: str) -> Limits:
    known = {"max_ranks", "max_time", "max_fits", "account", "max_kept", "max_stored_mb"}
    for key in values:
        if key not in known:
            raise UsageError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(known))}")
    return Limits(
        max_ranks=int(values.get("max_ranks", base.max_ranks)),
        max_time=str(values.get("max_time", base.max_time)),
        max_fits=int(values.get("max_fits", base.max_fits)),
        account=values.get("account", base.account),
        max_kept=int(values.get("max_kept", base.max_kept)),
        max_stored_mb=int(values.get("max_stored_mb", base.max_stored_mb)),
    )


def load(path: Path | None = None, **overrides: Any) -> ServiceConfig:
    """The configuration from *path* (if any) with command-line *overrides* (those not None) on top."""
    config = ServiceConfig()
    data = _read(path)
    where = Path(str(path))
    _service(config, _table(data, "service", where), path)
    for key, value in _table(data, "uploads", where).items():
        if key not in ("max_mb", "max_files", "max_unzipped_mb") or not isinstance(value, int):
            raise UsageError(
                f"{path} [uploads]: {key} must be one of max_mb, max_files, max_unzipped_mb (a number)"
            )
        setattr(config, f"upload_{key}", value)
    config.limits = _limits(_table(data, "limits", where), Limits(), f"{path} [limits]")
    for user, values in _table(data, "users", where).items():
        if not isinstance(values, dict):
            raise UsageError(f"{path}: [users.{user}] must be a table")
        config.users[user] = _limits(values, config.limits, f"{path} [users.{user}]")
    mail = _table(data, "mail", where)
    config.mail_host = str(mail.get("host", config.mail_host))
    config.mail_port = int(mail.get("port", config.mail_port))
    config.mail_sender = str(mail.get("sender", config.mail_sender))
    config.webhook_hosts = list(_table(data, "webhooks", where).get("allowed_hosts", []))
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, Path(value).expanduser() if key == "data_dir" else value)
    return config.check()


def _read(path: Path | None) -> dict[str, Any]:
    """The TOML file's tables (none without a file); a clear error for a missing file or section."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    if path is None:
        return {}
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"service configuration {path} not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"service configuration {path}: {exc}") from None
    for key in data:
        if key not in SECTIONS:
            raise UsageError(f"{path}: unknown section [{key}]; known: {', '.join(SECTIONS)}")
    return data


SERVICE_SETTINGS = {
    "host": str, "port": int, "backend": str, "profile": str, "auth": str, "proxy_header": str,
    "trusted_proxies": list, "admins": list, "base_url": str, "secure_cookies": bool,
    "local_ranks": int, "poll_s": float, "lease_s": float, "max_attempts": int, "claim_wait_s": float,
    "database": str, "max_running": int, "max_checks": int, "nice": int,
}  # fmt: skip


def _service(config: ServiceConfig, service: dict[str, Any], path: Path | None) -> None:
    """[service] into *config*, each value of its type."""
    for key, value in service.items():
        if key == "data_dir":
            config.data_dir = Path(os.path.expandvars(os.path.expanduser(str(value))))
            continue
        want = SERVICE_SETTINGS.get(key)
        if want is None:
            raise UsageError(f"{path} [service]: unknown setting {key!r}")
        if want is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise UsageError(f"{path} [service]: {key} must be a {want.__name__}")
        setattr(config, key, value)

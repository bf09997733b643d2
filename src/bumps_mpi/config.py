"""Site configuration: named profiles of Slurm resources and launch settings.

Layers, lowest first: the packaged defaults (slurm/defaults.toml), the user
file ($BUMPS_MPI_CONFIG, else ~/.config/bumps-mpi/site.toml), environment
variables BUMPS_MPI_<KEY>, then the command line. In each file the profile
named "default" applies first, then the selected one on top of it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from .errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# key -> type; lists are lines or arguments
KEYS: dict[str, type] = {
    "partition": str,
    "account": str,
    "qos": str,
    "time": str,
    "nodes": int,
    "ntasks": int,
    "cpus_per_task": int,
    "mem": str,
    "threads": int,
    "launcher": str,
    "launcher_args": list,
    "python": str,
    "prologue": list,
    "epilogue": list,
    "extra": list,
    "skip": list,
    "checkpoint_every": int,  # seconds between checkpoints of DREAM and DE fits
    "signal_grace": int,  # seconds before the time limit at which the job checkpoints and requeues
    "max_requeues": int,  # how many time limits a job may requeue through
}
DEFAULT_PROFILE = "default"


def slurm_dir() -> Path:
    """slurm/ templates and defaults: inside the wheel, or at the top of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "slurm", here.parents[1] / "slurm"):
        if (candidate / "defaults.toml").is_file():
            return candidate
    raise FileNotFoundError("bumps-mpi's slurm/ folder is missing from this installation")


def user_config_path() -> Path:
    env = os.environ.get("BUMPS_MPI_CONFIG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bumps-mpi" / "site.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"site configuration {path}: {exc}") from None


def _check(values: dict[str, Any], where: str) -> dict[str, Any]:
    for key, value in values.items():
        if key not in KEYS:
            raise UsageError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(KEYS))}")
        want = KEYS[key]
        if want is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"{where}: {key} must be a list of strings")
        elif want is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise UsageError(f"{where}: {key} must be a whole number")
        elif not isinstance(value, str):
            raise UsageError(f"{where}: {key} must be a string")
    return values


def _from_environment() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, want in KEYS.items():
        raw = os.environ.get(f"BUMPS_MPI_{key.upper()}")
        if raw is None:
            continue
        if want is int:
            try:
                values[key] = int(raw)
            except ValueError:
                raise UsageError(
                    f"environment BUMPS_MPI_{key.upper()}={raw!r} is not a whole number"
                ) from None
        elif want is list:
            values[key] = raw.split() if key in ("launcher_args", "skip") else raw.splitlines()
        else:
            values[key] = raw
    return values


def load_settings(profile: str | None = None, cli: dict[str, Any] | None = None) -> dict[str, Any]:
    """The merged settings for *profile*; unknown profiles and settings are errors, not surprises."""
    layers = [(slurm_dir() / "defaults.toml", _read_toml(slurm_dir() / "defaults.toml"))]
    user = user_config_path()
    layers.append((user, _read_toml(user)))
    chosen = profile or os.environ.get("BUMPS_MPI_PROFILE") or layers[1][1].get("default_profile")
    chosen = chosen or DEFAULT_PROFILE
    settings: dict[str, Any] = {}
    known = set()
    for path, data in layers:
        profiles = data.get("profiles", {})
        known.update(profiles)
        for name in dict.fromkeys([DEFAULT_PROFILE, chosen]):
            settings.update(_check(dict(profiles.get(name, {})), f"{path} [profiles.{name}]"))
    if chosen not in known:
        raise UsageError(f"unknown profile {chosen!r}; profiles: {', '.join(sorted(known))} (see {user})")
    settings.update(_from_environment())
    settings.update({k: v for k, v in (cli or {}).items() if v is not None})
    settings["profile"] = chosen
    return settings

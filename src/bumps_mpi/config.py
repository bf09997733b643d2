"""Site configuration: named profiles of Slurm resources, launch and job settings.

Layers, lowest first: the packaged defaults (slurm/defaults.toml, the one place
where every default lives), the user file ($BUMPS_MPI_CONFIG, else
~/.config/bumps-mpi/site.toml), environment variables BUMPS_MPI_<KEY>, then the
command line. In each file the profile named "default" applies first, then the
selected one on top of it. Every value remembers where it came from, so an
error can name the option, the variable or the file to fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import UnreadableFile, UsageError

# key -> type; lists are lines or arguments
KEYS: dict[str, type] = {
    "partition": str,
    "account": str,
    "qos": str,
    "time": str,  # or "auto": the estimate's wall time times auto_time_factor (bumps_mpi.front.sizing)
    "nodes": int,
    "ntasks": int,  # or "auto": the most ranks the estimate keeps at auto_efficiency
    "cpus_per_task": int,
    "mem": str,
    "mail_type": str,  # Slurm's own mail when the job begins, ends, fails... (--mail-type)
    "mail_user": str,  # to whom (--mail-user; Slurm's default is the submitting user)
    "threads": int,
    "launcher": str,
    "launcher_args": list,
    "python": str,
    "prologue": list,  # shell lines, written verbatim into the script before the launch
    "epilogue": list,  # shell lines, written verbatim after it
    "extra": list,
    "skip": list,
    "checkpoint_every": int,  # seconds between checkpoints of DREAM and DE fits
    "signal_grace": int,  # seconds before the time limit at which the job checkpoints and requeues
    "max_requeues": int,  # how many time limits a job may requeue through
    "check_timeout": int,  # seconds the login-node model check may take
    "plot_timeout": int,  # seconds drawing a fit's figures on the login node may take
    "jobs_dir": str,  # where job directories are made (~ and $VARIABLES are expanded)
    "gpus": int,  # GPUs per fit: Slurm's --gres=gpu:N or --gpus-per-task=N; the sandbox opens their devices
    "gpu_directive": str,  # gres or gpus-per-task
    "local_ranks": int,  # MPI ranks of a --local run
    "sandbox": str,  # best-effort, require or off: each model confined to its job (bumps_mpi.sandbox)
    "sandbox_read": list,  # more paths a confined model may read
    "sandbox_write": list,  # more paths a confined model may write
    "sandbox_cache": str,  # the user's library cache (compiled kernels), read-write in every job's sandbox
    "sandbox_max_file_mb": int,  # the largest file a confined model may write
    "sandbox_mpi_ports": str,  # LOW-HIGH: the only TCP ports a confined job on several nodes may use
    "node_tmp": str,  # where each confined rank's TMPDIR goes on its node ($VARIABLES expanded there)
    "auto_efficiency": float,  # --ntasks auto: the least parallel efficiency the chosen ranks may have
    "auto_time_factor": float,  # --time auto: the predicted wall time times this (the estimate's margin)
    "auto_max_ntasks": int,  # --ntasks auto never asks for more ranks (nor the estimate's table shows)
}
AUTO = "auto"  # ntasks and time: chosen from the model's measured estimate when the fit is submitted
AUTO_KEYS = ("ntasks", "time")
TOP_LEVEL = ("default_profile", "profiles")
DEFAULT_PROFILE = "default"
PACKAGED = "the packaged defaults"


class Settings(dict):
    """The merged settings, and for each key where its value came from (for error messages)."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]):
        super().__init__(values)
        self.sources = sources


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
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except IsADirectoryError:
        raise UnreadableFile(path, "is a directory, not a site configuration file") from None
    except OSError as exc:
        raise UnreadableFile(path, exc.strerror or str(exc)) from None
    except UnicodeDecodeError:
        raise UnreadableFile(path, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"site configuration {path}: {exc}") from None
    for key in data:
        if key not in TOP_LEVEL:
            raise UsageError(
                f"site configuration {path}: unknown top-level key {key!r}; known: {', '.join(TOP_LEVEL)} "
                "(profiles are [profiles.NAME] tables)"
            )
    if not isinstance(data.get("profiles", {}), dict):
        raise UsageError(f"site configuration {path}: profiles must be a table of [profiles.NAME] tables")
    if not isinstance(data.get("default_profile", ""), str):
        raise UsageError(f"site configuration {path}: default_profile must be a string")
    for name, profile in data.get("profiles", {}).items():
        if not isinstance(profile, dict):
            raise UsageError(f"site configuration {path}: profiles.{name} must be a table of settings")
    return data


def _check(values: dict[str, Any], where: str) -> dict[str, Any]:
    for key, value in values.items():
        if key not in KEYS:
            raise UsageError(f"{where}: unknown setting {key!r}; known: {', '.join(sorted(KEYS))}")
        want = KEYS[key]
        if key in AUTO_KEYS and value == AUTO:
            continue
        if want is list:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"{where}: {key} must be a list of strings")
        elif want is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise UsageError(f"{where}: {key} must be a whole number")
        elif want is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UsageError(f"{where}: {key} must be a number")
        elif not isinstance(value, str):
            raise UsageError(f"{where}: {key} must be a string")
    return values


def _from_environment() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, want in KEYS.items():
        name = f"BUMPS_MPI_{key.upper()}"
        raw = os.environ.get(name)
        if raw is None:
            continue
        if key in AUTO_KEYS and raw == AUTO:
            values[key] = raw
        elif want in (int, float):
            try:
                values[key] = want(raw)
            except ValueError:
                what = "a whole number" if want is int else "a number"
                raise UsageError(f"environment variable {name}={raw!r} is not {what}") from None
        elif want is list:
            split = key in ("launcher_args", "skip", "extra")
            paths = key in ("sandbox_read", "sandbox_write")
            values[key] = raw.split() if split else raw.split(":") if paths else raw.splitlines()
        else:
            values[key] = raw
    return values


def packaged_defaults() -> dict[str, Any]:
    """The packaged default profile: the value of every setting nobody set."""
    return dict(_read_toml(slurm_dir() / "defaults.toml")["profiles"][DEFAULT_PROFILE])


def load_settings(profile: str | None = None, cli: dict[str, Any] | None = None) -> Settings:
    """The merged settings for *profile*; unknown profiles and settings are errors, not surprises."""
    layers = [(PACKAGED, _read_toml(slurm_dir() / "defaults.toml"))]
    user = user_config_path()
    layers.append((str(user), _read_toml(user)))
    chosen = profile or os.environ.get("BUMPS_MPI_PROFILE") or layers[1][1].get("default_profile")
    chosen = chosen or DEFAULT_PROFILE
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    known = set()
    for path, data in layers:
        profiles = data.get("profiles", {})
        known.update(profiles)
        for name in dict.fromkeys([DEFAULT_PROFILE, chosen]):
            where = path if path == PACKAGED else f"{path} [profiles.{name}]"
            layer = _check(dict(profiles.get(name, {})), where)
            values.update(layer)
            sources.update(dict.fromkeys(layer, where))
    if chosen not in known:
        raise UsageError(f"unknown profile {chosen!r}; profiles: {', '.join(sorted(known))} (see {user})")
    environment = _from_environment()
    values.update(environment)
    sources.update({k: f"environment variable BUMPS_MPI_{k.upper()}" for k in environment})
    given = {k: v for k, v in (cli or {}).items() if v is not None}
    values.update(given)
    sources.update({k: f"--{k.replace('_', '-')}" for k in given})
    values["profile"] = chosen
    return Settings(values, sources)


# Environment variables read inside the job or by status, and the values each accepts.
ENVIRONMENT_CHOICES = {
    "BUMPS_MPI_BALANCE": ("auto", "always", "never"),  # the mapper's strategy (bumps_mpi.runtime.mapper)
    "BUMPS_MPI_ACCOUNTING": ("auto", "sacct", "pyslurm"),  # where status reads accounting
}


def environment_choice(name: str) -> str:
    """The value of one of ENVIRONMENT_CHOICES' variables (its first choice when unset), or a clear error."""
    choices = ENVIRONMENT_CHOICES[name]
    value = os.environ.get(name, choices[0])
    if value not in choices:
        raise UsageError(f"environment variable {name}={value!r} is not valid: use {', '.join(choices)}")
    return value


def check_environment() -> None:
    for name in ENVIRONMENT_CHOICES:
        environment_choice(name)

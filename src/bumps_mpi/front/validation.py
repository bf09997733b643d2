"""Every value a user gives, checked against what Bumps and Slurm accept, before anything is written.

A value that only fails once the job runs costs a place in the queue and an
hour of waiting; here it is a one-line error on the login node that names the
option (or the environment variable, or the site file) it came from.

Resource and environment checks need nothing heavy and run first; the fit
options need Bumps and run in the model-check subprocess (bumps_mpi.front.modelcheck),
before the model is loaded, then once more with the model's parameter count.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from ..errors import UsageError

# Slurm's --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds; 0, UNLIMITED and INFINITE mean no limit (checked against sbatch 22.05)
TIME = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2}|(?i:unlimited|infinite))$")
# Slurm's --mem: a whole number with an optional K, M, G or T (MB and the like also pass); 0 = the whole node
MEMORY = re.compile(r"^\d+([KMGT]B?)?$", re.IGNORECASE)
AT_LEAST_ONE: tuple[str, ...] = ("nodes", "ntasks", "cpus_per_task", "threads", "checkpoint_every")
AT_LEAST_ONE += ("signal_grace", "check_timeout", "plot_timeout", "local_ranks", "auto_max_ntasks")
LARGER = {"sandbox_max_file_mb": 64}  # MPI's shared-memory segments are files too (UCX: 4 MB and more)
NOT_NEGATIVE = ("max_requeues", "gpus")
GPU_DIRECTIVES = ("gres", "gpus-per-task")
MAIL_TYPES: tuple[str, ...] = ("NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND")
MAIL_TYPES += ("STAGE_OUT", "TIME_LIMIT", "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50")
MAIL_TYPES += ("ARRAY_TASKS",)  # sbatch(1), 22.05


def _label(key: str, sources: dict[str, str] | None) -> str:
    where = (sources or {}).get(key)
    if where is None or where.startswith("--"):
        return f"--{key.replace('_', '-')}"
    return f"{key} (from {where})"


def _check_sandbox(settings: dict[str, Any], sources: dict[str, str] | None) -> None:
    """The sandbox's settings: its level, paths that exist, the cache's place, the MPI port range."""
    from ..sandbox.policy import check_level, port_range

    if settings.get("sandbox") is not None:
        check_level(settings["sandbox"], _label("sandbox", sources))
    for key, option, verb in (("sandbox_read", "--read", "read"), ("sandbox_write", "--write", "write")):
        for path in settings.get(key) or []:
            if not os.path.isabs(os.path.expanduser(path)) or not os.path.exists(os.path.expanduser(path)):
                where = option if (sources or {}).get(key, "").startswith("--") else key
                raise UsageError(
                    f"{where} {path!r}: give an absolute path that exists (what the model may {verb})"
                )
    if settings.get("sandbox_mpi_ports") is not None:
        port_range(settings["sandbox_mpi_ports"], _label("sandbox_mpi_ports", sources))
    cache = settings.get("sandbox_cache")
    if cache and not os.path.isabs(os.path.expanduser(os.path.expandvars(cache))):
        where = _label("sandbox_cache", sources)
        raise UsageError(f'{where}={cache!r}: give an absolute path (or "" for none)')


def check_resources(settings: dict[str, Any], sources: dict[str, str] | None = None) -> None:
    """Slurm and job settings: numbers in range, --time and --mem in Slurm's own grammar."""
    for key in (*AT_LEAST_ONE, *NOT_NEGATIVE, *LARGER):
        value = settings.get(key)
        if value is None or (key == "ntasks" and value == "auto"):
            continue
        least = 1 if key in AT_LEAST_ONE else LARGER.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError(
                f"{_label(key, sources)} must be a whole number of at least {least}, got {value!r}"
            )
    limit = settings.get("time")
    if limit not in (None, "", "auto") and not TIME.match(str(limit)):
        raise UsageError(
            f"{_label('time', sources)}={limit!r} is not a Slurm time limit: use minutes (90), "
            "HH:MM:SS (01:30:00) or D-HH:MM:SS (2-00:00:00)"
        )
    _check_sandbox(settings, sources)
    _check_auto(settings, sources)
    if settings.get("gpu_directive") not in (None, *GPU_DIRECTIVES):
        where = _label("gpu_directive", sources)
        raise UsageError(f"{where}={settings['gpu_directive']!r}: use {' or '.join(GPU_DIRECTIVES)}")
    mail = settings.get("mail_type")
    if mail not in (None, ""):
        wrong = [kind for kind in str(mail).split(",") if kind not in MAIL_TYPES]
        if wrong:
            raise UsageError(
                f"{_label('mail_type', sources)}={mail!r}: {', '.join(map(repr, wrong))} is not a Slurm "
                f"mail type; use {', '.join(MAIL_TYPES)} (comma-separated)"
            )
    user = settings.get("mail_user")
    if user not in (None, "") and not re.fullmatch(r"[A-Za-z0-9._%+-]+(@[A-Za-z0-9.-]+)?", str(user)):
        raise UsageError(f"{_label('mail_user', sources)}={user!r} is not a user name or an email address")
    memory = settings.get("mem")
    if memory not in (None, "") and not MEMORY.match(str(memory)):
        raise UsageError(
            f"{_label('mem', sources)}={memory!r} is not a Slurm memory size: use a whole number with "
            "an optional unit, e.g. 4000M or 8G"
        )


def _check_auto(settings: dict[str, Any], sources: dict[str, str] | None) -> None:
    """--ntasks auto's efficiency is a fraction, --time auto's factor a margin (at least 1)."""
    for key, low, high, what in (
        ("auto_efficiency", 0.0, 1.0, "a fraction above 0 and at most 1 (0.8: 80 %)"),
        ("auto_time_factor", 1.0, 100.0, "a factor of at least 1 and at most 100 (1.5: half again)"),
    ):
        value = settings.get(key)
        if value is not None and not (low < value <= high or (key == "auto_time_factor" and value == 1)):
            raise UsageError(f"{_label(key, sources)}={value!r} must be {what}")


# --- fit options (need bumps: called in the model-check subprocess) -------------------------------------

# Lower bounds Bumps does not check itself (a bad value fails deep in the fit, or fits nothing);
# every other number must not be negative. pop is checked per fitter below.
AT_LEAST = {"thin": 1, "nT": 1, "samples": 0, "steps": 0, "burn": 0}
ABOVE_ZERO = ("radius", "Tmin", "F")
AT_MOST = {"CR": 1.0}
DREAM_MIN_CHAINS = 7  # 2 * Dream.DE_pairs + 1: a DE step draws up to 3 pairs from the other chains
DE_MIN_POPULATION = 4  # DE's rand1 mutation needs three other members
NEGATIVE_POP_FITTERS = ("dream",)  # a negative pop is DREAM's total population size (bumps.initpop)


def _parser(key: str, default: Any) -> Any:
    """Bumps' own parser for a fit option (bumps.options.FIT_FIELDS), else one from the default's type."""
    try:
        from bumps.options import FIT_FIELDS

        return FIT_FIELDS[key][1]
    except (ImportError, KeyError):
        return type(default)


def _parse(fit_id: str, key: str, value: Any, default: Any) -> Any:
    flag = f"--{key}" if key in ("steps", "samples", "burn", "pop", "init", "thin") else f"fit option {key}"
    if isinstance(value, bool):
        value = str(value)
    try:
        parsed = _parser(key, default)(str(value))
    except (TypeError, ValueError, OverflowError) as exc:
        why = str(exc) if "invalid option" in str(exc) else f"not a {type(default).__name__}"
        raise UsageError(f"{flag}={value!r} for fitter {fit_id!r}: {why}") from None
    if isinstance(parsed, bool) or not isinstance(parsed, (int, float)):
        return parsed
    if not math.isfinite(parsed):
        raise UsageError(f"{flag}={value!r} for fitter {fit_id!r}: must be a finite number")
    if key == "pop":
        if parsed == 0:
            raise UsageError(f"{flag}=0 for fitter {fit_id!r}: the population must not be empty")
        if parsed < 0 and fit_id not in NEGATIVE_POP_FITTERS:
            raise UsageError(
                f"{flag}={value!r} for fitter {fit_id!r}: {fit_id} takes a population per parameter (> 0); "
                "only dream takes a negative pop (the total population)"
            )
        return parsed
    least = AT_LEAST.get(key, 0)
    if parsed < least or (key in ABOVE_ZERO and parsed <= 0):
        bound = f"at least {least}" if key not in ABOVE_ZERO else "above 0"
        raise UsageError(f"{flag}={value!r} for fitter {fit_id!r}: must be {bound}")
    if key in AT_MOST and parsed > AT_MOST[key]:
        raise UsageError(f"{flag}={value!r} for fitter {fit_id!r}: must be at most {AT_MOST[key]}")
    return parsed


def check_fit_options(fit_id: str, options: dict[str, Any]) -> dict[str, Any]:
    """Options checked against the fitter's own settings and parsed by Bumps' own parsers."""
    from ..runtime.fit import fitter_class

    settings = dict(fitter_class(fit_id).settings)
    clean: dict[str, Any] = {}
    for key, value in options.items():
        if key not in settings:
            names = ", ".join(sorted(settings))
            raise UsageError(f"fitter {fit_id!r} has no option {key!r}; its options are: {names}")
        clean[key] = _parse(fit_id, key, value, settings[key])
    merged = {**settings, **clean}
    if fit_id == "dream" and not merged["samples"] and not merged["steps"]:
        raise UsageError("--samples must be at least 1 for dream (or give --steps)")
    if "Tmax" in merged and "Tmin" in merged and merged["Tmax"] <= merged["Tmin"]:
        raise UsageError(f"fit option Tmax={merged['Tmax']} must be above Tmin={merged['Tmin']}")
    return clean


def check_population(fit_id: str, options: dict[str, Any], nvar: int) -> None:
    """Checks that need the model's number of fitted parameters (the population follows from it)."""
    from ..runtime.fit import fitter_class

    merged = {**dict(fitter_class(fit_id).settings), **options}
    if "pop" not in merged:
        return
    pop = float(merged["pop"])
    if fit_id == "dream":
        chains = math.ceil(pop * nvar) if pop > 0 else int(-pop)
        if chains < DREAM_MIN_CHAINS:
            suggestion = math.ceil(DREAM_MIN_CHAINS / nvar)
            raise UsageError(
                f"--pop={pop:g} gives dream {chains} chains for this model's {nvar} parameters; it needs "
                f"at least {DREAM_MIN_CHAINS}: use --pop {suggestion} or more (or --pop -{DREAM_MIN_CHAINS} "
                "for a total)"
            )
        generations = int(merged["steps"]) or math.ceil(int(merged["samples"]) / chains)
        if int(merged["thin"]) > generations:
            raise UsageError(
                f"--thin={merged['thin']} is more than the {generations} generations this dream fit runs: "
                "it would keep no sample; use a smaller --thin or more --samples"
            )
    elif fit_id == "de" and int(pop * nvar) < DE_MIN_POPULATION:
        raise UsageError(
            f"--pop={pop:g} gives de {int(pop * nvar)} members for this model's {nvar} parameters; it needs "
            f"at least {DE_MIN_POPULATION}: use --pop {math.ceil(DE_MIN_POPULATION / nvar)} or more"
        )
    elif fit_id == "ps" and int(pop * nvar) < 1:
        raise UsageError(f"--pop={pop:g} gives ps no particles for this model's {nvar} parameters")

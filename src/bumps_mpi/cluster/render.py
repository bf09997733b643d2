"""Render the sbatch script: one pure function, every value quoted or refused.

Directive values must be plain words (Slurm parses #SBATCH lines itself, not
the shell), so anything outside a safe character set is refused with the
setting's name. A site's `extra` directives may use any Slurm syntax
(`--exclude=cn[01-03]`, `--constraint=intel|amd`) as long as sbatch reads each
as one option, and none may replace or remove what bumps-mpi itself relies on
(its output file, requeue, time-limit signal, one job per submission). Values
in the script body go through shlex.quote. The only verbatim lines are the
prologue and epilogue: shell, written by the site or the user.
"""

from __future__ import annotations

import re
import shlex
from string import Template

from ..errors import UsageError
from ..jobdir import (
    CANCEL_FILE,
    CONTROL_DIR,
    ERROR_FILE,
    EXIT_STATUS_FILE,
    FITS_DIR,
    SLURM_ARRAY_LOG_PATTERN,
    SLURM_LOG_PATTERN,
    STOP_FILE,
)

# sbatch option for each resource setting
DIRECTIVES = {
    "account": "account",
    "cpus_per_task": "cpus-per-task",
    "mail_type": "mail-type",
    "mail_user": "mail-user",
    "mem": "mem",
    "nodes": "nodes",
    "ntasks": "ntasks",
    "partition": "partition",
    "qos": "qos",
    "time": "time",
}
SAFE_VALUE = re.compile(r"^[A-Za-z0-9_@%+=:,./\-]+$")
EXTRA_NAME = re.compile(r"^--([a-z][a-z0-9-]*)(=|$)")
# sbatch options the script itself depends on: why each may not be set, replaced or skipped by a site
MANAGED = {
    "job-name": "set it with --name",
    "output": "the job's log is slurm-<id>.out in its directory, appended to across requeues",
    "error": "the job's log is slurm-<id>.out in its directory, appended to across requeues",
    "open-mode": "the log is appended to across requeues",
    "requeue": "the job requeues itself at its time limit",
    "no-requeue": "the job requeues itself at its time limit",
    "signal": "the time-limit signal is set by signal_grace",
    "array": "a campaign is the job array; its size and --max-running come from bumps-submit",
    "chdir": "the job runs in its job directory",
    "wrap": "bumps-mpi writes the script",
    "parsable": "bumps-mpi reads the job id itself",
    "test-only": "nothing would be submitted",
    "wait": "submit returns at once; use bumps-submit watch",
}
MPIRUN_LAUNCHERS = {"mpirun", "mpiexec", "mpiexec.hydra"}


def _directive(option: str, value: object, setting: str) -> str:
    text = str(value)
    if not SAFE_VALUE.match(text):
        raise UsageError(
            f"{setting}={text!r} is not a valid Slurm value (letters, digits and _@%+=:,./- only)"
        )
    return f"#SBATCH --{option}={text}"


def limit_seconds(text: object) -> int | None:
    """Slurm's --time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in seconds; None if absent or unlimited (0)."""
    if text in (None, "") or str(text).upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, clock = str(text).rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        if len(parts) > 3:
            return None
        scale = (3600, 60, 1) if days or len(parts) == 3 else (60, 1)
        seconds = sum(p * s for p, s in zip(parts, scale, strict=False)) + int(days or 0) * 86400
        return seconds or None  # Slurm: a time limit of 0 is no limit
    except ValueError:
        return None


def signal_seconds(grace: int, time_limit: object) -> int:
    """How long before the time limit Slurm warns the job: *grace*, at most half the limit."""
    if grace < 1:
        raise UsageError(f"signal_grace must be at least 1 second, got {grace}")
    limit = limit_seconds(time_limit)
    return grace if limit is None else max(1, min(grace, limit // 2))


def _extra_name(item: str) -> str:
    """The option an extra directive sets, after refusing what sbatch would misread or what we manage."""
    if any(c in item for c in "\n\r\0"):
        raise UsageError(f"extra directive {item!r} contains a line break")
    match = EXTRA_NAME.match(item)
    if not match:
        raise UsageError(f"extra directive {item!r} must be a long option: --option or --option=value")
    try:
        words = shlex.split(item, comments=True)  # sbatch reads #SBATCH lines with the same quoting rules
        if words != shlex.split(item):
            raise UsageError(
                f"extra directive {item!r} has an unquoted #: sbatch would read the rest as a comment; "
                "quote the value"
            )
    except ValueError as exc:
        raise UsageError(f"extra directive {item!r}: {exc}") from None
    if len(words) != 1:
        raise UsageError(
            f"extra directive {item!r} would be read by sbatch as {len(words)} options; write one option "
            "per entry, with no spaces (quote a value that has them)"
        )
    name = match.group(1)
    for managed, why in MANAGED.items():  # sbatch accepts unambiguous abbreviations: --sig is --signal
        if managed.startswith(name):
            raise UsageError(f"extra directive {item!r} is not allowed: bumps-mpi sets --{managed} ({why})")
    for setting, option in DIRECTIVES.items():
        if option.startswith(name):
            raise UsageError(f"extra directive {item!r}: use the {setting} setting for --{option}")
    return name


def _skip(
    lines: dict[str, str], skip: list[str] | tuple[str, ...], extra: list[str] | tuple[str, ...]
) -> None:
    """Leave out the directives the site's profile skips (never one bumps-mpi needs)."""
    for option in skip:
        name = option.replace("_", "-").lstrip("-")
        if name in MANAGED:
            raise UsageError(f"skip {option!r}: bumps-mpi needs this directive ({MANAGED[name]})")
        if name not in lines and name not in DIRECTIVES.values():
            known = sorted({*DIRECTIVES.values(), *(_extra_name(i) for i in extra)})
            raise UsageError(
                f"skip {option!r}: no such directive; directives you can skip: {', '.join(known)}"
            )
        lines.pop(name, None)


def _launch(launcher: str, launcher_args: list[str] | tuple[str, ...]) -> str:
    """The launcher's command line, quoted (the task count left to the shell)."""
    launch = [launcher, *launcher_args]
    program = launcher.rsplit("/", 1)[-1]
    if program in MPIRUN_LAUNCHERS:
        launch += ["-n", "${SLURM_NTASKS}"]
    if program == "srun" and not any(a.startswith(("--kill-on-bad-exit", "-K")) for a in launcher_args):
        launch.append(
            "--kill-on-bad-exit=1"
        )  # else a rank that dies leaves the others waiting until walltime
    launch_text = " ".join(a if a == "${SLURM_NTASKS}" else shlex.quote(a) for a in launch)
    return launch_text.replace("${SLURM_NTASKS}", '"${SLURM_NTASKS}"')


def _log_and_control(job_dir: str, array: str | None) -> tuple[str, str]:
    """The Slurm log's path for --output (relative to where sbatch runs) and the control directory's,
    quoted for the shell."""
    base = job_dir.rstrip("/").rsplit("/", 1)[-1]
    if array is None:
        log = f"../{CONTROL_DIR}/{base}/{SLURM_LOG_PATTERN}"  # relative to the job directory
        control = shlex.quote(job_dir.rstrip("/").rsplit("/", 1)[0] + f"/{CONTROL_DIR}/{base}")
    else:
        log = f"{FITS_DIR}/{CONTROL_DIR}/%a/{SLURM_ARRAY_LOG_PATTERN}"
        control = shlex.quote(f"{job_dir.rstrip('/')}/{FITS_DIR}/{CONTROL_DIR}") + '/"$SLURM_ARRAY_TASK_ID"'
    if not SAFE_VALUE.match(log):
        raise UsageError(f"job directory name {base!r}: use letters, digits and _@%+=:,.- only")
    return log, control


def render_sbatch(
    *,
    template: str,
    name: str,
    job_dir: str,
    python: str,
    resources: dict[str, object],
    launcher: str = "srun",
    launcher_args: list[str] | tuple[str, ...] = (),
    extra: list[str] | tuple[str, ...] = (),
    skip: list[str] | tuple[str, ...] = (),
    prologue: list[str] | tuple[str, ...] = (),
    epilogue: list[str] | tuple[str, ...] = (),
    version: str = "",
    signal_grace: int,
    max_requeues: int,
    array: str | None = None,
    gpus: int = 0,
    gpu_directive: str = "gres",
) -> str:
    """The sbatch text for one job; the keyword arguments are the whole set of options.

    With *array* (Slurm's --array text, '0-5%2') it is a campaign's job array: *job_dir* is the campaign's
    directory, and each task runs in its own job directory, fits/<task index> (bumps_mpi.front.campaign).
    The log and the script's own files are in the job's control directory (bumps_mpi.jobdir), which the
    job's sandbox cannot write: slurmd opens the log as the user, and would follow a link the model left.
    """
    if "\n" in job_dir or "\r" in job_dir:
        raise UsageError("the job directory path contains a line break; choose another --jobs-dir")
    if max_requeues < 0:
        raise UsageError(f"max_requeues must be 0 or more, got {max_requeues}")
    log, control = _log_and_control(job_dir, array)
    lines = {
        "job-name": _directive("job-name", name, "name"),
        "output": f"#SBATCH --output={log}",  # relative: sbatch runs in the job (or campaign) directory
        "open-mode": "#SBATCH --open-mode=append",  # requeued runs append, never overwrite
        "requeue": "#SBATCH --requeue",  # the job requeues itself at its time limit (see job.sbatch)
    }
    grace = signal_seconds(signal_grace, resources.get("time"))
    lines["signal"] = f"#SBATCH --signal=B:USR1@{grace}"
    if array is not None:
        lines["array"] = _directive("array", array, "max_running")
    for setting, option in DIRECTIVES.items():
        value = resources.get(setting)
        if value not in (None, ""):
            lines[option] = _directive(option, value, setting)
    if gpus > 0:  # sasmodels' own batch script asks --gres=gpu:1 per fit
        option, value = ("gres", f"gpu:{gpus}") if gpu_directive == "gres" else ("gpus-per-task", gpus)
        lines[option] = _directive(option, value, "gpus")
    for item in extra:
        lines[_extra_name(item)] = f"#SBATCH {item}"
    _skip(lines, skip, extra)
    launch_text = _launch(launcher, launcher_args)
    return Template(template).substitute(
        directives="\n".join(lines[k] for k in sorted(lines)),
        version=version,
        grace=grace,
        name=name,
        job_dir=shlex.quote(job_dir) + ("" if array is None else f'/{FITS_DIR}/"$SLURM_ARRAY_TASK_ID"'),
        control_dir=control,
        max_requeues=int(max_requeues),
        prologue="\n".join(prologue),
        launch=f"{launch_text} {shlex.quote(python)}",
        python=shlex.quote(python),
        epilogue="\n".join(epilogue),
        slurm_log=(SLURM_LOG_PATTERN if array is None else SLURM_ARRAY_LOG_PATTERN)
        .replace("%j", "${SLURM_JOB_ID:-0}")
        .replace("%A", "${SLURM_ARRAY_JOB_ID:-0}")
        .replace("%a", "${SLURM_ARRAY_TASK_ID:-0}"),
        this_job="$SLURM_JOB_ID" if array is None else "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}",
        stop_file=STOP_FILE,
        cancel_file=CANCEL_FILE,
        error_file=ERROR_FILE,
        exit_status_file=EXIT_STATUS_FILE,
    )

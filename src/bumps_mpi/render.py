"""Render the sbatch script: one pure function, every value quoted or refused.

Directive values must be plain words (Slurm parses #SBATCH lines itself, not
the shell), so anything outside a safe character set is refused with the
setting's name. Values in the script body go through shlex.quote. The only
verbatim lines are the prologue and epilogue the user wrote in a site file.
"""

from __future__ import annotations

import re
import shlex
from string import Template

from .errors import UsageError

# sbatch option for each resource setting
DIRECTIVES = {
    "account": "account",
    "cpus_per_task": "cpus-per-task",
    "mem": "mem",
    "nodes": "nodes",
    "ntasks": "ntasks",
    "partition": "partition",
    "qos": "qos",
    "time": "time",
}
SAFE_VALUE = re.compile(r"^[A-Za-z0-9_@%+=:,./\-]+$")
SAFE_EXTRA = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_@%+=:,./\-]+)?$")
MPIRUN_LAUNCHERS = {"mpirun", "mpiexec", "mpiexec.hydra"}


def _directive(option: str, value: object, setting: str) -> str:
    text = str(value)
    if not SAFE_VALUE.match(text):
        raise UsageError(
            f"{setting}={text!r} is not a valid Slurm value (letters, digits and _@%+=:,./- only)"
        )
    return f"#SBATCH --{option}={text}"


def limit_seconds(text: object) -> int | None:
    """Slurm's --time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in seconds; None if absent or unlimited."""
    if text in (None, "") or str(text).upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, clock = str(text).rpartition("-")
    try:
        parts = [int(p) for p in clock.split(":")]
        if len(parts) > 3:
            return None
        scale = (3600, 60, 1) if days or len(parts) == 3 else (60, 1)
        seconds = sum(p * s for p, s in zip(parts, scale, strict=False))
        return seconds + int(days or 0) * 86400
    except ValueError:
        return None


def signal_seconds(grace: int, time_limit: object) -> int:
    """How long before the time limit Slurm warns the job: *grace*, at most half the limit."""
    if grace < 1:
        raise UsageError(f"signal_grace must be at least 1 second, got {grace}")
    limit = limit_seconds(time_limit)
    return grace if limit is None else max(1, min(grace, limit // 2))


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
    signal_grace: int = 120,
) -> str:
    """The sbatch text for one job; the keyword arguments are the whole set of options."""
    if "\n" in job_dir or "\r" in job_dir:
        raise UsageError("the job directory path contains a line break; choose another --jobs-dir")
    lines = {
        "job-name": _directive("job-name", name, "name"),
        "output": "#SBATCH --output=slurm-%j.out",  # relative: sbatch runs in the job directory
        "open-mode": "#SBATCH --open-mode=append",  # requeued runs append, never overwrite
        "requeue": "#SBATCH --requeue",  # the job requeues itself at its time limit (see job.sbatch)
    }
    grace = signal_seconds(signal_grace, resources.get("time"))
    lines["signal"] = f"#SBATCH --signal=B:USR1@{grace}"
    for setting, option in DIRECTIVES.items():
        value = resources.get(setting)
        if value not in (None, ""):
            lines[option] = _directive(option, value, setting)
    for item in extra:
        if not SAFE_EXTRA.match(item):
            raise UsageError(f"extra directive {item!r} must look like --option=value with a plain value")
        lines[item[2:].split("=", 1)[0]] = f"#SBATCH {item}"
    for option in skip:
        lines.pop(option.replace("_", "-").lstrip("-"), None)
    launch = [launcher, *launcher_args]
    program = launcher.rsplit("/", 1)[-1]
    if program in MPIRUN_LAUNCHERS:
        launch += ["-n", "${SLURM_NTASKS}"]
    if program == "srun" and not any(a.startswith(("--kill-on-bad-exit", "-K")) for a in launcher_args):
        launch.append(
            "--kill-on-bad-exit=1"
        )  # else a rank that dies leaves the others waiting until walltime
    launch_text = " ".join(a if a == "${SLURM_NTASKS}" else shlex.quote(a) for a in launch)
    launch_text = launch_text.replace("${SLURM_NTASKS}", '"${SLURM_NTASKS}"')
    return Template(template).substitute(
        directives="\n".join(lines[k] for k in sorted(lines)),
        version=version,
        grace=grace,
        name=name,
        job_dir=shlex.quote(job_dir),
        prologue="\n".join(prologue),
        launch=f"{launch_text} {shlex.quote(python)}",
        python=shlex.quote(python),
        epilogue="\n".join(epilogue),
    )

"""Following jobs from the command line: the notices of the list of jobs, --since, following one
job to its end, and whether an ended one can be resumed."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..cluster.states import JobState
from ..errors import BumpsMpiError
from ..records import Status
from ..text import one_line
from .group import echo
from .output import (
    progress_text,
)


def since_time(text: str | None) -> float | None:
    """'30m', '2h', '3d' ago, or a date 'YYYY-MM-DD[THH:MM]', as a Unix time."""
    if text is None:
        return None
    import datetime

    units = {"m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return time.time() - float(text[:-1]) * units[text[-1]]
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use 30m, 2h, 3d or a date like 2026-11-25", param_hint="--since"
        ) from None


def notices() -> None:
    """Fallbacks and skipped registry lines: said once per command, on stderr."""
    from ..cluster import slurm
    from ..front import registry

    for line in dict.fromkeys(registry.SKIPPED):
        echo(f"bumps-submit: warning: skipped {line}", err=True)
    for line in dict.fromkeys(slurm.NOTICES):
        echo(f"bumps-submit: warning: {line}", err=True)


def follow(job: str, interval: float) -> Status:
    """Poll status with a bounded back-off; draw progress while the fit reports it."""
    from ..front import api

    bar: Any = None
    last: Any = None
    wait = interval
    try:
        while True:
            record = api.status([job])[0]
            if record.get("unreadable"):
                raise BumpsMpiError(record["unreadable"])
            progress = record.get("progress")
            if JobState(record["state"]).terminal:
                return record
            if progress and record["state"] == JobState.RUNNING.value:
                if bar is None:
                    bar = click.progressbar(
                        length=progress["steps"],
                        label=f"job {job} {progress.get('steps')} steps",
                        file=sys.stderr,
                        show_eta=False,
                    )
                    bar.__enter__()
                restarts = f"  restarts {record['restarts']}" if record.get("restarts") else ""
                bar.label = one_line(f"job {job}  {progress_text(progress)}{restarts}")
                bar.update(max(0, (progress["step"] or 0) - bar.pos))
            elif (record["state"], record.get("reason")) != last:
                reason = f" ({one_line(record['reason'])})" if record.get("reason") else ""
                echo(f"job {job}: {record['state']}{reason}", err=True)
            key = (record["state"], progress and progress.get("step"))
            wait = interval if key != last else min(wait * 1.5, 30.0)
            last = key if progress else (record["state"], record.get("reason"))
            time.sleep(wait)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


def resumable(done: dict[str, Any]) -> bool:
    from pathlib import Path

    from ..jobdir import CHECKPOINT_FILE

    return (Path(done["job_dir"]) / CHECKPOINT_FILE).exists()

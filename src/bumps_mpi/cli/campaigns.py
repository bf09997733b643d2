"""A campaign named on the command line (by its array id or directory): its table, its report, and
following it until every fit has ended."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..cluster.states import JobState
from ..text import plain
from .group import echo, emit_json
from .output import (
    counts_text,
    print_campaign,
    print_table,
)


def campaign_of(ref: str) -> Any:
    """The Campaign *ref* names (its directory or its array's id), or None when it names a single job."""
    from ..front import campaign

    found = campaign.find(ref)
    if found is None:
        return None
    from ..front.jobs import Campaign

    return Campaign(found)


def campaign_results(found: Any, as_json: bool, as_csv: bool) -> None:
    """The table on stdout (text, CSV or JSON); exit 1 after it when some fits have no results."""
    from ..front import campaign_table

    rows = found.table()
    written = campaign_table.write_report(found.campaign_dir, rows)
    if as_json:
        emit_json(rows)
    elif as_csv:
        click.echo(plain(campaign_table.write_csv(found.campaign_dir, rows)), nl=False)
    else:
        print_table(rows)
        if written is not None:
            echo(f"report: {written}")
    missing = [r for r in rows if r["chisq"] is None]
    if missing:
        echo(
            f"bumps-submit: {len(missing)} of {len(rows)} fits have no results; their rows say why", err=True
        )
        sys.exit(1)


def watch_campaign(found: Any, interval: float) -> None:
    """A line whenever the counts change, until every fit has ended; exit 1 unless all completed."""
    last, wait = None, interval
    try:
        while True:
            summary = found.status()
            line = counts_text(summary)
            if line != last:
                echo(f"campaign {summary['name']}: {line}", err=True)
            wait = interval if line != last else min(wait * 1.5, 30.0)
            last = line
            if summary["ended"]:
                break
            time.sleep(wait)
    except KeyboardInterrupt:
        echo("\nStopped watching; the campaign goes on.", err=True)
        sys.exit(130)
    print_campaign(summary, every=False)
    if summary["counts"].get(JobState.COMPLETED.value, 0) != summary["fits"]:
        sys.exit(1)

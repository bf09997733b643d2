"""bumps-submit: the command group, and how it speaks: errors from the API are one line on stderr and
exit code 1, followed where there is one by what the user's code printed (a failed model check) or its
traceback (a failed fit); click's own usage errors exit 2. Everything printed that a model controls
(names, messages, tracebacks, output) is stripped of terminal control sequences."""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import BumpsMpiError, JobFailed
from ..text import one_line, plain
from ..version import __version__


def echo(text: object = "", err: bool = False, nl: bool = True) -> None:
    click.echo(plain(text), err=err, nl=nl)


def emit_json(obj: Any) -> None:
    import json  # here, not at the top: `--help` and plain `status` start faster without it

    click.echo(json.dumps(obj, indent=2, sort_keys=True, allow_nan=True))


def fail(message: str, details: str | None = None) -> None:
    echo(f"bumps-submit: error: {one_line(message)}", err=True)
    if details:
        echo(details.rstrip(), err=True)
    sys.exit(1)


class Group(click.Group):
    """Turns every BumpsMpiError into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JobFailed as exc:
            fail(str(exc), exc.error.get("traceback"))
        except BumpsMpiError as exc:
            details = None
            if exc.output:
                lines = "\n".join(f"  | {line}" for line in exc.output.splitlines())
                details = f"what the model printed (last lines):\n{lines}"
            fail(str(exc), details)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bumps-submit")
def main() -> None:
    """Submit Bumps fits to Slurm (or run them here under MPI) and follow them to their results."""


def stderr(line: str) -> None:
    echo(line, err=True)

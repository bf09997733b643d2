"""Exception classes: each one is a message a user can act on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class BumpsMpiError(Exception):
    """Base class; the CLI prints str(error) on one line and exits non-zero.

    *output* is what the user's code printed before it failed (the tail of it):
    the CLI shows it below the one-line message.
    """

    def __init__(self, message: str = "", output: str | None = None):
        super().__init__(message)
        self.output = output or None


class UsageError(BumpsMpiError):
    """Bad input from the user: an option, a name, a path."""


class ModelCheckError(BumpsMpiError):
    """The model could not be loaded or evaluated on the login node."""


class SubmitError(BumpsMpiError):
    """sbatch refused the job or could not be run."""


class UnreadableFile(BumpsMpiError):
    """A file bumps-mpi reads (job.json, result.json, the registry, the site config) is broken."""

    def __init__(self, path: object, why: str):
        self.path = path
        super().__init__(f"cannot read {path}: {why}")


class JobNotFound(BumpsMpiError):
    """No job directory or registry entry matches what the user named."""


class JobFailed(JobNotFound):
    """The job wrote error.json: carries it so the CLI can show the traceback."""

    def __init__(self, error: dict):
        self.error = error
        super().__init__(f"the fit failed{where(error)}: {error.get('message')}")


class RemoteError(BumpsMpiError):
    """An exception raised on another MPI rank, carried back to rank 0."""

    def __init__(self, rank: int, host: str, point: list[float] | None, remote_traceback: str):
        self.rank = rank
        self.host = host
        self.point = point
        self.remote_traceback = remote_traceback
        last = remote_traceback.strip().splitlines()[-1] if remote_traceback.strip() else "unknown error"
        super().__init__(f"rank {rank} on {host} failed at point {point}: {last}")


def where(error: Mapping[str, Any]) -> str:
    """' on rank 1 (node7)', ' on node7', or '' when the launcher could not say which rank died."""
    rank, host = error.get("rank"), error.get("host")
    if rank is not None:
        return f" on rank {rank}" + (f" ({host})" if host else "")
    return f" on {host}" if host else ""

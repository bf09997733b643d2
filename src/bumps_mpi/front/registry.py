"""The per-user list of submitted jobs, so `status` with no argument can list mine.

One JSON line per job, appended with a single write (atomic for short lines
with O_APPEND). A line that is not a JSON object with a job directory (a
crash mid-write, a hand edit, bytes that are not UTF-8) is skipped, and said
once, naming the file and the line: the other jobs are still listed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import BumpsMpiError, UnreadableFile

SKIPPED: list[str] = []  # lines skipped by the last entries(), for the CLI to say once
_CHOSEN: list[Path] = []  # the list this process keeps, when its owner chose one (use)


def use(path: Path) -> None:
    """Keep this process's list of jobs in *path*: the job controller keeps its own, in its data
    directory, rather than in its account's (and nothing is set in the environment its children get)."""
    _CHOSEN[:] = [Path(path)]


def registry_path() -> Path:
    if _CHOSEN:
        return _CHOSEN[0]
    env = os.environ.get("BUMPS_MPI_REGISTRY")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bumps-mpi" / "jobs.jsonl"


def add(entry: dict[str, Any]) -> None:
    path = registry_path()
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        raise BumpsMpiError(f"cannot add to your list of jobs {path}: {exc.strerror or exc}") from None


def entries() -> list[dict[str, Any]]:
    """Newest first; unusable lines are skipped and listed in SKIPPED.

    Parsed once per command while the file is unchanged (a command may look up a campaign, then a job).
    """
    path = registry_path()
    try:
        info = path.stat()
    except FileNotFoundError:
        SKIPPED.clear()
        return []
    except OSError as exc:
        raise UnreadableFile(path, exc.strerror or str(exc)) from None
    key = (str(path), info.st_mtime_ns, info.st_size)
    if _PARSED.get("key") != key:
        _PARSED.update(key=key, entries=_parse(path))
    return list(_PARSED["entries"])


_PARSED: dict[str, Any] = {}  # the last file parsed, by path, modification time and size


def _parse(path: Path) -> list[dict[str, Any]]:
    SKIPPED.clear()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise UnreadableFile(path, exc.strerror or str(exc)) from None
    found = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            SKIPPED.append(f"{path} line {number}: not UTF-8")
            continue
        except json.JSONDecodeError:
            SKIPPED.append(f"{path} line {number}: not JSON")
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("job_dir"), str):
            SKIPPED.append(f"{path} line {number}: not a job entry")
            continue
        found.append(entry)
    return found[::-1]


def find(job_id: str) -> dict[str, Any] | None:
    """The newest entry of the job with this id (a campaign's own entries are bumps_mpi.front.campaign's)."""
    for entry in entries():
        if entry.get("job_id") is not None and str(entry["job_id"]) == job_id and not entry.get("campaign"):
            return entry
    return None

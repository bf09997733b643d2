"""The per-user list of submitted jobs, so `status` with no argument can list mine.

One JSON line per job, appended with a single write (atomic for short lines
with O_APPEND); readers skip a line they cannot parse rather than fail.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def registry_path() -> Path:
    env = os.environ.get("BUMPS_MPI_REGISTRY")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bumps-mpi" / "jobs.jsonl"


def add(entry: dict[str, Any]) -> None:
    path = registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def entries() -> list[dict[str, Any]]:
    """Newest first."""
    try:
        text = registry_path().read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found[::-1]


def find(job_id: str) -> dict[str, Any] | None:
    for entry in entries():
        if entry.get("job_id") is not None and str(entry["job_id"]) == job_id:
            return entry
    return None

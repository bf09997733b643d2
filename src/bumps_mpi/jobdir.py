"""The job directory: the contract between the login node and the job.

Everything written here is written atomically (temporary name in the same
directory, fsync, rename), so a reader never sees half a file and a crash
never leaves one behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

JOB_FILE = "job.json"
SCRIPT_FILE = "run.sbatch"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
LOCAL_STATE_FILE = "local.json"
MODEL_DIR = "model"
EXPORT_DIR = "export"
CHECKPOINT_FILE = "checkpoint.h5"  # the fit's state, to continue after a stop (bumps_mpi.checkpoint)
RESUMABLE_FITTERS = ("dream", "de")  # the fitters whose state Bumps can save and resume
STOP_FILE = "stop-request"  # written by the sbatch script's time-limit trap: checkpoint and stop
CHECKPOINT_REQUEST_FILE = "checkpoint-request"  # `bumps-submit checkpoint`: save now, go on
CANCEL_FILE = "cancel-request"  # written by `bumps-submit cancel`: never requeue after it
RUNS_FILE = "runs.json"  # one entry per allocation: started, finished, why, checkpoint timings


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write *data* to *path* so that readers see the old file or the new one, never a mix."""
    import tempfile  # only when writing: keeps `bumps-submit status` start-up small

    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist (yet)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


class JobDir:
    """Paths and reads of one job directory."""

    def __init__(self, path: Path | str):
        self.path = Path(path).resolve()
        self._spec: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"JobDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def spec(self) -> dict[str, Any]:
        """job.json, read once: it changes only through update_spec (results and progress are re-read)."""
        if self._spec is None:
            spec = read_json(self.file(JOB_FILE))
            if spec is None:
                raise FileNotFoundError(f"{self.path} is not a bumps-mpi job directory (no {JOB_FILE})")
            self._spec = spec
        return self._spec

    def update_spec(self, **fields: Any) -> None:
        spec = {**self.spec, **fields}
        write_json(self.file(JOB_FILE), spec)
        self._spec = spec

    @property
    def result(self) -> dict[str, Any] | None:
        return read_json(self.file(RESULT_FILE))

    @property
    def error(self) -> dict[str, Any] | None:
        return read_json(self.file(ERROR_FILE))

    @property
    def local_state(self) -> dict[str, Any] | None:
        return read_json(self.file(LOCAL_STATE_FILE))

    def is_job_dir(self) -> bool:
        return self.file(JOB_FILE).is_file()

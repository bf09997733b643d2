"""The job directory: the contract between the login node and the job, and every file name in it.

Everything written here is written atomically (temporary name in the same
directory, fsync, rename), so a reader never sees half a file and a crash
never leaves one behind. Files and directories get the permissions the
user's umask gives (as Bumps' own exports do), so a group that shares project
storage can read each other's results when its umask says so.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import UnreadableFile

JOB_FILE = "job.json"  # what was asked: model, fit, resources, versions, Slurm id(s)
SCRIPT_FILE = "run.sbatch"  # the exact script submitted
RESULT_FILE = "result.json"  # rank 0, on success
ERROR_FILE = "error.json"  # rank 0 or the post-mortem, on failure
PROGRESS_FILE = "progress.json"  # rank 0, every few seconds (bumps_mpi.progress)
STATE_FILE = "state.json"  # the final Slurm state, cached by `status`
LOCAL_STATE_FILE = "local.json"  # a --local run: its processes while it runs, its end state after
LOCAL_LOG_FILE = "local.out"  # a --local run's output (append mode)
SLURM_LOG_PATTERN = "slurm-%j.out"  # sbatch's --output, relative to the job directory (append mode)
SLURM_ARRAY_LOG_PATTERN = "slurm-%A_%a.out"  # an array task's log, in its own job directory
EXIT_STATUS_FILE = "exit-status"  # the batch script's own exit status (Slurm shows 137 as 9:0)
RANKS_FILE = "ranks.json"  # host, pid and start time of every rank
RUNS_FILE = "runs.json"  # one entry per allocation: started, finished, why, checkpoint timings
MODEL_DIR = "model"  # a copy of the model file, for the record
EXPORT_DIR = "export"  # Bumps' own exports
FIGURES_DIR = "figures"  # the fit's figures, drawn by Bumps' own plotting code (bumps_mpi.figures)
FIGURES_MANIFEST = "figures.json"  # in FIGURES_DIR: what was drawn, from which values, the statistics
REPORT_FILE = "report.html"  # one self-contained page: facts, parameters, figures (bumps_mpi.report)
CHECKPOINT_FILE = "checkpoint.h5"  # the fit's state, to continue after a stop (bumps_mpi.checkpoint)
STOP_FILE = "stop-request"  # written by the sbatch script's time-limit trap: checkpoint and stop
CHECKPOINT_REQUEST_FILE = "checkpoint-request"  # `bumps-submit checkpoint`: save now, go on
CANCEL_FILE = "cancel-request"  # written by `bumps-submit cancel`: never requeue after it

CAMPAIGN_FILE = "campaign.json"  # a campaign's directory: its fits, their arguments, its arrays
FITS_DIR = "fits"  # in a campaign's directory: one job directory per fit, named by its array index

RESUMABLE_FITTERS = ("dream", "de")  # the fitters whose state Bumps can save and resume


NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))
# the fields each file must have, with their types: what bumps-mpi reads from it (a file that has other
# types was not written by bumps-mpi, or was damaged: it is unreadable, named as such, never a traceback)
SHAPES: dict[str, dict[str, tuple[type, ...]]] = {
    RESULT_FILE: {"fitter": (str,), "chisq": NUMBER, "chisq_str": (str,), "parameters": (list,)},
    PROGRESS_FILE: {"step": OPTIONAL_NUMBER, "steps": OPTIONAL_NUMBER},
    LOCAL_STATE_FILE: {
        "state": (str,),
        "started": NUMBER,
        "finished": OPTIONAL_NUMBER,
        "exit_code": (int, type(None)),
        "launcher": (dict, type(None)),
        "supervisor": (dict, type(None)),
    },
}
PARAMETER_SHAPE = {"name": (str,), "best": NUMBER, "mean": NUMBER, "std": NUMBER}


def _check_shape(data: Any, path: Path, shape: dict[str, tuple[type, ...]]) -> Any:
    for key, types in shape.items():
        value = data.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise UnreadableFile(path, f"its {key!r} is {type(value).__name__}, not what bumps-mpi writes")
    return data


def slurm_log(job_id: str | None) -> str:
    """The name sbatch gives the job's output (SLURM_LOG_PATTERN with the id filled in)."""
    return SLURM_LOG_PATTERN.replace("%j", str(job_id or 0))


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write *data* to *path* so that readers see the old file or the new one, never a mix.

    The temporary file is removed on any failure (a full disk included), and the
    file gets the permissions open() would give it (mkstemp alone gives 0600).
    """
    import tempfile  # only when writing: keeps `bumps-submit status` start-up small

    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
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


def read_regular(path: Path) -> bytes:
    """A regular file's bytes, never through a symbolic link and never blocking on a pipe: a model
    writes in its job directory, and whoever reads these files must not be led elsewhere or stalled."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, "a symbolic link: not followed") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return fh.read()


def read_json(path: Path, kind: type | None = dict) -> Any | None:
    """The parsed file, or None when it does not exist (yet).

    Anything else that is wrong with it (not JSON, truncated, not UTF-8, a
    directory, unreadable, or not a *kind*) is UnreadableFile, naming the file.
    """
    path = Path(path)
    try:
        data = json.loads(read_regular(path).decode("utf-8"))
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise UnreadableFile(path, "not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise UnreadableFile(path, f"not valid JSON ({exc.msg} at line {exc.lineno}); truncated?") from None
    except OSError as exc:
        raise UnreadableFile(path, exc.strerror or str(exc)) from None
    if kind is not None and not isinstance(data, kind):
        raise UnreadableFile(path, f"holds a JSON {type(data).__name__}, not a {kind.__name__}")
    return data


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
            if not self.path.is_dir():
                raise UnreadableFile(self.path, "the job directory no longer exists (deleted or moved?)")
            spec = read_json(self.file(JOB_FILE))
            if spec is None:
                raise UnreadableFile(self.file(JOB_FILE), "missing: not a bumps-mpi job directory")
            self._spec = spec
        return self._spec

    def update_spec(self, **fields: Any) -> None:
        spec = {**self.spec, **fields}
        write_json(self.file(JOB_FILE), spec)
        self._spec = spec

    def _shaped(self, name: str) -> dict[str, Any] | None:
        data = read_json(self.file(name))
        return None if data is None else _check_shape(data, self.file(name), SHAPES[name])

    @property
    def result(self) -> dict[str, Any] | None:
        result = self._shaped(RESULT_FILE)
        for parameter in (result or {}).get("parameters", []):
            if not isinstance(parameter, dict):
                raise UnreadableFile(self.file(RESULT_FILE), "a parameter that is not a record")
            _check_shape(parameter, self.file(RESULT_FILE), PARAMETER_SHAPE)
        return result

    @property
    def error(self) -> dict[str, Any] | None:
        return read_json(self.file(ERROR_FILE))

    @property
    def progress(self) -> dict[str, Any] | None:
        return self._shaped(PROGRESS_FILE)

    @property
    def local_state(self) -> dict[str, Any] | None:
        return self._shaped(LOCAL_STATE_FILE)

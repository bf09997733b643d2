"""The job directory and its control directory: every file name in them, and how they are read.

The model runs inside rank 0, so everything in the job directory can be
written by the model: it is a report, read carefully (never through a link,
never more than a cap, never as policy). What decides anything (the request:
sandbox, paths, requeues, the script; the run's own records: the local run's
processes, the cached Slurm state, the batch script's exit status, stop and
cancel requests; the Slurm log, which slurmd opens as the user) lives in the
job's control directory, `<parent>/.bumps-control/<name>/`, beside the job
directory: the job's sandbox can write only its own directory, so the model
can read its control directory but never change it. `JobDir.file(name)` puts
each name where it belongs.

Everything written here is written atomically (temporary name in the same
directory, fsync, rename), so a reader never sees half a file and a crash
never leaves one behind. Files and directories get the permissions the
user's umask gives (as Bumps' own exports do), so a group that shares project
storage can read each other's results when its umask says so.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, cast

from .errors import UnreadableFile, UsageError
from .records import Request, Result

JOB_FILE = "job.json"  # a copy of the request, for the record (the model can change it: never read back)
REQUEST_FILE = (
    "request.json"  # control: what was asked: model, fit, resources, sandbox, versions, Slurm id(s)
)
SCRIPT_FILE = "run.sbatch"  # control: the exact script submitted
RESULT_FILE = "result.json"  # rank 0, on success
ERROR_FILE = "error.json"  # rank 0 or the post-mortem, on failure
PROGRESS_FILE = "progress.json"  # rank 0, every few seconds (bumps_mpi.runtime.progress)
STATE_FILE = "state.json"  # control: the final Slurm state, cached by `status`
LOCAL_STATE_FILE = "local.json"  # control: a --local run: its processes while it runs, its end state after
LOCAL_LOG_FILE = "local.out"  # a --local run's output (append mode)
SLURM_LOG_PATTERN = "slurm-%j.out"  # sbatch's --output, relative to the job directory (append mode)
SLURM_ARRAY_LOG_PATTERN = "slurm-%A_%a.out"  # an array task's log, in its own job directory
EXIT_STATUS_FILE = "exit-status"  # control: the batch script's own exit status (Slurm shows 137 as 9:0)
RANKS_FILE = "ranks.json"  # host, pid and start time of every rank
RUNS_FILE = "runs.json"  # one entry per allocation: started, finished, why, checkpoint timings
MODEL_DIR = "model"  # a copy of the model file, for the record
EXPORT_DIR = "export"  # Bumps' own exports
SESSION_FILE = "session.h5"  # the fit as a Bumps session, for Bumps' viewer (bumps_mpi.runtime.session)
FIGURES_DIR = "figures"  # the fit's figures, drawn by Bumps' own plotting code (bumps_mpi.results.figures)
FIGURES_MANIFEST = "figures.json"  # in FIGURES_DIR: what was drawn, from which values, the statistics
REPORT_FILE = "report.html"  # one self-contained page: facts, parameters, figures (bumps_mpi.results.report)
CHECKPOINT_FILE = "checkpoint.h5"  # the fit's state, to continue after a stop (bumps_mpi.runtime.checkpoint)
STOP_FILE = "stop-request"  # control: written by the sbatch script's time-limit trap: checkpoint and stop
CHECKPOINT_REQUEST_FILE = (
    "checkpoint-request"  # `bumps-submit checkpoint`: save now, go on (rank 0 removes it)
)
CANCEL_FILE = "cancel-request"  # control: written by `bumps-submit cancel`: never requeue after it
RESUME_LOCK = "resume.lock"  # control: held by a resume from its choice to its record (one at a time)
CAMPAIGN_LOCK = ".resume.lock"  # in a campaign's directory: the same for its resume --failed
CONTROL_DIR = ".bumps-control"  # beside job directories: <parent>/.bumps-control/<job directory's name>/
# the names that live in the control directory (and the copies set_aside keeps of them, NAME.<stamp>)
CONTROL_FILES = (
    REQUEST_FILE,
    RESUME_LOCK,
    SCRIPT_FILE,
    STATE_FILE,
    LOCAL_STATE_FILE,
    EXIT_STATUS_FILE,
    STOP_FILE,
    CANCEL_FILE,
)
SLURM_LOG_PREFIX = "slurm-"  # the Slurm log is in the control directory: slurmd opens it as the user

# the most bumps-mpi reads of a job file; a larger one is damaged (or forged), reported, never loaded
MAX_READ_BYTES = {RESULT_FILE: 32 << 20, PROGRESS_FILE: 1 << 20, RANKS_FILE: 4 << 20, RUNS_FILE: 4 << 20}
DEFAULT_MAX_READ_BYTES = 16 << 20

CAMPAIGN_FILE = "campaign.json"  # a campaign's directory: its fits, their arguments, its arrays
FITS_DIR = "fits"  # in a campaign's directory: one job directory per fit, named by its array index

RESUMABLE_FITTERS = ("dream", "de")  # the fitters whose state Bumps can save and resume


NUMBER: tuple[type, ...] = (int, float)
OPTIONAL_NUMBER: tuple[type, ...] = (int, float, type(None))
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
PARAMETER_SHAPE: dict[str, tuple[type, ...]] = {"name": (str,), "best": NUMBER, "mean": NUMBER, "std": NUMBER}
# the request's keys that decide anything, each checked where it is present (records.Request lists them all)
REQUEST_SHAPE: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "model": (str,),
    "model_args": (list,),
    "fit": (str,),
    "fit_options": (dict,),
    "max_requeues": (int,),
    "created": NUMBER,
    "resources": (dict,),
    "sandbox": (dict,),
    "slurm": (dict,),
    "local": (dict,),
    "campaign": (dict,),
}


def _check_shape(
    data: Any, path: Path, shape: dict[str, tuple[type, ...]], present_only: bool = False
) -> Any:
    """*data* with the shape asked (with *present_only*, of the keys it has), else UnreadableFile."""
    for key, types in shape.items():
        if present_only and key not in data:
            continue
        value = data.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise UnreadableFile(path, f"its {key!r} is {type(value).__name__}, not what bumps-mpi writes")
        if isinstance(value, float) and not math.isfinite(value) and key != "chisq":
            raise UnreadableFile(path, f"its {key!r} is {value}, not what bumps-mpi writes")
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


def control_dir(job_path: Path | str) -> Path:
    """Where a job directory's trusted records live: beside it, out of its sandbox's reach."""
    job_path = Path(job_path)
    return job_path.parent / CONTROL_DIR / job_path.name


def is_control_name(name: str) -> bool:
    """Whether a file of this name belongs in the control directory (see the module's docstring)."""
    return name.startswith(SLURM_LOG_PREFIX) or any(
        name == f or name.startswith(f + ".") for f in CONTROL_FILES
    )


def max_read_bytes(path: Path | str) -> int:
    """The cap on reading a job file of this name."""
    return MAX_READ_BYTES.get(Path(path).name, DEFAULT_MAX_READ_BYTES)


def read_regular(path: Path, limit: int | None = None) -> bytes:
    """A regular file's bytes, never through a symbolic link, never blocking on a pipe, and never more
    than *limit* bytes (default: the file's cap, max_read_bytes): a model writes in its job directory, and
    whoever reads these files must not be led elsewhere, stalled or made to load gigabytes. A file over
    the limit is an OSError (EFBIG)."""
    limit = max_read_bytes(path) if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, "a symbolic link: not followed") from None
        raise
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        too_big = OSError(errno.EFBIG, f"larger than {limit >> 10} KiB: damaged, not loaded")
        if info.st_size > limit:
            raise too_big
        data = fh.read(limit + 1)  # the file may grow while it is read
        if len(data) > limit:
            raise too_big
        return data


@contextmanager
def exclusive(path: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on *path* (made if missing) for the block; UsageError(*busy*) at once when
    another process holds it. The lock ends with the process, so a killed command never leaves it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(busy) from None
        yield
    finally:
        os.close(fd)


def open_beneath(base: Path, relative: str) -> BinaryIO:
    """The regular file *base*/*relative*, opened component by component from *base* down without
    following any link (a link anywhere on the way fails), never blocking on a pipe; OSError otherwise."""
    parts = PurePosixPath(relative).parts
    if not parts or PurePosixPath(relative).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise FileNotFoundError(relative)
    directory = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(base, directory)
    try:
        for part in parts[:-1]:
            inner = os.open(part, directory, dir_fd=fd)
            os.close(fd)
            fd = inner
        found = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(found).st_mode):
        os.close(found)
        raise IsADirectoryError(relative)
    return os.fdopen(found, "rb")


def read_tail(path: Path, size: int = 64 << 10) -> bytes:
    """At most the last *size* bytes of a log, never through a link and never blocking on a pipe."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        fh.seek(max(0, info.st_size - size))
        return fh.read(size)


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


def is_job_dir(path: Path | str) -> bool:
    """Whether *path* is a job directory made by this bumps-mpi: a directory with its control request."""
    path = Path(path)
    return path.is_dir() and (control_dir(path.resolve()) / REQUEST_FILE).is_file()


class JobDir:
    """Paths and reads of one job directory and its control directory."""

    def __init__(self, path: Path | str):
        self.path = Path(path).resolve()
        self.control = control_dir(self.path)
        self._spec: Request | None = None

    def __repr__(self) -> str:
        return f"JobDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        """Where the file *name* of this job is: its control directory for what decides anything."""
        return (self.control if is_control_name(name) else self.path) / name

    @property
    def spec(self) -> Request:
        """The request (request.json in the control directory), read once and shape-checked: it changes
        only through update_spec. Never job.json, which the model can write."""
        if self._spec is None:
            if not self.path.is_dir():
                raise UnreadableFile(self.path, "the job directory no longer exists (deleted or moved?)")
            spec = read_json(self.file(REQUEST_FILE))
            if spec is None:
                raise UnreadableFile(
                    self.file(REQUEST_FILE),
                    "missing: not a job directory of this bumps-mpi (an older version kept its request "
                    "where the model could change it: submit the model again)",
                )
            self._spec = _check_shape(spec, self.file(REQUEST_FILE), REQUEST_SHAPE, present_only=True)
        return self._spec

    def update_spec(self, **fields: Any) -> None:
        """Change the request; job.json in the job directory gets a copy, for the record."""
        spec = cast(Request, {**self.spec, **fields})
        write_json(self.file(REQUEST_FILE), spec)
        self._spec = spec
        try:
            write_json(self.file(JOB_FILE), spec)
        except OSError:  # the copy is for people; the request itself was written
            pass

    def read_beneath(self, relative: str, limit: int) -> bytes:
        """A file below the job directory (figures/x.png): no link followed anywhere below the job
        directory, at most *limit* bytes (OSError EFBIG over it)."""
        with open_beneath(self.path, relative) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"larger than {limit >> 10} KiB: damaged, not loaded")
        return data

    def remove(self) -> None:
        """Delete the job directory and its control directory (a job never submitted, or deleted)."""
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)
        shutil.rmtree(self.control, ignore_errors=True)
        try:
            self.control.parent.rmdir()  # the last job here: leave no empty .bumps-control behind
        except OSError:
            pass

    def _shaped(self, name: str) -> dict[str, Any] | None:
        data = read_json(self.file(name))
        return None if data is None else _check_shape(data, self.file(name), SHAPES[name])

    @property
    def result(self) -> Result | None:
        result = self._shaped(RESULT_FILE)
        for parameter in (result or {}).get("parameters", []):
            if not isinstance(parameter, dict):
                raise UnreadableFile(self.file(RESULT_FILE), "a parameter that is not a record")
            _check_shape(parameter, self.file(RESULT_FILE), PARAMETER_SHAPE)
        return cast("Result | None", result)

    @property
    def error(self) -> dict[str, Any] | None:
        return read_json(self.file(ERROR_FILE))

    @property
    def progress(self) -> dict[str, Any] | None:
        return self._shaped(PROGRESS_FILE)

    @property
    def local_state(self) -> dict[str, Any] | None:
        return self._shaped(LOCAL_STATE_FILE)

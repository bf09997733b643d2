"""Local runs: a job directory run here under mpiexec (no Slurm), supervised, and checkable from anywhere.

`bumps-submit submit --local` supervises the run: it records who is who in
local.json (its own process, mpiexec's, each rank's in ranks.json, each with its
start time), echoes the output, passes Ctrl-C, SIGTERM and SIGHUP (the terminal
went away) to rank 0, which checkpoints and stops, and records how the run
ended. When the supervisor itself is gone (killed), `status` still tells a live
run from a stale one by those records, `cancel` stops a live one, and `resume`
continues a stale one.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import SubmitError, UnreadableFile, UsageError
from ..jobdir import (
    CANCEL_FILE,
    CHECKPOINT_FILE,
    LOCAL_LOG_FILE,
    LOCAL_STATE_FILE,
    RANKS_FILE,
    RESUMABLE_FITTERS,
    JobDir,
    read_json,
    write_atomic,
    write_json,
)
from ..pythonenv import safe_environment
from ..records import Status
from . import processes

ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")  # how a local run can end, as local.json records it
RANKS_PER_CORE_LIMIT = 4  # more than this many ranks per core only slows a fit down
STOP_WAIT_S = 30.0  # how long cancel waits for rank 0 to checkpoint before it kills the ranks
TIME_LIMIT_GRACE_S = 60.0  # at a local run's time limit: how long rank 0 has to checkpoint and stop


def find_mpiexec() -> str:
    """mpiexec beside this Python (the mpich wheel puts it there), else on PATH."""
    import shutil

    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if not found:
        raise SubmitError("no mpiexec found: install the MPI runtime with 'pip install mpich'")
    return found


def check_ranks(ranks: int, warn: Callable[[str], None] | None, label: str = "-n") -> None:
    """Refuse absurd rank counts for this machine; warn when the ranks outnumber its cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if ranks < 1:
        raise UsageError(f"{label} must be at least 1, got {ranks}")
    if ranks > RANKS_PER_CORE_LIMIT * cores:
        raise UsageError(
            f"{label} {ranks} is more than {RANKS_PER_CORE_LIMIT} ranks per core on this machine "
            f"({cores} cores): it would only be slower; submit to Slurm for more ranks"
        )
    if ranks > cores and warn is not None:
        warn(f"bumps-submit: warning: {ranks} ranks on {cores} cores: they share cores, each runs slower")


def _ranks(job: JobDir) -> list[dict[str, Any]]:
    try:
        ranks = read_json(job.file(RANKS_FILE), kind=list) or []
    except Exception:  # a broken ranks.json: no rank to signal, the launcher still is
        return []
    return [r for r in ranks if isinstance(r, dict)]


def _kill_ranks(
    job: JobDir, launcher: subprocess.Popen | None = None, launcher_pid: int | None = None
) -> None:
    """SIGKILL every rank still alive (each in its own session, so mpiexec's death would not end them):
    those ranks.json names, and every process of the job below mpiexec (ranks.json is the model's to
    write: a forged one must not leave the real ranks running)."""
    pids = {int(rank["pid"]) for rank in _ranks(job) if processes.runs_job(rank, job.path)}
    below = launcher.pid if launcher is not None else launcher_pid
    if below is not None:
        pids |= {
            p for p in processes.descendants(below) if str(job.path) in (processes.command_line(p) or [])
        }
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if launcher is not None:
        launcher.kill()


def _rank0(job: JobDir, launcher_pid: int | None) -> dict[str, Any] | None:
    """Rank 0 of the run, from the process table below its mpiexec (its own environment says its rank);
    ranks.json (the model's to write) only when the launcher is not known here."""
    if launcher_pid is None:
        return next((r for r in _ranks(job) if r.get("rank") == 0 and processes.runs_job(r, job.path)), None)
    for pid in processes.descendants(launcher_pid):
        if str(job.path) in (processes.command_line(pid) or []) and processes.rank_of(pid) == 0:
            return processes.identity(pid)
    return None


def run(job: JobDir, ranks: int, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or continue, from its checkpoint) a job directory under mpiexec here; returns how it ended.

    mpiexec runs in its own session, so a Ctrl-C, SIGTERM or SIGHUP reaches only
    this process, which passes it to rank 0: rank 0 checkpoints at its next
    generation and stops the others (a second signal kills the run). A fitter
    that keeps no checkpoint has nothing to save: the first signal kills it.
    """
    return _Run(job, ranks, echo).run()


class _Run:
    """One local run: its signals (passed to rank 0), its time limit (timers), its output (to the log
    and *echo*), and how it ended (local.json)."""

    def __init__(self, job: JobDir, ranks: int, echo: Callable[[str], None] | None):
        self.job, self.ranks, self.echo = job, ranks, echo
        self.output = echo  # None once the terminal is gone
        self.command = [
            find_mpiexec(),
            "-n",
            str(ranks),
            sys.executable,
            "-m",
            "mpi4py",
            "-m",
            "bumps_mpi.job",
        ]
        self.command.append(str(job.path))
        self.resumable = job.spec.get("fit") in RESUMABLE_FITTERS
        self.limit = (job.spec.get("local") or {}).get("time_limit_s")
        self.started = time.time()
        self.stops: list[int] = []
        self.proc: subprocess.Popen | None = None
        self.timed_out: list[float] = []
        self.timers: list[threading.Timer] = []  # all cancelled when the run ends: none may outlive it
        self.timing = threading.Lock()
        self.over = False  # the run has ended: no timer starts, none acts
        self.record: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        wanted = [signal.SIGINT, signal.SIGTERM]
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup, a hangup stops nothing
            wanted.append(signal.SIGHUP)
        previous = {sig: signal.signal(sig, self.forward) for sig in wanted}  # before mpiexec: no gap
        if isinstance(self.limit, (int, float)) and self.limit > 0:
            self.after(float(self.limit))
        try:
            with _append(self.job.file(LOCAL_LOG_FILE)) as log:
                proc = self.launch()
                self.pump(proc, log)
                rc = proc.wait()
        finally:
            with self.timing:
                self.over = True
                for timer in self.timers:
                    timer.cancel()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.end(rc)

    def forward(self, signum: int, _frame: Any) -> None:
        """A signal to this process: rank 0 checkpoints and stops the run (a second one kills it)."""
        self.stops.append(signum)
        if signum == signal.SIGHUP:
            self.output = None  # the terminal is gone: nothing more to show
        if self.proc is None:
            return  # not started yet: it is killed as soon as it is
        rank0 = _rank0(self.job, self.proc.pid)
        if len(self.stops) > 1 or rank0 is None or not self.resumable:
            _kill_ranks(self.job, self.proc)
            return
        try:
            os.kill(int(rank0["pid"]), signum if signum != signal.SIGHUP else signal.SIGTERM)
        except ProcessLookupError:  # rank 0 ended meanwhile: make sure the rest does too
            _kill_ranks(self.job, self.proc)

    def after(self, seconds: float) -> None:
        with self.timing:
            if self.over:
                return
            timer = threading.Timer(seconds, self.time_up)
            timer.daemon = True
            self.timers.append(timer)
            timer.start()

    def time_up(self) -> None:
        """The run's time limit (per run, as Slurm's is per allocation): rank 0 checkpoints and stops (as
        at a Slurm time limit), or, past the grace or for a fitter that keeps no checkpoint, the run ends."""
        with self.timing:
            if self.over:
                return
            self.timed_out.append(time.time())
        if self.proc is None:
            return
        rank0 = _rank0(self.job, self.proc.pid)
        if self.resumable and rank0 is not None and len(self.timed_out) == 1:
            try:
                os.kill(int(rank0["pid"]), signal.SIGUSR1)
                self.after(min(TIME_LIMIT_GRACE_S, max(float(self.limit or 0) / 2, 5)))
                return
            except ProcessLookupError:
                pass
        _kill_ranks(self.job, self.proc)

    def launch(self) -> subprocess.Popen:
        """mpiexec in its own session, recorded in local.json (its supervisor is this process)."""
        proc = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.job.control,  # never the job directory: nothing planted there is imported (pythonenv)
            env=safe_environment(),
            start_new_session=True,
        )
        self.proc = proc
        if self.stops:
            _kill_ranks(self.job, proc)
        self.record = {
            "state": "RUNNING",
            "started": self.started,
            "ranks": self.ranks,
            "command": self.command,
            "supervisor": processes.identity(),
            "launcher": processes.identity(proc.pid),
        }
        try:
            write_json(self.job.file(LOCAL_STATE_FILE), self.record)
        except OSError as exc:  # a full disk: nothing could be saved, and the run must not be left going
            proc.kill()
            raise SubmitError(
                f"cannot write {self.job.file(LOCAL_STATE_FILE)}: {exc.strerror or exc}"
            ) from None
        return proc

    def pump(self, proc: subprocess.Popen, log: BinaryIO) -> None:
        """The run's output into its log and, while there is one, to the terminal."""
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                log.write(line)
                log.flush()
            except OSError:  # a full disk: the run goes on; status says why the log stops
                pass
            if self.output is not None:
                try:
                    self.output(line.decode(errors="replace").rstrip("\n"))
                except OSError:  # the terminal went away (EIO, EPIPE): keep running, stop showing
                    self.output = None

    def end(self, rc: int) -> dict[str, Any]:
        """How the run ended, recorded in local.json (its last word: status trusts it once it is there)."""
        from .postmortem import write_postmortem

        job = self.job
        cancelled = bool(self.stops) or job.file(CANCEL_FILE).exists()
        if rc == 0 and _has_result(job):
            state = "COMPLETED"
        elif self.timed_out:
            state = "TIMEOUT"  # resumable when it saved a checkpoint, as after a Slurm time limit
        elif cancelled:
            state = "CANCELLED"  # stopped on request; resumable when it saved a checkpoint
        else:
            state = "FAILED"
            write_postmortem(job.path, rc, job.file(LOCAL_LOG_FILE))
        ended = {**self.record, "state": state, "exit_code": rc, "finished": time.time()}
        if self.timed_out:
            resume = job.file(CHECKPOINT_FILE).exists()
            ended["reason"] = f"its time limit ({self.limit:g} s) was reached" + (
                f"; continue with 'bumps-submit resume {job.path}'" if resume else ""
            )
        try:
            write_json(job.file(LOCAL_STATE_FILE), ended)
        except OSError as exc:  # a full disk: status still sees the processes gone and says so
            if self.echo is not None:
                self.echo(
                    "bumps-submit: warning: could not record the run's end in "
                    f"{LOCAL_STATE_FILE}: {exc.strerror}"
                )
        return ended


def _has_result(job: JobDir) -> bool:
    try:
        return job.result is not None
    except Exception:  # written but unreadable: not a completed fit
        return False


def liveness(job: JobDir, local: dict[str, Any]) -> bool | None:
    """Whether a run recorded as RUNNING still has a process: True, False (stale), None (another host)."""
    records = [local.get("launcher"), *_ranks(job)]
    answers = [processes.runs_job(record, job.path) for record in records]
    if any(answers):
        return True
    if all(a is False for a in answers):
        return False
    return None


def state(job: JobDir, finished: bool) -> Status:
    """The run's state for `status`: as recorded, or for a run recorded as RUNNING, checked."""
    import datetime

    local = job.local_state
    if local is None:  # the directory was made but the run never started (or an old layout)
        return {"state": "UNKNOWN", "reason": "no record of a local run in this directory"}
    until = local["finished"] if isinstance(local.get("finished"), (int, float)) else time.time()
    seconds = max(int(until - local["started"]), 0)
    found: Status = {"elapsed": str(datetime.timedelta(seconds=seconds)), "elapsed_s": seconds}
    if local.get("state") != "RUNNING":
        if local.get("state") not in ENDED:
            raise UnreadableFile(job.file(LOCAL_STATE_FILE), f"unknown state {local.get('state')!r}")
        code = local.get("exit_code")
        exit_code = None
        if isinstance(code, int):  # mpiexec's status; negative: it was killed by that signal
            exit_code = f"{code}:0" if code >= 0 else f"0:{-code}"
        ended: Status = {**found, "state": local["state"], "exit_code": exit_code}
        if isinstance(local.get("reason"), str):
            ended["reason"] = local["reason"]
        return ended
    live = liveness(job, local)
    if live:
        return {**found, "state": "RUNNING"}
    if live is None:
        host = (local.get("launcher") or {}).get("host", "another host")
        return {**found, "state": "RUNNING", "reason": f"runs on {host}: only there can it be checked"}
    if finished:  # its supervisor died, but the fit ended and said how (result.json or error.json)
        return {**found, "state": "COMPLETED" if job.result is not None else "FAILED"}
    how = "cancelled" if job.file(CANCEL_FILE).exists() else "stale"
    return {
        **found,
        "state": "CANCELLED" if how == "cancelled" else "FAILED",
        "reason": f"{how}: its processes are gone without a result (terminal closed or killed?)"
        + (f"; continue with 'bumps-submit resume {job.path}'" if job.file(CHECKPOINT_FILE).exists() else ""),
    }


def cancel(job: JobDir, wait_s: float = STOP_WAIT_S) -> dict[str, Any]:
    """Stop a live local run: rank 0 checkpoints and stops (DREAM, DE), else the ranks are killed at once."""
    local = job.local_state
    if local is None or local.get("state") != "RUNNING":
        was = (local or {}).get("state", "never started")
        raise UsageError(f"{job.path} has already ended ({was}): there is nothing to cancel")
    live = liveness(job, local)
    if live is None:
        host = (local.get("launcher") or {}).get("host", "another host")
        raise UsageError(f"{job.path} runs on {host}: cancel it there")
    try:
        write_atomic(job.file(CANCEL_FILE), f"{time.time()}\n")  # a link the model left there is replaced
    except OSError as exc:
        raise SubmitError(f"cannot write {job.file(CANCEL_FILE)}: {exc.strerror or exc}") from None
    how = "stale"
    if live:
        how = "stopped"
        supervisor = _supervisor(job, local)
        rank0 = _rank0(job, _launcher_pid(job, local))
        resumable = job.spec.get("fit") in RESUMABLE_FITTERS
        if supervisor is not None:
            _signal(supervisor, signal.SIGTERM)  # it passes it to rank 0, or kills what cannot checkpoint
        elif resumable and processes.runs_job(rank0, job.path):
            _signal(rank0, signal.SIGTERM)
        else:
            how = "killed"
            _kill_ranks(job, launcher_pid=_launcher_pid(job, local))
        if not _wait(lambda: not liveness(job, local), wait_s if resumable else 10):
            how = "killed"
            _kill_ranks(job, launcher_pid=_launcher_pid(job, local))
            if processes.runs_job(local.get("launcher"), job.path):
                _signal(local.get("launcher"), signal.SIGKILL)
            _wait(lambda: not liveness(job, local), 10)
    if _supervisor(job, local) is not None:  # it records the end itself
        _wait(lambda: (job.local_state or {}).get("state") != "RUNNING", 10)
    if (job.local_state or {}).get("state") == "RUNNING":
        try:
            write_json(job.file(LOCAL_STATE_FILE), {**local, "state": "CANCELLED", "finished": time.time()})
        except OSError:  # status still sees the processes gone, and the cancel-request
            pass
    return {"job_id": None, "job_dir": str(job.path), "cancelled": True, "how": how}


def _launcher_pid(job: JobDir, local: dict[str, Any]) -> int | None:
    launcher = local.get("launcher")
    return int(launcher["pid"]) if launcher and processes.runs_job(launcher, job.path) else None


def _append(path: Path) -> Any:
    """The run's log, opened to append: whatever else the model left under its name (a link, a pipe, a
    directory) is moved aside, never followed, opened or waited on."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    for _ in range(3):
        try:
            fd = os.open(path, flags, 0o666)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
                raise
        else:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.set_blocking(fd, True)
                return os.fdopen(fd, "ab")
            os.close(fd)
        os.replace(path, path.with_name(f".{path.name}.not-a-log-{time.time_ns()}"))  # the model's: kept
    raise OSError(errno.EEXIST, f"{path} keeps being replaced: cannot open the run's log")


def _supervisor(job: JobDir, local: dict[str, Any]) -> dict[str, Any] | None:
    """The run's supervisor, if alive and truly the parent of the job's own mpiexec (local.json is in
    the job directory, where the model writes: its word alone names no process to signal)."""
    supervisor, launcher = local.get("supervisor"), local.get("launcher")
    if supervisor is None or launcher is None or not processes.alive(supervisor):
        return None
    if not processes.runs_job(launcher, job.path):
        return None
    return supervisor if processes.parent_of(int(launcher["pid"])) == supervisor["pid"] else None


def _signal(process: Any, signum: int) -> None:
    """Signal a recorded process if it is still the one recorded."""
    if processes.alive(process):
        try:
            os.kill(int(process["pid"]), signum)
        except ProcessLookupError:
            pass


def _wait(done: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True

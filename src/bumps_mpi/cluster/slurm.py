"""Thin wrappers around sbatch, sacct, squeue and scancel, with timeouts and one-line errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

from ..errors import SubmitError
from .states import array_ids

SACCT_FIELDS = ("JobIDRaw", "JobID", "JobName", "State", "ExitCode", "Elapsed")
SBATCH_TIMEOUT_S = 60  # a busy controller may take this long; then the queue is asked whether it got the job
BATCH = 50  # ids per sacct call: long -j lists hang sacct or overflow argv


def _missing(command: str) -> SubmitError:
    return SubmitError(f"{command} not found: is this a Slurm login node? (use --local to run here)")


def require(command: str) -> None:
    """Fail early (before anything is written) when a Slurm command is not installed."""
    import shutil

    if shutil.which(command) is None:
        raise _missing(command)


def _run(args: list[str], timeout: float = 30, cwd: Path | None = None) -> subprocess.CompletedProcess:
    import subprocess  # here: `status` for finished (cached) jobs never runs a command

    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except FileNotFoundError:
        raise _missing(args[0]) from None
    except subprocess.TimeoutExpired as exc:  # as the builtin, so callers need not import subprocess
        raise TimeoutError(str(exc)) from None


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


class SubmitUncertain(SubmitError):
    """sbatch did not say whether it queued the job: its directory must be kept, not removed."""


def sbatch(script: Path, job_dir: Path, array: str | None = None) -> str:
    """Submit *script* from *job_dir*; returns the job id (an array's id with *array*, its task list).

    A timed-out sbatch may still have queued the job: look it up by its
    working directory (unique per job) before reporting a failure; when the
    queue cannot say either, SubmitUncertain.
    """
    try:
        options = [] if array is None else [f"--array={array}"]  # the command line's wins over the script's
        proc = _run(["sbatch", "--parsable", *options, str(script)], timeout=SBATCH_TIMEOUT_S, cwd=job_dir)
    except TimeoutError:
        if array is not None:  # a campaign's earlier arrays run from the same directory: no lookup by it
            raise SubmitUncertain(
                f"sbatch timed out: the array may be queued; look for it with 'squeue --me' before you "
                f"resume again ({job_dir} is kept)"
            ) from None
        try:
            found = find_by_workdir(job_dir)
        except Unreachable as exc:
            raise SubmitUncertain(
                f"sbatch timed out and the queue cannot say whether the job was queued ({exc}); its "
                f"directory {job_dir} is kept: look for it with 'squeue --me' before you submit again"
            ) from None
        if found:
            return found.partition("_")[0]  # an array's tasks show as ID_[0-5%2] or ID_3: the array's id
        raise SubmitError("sbatch timed out and the job is not in the queue; try again") from None
    if proc.returncode != 0:
        raise SubmitError(f"sbatch failed: {_all_lines(proc.stderr or proc.stdout, 'sbatch: error: ')}")
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SubmitUncertain(
            f"sbatch answered {proc.stdout.strip()[:80]!r}, not a job id; {job_dir} is kept"
        )
    return job_id


def find_by_workdir(job_dir: Path) -> str | None:
    """The id of my queued job that runs in *job_dir*, or None; Unreachable when squeue cannot say."""
    proc = _ask(["squeue", "-h", "--me", "-o", "%i|%Z"])
    for line in proc.stdout.splitlines():
        job_id, _, workdir = line.partition("|")
        if workdir == str(job_dir):
            return job_id
    return None


def _all_lines(text: str, prefix: str) -> str:
    """Slurm's error lines joined on one line (the first often says why, the last only that it failed)."""
    lines = [line.strip().removeprefix(prefix) for line in text.strip().splitlines() if line.strip()]
    return "; ".join(lines) or "no message"


class Unreachable(SubmitError):
    """sacct or squeue could not answer (daemon down, not a Slurm host): the state is unknown, not pending."""


def _ask(args: list[str]) -> subprocess.CompletedProcess:
    """Run a Slurm query; a failure to answer is Unreachable, with Slurm's own last line."""
    try:
        proc = _run(args)
    except (SubmitError, TimeoutError) as exc:
        raise Unreachable(f"{args[0]}: {exc}") from None
    if proc.returncode != 0:
        raise Unreachable(f"{args[0]}: {_first_line(proc.stderr)}")
    return proc


NOTICES: list[str] = []  # said once per command by the CLI: a fallback the user should know about


def accounting_backend() -> str:
    """'pyslurm' where it imports (a build matching this Slurm) unless BUMPS_MPI_ACCOUNTING=sacct."""
    from ..config import environment_choice

    wanted = environment_choice("BUMPS_MPI_ACCOUNTING")
    if wanted == "sacct":
        return "sacct"
    from . import pyslurm_backend

    if pyslurm_backend.available():
        return "pyslurm"
    if wanted == "pyslurm":
        raise SubmitError(
            "environment variable BUMPS_MPI_ACCOUNTING=pyslurm, but pyslurm does not import here"
        )
    return "sacct"


def _queried(job_ids: list[str]) -> list[str]:
    """The ids to ask accounting for: an array's own id for its tasks (a task not started yet is found
    only that way, inside its array's range), each once, in order."""
    return list(dict.fromkeys(i.partition("_")[0] for i in job_ids))


def sacct(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Accounting records of the allocations (no steps), by job id ('7', or '7_3' for an array's task), in
    batches of BATCH ids; the records of an array's other tasks come along.

    Through pyslurm when accounting_backend() says so; if pyslurm fails, through sacct.
    """
    asked = _queried(job_ids)
    records = _accounting(asked)
    for wanted in job_ids:  # an array's tasks that never had a record of their own (cancelled before
        array, sep, _ = wanted.partition("_")  # they started) are its bare id's record: '7', not 7_3
        if sep and wanted not in records and array in records:
            records[wanted] = records[array]
    return records


def _accounting(job_ids: list[str]) -> dict[str, dict[str, str]]:
    records: dict[str, dict[str, str]] = {}
    if job_ids and accounting_backend() == "pyslurm":
        from . import pyslurm_backend

        try:
            for start in range(0, len(job_ids), BATCH):
                records.update(pyslurm_backend.jobs(job_ids[start : start + BATCH]))
            return records
        except Exception as exc:  # an RPC error or an API this code does not know: sacct still answers
            NOTICES.append(f"pyslurm failed ({type(exc).__name__}: {exc}); asked sacct instead")
            records = {}
    for start in range(0, len(job_ids), BATCH):
        chunk = job_ids[start : start + BATCH]
        proc = _ask(["sacct", "-X", "-n", "--parsable2", "-o", ",".join(SACCT_FIELDS), "-j", ",".join(chunk)])
        for line in proc.stdout.splitlines():
            fields = line.split("|")
            if len(fields) == len(SACCT_FIELDS):
                record = dict(zip(SACCT_FIELDS, fields, strict=True))
                keys = array_ids(record["JobID"]) if "_" in record["JobID"] else [record["JobIDRaw"]]
                records.update(dict.fromkeys(keys, record))
    return records


def failed_nodes(job_id: str) -> list[str]:
    """The nodes whose failure ended an earlier allocation of this job: those of its NODE_FAIL records in
    accounting (sacct -D keeps one per requeue) that are down, drained or failing now. Unreachable when
    Slurm cannot say."""
    history = _ask(["sacct", "-D", "-X", "-n", "--parsable2", "-o", "State,NodeList", "-j", job_id]).stdout
    allocated = {line.partition("|")[2] for line in history.splitlines() if line.startswith("NODE_FAIL|")}
    if not allocated:
        return []
    names = _ask(["scontrol", "show", "hostnames", ",".join(sorted(allocated))]).stdout.split()
    down = _ask(["sinfo", "-h", "-N", "-t", "down,drain,fail,no_respond", "-o", "%N"]).stdout.split()
    return sorted(set(names) & set(down)) or sorted(set(names))


def squeue(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """What the controller knows now of my jobs: state, pending reason, elapsed.

    All states: it remembers a job for MinJobAge (300 s by default) after the job
    ended, longer than accounting takes to catch up, so its word is the newest.
    """
    proc = _ask(["squeue", "-h", "-a", "-r", "--me", "-t", "all", "-o", "%i|%T|%r|%M"])  # -r: a line a task
    wanted = set(job_ids)
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[0] in wanted:
            found[parts[0]] = {"State": parts[1], "Reason": parts[2], "Elapsed": parts[3]}
    return found


def scancel(*job_ids: str) -> None:
    """Cancel *job_ids* (jobs, or an array's tasks as ARRAY_TASK); SubmitError with Slurm's reason when
    one was not cancelled.

    scancel exits 0 even when it cancels nothing ("Invalid job id specified"): only
    with -v does it say so, on stderr, as an "error:" line.
    """
    what = " ".join(job_ids)
    try:
        proc = _run(["scancel", "-v", *job_ids])
    except TimeoutError:
        raise SubmitError(f"scancel {what} timed out: is slurmctld up? try again") from None
    errors = [line.split("error:", 1)[1].strip() for line in proc.stderr.splitlines() if "error:" in line]
    if proc.returncode != 0 or errors:
        raise SubmitError(f"scancel {what} failed: {errors[0] if errors else _first_line(proc.stderr)}")


@dataclass(frozen=True)
class Partition:
    """What a partition lets one job have: the time limit and the CPUs (for --ntasks/--time auto)."""

    name: str
    cpus_per_node: int  # its largest node's CPUs
    nodes: int
    max_time_s: int | None  # None: no limit


def partition(name: str | None) -> Partition | None:
    """The partition a job goes to (*name*, else the cluster's default), as sinfo says; None where there is
    no Slurm, it does not answer, or has no such partition (then sbatch itself will say so)."""
    import shutil

    from .render import limit_seconds

    if shutil.which("sinfo") is None:
        return None
    try:
        lines = _ask(["sinfo", "-h", "-o", "%P|%c|%D|%l"]).stdout.splitlines()
    except Unreachable:
        return None
    found: dict[str, list[list[str]]] = {}
    default = None
    for line in lines:
        fields = line.strip().split("|")
        if len(fields) != 4:
            continue
        label = fields[0].rstrip("*")
        default = label if fields[0].endswith("*") else default
        found.setdefault(label, []).append(fields)
    rows = found.get(name or default or "")
    if not rows:
        return None
    try:
        cpus = max(int(r[1].rstrip("+")) for r in rows)
        nodes = sum(int(r[2]) for r in rows)
    except ValueError:
        return None
    return Partition(name or default or "", cpus, nodes, limit_seconds(rows[0][3]))

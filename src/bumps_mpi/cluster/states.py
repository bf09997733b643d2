"""Job states: Slurm's many words mapped to a small documented set, and why a job is waiting.

Slurm's own word is always kept beside ours (`slurm_state`), so nothing is lost.
"""

from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    PENDING = "PENDING"
    """Waiting in the queue, or submitted but not yet in accounting (records lag a few seconds)."""
    RUNNING = "RUNNING"
    """Has an allocation: starting, running, completing or suspended."""
    REQUEUED = "REQUEUED"
    """Put back in the queue (time limit checkpoint, preemption, node failure) and will run again."""
    COMPLETED = "COMPLETED"
    """Ended with exit code 0."""
    FAILED = "FAILED"
    """Ended with a non-zero exit code; error.json says why when the fit itself failed."""
    CANCELLED = "CANCELLED"
    """Cancelled by the user or an administrator."""
    TIMEOUT = "TIMEOUT"
    """Reached its time limit (or its deadline)."""
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    """Killed for using more memory than it asked for."""
    NODE_FAIL = "NODE_FAIL"
    """A node it ran on failed (or did not boot)."""
    PREEMPTED = "PREEMPTED"
    """Stopped to make room for a higher-priority job."""
    UNKNOWN = "UNKNOWN"
    """Slurm could not be asked, or answered with a state this version does not know."""

    @property
    def terminal(self) -> bool:
        """True when the job has ended: `watch` stops, `results` and `resume` may act."""
        return self in TERMINAL

    @property
    def final(self) -> bool:
        """True when the state can never change again, so it may be cached for good.

        Every job is submitted with --requeue, so Slurm may still requeue a job
        it shows as PREEMPTED or NODE_FAIL: those are asked again every time.
        """
        return self in FINAL

    @classmethod
    def from_slurm(cls, word: str) -> JobState:
        """Our state for a Slurm state word ("CANCELLED by 1000" included); UNKNOWN if unrecognised."""
        word = word.split()[0].rstrip("+") if word.strip() else ""
        if word in cls.__members__:
            return cls[word]
        return SLURM_WORDS.get(word, cls.UNKNOWN)


TERMINAL = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.OUT_OF_MEMORY,
        JobState.NODE_FAIL,
        JobState.PREEMPTED,
    }
)

FINAL = TERMINAL - {JobState.PREEMPTED, JobState.NODE_FAIL}

SLURM_WORDS = {
    "CONFIGURING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "REQUEUE_HOLD": JobState.REQUEUED,
    "REQUEUE_FED": JobState.REQUEUED,
    "RESV_DEL_HOLD": JobState.PENDING,
    "BOOT_FAIL": JobState.NODE_FAIL,
    "DEADLINE": JobState.TIMEOUT,
    "REVOKED": JobState.CANCELLED,
    "SPECIAL_EXIT": JobState.FAILED,
}

# Pending reasons (squeue %r) with what to do; True marks a job that can never start as submitted.
PENDING_HINTS: dict[str, tuple[bool, str]] = {
    "QOSMaxWallDurationPerJobLimit": (
        True,
        "the time limit exceeds your QOS's maximum: cancel and resubmit with a shorter --time",
    ),
    "AssocMaxWallDurationPerJobLimit": (
        True,
        "the time limit exceeds your account's maximum: cancel and resubmit with a shorter --time",
    ),
    "PartitionTimeLimit": (
        True,
        "the time limit exceeds the partition's: cancel and resubmit with a shorter "
        "--time or another --partition",
    ),
    "PartitionNodeLimit": (
        True,
        "more nodes than the partition allows: cancel and resubmit with fewer --nodes",
    ),
    "PartitionConfig": (
        True,
        "more CPUs or nodes than the partition has: cancel and resubmit with fewer --ntasks/--nodes "
        "or another --partition",
    ),
    "BadConstraints": (True, "no node has what the job asks for: cancel and resubmit with other resources"),
    "DependencyNeverSatisfied": (True, "the job it depends on failed, so it will never start: cancel it"),
    "InvalidAccount": (True, "the account is not valid for you: cancel and resubmit with another --account"),
    "InvalidQOS": (True, "the QOS is not valid for you: cancel and resubmit with another QOS"),
    "JobHeldUser": (False, "held by you: release it with 'scontrol release JOBID'"),
    "JobHeldAdmin": (False, "held by an administrator: ask them to release it"),
    "Dependency": (False, "waiting for the job it depends on to finish"),
    "BeginTime": (False, "waiting for its start time (a requeued job waits about two minutes)"),
    "Priority": (False, "other jobs come first; it will start in turn"),
    "Resources": (False, "waiting for nodes to become free"),
    "ReqNodeNotAvail": (False, "a node it needs is unavailable (down, drained or reserved)"),
    # Slurm's text when every node that could run it is down or drained (22.05: one reason, with commas)
    "Nodes required for job are DOWN": (
        False,
        "the nodes it needs are down or drained: it starts when they come back ('sinfo -R' says why)",
    ),
}


def pending_hint(reason: str | None) -> tuple[bool, str] | None:
    """(never starts, what to do) for a pending reason, or None when there is nothing useful to say."""
    if not reason or reason == "None":
        return None
    return PENDING_HINTS.get(reason.split(",")[0].strip("()"))


def describe_exit(slurm_code: str | None, script_status: int | None = None) -> str | None:
    """What a job's exit means, in words: '0', 'exit 1', 'killed by signal 9 (SIGKILL)'.

    *script_status* is the batch script's own status (the exit-status file), which
    is exact; without it, Slurm's 'A:S' is read as exit A or signal S. Slurm shows
    an exit of 128+N (the launcher's status when a rank dies of signal N) as N:0.
    """
    import signal

    def signal_text(number: int) -> str:
        try:
            return f"killed by signal {number} ({signal.Signals(number).name})"
        except ValueError:
            return f"killed by signal {number}"

    if script_status is not None:
        if script_status < 0:  # a process killed by a signal, as Python reports it
            return signal_text(-script_status)
        if script_status > 128:
            return signal_text(script_status - 128)
        return "0" if script_status == 0 else f"exit {script_status}"
    if not slurm_code or ":" not in slurm_code:
        return None
    code, _, sig = slurm_code.partition(":")
    if sig.isdigit() and int(sig):
        return signal_text(int(sig))
    return "0" if code == "0" else f"exit {code}"


def array_ids(job_id: str) -> list[str]:
    """Slurm's text for an array's tasks as task ids: '7_3' -> ['7_3'], '7_[0-2,5%2]' -> 7_0 .. 7_2, 7_5;
    a plain id as itself. Accounting and squeue show the tasks not yet started as one such range."""
    head, sep, tasks = job_id.partition("_")
    if not sep or not tasks.startswith("["):
        return [job_id]
    found = []
    for part in tasks.strip("[]").split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (last.isdigit() or not last):
            found += [f"{head}_{i}" for i in range(int(first), int(last or first) + 1)]
    return found

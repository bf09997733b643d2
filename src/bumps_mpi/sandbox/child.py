"""Run the user's code on the login node in a child process that cannot hang or spoil the CLI.

A model is someone's Python code: loading it (for the check) or calling its
plot functions (for figures) may loop forever, call os._exit(), print
megabytes or crash the interpreter. The child runs `python -m MODULE ANSWER
REQUEST` in its own process group (a time limit ends whatever it started), with
no stdin, its output captured (only the tail is kept, without terminal control
sequences), and gives its answer as JSON in a file, never on stdout. It runs in
a scratch directory: `python -m` puts the current directory first on sys.path,
and a `bumps.py` where the user stands must not replace Bumps (the job runs in
its job directory, never where the user submitted from; paths are absolute).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ..jobdir import read_regular
from ..pythonenv import safe_environment
from ..records import SandboxRequest
from ..text import plain

TAIL_BYTES = 64 * 1024  # of the child's output kept in memory, whatever it prints
TAIL_LINES = 20  # shown with a failure
ANSWER_MAX_BYTES = 16 << 20  # a child's answer (a figures manifest, a check's parameters) is far smaller


@dataclass
class Finished:
    """How a child ended: its answer (None if it gave none), the tail of its output, its status."""

    answer: Any
    output: str
    returncode: int
    timed_out: bool

    def crash(self) -> str | None:
        """'killed by signal 11 SIGSEGV' when the child died of a signal, else None."""
        if self.returncode >= 0:
            return None
        number = -self.returncode
        name = signal.Signals(number).name if number in signal.valid_signals() else ""
        return f"killed by signal {number} {name}".rstrip()


def _drain(stream: Any, tail: deque[bytes]) -> None:
    for chunk in iter(lambda: stream.read(8192), b""):
        tail.append(chunk)
        while sum(len(c) for c in tail) > TAIL_BYTES and len(tail) > 1:
            tail.popleft()


def _tail_text(tail: deque[bytes]) -> str:
    lines = b"".join(tail).decode("utf-8", errors="replace").splitlines()[-TAIL_LINES:]
    return "\n".join(plain(line)[:300] for line in lines)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def nice_prefix(nice: int) -> list[str]:
    """`nice -n N` before a command that should leave the CPU to others (nothing for 0)."""
    return ["nice", "-n", str(int(nice))] if nice else []


def _exit_on_hangup() -> dict[int, Any]:
    """SIGTERM and SIGHUP (a closed terminal) end this process by SystemExit(128 + N) while a child runs,
    so that run() ends the child's process group and removes its directory; the handlers replaced.

    Only in the main thread, and only where the default action (death, with no clean-up) was in force:
    a caller that ignores them (nohup) or handles them itself keeps its own way."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def leave(signum: int, _frame: Any) -> NoReturn:
        raise SystemExit(128 + signum)

    replaced: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            replaced[signum] = signal.signal(signum, leave)
    return replaced


def run(
    module: str, request: dict[str, Any], timeout: float, env: dict[str, str] | None = None, nice: int = 0
) -> Finished:
    """Run `python -m MODULE` with *request* (*nice* below this process's priority); wait at most *timeout*
    seconds; never raise for its sake."""
    with tempfile.TemporaryDirectory(prefix="bumps-mpi-child-") as scratch:
        answer = Path(scratch) / "answer.json"
        command = [*nice_prefix(nice), sys.executable, "-m", module, str(answer), json.dumps(request)]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout ends whatever it started
            env=safe_environment(None, **(env or {})),
            cwd=scratch,
        )
        tail: deque[bytes] = deque()
        reader = threading.Thread(target=_drain, args=(proc.stdout, tail), daemon=True)
        reader.start()
        timed_out = False
        previous = _exit_on_hangup()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # also on Ctrl-C, a closed terminal or SIGTERM: leave nothing running, and no files
            _kill_group(proc)  # the user's code may have left children behind even when it finished
            proc.wait()
            reader.join(timeout=5)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        try:  # the user's code ran in the child and could write here: no link, no pipe, a cap
            found = json.loads(read_regular(answer, ANSWER_MAX_BYTES))
        except (OSError, ValueError):
            found = None
    return Finished(found, _tail_text(tail), proc.returncode, timed_out)


def reply(answer: Path | str, obj: Any) -> NoReturn:
    """The child's last act: its answer, then an exit that no atexit handler or thread can delay."""
    from ..jobdir import write_json

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    write_json(Path(answer), obj)
    os._exit(0)


def request(argv: list[str]) -> tuple[Path, dict[str, Any]]:
    """The child's side of the call: where to answer, and what was asked."""
    return Path(argv[0]), json.loads(argv[1])


def confine(
    asked: SandboxRequest, model: str, own_dir: Path, read: list[str] | None = None
) -> dict[str, Any]:
    """Confine this child as a job's rank would be (bumps_mpi.sandbox): read the model's place, the Python
    environment, the system and *read*; write only *own_dir* and the directory it answers in (its current
    directory, where run() put it). Returns what was enforced."""
    from . import policy as sandbox

    model_read, note = sandbox.model_paths(model)
    policy = sandbox.Policy(
        level=asked.get("level", "off"),
        read=[
            *sandbox.python_paths(),
            *sandbox.SYSTEM_READ,
            *model_read,
            *asked.get("read", []),
            *(read or []),
        ],
        write=[*sandbox.SYSTEM_WRITE, str(Path.cwd()), *asked.get("write", [])],
        restrict_network=True,
        max_file_mb=int(asked.get("max_file_mb", 16384)),
        cache=asked.get("cache"),
    )
    enforced = sandbox.apply(policy, own_dir)
    if note:
        enforced["note"] = note
    return enforced

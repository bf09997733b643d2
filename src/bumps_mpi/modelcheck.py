"""The login-node check of a model, in a subprocess with a time limit.

A model is someone's Python code: loading it may loop forever, call
os._exit(), print megabytes or crash the interpreter. None of that may hang
`bumps-submit`, make it exit 0 having done nothing, or spoil its --json
output. So the check runs here as `python -m bumps_mpi.modelcheck`, in its own
process group, with no stdin; its output is captured (the tail is shown when
it fails) and its answer comes back in a file. Each way it can end has its own
one-line error.

The child checks the fit options first (cheap, needs only Bumps), then loads the
model and evaluates it once at its starting point, as every rank will, then
the options that depend on the number of parameters (DREAM's population).
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
from pathlib import Path
from typing import Any

from .errors import ModelCheckError, UsageError
from .text import plain

TAIL_BYTES = 64 * 1024  # of the model's output kept in memory, whatever it prints
TAIL_LINES = 20  # shown with a failure


def _drain(stream: Any, tail: deque[bytes]) -> None:
    for chunk in iter(lambda: stream.read(8192), b""):
        tail.append(chunk)
        while sum(len(c) for c in tail) > TAIL_BYTES and len(tail) > 1:
            tail.popleft()


def _tail_text(tail: deque[bytes]) -> str:
    lines = b"".join(tail).decode("utf-8", errors="replace").splitlines()[-TAIL_LINES:]
    return "\n".join(plain(line)[:300] for line in lines)


def run_check(
    model: Path, args: list[str], fit: str, fit_options: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """Check options and model in a subprocess; {"parameters", "nllf", "fit_options"} or a clear error."""
    from .job import THREAD_VARIABLES

    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, "1")}
    with tempfile.TemporaryDirectory(prefix="bumps-mpi-check-") as scratch:
        answer = Path(scratch) / "answer.json"
        request = {"model": str(model), "args": list(args), "fit": fit, "fit_options": fit_options}
        command = [sys.executable, "-m", "bumps_mpi.modelcheck", str(answer), json.dumps(request)]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout ends whatever it started
            env=env,
        )
        tail: deque[bytes] = deque()
        reader = threading.Thread(target=_drain, args=(proc.stdout, tail), daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:  # Ctrl-C while checking: leave nothing running
            _kill_group(proc)
            raise
        finally:
            _kill_group(proc)  # the model may have left children behind even when it finished
            proc.wait()
            reader.join(timeout=5)
        try:
            found = json.loads(answer.read_text())
        except (OSError, ValueError):
            found = None
    output = _tail_text(tail)
    if timed_out:
        raise ModelCheckError(
            f"{model}: the model check did not finish in {timeout:g} s (loading it and one evaluation); "
            "if the model is just slow, raise --check-timeout (or check_timeout in your site profile)",
            output=output,
        )
    if isinstance(found, dict) and found.get("ok"):
        return found
    if isinstance(found, dict) and "message" in found:
        error = UsageError if found.get("kind") == "usage" else ModelCheckError
        raise error(found["message"], output=output)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else ""
        raise ModelCheckError(
            f"{model}: the model check crashed: killed by signal {-proc.returncode} {name}".rstrip(),
            output=output,
        )
    raise ModelCheckError(
        f"{model}: the model check ended (exit status {proc.returncode}) before it finished: "
        "does the model call os._exit() or exit the interpreter while loading?",
        output=output,
    )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> None:
    """The child: answer in argv[0]; request (model, args, fit, fit_options) as JSON in argv[1]."""
    from .errors import BumpsMpiError
    from .fit import check_model
    from .jobdir import write_json
    from .validation import check_fit_options, check_population

    answer, request = Path(argv[0]), json.loads(argv[1])
    try:
        options = check_fit_options(request["fit"], request["fit_options"])
        found = check_model(request["model"], request["args"])
        check_population(request["fit"], options, len(found["parameters"]))
        reply: dict[str, Any] = {"ok": True, "fit_options": options, **found}
    except BumpsMpiError as exc:
        reply = {
            "ok": False,
            "message": str(exc),
            "kind": "usage" if isinstance(exc, UsageError) else "model",
        }
    sys.stdout.flush()
    sys.stderr.flush()
    write_json(answer, reply)
    os._exit(0)  # no atexit handlers or threads of the model's may keep the check alive


if __name__ == "__main__":
    main(sys.argv[1:])

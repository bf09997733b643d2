"""Load a job's checkpoint as the job will, in a confined child: never in the login node's own process.

The checkpoint is the model's to write (it runs inside rank 0), and h5py parses
whatever it is handed: a crafted file is input to a C library. `resume` and a
campaign's `resume --failed` only need to know that each checkpoint loads and
at which step; a child confined as the job's ranks are (reading the job
directories, writing only its scratch directory) answers that, with a time limit.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError
from ..records import SandboxRequest
from ..sandbox import child

TIMEOUT_S = 120.0  # per call: loading a large DREAM state takes seconds


def check_checkpoints(
    paths: list[Path], sandbox: SandboxRequest, model: str, fit: str | None = None
) -> dict[str, int]:
    """{path: the step it holds} for every checkpoint in *paths* (of a *fit* fit); UsageError naming the
    first that does not load (nothing is changed)."""
    request = {
        "paths": [str(p) for p in paths],
        "sandbox": sandbox or {"level": "off"},
        "model": model,
        "fit": fit,
    }
    done = child.run("bumps_mpi.front.checkpointcheck", request, TIMEOUT_S)
    found = done.answer if isinstance(done.answer, dict) else {}
    if found.get("ok"):
        return {str(k): int(v) for k, v in found["steps"].items()}
    why = found.get("message") or (
        f"loading took more than {TIMEOUT_S:g} s"
        if done.timed_out
        else done.crash() or f"the check ended (exit status {done.returncode}) without an answer"
    )
    path = found.get("path") or (paths[0] if len(paths) == 1 else "a checkpoint")
    raise UsageError(f"{path} cannot be loaded ({why}); nothing changed: submit the model again")


def main(argv: list[str]) -> None:
    """The child: confine (read the checkpoints' directories), load each, answer the steps."""
    from ..errors import BumpsMpiError

    answer, request = child.request(argv)
    paths = [Path(p) for p in request["paths"]]
    try:
        child.confine(request["sandbox"], request["model"], Path.cwd(), read=[str(p.parent) for p in paths])
    except BumpsMpiError as exc:
        child.reply(answer, {"ok": False, "message": str(exc)})
    from ..runtime import checkpoint

    steps = {}
    for path in paths:
        try:
            _, info = checkpoint.load(path, request.get("fit"))
            steps[str(path)] = int(info.get("step", 0))
        except Exception as exc:  # a truncated or foreign file: h5py, bumps and json each raise their own
            text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            child.reply(answer, {"ok": False, "path": str(path), "message": text})
    child.reply(answer, {"ok": True, "steps": steps})


if __name__ == "__main__":
    main(sys.argv[1:])

"""The login-node check of a model, in a child process with a time limit (bumps_mpi.sandbox.child).

None of what a model may do while loading (loop forever, os._exit(), print
megabytes, crash) may hang `bumps-submit`, make it exit 0 having done nothing,
or spoil its --json output. Each way the check can end has its own one-line
error; the tail of what the model printed comes with it.

The child checks the fit options first (cheap, needs only Bumps), then loads the
model and evaluates it once at its starting point, as every rank will, then
the options that depend on the number of parameters (DREAM's population).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import ModelCheckError, UsageError
from ..records import SandboxRequest
from ..sandbox import child


def run_check(
    model: Path,
    args: list[str],
    fit: str,
    fit_options: dict[str, Any],
    timeout: float,
    sandbox: SandboxRequest | None = None,
    nice: int = 0,
    timing_s: float = 0.0,
) -> dict[str, Any]:
    """Check options and model in a child, confined as the job's ranks will be (*sandbox*: level, read,
    max_file_mb); {"parameters", "nllf", "fit_options", "sandbox"} or a clear error."""
    from ..runtime.threads import THREAD_VARIABLES

    request = {
        "model": str(Path(model).absolute()),
        "args": list(args),
        "fit": fit,
        "fit_options": fit_options,
        "sandbox": sandbox or {"level": "off"},
        "timing_s": timing_s,  # also time the model, for the estimate of the fit's cost
    }
    done = child.run(
        "bumps_mpi.front.modelcheck", request, timeout, env=dict.fromkeys(THREAD_VARIABLES, "1"), nice=nice
    )
    found, output = done.answer, done.output
    if done.timed_out:
        raise ModelCheckError(
            f"{model}: the model check did not finish in {timeout:g} s (loading it and one evaluation); "
            "if the model is just slow, raise --check-timeout (or check_timeout in your site profile)",
            output=output,
        )
    if isinstance(found, dict) and found.get("ok"):
        return found
    if isinstance(found, dict) and "message" in found:
        error = UsageError if found.get("kind") == "usage" else ModelCheckError
        ended = f" (the check ended with exit status {done.returncode})" if found.get("provisional") else ""
        raise error(found["message"] + ended, output=output)
    if done.crash():
        raise ModelCheckError(f"{model}: the model check crashed: {done.crash()}", output=output)
    raise ModelCheckError(
        f"{model}: the model check ended (exit status {done.returncode}) before it finished: "
        "does the model call os._exit() or exit the interpreter while loading?",
        output=output,
    )


def main(argv: list[str]) -> None:
    """The child: confines itself (before anything else is imported), then checks and answers."""
    from ..errors import BumpsMpiError

    answer, request = child.request(argv)
    enforced = None
    try:
        enforced = child.confine(request["sandbox"], request["model"], Path.cwd())
    except BumpsMpiError as exc:
        child.reply(answer, {"ok": False, "message": str(exc), "kind": "usage"})
    from ..runtime.fit import check_model
    from .validation import check_fit_options, check_population

    _note_mpi(answer, request["model"])
    try:
        options = check_fit_options(request["fit"], request["fit_options"])
        found = check_model(request["model"], request["args"], request.get("timing_s", 0.0), options)
        check_population(request["fit"], options, len(found["parameters"]))
        reply: dict[str, Any] = {"ok": True, "fit_options": options, "sandbox": enforced, **found}
    except BumpsMpiError as exc:
        kind = "usage" if isinstance(exc, UsageError) else "model"
        reply = {"ok": False, "message": str(exc), "kind": kind}
    except Exception as exc:  # a case the checks above did not foresee: say what it was, not os._exit
        reply = {
            "ok": False,
            "message": f"{request['model']}: the check failed: {exc!r}"[:500],
            "kind": "model",
        }
    child.reply(answer, reply)


def _note_mpi(answer: Path, model: str) -> None:
    """A model that imports mpi4py would start MPI here, alone and confined, which aborts the process
    (MPI_Init cannot open its network): let the import load without starting MPI, and leave an answer
    that says why, should the model then call MPI and die of it (the final answer replaces it)."""
    import importlib.abc

    import mpi4py

    mpi4py.rc.initialize = False
    mpi4py.rc.finalize = False
    message = (
        f"{model}: the model uses MPI (mpi4py) while it loads, and MPI cannot run in the model check; "
        "bumps-mpi starts MPI and spreads the evaluations over the ranks itself: remove the mpi4py "
        "import and calls from the model"
    )

    class Noted(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: Any, target: Any = None) -> None:
            if name == "mpi4py.MPI":
                from ..jobdir import write_json

                sys.meta_path.remove(self)
                write_json(answer, {"ok": False, "message": message, "kind": "model", "provisional": True})

    sys.meta_path.insert(0, Noted())


if __name__ == "__main__":
    main(sys.argv[1:])

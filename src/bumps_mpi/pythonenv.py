"""How this project starts Python outside the sandbox: never importing what a job could have written.

`python -m` puts its working directory first on sys.path, and an empty or
relative PYTHONPATH entry names it too. A job's directory is the model's to
write, so a `mpi4py.py`, `socket.py` or `bumps_mpi/` planted there would be
imported, unconfined, by the next process started in it. Every such process
starts in a directory the model cannot write (the job's control directory, or a
fresh scratch directory), with PYTHONSAFEPATH=1 (Python 3.11+: no working
directory on sys.path at all) and only the absolute PYTHONPATH entries the
submitter's own environment gave.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def safe_environment(base: Mapping[str, str] | None = None, **more: str) -> dict[str, str]:
    """*base* (default: this process's environment) made safe for starting Python, plus *more*."""
    env = dict(os.environ if base is None else base)
    env["PYTHONSAFEPATH"] = "1"
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if os.path.isabs(p)]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]
    env.update(more)
    return env

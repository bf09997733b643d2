"""examples/peak.py's fit, whose rank 0 (in the job, not in the login-node check) tries TCP: a connect
to each address and port named in its arguments (HOST:PORT ...), and a bind outside MPI's range. Each
outcome ("done", or "blocked: ERRNO") goes to net-out.json in the job directory (where sbatch ran)."""

import errno
import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
from bumps.names import Curve, FitProblem


def _try(action) -> str:
    try:
        action()
        return "done"
    except OSError as exc:
        return f"blocked: {errno.errorcode.get(exc.errno, exc.errno)}"


PROBED = []


def probe() -> None:
    """Once, on rank 0 of the job (the login-node check has no Slurm rank), at its first evaluation."""
    if PROBED or os.environ.get("SLURM_PROCID") != "0":
        return
    PROBED.append(True)
    found = {}
    for target in sys.argv[1:]:
        host, port = target.rsplit(":", 1)
        found[f"connect {target}"] = _try(
            lambda h=host, p=int(port): socket.create_connection((h, p), timeout=5).close()
        )
    found["bind 127.0.0.1:18081"] = _try(lambda: socket.socket().bind(("127.0.0.1", 18081)))
    Path(os.environ["SLURM_SUBMIT_DIR"], "net-out.json").write_text(json.dumps(found))


def peak(x, height, center, width, background):
    probe()
    return height * np.exp(-0.5 * ((x - center) / width) ** 2) + background


rng = np.random.default_rng(20261125)
x = np.linspace(-5, 5, 60)
y = peak(x, 2.0, 0.3, 0.8, 0.1) + rng.normal(0, 0.05, x.size)
model = Curve(peak, x, y, dy=np.full(x.size, 0.05), height=1.5, center=0.0, width=1.0, background=0.0)
model.height.range(0, 5)
model.center.range(-2, 2)
model.width.range(0.1, 3)
model.background.range(-1, 1)
problem = FitProblem(model)

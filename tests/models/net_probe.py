"""examples/peak.py's fit, whose ranks report from inside a job (never from the login-node check, which
has no Slurm rank), at their first evaluation, into the job directory (where sbatch ran):
- every rank: where its TMPDIR is (after writing a file there), in tmp-RANK.json;
- rank 0: a TCP connect to each HOST:PORT named in its arguments, and a bind outside MPI's range, each
  "done" or "blocked: ERRNO", in net-out.json.
"""

import errno
import json
import os
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
from bumps.names import Curve, FitProblem

REPORTED = []


def _try(action) -> str:
    try:
        action()
        return "done"
    except OSError as exc:
        return f"blocked: {errno.errorcode.get(exc.errno, exc.errno)}"


def report() -> None:
    rank = os.environ.get("SLURM_PROCID")
    if REPORTED or rank is None:
        return
    REPORTED.append(True)
    job_dir = Path(os.environ["SLURM_SUBMIT_DIR"])
    here = tempfile.gettempdir()
    (Path(here) / "scratch.bin").write_bytes(b"x" * 1000)
    where = {"tmpdir": os.environ.get("TMPDIR"), "gettempdir": here, "host": socket.gethostname()}
    (job_dir / f"tmp-{rank}.json").write_text(json.dumps(where))
    if rank != "0":
        return
    found = {}
    for target in sys.argv[1:]:
        host, port = target.rsplit(":", 1)
        found[f"connect {target}"] = _try(
            lambda h=host, p=int(port): socket.create_connection((h, p), timeout=5).close()
        )
    found["bind 127.0.0.1:18081"] = _try(lambda: socket.socket().bind(("127.0.0.1", 18081)))
    (job_dir / "net-out.json").write_text(json.dumps(found))


def peak(x, height, center, width, background):
    report()
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

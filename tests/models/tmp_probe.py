"""examples/peak.py's fit, whose every rank in a job (not the login-node check) writes a file into its
TMPDIR at its first evaluation and says where, in tmp-RANK.json in the job directory (where sbatch ran)."""

import json
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
from bumps.names import Curve, FitProblem

SAID = []


def say_where() -> None:
    rank = os.environ.get("SLURM_PROCID")
    if SAID or rank is None:
        return
    SAID.append(True)
    here = tempfile.gettempdir()
    (Path(here) / "scratch.bin").write_bytes(b"x" * 1000)
    where = {"tmpdir": os.environ.get("TMPDIR"), "gettempdir": here, "host": socket.gethostname()}
    Path(os.environ["SLURM_SUBMIT_DIR"], f"tmp-{rank}.json").write_text(json.dumps(where))


def peak(x, height, center, width, background):
    say_where()
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

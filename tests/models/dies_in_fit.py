"""Loads and evaluates fine, then a worker rank evaluating height above 4.5 kills itself (SIGKILL).

A rank that dies cannot report anything: the launcher must end the job (rank 0
would otherwise wait for it forever), and the post-mortem must still tell the
user which rank died. Rank 0 never dies here, so the test covers that wait.
"""

import os
import signal

import numpy as np
from bumps.names import Curve, FitProblem


def line(x, height, slope):
    return height + slope * x


x = np.linspace(0.0, 1.0, 11)
model = Curve(line, x, 1.0 + 2.0 * x, 0.1 * np.ones_like(x), height=1.0, slope=2.0)
model.height.range(0.0, 5.0)
model.slope.range(0.0, 5.0)
problem = FitProblem(model)


RANK = int(os.environ.get("PMI_RANK", os.environ.get("SLURM_PROCID", "0")))  # hydra, srun


def die():
    if model.height.value > 4.5 and RANK != 0:
        os.kill(os.getpid(), signal.SIGKILL)


problem.setp_hook = die

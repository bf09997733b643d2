"""A Gaussian peak that is fast in the model check and sleeps DELAY seconds (first model argument,
default 0.005) in each evaluation once it runs as a job's rank (under mpiexec or srun: PMI_RANK is set):
a fit the estimate says fits its time limit, and that still reaches it (TIMEOUT, then resume)."""

import os
import sys
import time

import numpy as np
from bumps.names import Curve, FitProblem

DELAY = float(sys.argv[1]) if len(sys.argv) > 1 else 0.005
IN_A_JOB = "PMI_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def peak(x, background, height, center, width):
    if IN_A_JOB:
        time.sleep(DELAY)
    return background + height * np.exp(-0.5 * ((x - center) / width) ** 2)


x = np.linspace(-5, 5, 81)
y = 0.3 + 2.0 * np.exp(-0.5 * ((x - 0.4) / 0.9) ** 2) + np.random.default_rng(7).normal(0, 0.05, x.size)
model = Curve(peak, x, y, 0.05 * np.ones_like(y), background=0.0, height=1.0, center=0.0, width=1.0)
model.background.range(0, 1)
model.height.range(0, 5)
model.center.range(-2, 2)
model.width.range(0.1, 3)
problem = FitProblem(model)

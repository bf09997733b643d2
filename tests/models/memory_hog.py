"""Checks and loads fine; under Slurm every evaluation after the first keeps 100 MB more, forever.

The job's cgroup memory limit (--mem) must stop it: Slurm then says OUT_OF_MEMORY.
"""

import os

import numpy as np
from bumps.names import Curve, FitProblem

HOARD = []


def line(x, height, slope):
    if os.environ.get("SLURM_JOB_ID") and len(HOARD) < 100:
        HOARD.append(np.ones(100 * 2**20 // 8))  # touched, so it is really resident
    return height + slope * x


x = np.linspace(0.0, 1.0, 11)
model = Curve(line, x, 1.0 + 2.0 * x, 0.1 * np.ones_like(x), height=1.0, slope=2.0)
model.height.range(0.0, 5.0)
model.slope.range(0.0, 5.0)
problem = FitProblem(model)

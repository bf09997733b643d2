"""A Gaussian peak whose evaluation raises, inside a job, with probability P (its one argument): Bumps
catches the exception and scores the point as impossible, so the fit goes on. Outside a job (the model
check on the login node) it never raises, so the check passes, as it did for the model that showed this."""

import os
import sys

import numpy as np
from bumps.names import Curve, FitProblem

P = float(sys.argv[1])
IN_JOB = os.environ.get("PMI_RANK") is not None or os.environ.get("SLURM_PROCID") is not None
rng = np.random.default_rng(int(os.environ.get("PMI_RANK") or 0) + 11)


def peak(x, height, center):
    if IN_JOB and rng.random() < P:
        raise RuntimeError("the model failed here on purpose")
    return height * np.exp(-0.5 * (x - center) ** 2)


x = np.linspace(-5, 5, 41)
y = 2 * np.exp(-0.5 * (x - 0.3) ** 2) + np.random.default_rng(2).normal(0, 0.05, x.size)
model = Curve(peak, x, y, 0.05 * np.ones_like(x), height=1.0, center=0.0)
model.height.range(0, 5)
model.center.range(-2, 2)
problem = FitProblem(model)

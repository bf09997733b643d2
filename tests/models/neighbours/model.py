"""A model that imports its neighbour (peakshape.py): works in the check, on every rank, under Slurm."""

import numpy as np
from bumps.names import Curve, FitProblem
from peakshape import peak

x = np.linspace(-5, 5, 81)
y = peak(x, 0.3, 2.0, 0.4, 0.9) + np.random.default_rng(7).normal(0, 0.05, x.size)
model = Curve(peak, x, y, 0.05 * np.ones_like(y), background=0.0, height=1.0, center=0.0, width=1.0)
model.background.range(0, 1)
model.height.range(0, 5)
model.center.range(-2, 2)
model.width.range(0.1, 3)
problem = FitProblem(model)

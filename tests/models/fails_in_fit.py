"""Loads and evaluates fine at its start, then raises during the fit (height above 4.5).

The exception is raised from setp (a setp_hook), which Bumps' FitProblem.nllf
does not catch, so it escapes nllf on whichever rank evaluates the point.
"""

import numpy as np
from bumps.names import Curve, FitProblem


def line(x, height, slope):
    return height + slope * x


x = np.linspace(0.0, 1.0, 11)
y = 1.0 + 2.0 * x
model = Curve(line, x, y, 0.1 * np.ones_like(x), height=1.0, slope=2.0)
model.height.range(0.0, 5.0)
model.slope.range(0.0, 5.0)
problem = FitProblem(model)


def explode():
    if model.height.value > 4.5:
        raise RuntimeError(f"model exploded at height={model.height.value}")


problem.setp_hook = explode

"""A Gaussian peak whose plot (the report's first figure) takes DELAY seconds (first model argument,
default 10): the fit ends at once, its figures come later, so the page can be seen while they are drawn."""

import sys
import time

import numpy as np
from bumps.names import Curve, FitProblem

DELAY = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0


class SlowCurve(Curve):
    def plot(self, view=None):
        time.sleep(DELAY)
        return super().plot(view=view)


def peak(x, height, center):
    return height * np.exp(-0.5 * (x - center) ** 2)


x = np.linspace(-5, 5, 41)
y = 2 * np.exp(-0.5 * (x - 0.3) ** 2) + np.random.default_rng(2).normal(0, 0.05, x.size)
model = SlowCurve(peak, x, y, 0.05 * np.ones_like(x), height=1.0, center=0.0)
model.height.range(0, 5)
model.center.range(-2, 2)
problem = FitProblem(model)

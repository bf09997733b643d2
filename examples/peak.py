"""A Gaussian peak on a flat background: a small, real Bumps fit.

The data are made here (fixed seed), so the example needs no data file.
Run it with:  bumps-submit submit examples/peak.py --local -n 2 --seed 1
"""

import numpy as np
from bumps.names import Curve, FitProblem


def peak(x, height, center, width, background):
    return height * np.exp(-0.5 * ((x - center) / width) ** 2) + background


rng = np.random.default_rng(20261125)
x = np.linspace(-5.0, 5.0, 81)
dy = 0.05 * np.ones_like(x)
y = peak(x, 2.0, 0.4, 0.9, 0.3) + rng.normal(0.0, dy)

model = Curve(peak, x, y, dy, height=1.0, center=0.0, width=1.0, background=0.0)
model.height.range(0.0, 5.0)
model.center.range(-2.0, 2.0)
model.width.range(0.1, 3.0)
model.background.range(-1.0, 1.0)

problem = FitProblem(model)

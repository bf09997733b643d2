"""Bumps' own public example of a fit: Bevington & Robinson's dual exponential decay, its function and
data as Bumps ships them (bumps.mystic.examples.decay), fitted as a Curve with Poisson-like errors."""

import numpy as np
from bumps.mystic.examples.decay import data, dual_exponential
from bumps.names import Curve, FitProblem

t, y = data[:, 0].astype(float), data[:, 1].astype(float)


def decay(t, a1, a2, a3, a4, a5):
    return dual_exponential(t, (a1, a2, a3, a4, a5))


model = Curve(decay, t, y, np.sqrt(y), a1=10.0, a2=900.0, a3=80.0, a4=27.0, a5=225.0)
model.a1.range(0, 50)
model.a2.range(100, 2000)
model.a3.range(0, 500)
model.a4.range(1, 100)
model.a5.range(50, 500)
problem = FitProblem(model)

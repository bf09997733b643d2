"""A model whose names are markup, quotes, ampersands and terminal escapes: they must stay text."""

import numpy as np
from bumps.names import Curve, FitProblem


def line(x, a, b):
    return a + b * x


x = np.linspace(0.0, 1.0, 21)
model = Curve(
    line,
    x,
    1.0 + 2.0 * x + np.random.default_rng(1).normal(0, 0.05, x.size),
    0.05 * np.ones_like(x),
    a=0.5,
    b=1.0,
)
model.a.range(0.0, 3.0)
model.b.range(0.0, 5.0)
model.a.name = '<script>alert("a")</script>'
model.b.name = "b & 'quoted' \"too\" <img src=x onerror=alert(1)> \x1b[31mred\x1b[0m"
model.name = "<b>bold</b> & co"
problem = FitProblem(model, name="<i>peak</i>")

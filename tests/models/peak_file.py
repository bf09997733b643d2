"""examples/peak_file.py's peak for campaign tests: DATA [DELAY].

DELAY (seconds per evaluation, default 0) makes a long fit of the same values.
A data file with a line `# explode` loads and evaluates fine at its start, then
raises during the fit (height above 4.5), as fails_in_fit.py does: a fit that
fails at run time until the file is mended.
"""

import sys
import time

import numpy as np
from bumps.names import Curve, FitProblem

DATA = sys.argv[1]
DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
x, y, dy = np.loadtxt(DATA, unpack=True)
with open(DATA) as f:
    EXPLODE = any(line.strip() == "# explode" for line in f)


def peak(x, height, center, width, background):
    if DELAY:
        time.sleep(DELAY)
    return height * np.exp(-0.5 * ((x - center) / width) ** 2) + background


model = Curve(peak, x, y, dy, height=1.0, center=0.0, width=1.0, background=0.0)
model.height.range(0.0, 5.0)
model.center.range(-2.0, 2.0)
model.width.range(0.1, 3.0)
model.background.range(-1.0, 1.0)
problem = FitProblem(model)


def explode():
    if EXPLODE and model.height.value > 4.5:
        raise RuntimeError(f"model exploded at height={model.height.value} ({DATA})")


problem.setp_hook = explode

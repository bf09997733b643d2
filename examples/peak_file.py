"""A Gaussian peak on a flat background, fitted to the data file given as the model's argument.

The file has three columns, x y dy (examples/data/ has one per temperature). One fit:
    bumps-submit submit examples/peak_file.py -- examples/data/peak-150K.dat
One fit per file, as one Slurm job array, at most two running at once:
    bumps-submit submit examples/peak_file.py --each 'examples/data/*.dat' --max-running 2
"""

import sys

import numpy as np
from bumps.names import Curve, FitProblem

if len(sys.argv) < 2:
    raise SystemExit("give the data file as the model's argument: peak_file.py DATA")
x, y, dy = np.loadtxt(sys.argv[1], unpack=True)


def peak(x, height, center, width, background):
    return height * np.exp(-0.5 * ((x - center) / width) ** 2) + background


model = Curve(peak, x, y, dy, height=1.0, center=0.0, width=1.0, background=0.0)
model.height.range(0.0, 5.0)
model.center.range(-2.0, 2.0)
model.width.range(0.1, 3.0)
model.background.range(-1.0, 1.0)

problem = FitProblem(model)

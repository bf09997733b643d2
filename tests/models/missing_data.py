import numpy as np
from bumps.names import Curve, FitProblem

x, y, dy = np.loadtxt("no-such-data-file.dat").T
problem = FitProblem(Curve(lambda x, a: a * x, x, y, dy, a=1.0))

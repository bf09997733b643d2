"""A sasmodels fit written as sasmodels' own examples write them: the data file is the first argument.

    bumps-submit submit model.py -- data/T20.dat           # one fit
    bumps-submit submit model.py --each 'data/*.dat'      # a campaign, one fit per file

sasmodels compiles its C kernel on first use into your library cache (bumps-submit's sandbox_cache,
~/.cache/bumps-mpi by default), which the sandbox opens to your jobs: once per model, not per fit.
"""

import sys

from bumps.names import FitProblem
from sasmodels.bumps_model import Experiment, Model
from sasmodels.core import load_model
from sasmodels.data import load_data

data = load_data(sys.argv[1])
kernel = load_model("ellipsoid@hayter_msa")
model = Model(
    kernel, scale=1.0, background=0.001, radius_polar=25, radius_equatorial=50, sld=4, sld_solvent=1,
    volfraction=0.05, charge=19, temperature=298,
)  # fmt: skip
model.radius_polar.range(5, 100)
model.radius_equatorial.range(10, 200)
model.scale.range(0.1, 10)
model.background.range(0, 0.01)
problem = FitProblem(Experiment(data=data, model=model))

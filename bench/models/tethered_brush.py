"""A polymer brush tethered to silicon, measured in deuterated and in ordinary toluene.

A realistic refl1d model for `make bench` (17 fitted parameters, a smooth
profile sliced into thin slabs: about half a millisecond per nllf). The two
reflectivity curves are simulated from the model itself with 3% noise and a
fixed seed, so the benchmark needs no data files.
"""

from copy import copy

import numpy as np
from refl1d.names import NCNR, SLD, Experiment, FitProblem, PolymerBrush, silicon

oxide = SLD(name="oxide", rho=3.47)
polystyrene_d = SLD(name="d-PS", rho=6.2)
toluene_d, toluene_h = SLD(name="d-toluene", rho=5.66), SLD(name="h-toluene", rho=0.94)
anchor_d, anchor_h = SLD(name="d-anchor", rho=1.5), SLD(name="h-anchor", rho=0.0)

brush_d = PolymerBrush(
    polymer=polystyrene_d, solvent=toluene_d, base_vf=70, base=120, length=80, power=2, sigma=10
)
brush_h = copy(brush_d)  # the same chains...
brush_h.solvent = toluene_h  # ...swollen by the other solvent

in_d = silicon(0, 5) | oxide(100, 5) | anchor_d(100, 20) | brush_d(400, 0) | toluene_d
in_h = silicon | oxide | anchor_h | brush_h | toluene_h
for layer_d, layer_h in zip(in_d, in_h, strict=True):  # one geometry, two contrasts
    layer_h.thickness, layer_h.interface = layer_d.thickness, layer_d.interface

for layer in in_d[:3]:
    layer.interface.range(0, 100)
in_d[1].thickness.range(0, 200)
in_d[2].thickness.range(0, 200)
polystyrene_d.rho.range(6.2, 6.5)
oxide.rho.range(2.07, 4.16)
toluene_d.rho.pmp(5)
anchor_d.rho.range(0, 1.5)
brush_d.base_vf.range(50, 80)
brush_d.base.range(0, 200)
brush_d.length.range(0, 500)
brush_d.power.range(0, 5)
brush_d.sigma.range(0, 20)
toluene_h.rho.pmp(5)
anchor_h.rho.range(-0.5, 0.5)

instrument = NCNR.NG7(Qlo=0.005, slits_at_Qlo=0.075)
angles = np.linspace(0.2, 4.5, 250)
probe_d = instrument.probe(T=angles, back_reflectivity=True)
probe_h = instrument.probe(T=angles, back_reflectivity=True)
probe_d.theta_offset.range(-0.1, 0.1)

experiments = [
    Experiment(sample=in_h, probe=probe_h, dz=0.5, dA=1),
    Experiment(sample=in_d, probe=probe_d, dz=0.5, dA=1),
]
state = np.random.get_state()
np.random.seed(20261125)
for experiment in experiments:
    experiment.simulate_data(noise=3.0)
np.random.set_state(state)

problem = FitProblem(experiments)
problem.name = "tethered_brush"

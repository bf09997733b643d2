"""Run under mpiexec -n N: our mapper against serial evaluation, bit for bit; then whole fits.

Rank 0 prints "OK <checks>" at the end; any mismatch raises, and `python -m
mpi4py` turns that into MPI_Abort so no rank is left waiting.
"""

import sys

import numpy as np
from mpi4py import MPI

from bumps_mpi.runtime.fit import load_model, run_fit
from bumps_mpi.runtime.mapper import MPIMapper

model, fit_model = sys.argv[1], sys.argv[2]
comm = MPI.COMM_WORLD
problem = load_model(model)
MPIMapper.start_worker(problem)  # workers serve here until stop_mapper, then exit
mapper = MPIMapper.start_mapper(problem)
size = comm.size
nvar = len(problem.labels())
low, high = problem.bounds()
rng = np.random.default_rng(1)


def serial(points):
    return np.array([problem.nllf(p) for p in points], dtype=float)


def same(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype == np.float64, (what, a.shape, b.shape, a.dtype)
    assert np.array_equal(a, b, equal_nan=True), (what, a, b)


checks = 0
for npop in sorted({0, 1, size - 1, size, size + 1, 7, 20, 101, 3001}):  # 3001: buffers must grow
    base = low + (high - low) * rng.random((npop, nvar))
    if npop > 2:
        base[1, 0] = high[0] + 1.0  # out of bounds: inf, a value not an error
    layouts = {
        "C": base,
        "F": np.asfortranarray(base),
        "strided rows": np.repeat(base, 2, axis=0)[::2],
        "strided cols": np.repeat(base, 2, axis=1)[:, ::2],
        "transposed view": np.ascontiguousarray(base.T).T,
        "list": base.tolist(),
    }
    for name, points in layouts.items():
        same(mapper(points), serial(base), f"{name} npop={npop}")
        checks += 1

# whole fits: same seed, serial map vs our mapper, identical best point and chisq; each fit after the
# first sends its problem to the workers (several fits in one run). amoeba and lm never call the mapper.
FITS = (
    ("dream", {"samples": 1000, "burn": 20}),
    ("de", {"steps": 30}),
    ("ps", {"steps": 20}),
    ("rl", {"steps": 20}),
    ("amoeba", {"steps": 50}),
    ("lm", {"steps": 20}),
)
for fit, options in FITS:
    fit_problem = load_model(fit_model)
    mapper = MPIMapper.start_mapper(fit_problem)
    _, ours = run_fit(fit_problem, fit, options, mapper=mapper, seed=11)
    _, reference = run_fit(load_model(fit_model), fit, options, mapper=None, seed=11)
    for key in ("chisq", "nllf"):
        assert ours[key] == reference[key], (fit, key, ours[key], reference[key])
    assert [p["best"] for p in ours["parameters"]] == [p["best"] for p in reference["parameters"]], fit
    checks += 1

MPIMapper.stop_mapper()
print(f"OK {checks} checks on {size} ranks", flush=True)

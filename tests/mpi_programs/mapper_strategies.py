"""Run under mpiexec -n N: each of the mapper's two strategies alone, against serial evaluation.

StaticSplit and GuidedChunks are called directly (not through Mapper's choice
between them), on points of every size, with and without a failing point.
Rank 0 prints "OK <checks>" at the end.
"""

import sys

import numpy as np
from mpi4py import MPI

from bumps_mpi.runtime.fit import load_model
from bumps_mpi.runtime.mapper import _MAP, Mapper, serve

comm = MPI.COMM_WORLD
problem = load_model(sys.argv[1])
if comm.rank != 0:
    serve(problem, comm)
    sys.exit(0)

mapper = Mapper(problem, comm)  # for its communicator and the workers' buffer sizes only
low, high = problem.bounds()
nvar = len(low)
rng = np.random.default_rng(2)
checks = 0
for name, strategy in (("static", mapper.static), ("guided", mapper.guided)):
    for npop in sorted({1, comm.size - 1, comm.size, comm.size + 1, 7, 101, 3001} - {0}):
        points = np.ascontiguousarray(low + (high - low) * rng.random((npop, nvar)))
        result = np.full(npop, -1.0)
        remote, failed, cost = strategy.map(problem, points, result, _MAP + nvar)
        expected = np.array([problem.nllf(p) for p in points])
        assert not remote and failed is None and cost >= 0, (name, npop, remote, failed)
        assert np.array_equal(result, expected), (name, npop)
        checks += 1
mapper.stop()
print(f"OK {checks} checks on {comm.size} ranks", flush=True)

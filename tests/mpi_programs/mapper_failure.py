"""Run under mpiexec: the nllf on rank 1 fails at the point whose first value is 13.

MODE: raise (an Exception), base (a BaseException), kill (the process dies).
Rank 0 does not catch the RemoteError: `python -m mpi4py` aborts the job and
the traceback, naming rank, host and point, is on stderr.
"""

import os
import signal
import sys

import numpy as np
from mpi4py import MPI

from bumps_mpi.mapper import MPIMapper

mode = sys.argv[1]
rank = MPI.COMM_WORLD.rank


class Escape(BaseException):
    pass


class Problem:
    def nllf(self, p):
        if p[0] == 13.0 and rank == 1:
            if mode == "raise":
                raise ValueError("bad point in the model")
            if mode == "base":
                raise Escape("a BaseException from the model")
            os.kill(os.getpid(), signal.SIGKILL)
        return float(np.sum(p))


problem = Problem()
MPIMapper.start_worker(problem)
mapper = MPIMapper.start_mapper(problem)
points = np.arange(20.0).reshape(10, 2)  # rows 0..4 on rank 0, rows 5..9 on rank 1
points[7, 0] = 13.0
assert list(mapper(points[:4])) == [1.0, 5.0, 9.0, 13.0]  # the mapper works before the failure
mapper(points)
print("NOT REACHED", flush=True)

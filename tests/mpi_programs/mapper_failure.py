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

from bumps_mpi.runtime.mapper import MPIMapper

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
points = np.arange(20.0).reshape(10, 2)
assert list(mapper(points[:4])) == [1.0, 5.0, 9.0, 13.0]  # the mapper works before the failure
# the bad point where rank 1 evaluates it: static split, rows 5..9; guided, the first chunk (row 0 on)
bad = 0 if os.environ.get("BUMPS_MPI_BALANCE") == "always" else 7
points[bad] = (13.0, 15.0)
mapper(points)
print("NOT REACHED", flush=True)

"""Bumps' own command line, with our MPI mapper in place of bumps.mapper.MPIMapper.

    mpiexec -n 4 python -m bumps_mpi.bumps model.py --fit=dream --batch --export=out

Everything is Bumps' CLI except two things: the mapper, and MPI detection,
which is explicit (more than one rank in COMM_WORLD) instead of Bumps'
PMI_SIZE/OMPI_COMM_WORLD_SIZE guess that misses `srun --mpi=pmix`.
Numeric libraries get one thread per rank unless BUMPS_MPI_THREADS says otherwise.
Bumps' CLI logs a failed fit and exits 0; here a fit that failed on any rank exits 1.
"""

from __future__ import annotations

import os
import sys

from .job import limit_threads


def main() -> None:
    limit_threads(int(os.environ.get("BUMPS_MPI_THREADS", "1")))

    import bumps.mapper
    from bumps.webview.server.cli import main as bumps_main
    from mpi4py import MPI

    from .mapper import Mapper, MPIMapper

    bumps.mapper.MPIMapper = MPIMapper  # bumps' CLI imports both names at call time
    bumps.mapper.using_mpi = lambda: MPI.COMM_WORLD.size > 1
    bumps_main()
    if Mapper.failures:
        sys.exit(1)


if __name__ == "__main__":
    main()

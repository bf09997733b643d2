"""`mpiexec -n N python -m bumps_mpi.bumps MODEL ...`: Bumps' own command line with our MPI mapper
(bumps_mpi.runtime.bumps). A documented command, so the name stays."""

from .runtime.bumps import main

if __name__ == "__main__":
    main()

"""`python -m mpi4py -m bumps_mpi.job JOBDIR`: a job's entry point on every rank (bumps_mpi.runtime.job).

Run by name from the sbatch script and by mpiexec, so the name stays, whatever the package's layout.
"""

from .runtime.job import exit_with, main

if __name__ == "__main__":
    exit_with(main())

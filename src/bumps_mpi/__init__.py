"""bumps-mpi: submit Bumps fits to Slurm or run them locally under MPI.

Kept import-free on purpose: the CLI's start-up on a login node must not pay
for numpy, bumps or mpi4py.
"""

__version__ = "0.1.0"

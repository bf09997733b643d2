"""`python -m bumps_mpi` is bumps-submit."""

from .cli import main

main()

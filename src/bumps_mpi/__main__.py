"""`python -m bumps_mpi` is bumps-submit."""

from .front.cli import main

main()

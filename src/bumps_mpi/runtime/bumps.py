"""Bumps' own command line, with our MPI mapper in place of bumps.mapper.MPIMapper.

    mpiexec -n 4 python -m bumps_mpi.bumps model.py --fit=dream --batch --export=out

Everything is Bumps' CLI except two things: the mapper, and MPI detection,
which is explicit (more than one rank in COMM_WORLD) instead of Bumps'
PMI_SIZE/OMPI_COMM_WORLD_SIZE guess that misses `srun --mpi=pmix`.
Numeric libraries get one thread per rank unless BUMPS_MPI_THREADS says otherwise.
Bumps' CLI logs a failed fit and exits 0; here a fit that failed on any rank exits 1.
A model may import the modules beside it, as under `python model.py`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .threads import limit_threads


def _with_model_directory(load: Callable[..., Any]) -> Callable[..., Any]:
    """Bumps' load_problem, with the model's directory first on sys.path (Bumps only chdirs there)."""

    def load_problem(path: Any, *args: Any, **kwargs: Any) -> Any:
        directory = str(Path(path).resolve().parent)
        if directory not in sys.path:
            sys.path.insert(0, directory)
        return load(path, *args, **kwargs)

    return load_problem


def main() -> None:
    raw = os.environ.get("BUMPS_MPI_THREADS", "1")
    if not raw.isdigit() or int(raw) < 1:
        sys.exit(f"bumps-mpi: environment variable BUMPS_MPI_THREADS={raw!r} must be a whole number >= 1")
    limit_threads(int(raw))

    import bumps.fitproblem
    import bumps.mapper
    import bumps.webview.server.cli as bumps_cli
    from mpi4py import MPI

    from .mapper import Mapper, MPIMapper

    bumps.mapper.MPIMapper = MPIMapper  # bumps' CLI imports both names at call time
    bumps.mapper.using_mpi = lambda: MPI.COMM_WORLD.size > 1
    bumps.fitproblem.load_problem = _with_model_directory(bumps.fitproblem.load_problem)
    bumps_cli.load_problem = _with_model_directory(bumps_cli.load_problem)  # imported by name there
    bumps_cli.main()
    if Mapper.failures:
        sys.exit(1)

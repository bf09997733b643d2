"""Numeric libraries' threads per rank: set before numpy is imported, by the job and by every child that
runs a model (the check, the figures), so N ranks use N cores."""

from __future__ import annotations

import os

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def limit_threads(threads: int) -> None:
    """*threads* numeric-library threads per rank (default 1: N ranks on N cores, no oversubscription).

    Overrides values inherited from the environment (cluster modules often export
    OMP_NUM_THREADS=<all cores>); the user's knob is --threads / BUMPS_MPI_THREADS.
    Must run before numpy is imported.
    """
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)

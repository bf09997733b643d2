"""bumps-mpi: submit Bumps fits to Slurm or run them locally under MPI.

    import bumps_mpi
    job = bumps_mpi.submit("model.py", "data.refl", options={"samples": 10000})
    job.wait(); print(job.results().chisq)

`submit`, `submit_campaign`, `Job`, `Campaign` and `Results` come from
bumps_mpi.front.jobs, imported on first use: the CLI's start-up on a login node
must not pay for anything it does not run (no numpy, bumps or mpi4py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = ["Campaign", "Job", "Results", "WaitTimeout", "__version__", "submit", "submit_campaign"]

if TYPE_CHECKING:
    from .front.jobs import Campaign, Job, Results, WaitTimeout, submit, submit_campaign


def __getattr__(name: str) -> Any:
    if name in __all__:
        from .front import jobs

        return getattr(jobs, name)
    raise AttributeError(f"module 'bumps_mpi' has no attribute {name!r}")

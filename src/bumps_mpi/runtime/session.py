"""session.h5: the finished fit as a Bumps session file, for Bumps' own viewer (`bumps-submit open`).

Bumps 1.x keeps a fit in a session file (`bumps --read-session FILE`): the
problem at its best point, the fitter's state (DREAM's draws) and its
convergence. Rank 0 writes it with Bumps' own code (bumps.fitters.save_fit),
confined, beside the result. It is written by the job, so by the model: only
the user's own explicit `open` loads it, itself confined; nothing unconfined
(status, results, the service) ever does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..jobdir import current_umask


def convergence_monitor(problem: Any) -> Any:
    """Bumps' webview monitor of the population's chi-square quantiles, for the viewer's plot."""
    from bumps.webview.server.fit_thread import ConvergenceMonitor

    return ConvergenceMonitor(problem)


def write(
    path: Path, driver: Any, fit_id: str, options: dict[str, Any], monitor: Any, x: Any, fx: float
) -> None:
    """Bumps' session file for the fit *driver* ended at (*x*, *fx*); raises what Bumps raises."""
    import numpy as np
    from bumps.fitters import save_fit
    from scipy.optimize import OptimizeResult

    problem = driver.problem
    problem.setp(x)
    fit = OptimizeResult(
        x=x,
        fun=fx,
        method=fit_id,
        options=dict(options),
        convergence=np.array(monitor.quantiles),
        state=getattr(driver.fitter, "state", None),
    )
    save_fit(path, problem, fit, label=f"bumps-mpi: {fit_id}")
    os.chmod(path, 0o666 & ~current_umask())  # Bumps makes it 0644 whatever the umask says

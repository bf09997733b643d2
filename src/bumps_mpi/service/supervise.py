"""`python -m bumps_mpi.service.supervise JOBDIR RANKS`: a local run's supervisor, for the job controller.

The same supervision as `bumps-submit submit --local` (bumps_mpi.cluster.local.run),
in a process of its own: the service starts it in a new session and may stop and
start again meanwhile; the run records how it ended in its job directory.
"""

from __future__ import annotations

import sys

from ..cluster import local
from ..jobdir import JobDir

if __name__ == "__main__":
    local.run(JobDir(sys.argv[1]), int(sys.argv[2]))

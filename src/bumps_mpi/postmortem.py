"""`python -m bumps_mpi.postmortem JOBDIR STATUS LOGFILE`: the batch script's post-mortem of a dead rank
(bumps_mpi.cluster.postmortem). Run by name from the sbatch script, so the name stays."""

import sys
from pathlib import Path

from .cluster.postmortem import write_postmortem

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m bumps_mpi.postmortem JOBDIR STATUS LOGFILE")
    write_postmortem(Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))

"""Run under mpiexec: every rank confines itself as a job's rank does (the user's library cache CACHE
opened read-write, its own directory OWN/rank-N), then all load and evaluate the same sasmodels model at
the same moment with CACHE cold, so each compiles it into the same file. Rank 0 writes every rank's
values to OWN/ranks.json.
"""

import json
import os
import sys
from pathlib import Path

from bumps_mpi.sandbox import policy as sandbox

cache, own = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
mine = own / f"rank-{rank}"
mine.mkdir(parents=True, exist_ok=True)
confined = sandbox.apply(
    sandbox.Policy(
        level="require",
        read=[*sandbox.python_paths(), *sandbox.SYSTEM_READ, str(Path(__file__).parent)],
        write=[*sandbox.SYSTEM_WRITE, str(own)],
        cache=str(cache),
    ),
    mine,
)
from mpi4py import MPI  # noqa: E402  (after confinement, as a job's ranks)

MPI.COMM_WORLD.Barrier()  # all at once, on a cold cache
import numpy as np  # noqa: E402
from sasmodels.core import load_model  # noqa: E402
from sasmodels.direct_model import call_kernel  # noqa: E402

q = np.logspace(-2.5, -0.6, 60)
kernel = load_model("ellipsoid@hayter_msa").make_kernel([q])
values = call_kernel(kernel, {"radius_polar": 20, "radius_equatorial": 40}).tolist()
every = MPI.COMM_WORLD.gather({"rank": rank, "values": values, "cc": os.environ["CC"]}, root=0)
if rank == 0:
    (own / "ranks.json").write_text(json.dumps(every))

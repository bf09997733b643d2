"""The MPI side of bench/refl1d_bench.py (run under mpiexec -n R; not a test).

1. A real fixed-length DREAM fit of bench/models/tethered_brush.py with our
   mapper: wall time, time inside the mapper, and the rest (rank 0's own work
   between generations). Every generation's points are recorded.
2. The recorded generations are mapped again, serially on rank 0, with our
   mapper and with Bumps' MPIMapper, interleaved in blocks of 10 generations:
   the same work for all three. (Separate fits cannot be compared: with numba
   the chains differ between runs, and refl1d's cost per point depends on the
   point.)

Prints one JSON object on rank 0.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from bumps.fitproblem import load_problem
from bumps.fitters import DreamFit, FitDriver
from bumps.mapper import _MPI_map
from mpi4py import MPI

import bumps_mpi.runtime.mapper as mapper_module
from bumps_mpi.runtime.mapper import Mapper, serve

MODEL = Path(__file__).resolve().parent / "models" / "tethered_brush.py"
GENERATIONS = int(os.environ.get("BENCH_GENERATIONS", "200"))  # 100 burn-in + the rest sampled
BLOCK = 10
comm = MPI.COMM_WORLD
rank = comm.rank
problem = load_problem(MODEL)
problem.nllf(problem.getp())  # compile numba's kernels before any clock starts


def fit_with_ours() -> tuple[dict, list[np.ndarray]]:
    if rank != 0:
        serve(problem, comm)
        return {}, []
    mapper = Mapper(problem, comm)
    recorded: list[np.ndarray] = []
    inside = [0.0]

    def timed(points):
        recorded.append(np.array(points, dtype=float))
        start = time.perf_counter()
        values = mapper(points)
        inside[0] += time.perf_counter() - start
        return values

    chains = 10 * len(problem.labels())
    np.random.seed(1)
    driver = FitDriver(
        DreamFit, problem=problem, monitors=[], mapper=timed, samples=chains * (GENERATIONS - 100), burn=100
    )
    start = time.perf_counter()
    driver.fit()
    wall = time.perf_counter() - start
    mapper.stop()
    return {"wall_s": wall, "map_s": inside[0], "generations": len(recorded), "chains": chains}, recorded


# every rank's own nllf time per call of our mapper: _evaluate runs once per call on each rank
evaluate_times: list[float] = []
halves = [0.0, 0.0]  # serial replay: seconds for the first and second half of each population
_evaluate = mapper_module._evaluate


def _timed_evaluate(problem, rows, out):
    start = time.perf_counter()
    failed = _evaluate(problem, rows, out)
    evaluate_times.append(time.perf_counter() - start)
    return failed


mapper_module._evaluate = _timed_evaluate


def quiet_barrier() -> None:
    """A barrier that sleeps instead of spinning: a serial fit has no busy process beside it."""
    request = comm.Ibarrier()
    while not request.Test():
        time.sleep(0.001)


def replay(kind: str, block: list[np.ndarray]) -> float:
    """Map *block* with *kind* on every rank; rank 0 returns the seconds spent."""
    if rank != 0:
        if kind == "serial":
            quiet_barrier()  # rank 0 works alone; this rank must not steal its core
        elif kind.startswith("ours"):
            serve(problem, comm)
        elif kind == "bumps":
            while _MPI_map(problem, None, comm, 0) is not None:
                pass
        return 0.0
    if kind.startswith("ours"):
        os.environ["BUMPS_MPI_BALANCE"] = "never" if kind == "ours static" else "always"
    mapper = Mapper(problem, comm) if kind.startswith("ours") else None
    start = time.perf_counter()
    for points in block:
        if kind == "serial":  # timed by halves: is the first half of a population costlier?
            half = len(points) // 2
            t0 = time.perf_counter()
            [problem.nllf(p) for p in points[:half]]
            t1 = time.perf_counter()
            [problem.nllf(p) for p in points[half:]]
            halves[0] += t1 - t0
            halves[1] += time.perf_counter() - t1
        elif kind.startswith("ours"):
            mapper(points)
        else:
            _MPI_map(problem, points, comm, 0)
    seconds = time.perf_counter() - start
    if kind == "serial":
        quiet_barrier()
    elif kind.startswith("ours"):
        mapper.stop()
    elif kind == "bumps":
        _MPI_map(problem, np.empty((0, 0)), comm, 0)
    return seconds


fit, recorded = fit_with_ours()
evaluate_times.clear()  # keep only the replay's calls
count = comm.bcast(len(recorded), root=0)
totals = {"serial": 0.0, "ours": 0.0, "ours static": 0.0, "bumps": 0.0}
for first in range(0, count, BLOCK):
    block = recorded[first : first + BLOCK]
    for kind in totals:
        comm.Barrier()
        totals[kind] += replay(kind, block)
# where the 2-rank time goes, from every rank's own nllf time in our mapper's replay
per_rank = comm.gather(sum(evaluate_times), root=0)  # both "ours" runs: halve for one
if rank == 0:
    breakdown = {
        "compute_s_per_rank": [c / 2 for c in per_rank],
        "contention": sum(per_rank) / 2 / totals["serial"],  # > 1: a core is slower while the other works
        "idle_and_overhead_s": totals["ours"] - sum(per_rank) / 2 / len(per_rank),  # waiting + the mapper
        "serial_first_half_over_second": halves[0] / halves[1],
    }
    print(
        json.dumps({"ranks": comm.size, "fit": fit, "replay_map_s": totals, "ours_breakdown": breakdown}),
        flush=True,
    )

"""The MPI side of `make bench` (run by bench/mapper_bench.py under mpiexec -n R; not a test).

Per-call time of each MPI mapper on the same points, rounds interleaved so the
machine's noise falls on all of them alike. Prints one JSON object on rank 0:
{"ranks": R, "per_call_us": {mapper: {pop: median_us}}, "efficiency": {...}}.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from bumps.mapper import _MPI_map
from mpi4py import MPI
from mpi4py.futures import MPICommExecutor

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from problems import Burn, Trivial  # noqa: E402

from bumps_mpi.runtime.mapper import Mapper, serve, split  # noqa: E402

comm = MPI.COMM_WORLD
# points mapped per timed block (each mapper, each population): long enough blocks that one round's ratio
# is not one scheduler hiccup (BENCH_POINTS, default 200000: about 0.1 s a block for ours at 2 ranks)
POINTS_PER_BLOCK = int(os.environ.get("BENCH_POINTS", "200000"))
rank, size = comm.rank, comm.size
NVAR = 10
PROBLEM = Trivial()


def minimal_root(points: np.ndarray, calls: int, problem) -> None:
    """The least a Scatterv/Gatherv map can do: both sides know the shape and the number of calls."""
    npop, nvar = points.shape
    counts, displs = split(npop, size)
    out = np.empty(npop)
    for _ in range(calls):
        mine = np.empty((counts[0], nvar))
        comm.Scatterv([points, counts * nvar, displs * nvar, MPI.DOUBLE], mine, root=0)
        part = np.array([problem.nllf(p) for p in mine])
        comm.Gatherv(part, [out, counts, displs, MPI.DOUBLE], root=0)


def minimal_worker(npop: int, calls: int, problem) -> None:
    counts, _ = split(npop, size)
    for _ in range(calls):
        mine = np.empty((counts[rank], NVAR))
        comm.Scatterv(None, mine, root=0)
        part = np.array([problem.nllf(p) for p in mine])
        comm.Gatherv(part, None, root=0)


def _chunk_nllf(rows: np.ndarray) -> list[float]:
    return [CURRENT[0].nllf(p) for p in rows]


CURRENT = [PROBLEM]


def run(kind: str, points: np.ndarray | None, npop: int, calls: int, problem) -> float | None:
    """All ranks call this; rank 0 returns seconds per call."""
    CURRENT[0] = problem
    if kind == "futures":
        with MPICommExecutor(comm, root=0) as executor:
            if executor is None:
                return None
            chunks = np.array_split(points, max(size - 1, 1))
            start = time.perf_counter()
            for _ in range(calls):
                np.concatenate([np.asarray(r) for r in executor.map(_chunk_nllf, chunks)])
            return (time.perf_counter() - start) / calls
    if rank != 0:
        if kind == "ours":
            serve(problem, comm)
        elif kind == "bumps":
            while _MPI_map(problem, None, comm, 0) is not None:
                pass
        else:
            minimal_worker(npop, calls, problem)
        return None
    start = time.perf_counter()
    if kind == "ours":
        mapper = Mapper(problem, comm)
        for _ in range(calls):
            mapper(points)
        elapsed = time.perf_counter() - start
        mapper.stop()
        return elapsed / calls
    if kind == "bumps":
        for _ in range(calls):
            _MPI_map(problem, points, comm, 0)
        elapsed = time.perf_counter() - start
        _MPI_map(problem, np.empty((0, 0)), comm, 0)
        return elapsed / calls
    minimal_root(points, calls, problem)
    return (time.perf_counter() - start) / calls


def main() -> None:
    rounds, kinds, burn_loops = int(sys.argv[1]), sys.argv[2].split(","), json.loads(sys.argv[3])
    pops = [20, 100, 1000]
    rng = np.random.default_rng(0)
    times: dict[str, dict[int, list[float]]] = {k: {p: [] for p in pops} for k in kinds}
    for _ in range(rounds):
        for npop in pops:
            points = rng.random((npop, NVAR)) if rank == 0 else None
            calls = max(20, POINTS_PER_BLOCK // npop)  # blocks of about the same time at every population
            for kind in kinds:
                if kind == "futures":
                    calls_here = max(5, calls // 20)  # orders of magnitude slower
                else:
                    calls_here = calls
                comm.Barrier()  # outside the timed region: start each block together
                seconds = run(kind, points, npop, calls_here, PROBLEM)
                if rank == 0:
                    times[kind][npop].append(seconds)
    efficiency = {}
    for label, loops in burn_loops.items():
        problem = Burn(float(label.removesuffix("ms")), loops)
        npop = 4 * size  # whole generations: each rank gets the same number of points
        points = rng.random((npop, NVAR)) if rank == 0 else None
        serial_s, mpi_s = [], []
        for _ in range(rounds):  # serial on rank 0 and MPI interleaved: the same machine noise
            comm.Barrier()
            if rank == 0:
                start = time.perf_counter()
                [problem.nllf(p) for p in points]
                serial_s.append(time.perf_counter() - start)
            comm.Barrier()
            seconds = run("ours", points, npop, 1, problem)
            if rank == 0:
                mpi_s.append(seconds)
        if rank == 0:
            efficiency[label] = {
                "npop": npop,
                "serial_s": float(np.median(serial_s)),
                "mpi_s": float(np.median(mpi_s)),
            }
    if rank == 0:
        per_call = {k: {p: float(np.median(v)) * 1e6 for p, v in d.items()} for k, d in times.items()}
        rounds_us = {k: {p: [t * 1e6 for t in v] for p, v in d.items()} for k, d in times.items()}
        print(
            json.dumps(
                {"ranks": size, "per_call_us": per_call, "rounds_us": rounds_us, "efficiency": efficiency}
            ),
            flush=True,
        )


main()

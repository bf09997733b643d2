"""MPI mapper for Bumps: rank 0 scatters the points, every rank evaluates its share, rank 0 gathers.

Why not bumps.mapper.MPIMapper (DESIGN.md section 2): it pickles the shape on
every call, adds two barriers, gives wrong values for Fortran-ordered points,
deadlocks on non-contiguous ones, and hangs the whole job when nllf raises on
a worker. Here each call is one fixed-size header Bcast, one Scatterv and one
Gatherv of float64 buffers. Each rank sends one extra value after its nllf
values: 0 when all went well, else 1 + the index of the point that raised.
A failed rank then sends its traceback point-to-point (off the hot path), and
rank 0 raises RemoteError naming the rank, host and point; the workers stay
in their loop, ready for the stop that follows.
"""

from __future__ import annotations

import socket
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from .errors import RemoteError

ROOT = 0
_STOP, _MAP, _PROBLEM = 0, 1, 2
_ERROR_TAG = 77


def split(npop: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows per rank and their offsets: contiguous blocks, the first npop % size ranks get one more."""
    counts = np.full(size, npop // size, dtype=np.intp)
    counts[: npop % size] += 1
    displs = np.zeros(size, dtype=np.intp)
    np.cumsum(counts[:-1], out=displs[1:])
    return counts, displs


def _evaluate(problem: Any, rows: np.ndarray, out: np.ndarray) -> tuple[int, BaseException] | None:
    """nllf of each row into out[:-1], status into out[-1]; never raises."""
    for i in range(rows.shape[0]):
        try:
            out[i] = problem.nllf(rows[i])
        except BaseException as exc:  # noqa: B036 - a BaseException on a worker must not hang rank 0
            out[i:-1] = np.nan
            out[-1] = i + 1
            return i, exc
    out[-1] = 0.0
    return None


def _describe(exc: BaseException) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


class _Plan:
    """Counts, offsets and the gather layout for one (npop, nvar, size); cached between calls."""

    def __init__(self, npop: int, nvar: int, size: int):
        self.key = (npop, nvar)
        self.counts, self.displs = split(npop, size)
        self.row_counts = self.counts * nvar
        self.row_displs = self.displs * nvar
        ranks = np.arange(size, dtype=np.intp)
        self.gather_counts = self.counts + 1
        self.gather_displs = self.displs + ranks
        self.flag_index = self.gather_displs + self.counts
        keep = np.ones(npop + size, dtype=bool)
        keep[self.flag_index] = False
        self.value_index = np.flatnonzero(keep)


class Mapper:
    """The root side: a callable that maps an (npop, nvar) array to npop nllf values."""

    def __init__(self, problem: Any, comm: MPI.Comm = MPI.COMM_WORLD):
        self.problem = problem
        self.comm = comm
        self._header = np.zeros(3, dtype=np.int64)
        self._plan: _Plan | None = None

    def _plan_for(self, npop: int, nvar: int) -> _Plan:
        if self._plan is None or self._plan.key != (npop, nvar):
            self._plan = _Plan(npop, nvar, self.comm.size)
        return self._plan

    def __call__(self, points: Any) -> np.ndarray:
        points = np.ascontiguousarray(points, dtype=np.float64)
        if points.size == 0 and points.ndim <= 2:  # [] or (0, nvar): nothing to map, nothing to send
            return np.empty(0, dtype=np.float64)
        if points.ndim != 2:
            raise ValueError(f"mapper expects a 2-D array of points, got shape {points.shape}")
        npop, nvar = points.shape
        comm = self.comm
        plan = self._plan_for(npop, nvar)
        self._header[:] = (_MAP, npop, nvar)
        comm.Bcast(self._header, root=ROOT)
        comm.Scatterv([points, plan.row_counts, plan.row_displs, MPI.DOUBLE], MPI.IN_PLACE, root=ROOT)
        gathered = np.empty(npop + comm.size, dtype=np.float64)
        mine = plan.counts[ROOT]
        failed = _evaluate(self.problem, points[:mine], gathered[: mine + 1])
        comm.Gatherv(MPI.IN_PLACE, [gathered, plan.gather_counts, plan.gather_displs, MPI.DOUBLE], root=ROOT)
        flags = gathered[plan.flag_index]
        if flags.any() or failed is not None:
            self._raise_remote(points, plan, flags, failed)
        return gathered[plan.value_index]

    def _raise_remote(self, points: np.ndarray, plan: _Plan, flags: np.ndarray, failed: Any) -> None:
        """Collect every failed rank's report (so none is left pending), then raise the first."""
        errors: list[RemoteError] = []
        for rank in np.flatnonzero(flags):
            if rank == ROOT:
                continue
            info = self.comm.recv(source=int(rank), tag=_ERROR_TAG)
            index = int(plan.displs[rank] + flags[rank] - 1)
            errors.append(RemoteError(int(rank), info["host"], points[index].tolist(), info["traceback"]))
        if failed is not None:
            index, exc = failed
            if not isinstance(exc, Exception):
                raise exc
            info = _describe(exc)
            raise RemoteError(ROOT, info["host"], points[index].tolist(), info["traceback"]) from exc
        raise errors[0]

    def send_problem(self, problem: Any) -> None:
        """Give the workers a new problem (pickled once per fit, never per call)."""
        import cloudpickle  # model files define functions that plain pickle cannot carry

        self._header[:] = (_PROBLEM, 0, 0)
        self.comm.Bcast(self._header, root=ROOT)
        self.comm.bcast(cloudpickle.dumps(problem), root=ROOT)
        self.problem = problem

    def stop(self) -> None:
        """Release the workers from their loop."""
        self._header[:] = (_STOP, 0, 0)
        self.comm.Bcast(self._header, root=ROOT)


def serve(problem: Any, comm: MPI.Comm = MPI.COMM_WORLD) -> None:
    """The worker side: evaluate this rank's share of each call until rank 0 says stop."""
    header = np.zeros(3, dtype=np.int64)
    plan: _Plan | None = None
    while True:
        comm.Bcast(header, root=ROOT)
        command, npop, nvar = (int(v) for v in header)
        if command == _STOP:
            return
        if command == _PROBLEM:
            import cloudpickle

            problem = cloudpickle.loads(comm.bcast(None, root=ROOT))
            continue
        if plan is None or plan.key != (npop, nvar):
            plan = _Plan(npop, nvar, comm.size)
        mine = int(plan.counts[comm.rank])
        rows = np.empty((mine, nvar), dtype=np.float64)
        comm.Scatterv(None, rows, root=ROOT)
        out = np.empty(mine + 1, dtype=np.float64)
        failed = _evaluate(problem, rows, out)
        comm.Gatherv(out, None, root=ROOT)
        if failed is not None:
            comm.send(_describe(failed[1]), dest=ROOT, tag=_ERROR_TAG)


class MPIMapper:
    """Bumps' mapper interface (start_worker / start_mapper / stop_mapper) over Mapper and serve.

    A drop-in for bumps.mapper.MPIMapper: workers block in start_worker until
    the root calls stop_mapper, then leave the program.
    """

    has_problem = True
    _mapper: Mapper | None = None

    @staticmethod
    def start_worker(problem: Any) -> None:
        comm = MPI.COMM_WORLD
        if comm.rank != ROOT:
            serve(problem, comm)
            raise SystemExit(0)
        MPIMapper.has_problem = problem is not None
        MPIMapper._mapper = Mapper(problem, comm)

    @staticmethod
    def start_mapper(problem: Any, modelargs: Any = None, cpus: int = 0) -> Callable[[Any], np.ndarray]:
        mapper = MPIMapper._mapper or Mapper(problem)
        if not MPIMapper.has_problem or mapper.problem is not problem:
            mapper.send_problem(problem)
        MPIMapper.has_problem = True
        MPIMapper._mapper = mapper
        return mapper

    @staticmethod
    def stop_mapper(mapper: Any = None) -> None:
        if MPIMapper._mapper is not None:
            MPIMapper._mapper.stop()
            MPIMapper._mapper = None

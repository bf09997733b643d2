"""MPI mapper for Bumps: rank 0 sends each rank its share of the points, evaluates its own, gathers.

Why not bumps.mapper.MPIMapper (DESIGN.md section 2): it pickles the shape on
every call, adds two barriers, gives wrong values for Fortran-ordered points,
deadlocks on non-contiguous ones, and hangs the whole job when nllf raises on
a worker.

Here each call is one message to and one from each worker that has points,
float64 buffers both ways and nothing else: the message's envelope is the
header (the tag carries the command and the number of parameters, the size
gives the number of rows). Rank 0 posts its receives straight into the result
array, sends, and evaluates its own share while the messages are in flight.
Each worker waits in a blocking Recv on a buffer whose capacity rank 0 also
tracks; a share that would not fit is preceded by a one-number "grow" message
(once or twice a fit: DREAM's population size does not change).

A rank whose nllf raises (BaseException included) sends its values under
another tag, then its traceback and the index of the point; rank 0 raises
RemoteError naming the rank, host and point. The success path pays one tag
comparison per worker for this. Workers stay in their loop, ready for the stop.
"""

from __future__ import annotations

import atexit
import socket
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np
from mpi4py import MPI

from .errors import RemoteError

ROOT = 0
_STOP, _PROBLEM, _RESULT, _FAILED, _ERROR, _GROW = 1, 2, 3, 4, 5, 6
_MAP = 100  # tag = _MAP + number of parameters
START_CAPACITY = 4096  # doubles in each worker's receive buffer before the first grow


def split(npop: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows per rank and their offsets: contiguous blocks, the first npop % size ranks get one more."""
    counts = np.full(size, npop // size, dtype=np.intp)
    counts[: npop % size] += 1
    displs = np.zeros(size, dtype=np.intp)
    np.cumsum(counts[:-1], out=displs[1:])
    return counts, displs


def _evaluate(problem: Any, rows: np.ndarray, out: np.ndarray) -> tuple[int, BaseException] | None:
    """nllf of each row into out; on an exception, NaN from there on and (index, exception). Never raises."""
    values: list[float] = []
    try:
        for row in rows:
            values.append(problem.nllf(row))
    except BaseException as exc:  # noqa: B036 - a BaseException on a worker must not hang rank 0
        index = len(values)
        out[:index] = values
        out[index:] = np.nan
        return index, exc
    out[:] = values
    return None


def _describe(exc: BaseException) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


class _Plan:
    """Who gets which rows for one population size, as plain ints; cached between calls."""

    def __init__(self, npop: int, size: int, nvar: int = 0):
        counts, displs = split(npop, size)
        self.npop, self.nvar = npop, nvar
        self.mine = int(counts[ROOT])
        self.workers = [(r, int(displs[r]), int(displs[r] + counts[r])) for r in range(1, size) if counts[r]]
        self.statuses = [MPI.Status() for _ in range(2 * len(self.workers))]
        self.receives = self.statuses[0::2]  # requests alternate receive, send


class Mapper:
    """The root side: a callable that maps an (npop, nvar) array to npop nllf values.

    Created on rank 0 while every other rank enters serve() (both duplicate
    *comm*, so the mapper's messages never meet anyone else's).
    """

    failures = 0  # in this process, for callers (like Bumps' CLI) that swallow the exception

    def __init__(self, problem: Any, comm: MPI.Comm = MPI.COMM_WORLD):
        self.problem = problem
        self.comm = comm.Dup()
        self._plan = _Plan(0, self.comm.size)
        self._capacity = [START_CAPACITY] * self.comm.size  # each worker's receive buffer, in doubles

    def _grow(self, plan: _Plan, nvar: int) -> None:
        """Tell each worker whose buffer is too small for its share to enlarge it (before the share)."""
        for rank, start, stop in plan.workers:
            need = (stop - start) * nvar
            if need > self._capacity[rank]:
                self._capacity[rank] = need
                self.comm.Send(np.array([need], dtype=np.float64), dest=rank, tag=_GROW)

    def __call__(self, points: Any) -> np.ndarray:
        points = np.ascontiguousarray(points, dtype=np.float64)
        if points.size == 0 and points.ndim <= 2:  # [] or (0, nvar): nothing to map, nothing to send
            return np.empty(0, dtype=np.float64)
        if points.ndim != 2:
            raise ValueError(f"mapper expects a 2-D array of points, got shape {points.shape}")
        npop, nvar = points.shape
        if nvar == 0:
            raise ValueError("mapper got points with no parameters")
        plan = self._plan
        if plan.npop != npop or plan.nvar != nvar:
            plan = self._plan = _Plan(npop, self.comm.size, nvar)
            self._grow(plan, nvar)
        comm = self.comm
        result = np.empty(npop, dtype=np.float64)
        requests = []
        irecv, isend, post, any_tag, tag = comm.Irecv, comm.Isend, requests.append, MPI.ANY_TAG, _MAP + nvar
        for r, a, b in plan.workers:
            post(irecv(result[a:b], r, any_tag))
            post(isend(points[a:b], r, tag))
        failed = _evaluate(self.problem, points[: plan.mine], result[: plan.mine])
        MPI.Request.Waitall(requests, plan.statuses)
        for status in plan.receives:
            if status.tag != _RESULT:
                break
        else:
            if failed is None:
                return result
        remote = [w for w, s in zip(plan.workers, plan.receives, strict=True) if s.tag != _RESULT]
        self._raise_failure(points, remote, failed)
        raise AssertionError("unreachable")  # _raise_failure always raises

    def _raise_failure(self, points: np.ndarray, remote: list, failed: Any) -> NoReturn:
        """Collect every failed rank's report (so none is left pending), then raise the first."""
        Mapper.failures += 1
        errors = []
        for rank, start, _ in remote:
            info = self.comm.recv(source=rank, tag=_ERROR)
            point = points[start + info["index"]].tolist()
            errors.append(RemoteError(rank, info["host"], point, info["traceback"]))
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

        data = cloudpickle.dumps(problem)
        empty = np.empty(0, dtype=np.float64)
        for rank in range(1, self.comm.size):
            self.comm.Send(empty, dest=rank, tag=_PROBLEM)  # announces the pickled problem that follows
            self.comm.send(data, dest=rank, tag=_PROBLEM)
        self.problem = problem

    def stop(self) -> None:
        """Release the workers from their loop."""
        empty = np.empty(0, dtype=np.float64)
        MPI.Request.Waitall([self.comm.Isend(empty, dest=r, tag=_STOP) for r in range(1, self.comm.size)])
        self.comm.Free()


def serve(problem: Any, comm: MPI.Comm = MPI.COMM_WORLD) -> None:
    """The worker side: evaluate this rank's share of each call until rank 0 says stop."""
    comm = comm.Dup()
    status = MPI.Status()
    buffer = np.empty(START_CAPACITY, dtype=np.float64)
    while True:
        comm.Recv(buffer, source=ROOT, tag=MPI.ANY_TAG, status=status)
        tag = status.tag
        if tag >= _MAP:
            nvar = tag - _MAP
            rows = buffer[: status.Get_count(MPI.DOUBLE)].reshape(-1, nvar)
            out = np.empty(rows.shape[0], dtype=np.float64)
            failed = _evaluate(problem, rows, out)
            if failed is None:
                comm.Send(out, dest=ROOT, tag=_RESULT)
            else:
                comm.Send(out, dest=ROOT, tag=_FAILED)
                comm.send({"index": failed[0], **_describe(failed[1])}, dest=ROOT, tag=_ERROR)
        elif tag == _GROW:
            buffer = np.empty(int(buffer[0]), dtype=np.float64)
        elif tag == _PROBLEM:
            import cloudpickle

            problem = cloudpickle.loads(comm.recv(source=ROOT, tag=_PROBLEM))
        else:
            comm.Free()
            return


class MPIMapper:
    """Bumps' mapper interface (start_worker / start_mapper / stop_mapper) over Mapper and serve.

    A drop-in for bumps.mapper.MPIMapper with the same protocol: every rank
    calls start_worker(problem) with the problem it loaded; workers serve
    until stop_mapper, then leave the program. The first fit uses the
    workers' own problem; each later fit sends its problem once (pickled).
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
        atexit.register(MPIMapper.stop_mapper)  # rank 0 leaving without stop_mapper must not strand them

    @staticmethod
    def start_mapper(problem: Any, modelargs: Any = None, cpus: int = 0) -> Callable[[Any], np.ndarray]:
        mapper = MPIMapper._mapper
        if mapper is None:
            raise RuntimeError("MPIMapper.start_mapper called before start_worker (or after stop_mapper)")
        if MPIMapper.has_problem:
            mapper.problem = problem  # the workers loaded this model themselves
        else:
            mapper.send_problem(problem)
        MPIMapper.has_problem = False  # the next fit may bring another problem
        return mapper

    @staticmethod
    def stop_mapper(mapper: Any = None) -> None:
        if MPIMapper._mapper is not None:
            MPIMapper._mapper.stop()
            MPIMapper._mapper = None

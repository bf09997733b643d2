"""MPI mapper for Bumps: rank 0 sends each rank its share of the points, evaluates its own, gathers.

Why not bumps.mapper.MPIMapper: it pickles the shape on
every call, adds two barriers, gives wrong values for Fortran-ordered points,
deadlocks on non-contiguous ones, and hangs the whole job when nllf raises on
a worker.

Here each call is one message to and one from each worker that has points,
float64 buffers both ways and nothing else: the message's envelope is the
header (the tag carries the command and the number of parameters, the size
gives the number of rows). Rank 0 starts persistent requests (made once per
population size), and evaluates its own share while the messages are in flight.
When points are expensive (over 100 us each, measured on rank 0), the map
balances itself: guided self-scheduling hands out shrinking contiguous chunks,
still slices of the points and of the result (BUMPS_MPI_BALANCE=auto|always|never).
The two strategies are two small classes, StaticSplit and GuidedChunks, each
usable (and tested) alone; Mapper chooses between them.
Each worker waits in a blocking Recv on a buffer whose capacity rank 0 also
tracks; a share that would not fit is preceded by a one-number "grow" message
(once or twice a fit: DREAM's population size does not change).

A rank whose nllf raises (BaseException included) sends its values under
another tag and keeps its traceback; once every chunk is in, rank 0 asks for
the reports (an unasked message could match one of rank 0's open receives)
and raises RemoteError naming the rank, host and point. The success path pays one tag
comparison per worker for this. Workers stay in their loop, ready for the stop.
"""

from __future__ import annotations

import atexit
import socket
import traceback
from collections.abc import Callable
from time import perf_counter
from typing import Any, NoReturn

import numpy as np
from mpi4py import MPI

from ..errors import RemoteError

ROOT = 0
_STOP, _PROBLEM, _RESULT, _FAILED, _ERROR, _GROW, _REPORT = 1, 2, 3, 4, 5, 6, 7
_MAP = 100  # tag = _MAP + number of parameters
START_CAPACITY = 4096  # doubles in each worker's receive buffer before the first grow
GUIDED_ABOVE_S = 100e-6  # nllf cost per point above which the map balances dynamically
COUNT_EVERY = 64  # calls whose non-finite values are counted together (Mapper.nonfinite)
COPY_OUT_BELOW = 2048  # doubles: workers' rows copied to a persistent send below this, sent in place above


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
        nllf, keep = problem.nllf, values.append  # looked up once: this loop is the hot path's own
        for row in rows:
            keep(nllf(row))
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
    """A StaticSplit plan for one shape: who gets which rows, and the persistent requests that move them
    (made once, started each call: no request objects, slices or buffer parsing on the hot path).

    The workers' values arrive in the plan's own buffer and are copied out (a few KB at most). Their
    rows are copied into the plan's buffer too while that is cheaper than a new request (up to
    COPY_OUT_BELOW doubles); larger shares are sent from the points themselves, one Isend each.
    """

    def __init__(self, comm: MPI.Comm, npop: int, nvar: int, tag: int):
        counts, displs = split(npop, comm.size)
        self.shape = (npop, nvar)
        self.mine = int(counts[ROOT])  # rank 0's rows come first: the workers' rows are one block after
        self.workers = [
            (r, int(displs[r]), int(displs[r] + counts[r])) for r in range(1, comm.size) if counts[r]
        ]
        shifted = [(r, a - self.mine, b - self.mine) for r, a, b in self.workers]
        self.incoming = np.empty(npop - self.mine, dtype=np.float64)  # the workers' values
        self.receives = [comm.Recv_init(self.incoming[a:b], r, MPI.ANY_TAG) for r, a, b in shifted]
        self.copy_out = (npop - self.mine) * nvar <= COPY_OUT_BELOW
        self.outgoing = np.empty((npop - self.mine, nvar) if self.copy_out else (0, nvar), dtype=np.float64)
        self.sends = (
            [comm.Send_init(self.outgoing[a:b], r, tag) for r, a, b in shifted] if self.copy_out else []
        )
        self.persistent: list[MPI.Prequest] = self.receives + self.sends  # started together
        self.statuses = [MPI.Status() for _ in range(2 * len(self.workers))]
        self.received = self.statuses[: len(self.workers)]  # the receives' (their tags say failure)

    def free(self) -> None:
        for request in self.persistent:
            request.Free()
        self.persistent = self.receives = self.sends = []


class StaticSplit:
    """One contiguous block of rows per rank, sent at once; rank 0 evaluates its own while they travel.

    The cheapest map when every point costs about the same: one message to and
    one from each worker that has rows, on persistent requests made once per
    population size (the plan); *grow* makes room in a worker's buffer when a
    new plan gives it more rows.
    """

    def __init__(self, comm: MPI.Comm, grow: Callable[[int, int], None]):
        self.comm, self.grow = comm, grow
        self._plan: _Plan | None = None
        self.waiting_since: float | None = None  # rank 0 done with its own share, waiting for the rest
        self.own_s = 0.0  # how long rank 0's own share took, this call
        self.own_points = 0  # its size

    def plan(self, npop: int, nvar: int, tag: int) -> _Plan:
        """The plan for *npop* points of *nvar* parameters (made when the shape changes)."""
        plan = self._plan
        if plan is None or plan.shape != (npop, nvar):
            self.free()
            plan = self._plan = _Plan(self.comm, npop, nvar, tag)
            for rank, start, stop in plan.workers:
                self.grow(rank, (stop - start) * nvar)
        return plan

    def free(self) -> None:
        """Release the plan's requests (before its communicator goes)."""
        if self._plan is not None:
            self._plan.free()
            self._plan = None

    def map(self, problem: Any, points: np.ndarray, result: np.ndarray, tag: int) -> tuple[list, Any, float]:
        """Fill *result*; returns (failed workers' blocks, rank 0's failure, rank 0's seconds per point)."""
        plan = self.plan(points.shape[0], points.shape[1], tag)
        mine = plan.mine
        requests: list[MPI.Request]
        if plan.copy_out:
            plan.outgoing[...] = points[mine:]
            MPI.Prequest.Startall(plan.persistent)
            requests = plan.persistent  # type: ignore[assignment]  # Prequest is a Request
        else:
            MPI.Prequest.Startall(plan.receives)
            isend = self.comm.Isend
            requests = plan.receives + [isend(points[a:b], r, tag) for r, a, b in plan.workers]
        started = perf_counter()
        failed = _evaluate(problem, points[:mine], result[:mine])
        self.waiting_since = perf_counter()
        self.own_s, self.own_points = self.waiting_since - started, mine
        cost = self.own_s / max(mine, 1)
        try:
            MPI.Request.Waitall(requests, plan.statuses)
        except BaseException:
            self._plan = None  # its requests may still be active: never started again
            raise
        finally:
            self.waiting_since = None
        result[mine:] = plan.incoming
        for status in plan.received:
            if status.tag != _RESULT:
                break
        else:
            return [], failed, cost
        return [w for w, s in zip(plan.workers, plan.received, strict=True) if s.tag != _RESULT], failed, cost


class GuidedChunks:
    """Guided self-scheduling: workers take shrinking contiguous chunks from the front, rank 0 single
    points from the back, so every rank finishes within about one point of the others.

    Costs per point vary a lot in real models (refl1d: with the layer profile), and a static split
    of a 170-point generation then waits about 10% for its slower half. Chunks are slices of the
    points and of the result: still no copies. *grow* makes room in a worker's buffer first.
    """

    def __init__(self, comm: MPI.Comm, grow: Callable[[int, int], None]):
        self.comm, self.grow = comm, grow
        self.waiting_since: float | None = None  # rank 0 done with its own points, waiting for the rest
        self.own_s = 0.0  # how long rank 0 worked on its own points, this call
        self.own_points = 0  # how many they were

    def map(self, problem: Any, points: np.ndarray, result: np.ndarray, tag: int) -> tuple[list, Any, float]:
        """Fill *result*; returns (failed workers' chunks, rank 0's failure, rank 0's seconds per point)."""
        comm, size, nvar = self.comm, self.comm.size, points.shape[1]
        front, back = 0, len(points)
        pending: dict[int, list[tuple]] = {
            rank: [] for rank in range(1, size)
        }  # chunks in flight, oldest first
        remote: list[tuple[int, int, int]] = []

        def give(rank: int) -> None:
            nonlocal front
            rows = max(1, (back - front) // (2 * size))
            start, front = front, front + rows
            self.grow(rank, rows * nvar)
            status = MPI.Status()
            receive = comm.Irecv(result[start:front], rank, MPI.ANY_TAG)
            pending[rank].append((receive, comm.Isend(points[start:front], rank, tag), start, front, status))

        def collect(rank: int, wait: bool) -> bool:
            receive, send, start, stop, status = pending[rank][0]
            if wait:
                receive.Wait(status)
            elif not receive.Test(status):
                return False
            send.Wait()
            pending[rank].pop(0)
            if status.tag != _RESULT:
                remote.append((rank, start, stop))
            return True

        for _ in range(2):  # two chunks in flight: a worker never waits for rank 0 to hand out the next
            for rank in pending:
                if front < back:
                    give(rank)
        failed, own, started = None, 0, perf_counter()
        while front < back and failed is None and not remote:
            back -= 1
            own += 1
            failed = _evaluate(problem, points[back : back + 1], result[back : back + 1])
            if failed is not None:
                failed = (back, failed[1])
            for rank, chunks in pending.items():
                if chunks and collect(rank, wait=False) and front < back and failed is None and not remote:
                    give(rank)
        self.waiting_since = perf_counter()
        self.own_s, self.own_points = self.waiting_since - started, own
        cost = self.own_s / max(own, 1)
        try:
            for rank, chunks in pending.items():
                while chunks:
                    collect(rank, wait=True)
        finally:
            self.waiting_since = None
        return remote, failed, cost


class Mapper:
    """The root side: a callable that maps an (npop, nvar) array to npop nllf values.

    Created on rank 0 while every other rank enters serve() (both duplicate
    *comm*, so the mapper's messages never meet anyone else's). Chooses
    StaticSplit or GuidedChunks by rank 0's measured cost per point, keeps each
    worker's buffer large enough, and turns any failure into RemoteError.
    """

    failures = 0  # in this process, for callers (like Bumps' CLI) that swallow the exception

    def __init__(self, problem: Any, comm: MPI.Comm = MPI.COMM_WORLD):
        from ..config import environment_choice

        self.problem = problem
        self.comm = comm.Dup()
        self._capacity = [START_CAPACITY] * self.comm.size  # each worker's receive buffer, in doubles
        self._cost = 0.0  # seconds per point on rank 0 in the last call: chooses static or guided
        self._balance = environment_choice("BUMPS_MPI_BALANCE")
        self.static = StaticSplit(self.comm, self._grow)
        self.guided = GuidedChunks(self.comm, self._grow)
        self.longest_call_s = 0.0  # for the watchdog: how long a call may take
        self.evaluations = 0  # points mapped, on every rank
        self.own_s = 0.0  # rank 0's time on its own points, all calls: the model's measured cost
        self.own_points = 0  # and how many they were
        self._nonfinite = 0  # of them, those without a finite value, counted so far
        self._uncounted: list[np.ndarray] = []  # results not yet counted: counted COUNT_EVERY calls at once
        self._dynamic = self.comm.size > 1 and self._balance != "never"  # may balance: see _guided

    @property
    def nonfinite(self) -> int:
        """Points mapped without a finite value (the model failed there), on every rank, up to now."""
        self._count()
        return self._nonfinite

    def _count(self) -> None:
        """Count the results kept since the last count: one vectorised pass for many calls, not a
        numpy call per call (a microsecond each, against a call of about ten on small populations)."""
        if self._uncounted:
            kept = np.concatenate(self._uncounted) if len(self._uncounted) > 1 else self._uncounted[0]
            self._nonfinite += kept.size - int(np.count_nonzero(np.isfinite(kept)))
            self._uncounted.clear()

    def _grow(self, rank: int, need: int) -> None:
        """Tell a worker whose buffer is too small for *need* doubles to enlarge it (before the share)."""
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
        result = np.empty(npop, dtype=np.float64)
        started = perf_counter()
        strategy: StaticSplit | GuidedChunks = (
            self.guided if self._dynamic and self._guided(npop) else self.static
        )
        remote, failed, self._cost = strategy.map(self.problem, points, result, _MAP + nvar)
        self.own_s += strategy.own_s
        self.own_points += strategy.own_points
        took = perf_counter() - started
        if took > self.longest_call_s:
            self.longest_call_s = took
        if remote or failed is not None:
            self._raise_failure(points, remote, failed)
        self.evaluations += npop
        self._uncounted.append(result)
        if len(self._uncounted) >= COUNT_EVERY:
            self._count()
        return result

    def waiting(self) -> tuple[float, float] | None:
        """(seconds rank 0 has waited for the other ranks in this call, how long a call may take), or None
        when it is not waiting: what the watchdog needs to tell a lost rank from a slow one."""
        for strategy in (self.static, self.guided):
            since = strategy.waiting_since
            if since is not None:
                return perf_counter() - since, max(self.longest_call_s, strategy.own_s)
        return None

    def _guided(self, npop: int) -> bool:
        """Balance dynamically when points are expensive enough that a message per chunk is free."""
        if self.comm.size == 1 or self._balance == "never":
            return False
        return self._balance == "always" or (self._cost > GUIDED_ABOVE_S and npop > 2 * self.comm.size)

    def _raise_failure(self, points: np.ndarray, remote: list, failed: Any) -> NoReturn:
        """Ask each failed worker for its reports (in chunk order), then raise the first failure."""
        Mapper.failures += 1
        chunks: dict[int, list[int]] = {}
        for rank, start, _ in remote:
            chunks.setdefault(rank, []).append(start)
        errors = []
        for rank, starts in chunks.items():
            self.comm.Send(np.empty(0, dtype=np.float64), dest=rank, tag=_REPORT)
            for start, info in zip(starts, self.comm.recv(source=rank, tag=_ERROR), strict=True):
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
        self.static.free()
        self.comm.Free()


def serve(problem: Any, comm: MPI.Comm = MPI.COMM_WORLD) -> None:
    """The worker side: evaluate this rank's share of each call until rank 0 says stop."""
    comm = comm.Dup()
    status = MPI.Status()
    buffer = np.empty(START_CAPACITY, dtype=np.float64)
    reports: list[dict[str, Any]] = []  # failures since rank 0 last asked, in chunk order
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
                reports.append({"index": failed[0], **_describe(failed[1])})
        elif tag == _REPORT:
            comm.send(reports, dest=ROOT, tag=_ERROR)
            reports = []
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

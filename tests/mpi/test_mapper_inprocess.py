"""The mapper in-process on every rank: run with `mpiexec -n 2 (or 3) python -m pytest --with-mpi tests/mpi`.

pytest-mpi runs this module on each rank of one MPI job. In each test rank 0
maps points while the other ranks serve it (Mapper and serve, as a fit runs
them), and the verdict is shared: every rank reports what failed on any rank,
so one rank failing fails the test everywhere and none is left waiting.
Launching, failing runs and killed ranks stay in tests/test_mapper_mpi.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bumps.mapper import SerialMapper
from mpi4py import MPI

from bumps_mpi.errors import RemoteError
from bumps_mpi.runtime.fit import load_model, run_fit
from bumps_mpi.runtime.mapper import _MAP, ROOT, Mapper, MPIMapper, serve

pytestmark = pytest.mark.mpi(min_size=2)

COMM = MPI.COMM_WORLD
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "peak.py"  # what the launched tests fit
STRATEGIES = pytest.mark.parametrize("balance", ["never", "always"], ids=["static", "guided"])


def on_every_rank(root, worker) -> None:
    """root() on rank 0, worker() on the others; then every rank fails if any rank failed."""
    failure = None
    try:
        (root if COMM.rank == ROOT else worker)()
    except BaseException as exc:  # noqa: B036 - pytest.fail and pytest's own outcomes are BaseExceptions
        failure = exc
    verdicts = COMM.allgather(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    failed = {rank: verdict for rank, verdict in enumerate(verdicts) if verdict is not None}
    assert not failed, f"failed on other ranks: {failed}"


def with_mapper(problem, check) -> None:
    """check(mapper) on rank 0 while the other ranks serve *problem*; the mapper stops whatever happens."""

    def root():
        mapper = Mapper(problem, COMM)
        try:
            check(mapper)
        finally:
            mapper.stop()

    on_every_rank(root, lambda: serve(problem, COMM))


def sizes() -> list[int]:
    """Awkward population sizes for this many ranks; 3001 makes the workers' buffers grow."""
    size = COMM.size
    return sorted({0, 1, size - 1, size, size + 1, 7, 20, 101, 3001})


def same(ours, reference, what: str) -> None:
    ours, reference = np.asarray(ours), np.asarray(reference, dtype=np.float64)
    assert ours.shape == reference.shape and ours.dtype == np.float64, (what, ours.shape, ours.dtype)
    rows = np.flatnonzero(~((ours == reference) | (np.isnan(ours) & np.isnan(reference))))[:5]
    assert not rows.size, f"{what}: rows {rows.tolist()}: {ours[rows].tolist()} != {reference[rows].tolist()}"


def counting(mapper: Mapper) -> dict[str, int]:
    """Count the calls that reach each strategy (to know which one a test exercised)."""
    calls = {"static": 0, "guided": 0}
    for name in calls:
        strategy = getattr(mapper, name)
        original = strategy.map

        def counted(*args, name=name, original=original):
            calls[name] += 1
            return original(*args)

        strategy.map = counted
    return calls


@pytest.fixture
def problem():
    return load_model(EXAMPLE)


def random_points(problem, npop: int, seed: int) -> np.ndarray:
    low, high = problem.bounds()
    return low + (high - low) * np.random.default_rng(seed).random((npop, len(low)))


@STRATEGIES
def test_equal_to_serial_mapper_bit_for_bit(problem, balance, monkeypatch):
    """Every size and memory layout of points gives SerialMapper's values, bit for bit."""
    monkeypatch.setenv("BUMPS_MPI_BALANCE", balance)
    serial = SerialMapper.start_mapper(problem)

    def check(mapper):
        calls = counting(mapper)
        for npop in sizes():
            base = random_points(problem, npop, seed=npop)
            if npop > 2:
                base[1, 0] = problem.bounds()[1][0] + 1.0  # out of bounds: inf, a value not an error
            layouts = {
                "C": base,
                "F": np.asfortranarray(base),
                "strided rows": np.repeat(base, 2, axis=0)[::2],
                "strided cols": np.repeat(base, 2, axis=1)[:, ::2],
                "transposed view": np.ascontiguousarray(base.T).T,
                "list": base.tolist(),
            }
            for name, points in layouts.items():
                same(mapper(points), serial(base), f"{name} npop={npop}")
        nonempty = 6 * (len(sizes()) - 1)  # an empty map sends nothing
        used, unused = ("guided", "static") if balance == "always" else ("static", "guided")
        assert calls == {used: nonempty, unused: 0}, calls
        # every rank's values are counted on rank 0: the points mapped, and those without a finite value
        assert mapper.evaluations == 6 * sum(sizes())
        assert mapper.nonfinite == 6 * sum(1 for npop in sizes() if npop > 2)

    with_mapper(problem, check)


@STRATEGIES
def test_each_strategy_alone_equals_serial(problem, balance):
    """StaticSplit and GuidedChunks called directly, not through Mapper's choice between them."""
    serial = SerialMapper.start_mapper(problem)

    def check(mapper):
        strategy = mapper.static if balance == "never" else mapper.guided
        for npop in [n for n in sizes() if n]:
            points = np.ascontiguousarray(random_points(problem, npop, seed=1000 + npop))
            result = np.full(npop, -1.0)
            remote, failed, cost = strategy.map(problem, points, result, _MAP + points.shape[1])
            assert not remote and failed is None and cost >= 0, (npop, remote, failed, cost)
            same(result, serial(points), f"npop={npop}")

    with_mapper(problem, check)


class FailsAt:
    """nllf is the sum of the point, except at the point whose first value is 13 (on whichever rank)."""

    def nllf(self, p):
        if p[0] == 13.0:
            raise ValueError(f"bad point in the model on rank {COMM.rank}")
        return float(np.sum(p))


@STRATEGIES
@pytest.mark.parametrize("where", ["worker", "root"])
def test_failure_names_rank_and_point_and_the_mapper_goes_on(balance, where, monkeypatch):
    """A failing point raises RemoteError on rank 0 naming the rank that evaluated it and the point;
    the workers stay in their loop, and the next call gives the right values."""
    monkeypatch.setenv("BUMPS_MPI_BALANCE", balance)
    points = np.arange(40.0).reshape(20, 2)
    # where each strategy evaluates a row: static, rank 0 the first block and the last rank the last;
    # guided, rank 1 the first chunk from the front and rank 0 single points from the back
    first_on_root = balance == "never"
    bad = 0 if (where == "root") == first_on_root else len(points) - 1
    rank = ROOT if where == "root" else (1 if balance == "always" else COMM.size - 1)
    failing = points.copy()
    failing[bad] = (13.0, 15.0)

    def check(mapper):
        before = Mapper.failures
        with pytest.raises(RemoteError) as raised:
            mapper(failing)
        error = raised.value
        assert (error.rank, error.point) == (rank, [13.0, 15.0]), str(error)
        assert f"bad point in the model on rank {rank}" in error.remote_traceback
        assert Mapper.failures == before + 1
        same(mapper(points), points.sum(axis=1), "after the failure")

    with_mapper(FailsAt(), check)


# whole fits, the same seed with our mapper and with Bumps' serial map: amoeba and lm never call the mapper
FITS = (
    ("dream", {"samples": 1000, "burn": 20}),
    ("de", {"steps": 30}),
    ("ps", {"steps": 20}),
    ("rl", {"steps": 20}),
    ("amoeba", {"steps": 50}),
    ("lm", {"steps": 20}),
)


@STRATEGIES
def test_several_fits_through_bumps_protocol_equal_serial(problem, balance, monkeypatch):
    """MPIMapper as Bumps drives it: start_worker on every rank, then one fit after another; the first
    uses the workers' own problem, each later one sends its problem. Same best point and chisq as serial."""
    monkeypatch.setenv("BUMPS_MPI_BALANCE", balance)

    def root():
        MPIMapper.start_worker(problem)
        try:
            for fit, options in FITS:
                fit_problem = problem if fit == FITS[0][0] else load_model(EXAMPLE)
                mapper = MPIMapper.start_mapper(fit_problem)
                _, ours = run_fit(fit_problem, fit, options, mapper=mapper, seed=11)
                _, reference = run_fit(load_model(EXAMPLE), fit, options, mapper=None, seed=11)
                for key in ("chisq", "nllf"):
                    assert ours[key] == reference[key], (fit, key, ours[key], reference[key])
                best = [[p["best"] for p in r["parameters"]] for r in (ours, reference)]
                assert best[0] == best[1], (fit, best)
        finally:
            MPIMapper.stop_mapper()

    def worker():
        with pytest.raises(SystemExit) as stopped:  # a worker leaves the program after stop_mapper
            MPIMapper.start_worker(problem)
        assert stopped.value.code == 0

    on_every_rank(root, worker)

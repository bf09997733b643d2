"""Benchmark problems: an nllf that costs almost nothing, and ones that burn CPU for a set time."""

from __future__ import annotations

import time

import numpy as np


class Trivial:
    """About a microsecond: the mapper's own cost dominates."""

    def nllf(self, p: np.ndarray) -> float:
        return float(p[0] + p[-1])


class Burn:
    """Burns the CPU (no sleep) for about *ms* milliseconds per call.

    Calibrated once, in the driver on a quiet machine, and the loop count passed
    to the MPI ranks: ranks calibrating under contention would do less work.
    """

    def __init__(self, ms: float, loops: int | None = None):
        self.ms = ms
        self.work = np.random.default_rng(0).random(2000)
        if loops is None:
            start, trial = time.perf_counter(), 200
            for _ in range(trial):
                self._step()
            loops = max(1, round(ms / 1000 / ((time.perf_counter() - start) / trial)))
        self.loops = loops

    def _step(self) -> float:
        return float(np.sin(self.work).sum())

    def nllf(self, p: np.ndarray) -> float:
        total = 0.0
        for _ in range(self.loops):
            total += self._step()
        return total + float(p[0])

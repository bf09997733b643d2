"""End a rank within about a second when another has died, instead of after Slurm's KillWait.

When a rank dies under srun (--kill-on-bad-exit), srun sends the others
SIGTERM, and SIGKILL only KillWait seconds later (30 s by default, 5 s on the
test cluster). Worker ranks ignore SIGTERM (preemption sends it to every rank
and only rank 0 acts on it: it checkpoints at its next boundary and stops the
others), and rank 0 sits in MPI waiting for the dead rank's values, where no
Python signal handler runs. So a dead rank used to cost KillWait.

The watchdog is a thread woken through Python's signal wakeup fd, which the
C-level handler writes even while the main thread is inside MPI. After a
SIGTERM it kills its own process (SIGKILL: nothing to save, and MPI_Abort
from a thread neither returns reliably nor ends an srun step any sooner) when
- on rank 0: it has waited for the other ranks' values ten times longer
  than its own share of the points took, and than the longest call so far
  (and at least 1.5 s): a live rank would have answered (the shares are the
  same size), and preemption's SIGTERM leaves the map calls running; or
- on a worker: rank 0 ran on this host and has died (seen twice in a row).
A worker whose rank 0 died on another node still waits for KillWait. Once a
rank's part is done (rank 0 stopped the workers) the watchdog is disarmed, so a
normal end is never mistaken for a death. It never calls MPI itself.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from ..cluster import processes

MIN_WAIT_S = 1.5  # rank 0 waiting this long after SIGTERM (and FACTOR x its own share) has lost a rank
FACTOR = 10.0
POLL_S = 0.1


class Watchdog:
    """Created in the main thread of every rank, before the model loads."""

    def __init__(self, comm: Any):
        self.rank = comm.rank
        self.rank0: dict[str, Any] | None = None  # rank 0's identity, for the workers
        self.mapper: Any = None  # rank 0's Mapper, which says how long it has waited for the others
        self.armed = True
        read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        threading.Thread(target=self._run, args=(read,), name="bumps-mpi-watchdog", daemon=True).start()

    def know_ranks(self, everyone: list[dict[str, Any]]) -> None:
        self.rank0 = everyone[0]

    def watch(self, mapper: Any) -> None:
        self.mapper = mapper

    def disarm(self) -> None:
        """This rank's work is done: from now on it ends by itself, whatever the others do."""
        self.armed = False

    def _run(self, read: int) -> None:
        while signal.SIGTERM not in os.read(read, 64):
            pass
        dead_seen = 0
        while self.armed:
            time.sleep(POLL_S)
            why = self._stuck() if self.armed else None
            dead_seen = dead_seen + 1 if why else 0
            if why and (self.rank == 0 or dead_seen >= 2) and self.armed:
                try:
                    print(
                        f"bumps-mpi: rank {self.rank}: {why}: ending this rank", file=sys.stderr, flush=True
                    )
                except OSError:
                    pass
                os.kill(os.getpid(), signal.SIGKILL)

    def _stuck(self) -> str | None:
        if self.rank != 0:
            if self.rank0 is not None and processes.alive(self.rank0) is False:
                return "rank 0 has died"
            return None
        waiting = self.mapper.waiting() if self.mapper is not None else None
        if waiting is None:
            return None
        waited, expected = waiting
        if waited > max(MIN_WAIT_S, FACTOR * expected):
            return f"terminated while waiting {waited:.1f} s for ranks that do not answer (one has died)"
        return None

"""`make bench`, part 2: a realistic refl1d model, a fixed-length DREAM fit, serial vs 2 ranks.

Runs bench/refl1d_replay.py under mpiexec -n 2 and prints the fit's own
figures and the speedups on identical work: serial fit time is the serial
map of the recorded generations plus rank 0's work between generations
(the same DREAM code either way), so
    speedup = (serial map + other) / (MPI map + other).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    try:
        import refl1d  # noqa: F401
    except ImportError:
        sys.exit("refl1d is not installed: pip install -e '.[bench]'")
    ranks = int(os.environ.get("BENCH_REFL1D_RANKS", "2"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    command = [
        str(Path(sys.executable).parent / "mpiexec"),
        "-n",
        str(ranks),
        sys.executable,
        str(HERE / "refl1d_replay.py"),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3000)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    fit, replay = data["fit"], data["replay_map_s"]
    other = fit["wall_s"] - fit["map_s"]
    print(
        f"refl1d tethered brush (bench/models/tethered_brush.py), DREAM, {fit['generations']} generations "
        f"x {fit['chains']} chains"
    )
    print(
        f"  the fit with ours on {ranks} ranks: {fit['wall_s']:.2f} s, {fit['map_s']:.2f} s in the mapper, "
        f"{other:.2f} s on rank 0 between generations"
    )
    print(f"  the same generations mapped again ({ranks} ranks, interleaved blocks of 10 generations):")
    serial_fit = replay["serial"] + other
    rows = (
        ("serial (rank 0 alone)", "serial"),
        ("ours (guided)", "ours"),
        ("ours, static split", "ours static"),
        ("bumps MPIMapper", "bumps"),
    )
    for label, key in rows:
        fit_s = replay[key] + other
        speedup = serial_fit / fit_s
        print(f"    {label:<22} map {replay[key]:>7.2f} s  fit {fit_s:>7.2f} s  speedup {speedup:.2f}")
    b = data["ours_breakdown"]
    per_rank = ", ".join(f"{c:.2f}" for c in b["compute_s_per_rank"])
    print(
        f"  ours, where the time goes: nllf per rank {per_rank} s; core contention {b['contention']:.3f} "
        f"(1 = none); waiting + mapper {b['idle_and_overhead_s']:.2f} s"
    )
    print(f"  target: ours >= 1.90 on 2 ranks (the limit is {ranks:.1f})")


if __name__ == "__main__":
    main()

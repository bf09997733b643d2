"""`make bench`: per-call mapper times and ratios, all measured in this one run.

SerialMapper runs in this process; the MPI mappers run under `mpiexec -n R`
for R in 2 and 4 (bench/mapper_mpi.py). Prints a table of medians and the
ratios the issue names: ours / minimal, Bumps' MPIMapper / ours, and the
parallel efficiency of ours for CPU-burning nllfs of about 1 and 10 ms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bumps.mapper import SerialMapper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from problems import Burn, Trivial  # noqa: E402

POPS = [20, 100, 1000]
NVAR = 10


def serial_per_call(problem, npop: int, calls: int) -> float:
    mapper = SerialMapper.start_mapper(problem)
    points = np.random.default_rng(0).random((npop, NVAR))
    start = time.perf_counter()
    for _ in range(calls):
        mapper(points)
    return (time.perf_counter() - start) / calls


def run_mapper_mpi(launch: list[str], rounds: int, kinds: str, burn_loops: str, env: dict[str, str]) -> dict:
    """bench/mapper_mpi.py under *launch* (mpiexec -n R, or srun ...): its JSON answer."""
    command = [*launch, sys.executable, str(HERE / "mapper_mpi.py"), str(rounds), kinds, burn_loops]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(launch)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    rounds = int(os.environ.get("BENCH_ROUNDS", "7"))
    ranks_list = [int(r) for r in os.environ.get("BENCH_RANKS", "2,4").split(",")]
    kinds = os.environ.get("BENCH_MAPPERS", "ours,minimal,bumps,futures")
    serial = {
        p: float(np.median([serial_per_call(Trivial(), p, max(20, 20000 // p)) for _ in range(rounds)]))
        for p in POPS
    }
    burn_loops = json.dumps({"1ms": Burn(1.0).loops, "10ms": Burn(10.0).loops})
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    print(
        f"Per-call time (median of {rounds} interleaved rounds), trivial nllf, {NVAR} parameters; "
        f"{os.cpu_count()} cores here\n"
    )
    for ranks in ranks_list:
        data = run_mapper_mpi([mpiexec, "-n", str(ranks)], rounds, kinds, burn_loops, env)
        us = {k: {int(p): v for p, v in d.items()} for k, d in data["per_call_us"].items()}
        print(f"{ranks} ranks     " + "".join(f"{'pop ' + str(p):>12}" for p in POPS))
        for kind in [k for k in ("ours", "minimal", "bumps", "futures") if k in us]:
            print(f"  {kind:<12}" + "".join(f"{us[kind][p]:>10.1f}us" for p in POPS))
        print(f"  {'serial':<12}" + "".join(f"{serial[p] * 1e6:>10.1f}us" for p in POPS) + "   (1 process)")
        if "minimal" in us:
            print(
                "  ours/minimal"
                + "".join(f"{us['ours'][p] / us['minimal'][p]:>12.2f}" for p in POPS)
                + "   (target <= 1.05)"
            )
            each = data["rounds_us"]  # the same round's ratio: interleaved, so the same machine noise
            spread = {
                p: sorted(o / m for o, m in zip(each["ours"][str(p)], each["minimal"][str(p)], strict=True))
                for p in POPS
            }
            print(
                f"    per round ({rounds})"
                + "".join(f"{s[0]:>6.2f}-{s[-1]:<5.2f}" for s in spread.values())
                + "   (lowest-highest)"
            )
        if "bumps" in us:
            print("  bumps/ours  " + "".join(f"{us['bumps'][p] / us['ours'][p]:>12.2f}" for p in POPS))
        for label, eff in data["efficiency"].items():
            if ranks > (os.cpu_count() or 1):
                print(
                    f"  efficiency, {label:>4} nllf: n/a ({ranks} ranks on {os.cpu_count()} cores: waiting "
                    "ranks' polling slows rank 0's serial pass, so the figure would be meaningless)"
                )
                continue
            t_serial = eff["serial_s"]
            print(
                f"  efficiency, {label:>4} nllf, {eff['npop']} points: "
                f"{t_serial / (ranks * eff['mpi_s']):.2f} (serial {t_serial * 1e3:.0f} ms, "
                f"{ranks} ranks {eff['mpi_s'] * 1e3:.0f} ms)"
            )
        print()


if __name__ == "__main__":
    main()

"""Start-up of `bumps-submit --help` and `status` against `python -c "import click"`, as ratios.

Each command runs REPEAT times in a fresh process (alternating, so machine noise hits all alike);
medians are compared. Also checks with -X importtime that neither imports numpy, bumps or mpi4py.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

REPEAT = 21
SCRIPT = os.path.join(os.path.dirname(sys.executable), "bumps-submit")  # the console script users run
COMMANDS = {
    "import click": [sys.executable, "-c", "import click"],
    "bumps-submit --help": [sys.executable, SCRIPT, "--help"],
    "bumps-submit status": [sys.executable, SCRIPT, "status"],
}
HEAVY = ("numpy", "bumps.", "mpi4py", "matplotlib")


def main() -> None:
    env = {**os.environ, "BUMPS_MPI_REGISTRY": os.path.join(tempfile.mkdtemp(), "jobs.jsonl")}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(REPEAT):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, env=env, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["import click"])
    print(f'start-up, median of {REPEAT} runs (ratio to `python -c "import click"`)')
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<22} {median * 1000:7.1f} ms   {median / base:5.2f}x")
    for name in ("bumps-submit --help", "bumps-submit status"):
        trace = subprocess.run(
            [sys.executable, "-X", "importtime", *COMMANDS[name][1:]], env=env, capture_output=True, text=True
        ).stderr
        heavy = sorted(
            {
                line.split("|")[-1].strip()
                for line in trace.splitlines()
                if any(line.split("|")[-1].strip().startswith(h) for h in HEAVY)
            }
        )
        print(f"  {name}: imports {', '.join(heavy) if heavy else 'no numpy, bumps or mpi4py'}")


if __name__ == "__main__":
    main()

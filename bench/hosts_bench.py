"""`make bench`: several hosts (the test cluster's partition `hosts`: SLURM_HOSTS=3 scripts/slurm-cluster
start). Not a test: figures to read as ratios from one run, on one machine pretending to be three.

1. The mapper's per-call time for 2 ranks on one host and 2 ranks on two hosts (bench/mapper_mpi.py under
   srun), trivial nllf, populations 20, 100 and 1000: what crossing the network costs per generation.
2. Job start: from Slurm's allocation (sacct Start) to the fit's first generation (progress.json
   appears), for a fit on 1 host and on 3 hosts.
3. With refl1d installed (the bench extra), a real DREAM fit (bench/models/tethered_brush.py) on 1 host x 2
   ranks and on 2 hosts x 1 rank: the fit's own time (result.json elapsed_s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from mapper_bench import run_mapper_mpi  # noqa: E402

PYTHON = sys.executable
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))
SHARED = "/var/tmp"  # the hosts' /tmp is their own: job directories go where every host sees them


def hosts() -> list[str]:
    shown = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "hosts", "-t", "idle", "-o", "%N"], capture_output=True, text=True
    )
    return sorted(set(shown.stdout.split()))


def mapper(nodes: int) -> dict[int, dict[str, float]]:
    """Per-call microseconds of ours and minimal at each population, 2 ranks on *nodes* hosts."""
    env = {**os.environ, "BENCH_POINTS": os.environ.get("BENCH_POINTS", "100000"), "OMP_NUM_THREADS": "1"}
    launch = ["srun", "-p", "hosts", "-N", str(nodes), "-n", "2", "--mpi=pmi2"]
    data = run_mapper_mpi(launch, ROUNDS, "ours,minimal", "{}", env)
    return {
        int(p): {k: data["per_call_us"][k][p] for k in ("ours", "minimal")}
        for p in data["per_call_us"]["ours"]
    }


def submit(jobs: Path, model: Path, nodes: int, ntasks: int, *args: str) -> dict:
    done = subprocess.run(
        [
            PYTHON,
            "-m",
            "bumps_mpi",
            "submit",
            str(model),
            *args,
            "--partition",
            "hosts",
            "--nodes",
            str(nodes),
            "--ntasks",
            str(ntasks),
            "--time",
            "30",
            "--jobs-dir",
            str(jobs),
            "--json",
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"submit failed: {done.stderr}")
    return json.loads(done.stdout)


def ended(job_id: str) -> dict:
    while True:
        record = json.loads(
            subprocess.run(
                [PYTHON, "-m", "bumps_mpi", "status", job_id, "--json"], capture_output=True, text=True
            ).stdout
        )[0]
        if record["state"] not in ("PENDING", "RUNNING", "REQUEUED"):
            return record
        time.sleep(1)


def start_time(job_id: str) -> float:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "Start"], capture_output=True, text=True
    ).stdout.split()
    return datetime.fromisoformat(out[0]).timestamp()


def job_start(jobs: Path, nodes: int) -> float:
    """Seconds from allocation to the first generation, for a small fit on *nodes* hosts."""
    submitted = submit(
        jobs, HERE.parent / "examples" / "peak.py", nodes, nodes, "--samples", "20000", "--seed", "1"
    )
    progress = Path(submitted["job_dir"]) / "progress.json"
    while not progress.exists():
        time.sleep(0.05)
    first = time.time()
    ended(submitted["job_id"])
    return first - start_time(submitted["job_id"])


def main() -> None:
    jobs = Path(tempfile.mkdtemp(prefix="bumps-mpi-bench-", dir=SHARED))
    try:
        measure(jobs)
    finally:
        shutil.rmtree(jobs, ignore_errors=True)


def measure(jobs: Path) -> None:
    found = hosts()
    if len(found) < 3:
        sys.exit(f"needs 3 idle hosts (SLURM_HOSTS=3 scripts/slurm-cluster start); found {found}")
    print(
        f"Several hosts (network namespaces on one {os.cpu_count()}-core machine), "
        f"median of {ROUNDS} rounds\n"
    )
    one, two = mapper(1), mapper(2)
    print("mapper per call, 2 ranks     pop " + "".join(f"{p:>10}" for p in sorted(one)))
    for label, data in (("one host", one), ("two hosts", two)):
        print(f"  ours, {label:<22}" + "".join(f"{data[p]['ours']:>8.1f}us" for p in sorted(data)))
    print(
        "  two hosts / one host        "
        + "".join(f"{two[p]['ours'] / one[p]['ours']:>10.2f}" for p in sorted(one))
    )
    print(
        "  ours/minimal, two hosts     "
        + "".join(f"{two[p]['ours'] / two[p]['minimal']:>10.2f}" for p in sorted(two))
    )
    starts = {n: sorted(job_start(jobs, n) for _ in range(3))[1] for n in (1, 3)}
    print(
        f"\njob start (allocation to first generation), median of 3: 1 host {starts[1]:.1f} s, "
        f"3 hosts {starts[3]:.1f} s"
    )
    try:
        import refl1d  # noqa: F401
    except ImportError:
        print("\nrefl1d: not installed (pip install -e '.[bench]'): the real fit is left out")
        return
    model = HERE / "models" / "tethered_brush.py"
    elapsed = {}
    for label, nodes, ntasks in (("1 host x 2 ranks", 1, 2), ("2 hosts x 1 rank", 2, 2)):
        submitted = submit(jobs, model, nodes, ntasks, "--samples", "17000", "--burn", "0", "--seed", "2")
        record = ended(submitted["job_id"])
        result = (
            json.loads((Path(submitted["job_dir"]) / "result.json").read_text())
            if record["state"] == "COMPLETED"
            else {}
        )
        elapsed[label] = result.get("elapsed_s")
        took = f"{elapsed[label]:.1f} s" if elapsed[label] else "-"
        print(f"refl1d tethered brush, DREAM, {label}: {record['state']}, fit {took}")
    a, b = elapsed.values()
    if a and b:
        print(f"  two hosts / one host: {b / a:.2f}")


if __name__ == "__main__":
    main()

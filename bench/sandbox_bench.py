"""`make bench`, part 5: what the sandbox costs: a real fit with and without it, and the model check.

The refl1d model (17 parameters) is fitted on 2 ranks (`submit --local`), alternating
`--sandbox off` and `--sandbox best-effort` so the machine's noise hits both alike; the fit's
own time (result.json's elapsed_s: no start-up, no drawing) is compared, then the whole job's.
The sandboxed ranks run MPI over shared memory only (UCX_TLS=self,posix,sysv) and confine
themselves before MPI starts. Then `submit --dry-run` (the confined model check) is timed.
Without refl1d installed, the demo model stands in.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROUNDS = int(os.environ.get("BENCH_SANDBOX_ROUNDS", "3"))


def bumps_submit(*args: str) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bumps_mpi", *args, "--json"], capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bumps-submit {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


def main() -> None:
    os.environ.setdefault("BUMPS_MPI_REGISTRY", os.path.join(tempfile.mkdtemp(), "jobs.jsonl"))
    try:
        import refl1d  # noqa: F401

        model, fit = (
            HERE / "models" / "tethered_brush.py",
            ["--samples", "17000", "--burn", "50", "--seed", "1"],
        )
    except ImportError:
        print("refl1d is not installed (pip install -e '.[bench]'): the demo model stands in")
        model, fit = ROOT / "examples" / "peak.py", ["--samples", "100000", "--seed", "1"]
    times: dict[str, dict[str, list[float]]] = {
        level: {"fit": [], "job": []} for level in ("off", "best-effort")
    }
    with tempfile.TemporaryDirectory(prefix="bumps-mpi-sandbox-bench-") as scratch:
        for _ in range(ROUNDS):
            for level in times:
                job_s, record = bumps_submit(
                    "submit",
                    str(model),
                    "--local",
                    "-n",
                    "2",
                    *fit,
                    "--sandbox",
                    level,
                    "--jobs-dir",
                    scratch,
                )
                result = json.loads((Path(record["job_dir"]) / "result.json").read_text())
                times[level]["fit"].append(result["elapsed_s"])
                times[level]["job"].append(job_s)
        checks = {level: [] for level in times}
        for _ in range(5):
            for level in checks:
                checks[level].append(bumps_submit("submit", str(model), "--dry-run", "--sandbox", level)[0])
    print(f"sandbox cost: {model.relative_to(ROOT)}, DREAM {' '.join(fit)}, 2 ranks, {ROUNDS} rounds each")
    off, on = (statistics.median(times[k]["fit"]) for k in ("off", "best-effort"))
    print(f"  fit time (median)    off {off:8.2f} s   sandboxed {on:8.2f} s   ratio {on / off:.3f}")
    for level, label in (("off", "off"), ("best-effort", "sandboxed")):
        print(f"    {label:<10} rounds: " + "  ".join(f"{t:.2f}" for t in times[level]["fit"]))
    off, on = (statistics.median(times[k]["job"]) for k in ("off", "best-effort"))
    print(f"  whole job (median)   off {off:8.2f} s   sandboxed {on:8.2f} s   ratio {on / off:.3f}")
    off, on = (statistics.median(checks[k]) for k in ("off", "best-effort"))
    print(f"  model check (median) off {off:8.2f} s   sandboxed {on:8.2f} s   added {on - off:+.3f} s")


if __name__ == "__main__":
    main()

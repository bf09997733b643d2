"""The model check of a sasmodels model (examples/sasmodels) from a fresh account, cold and warm.

Cold: the user's library cache is empty, so the confined check compiles the model's C kernels (sasmodels'
ellipsoid@hayter_msa: two libraries) into it. Warm: the same check again, the kernels found compiled.
Each is `bumps-submit submit ... --dry-run` (the check and the script, nothing submitted), REPEAT times
with a new empty cache for each cold run; medians, and warm as a ratio of cold. The baseline is the
same check of examples/peak.py (no compiled kernel), in the same runs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = os.path.join(os.path.dirname(sys.executable), "bumps-submit")
REPEAT = 5


def check(model: Path, env: dict[str, str], *args: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, SCRIPT, "submit", str(model), "--dry-run", "--", *args],
                   env=env, check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - began


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bumps-mpi-sas-bench-") as scratch:
        base = Path(scratch)
        subprocess.run([sys.executable, ROOT / "examples" / "sasmodels" / "simulate.py", base / "data", "1"],
                       check=True, env={**os.environ, "SAS_DLL_PATH": str(base / "sim")})  # fmt: skip
        data = str(next((base / "data").glob("*.dat")))
        times: dict[str, list[float]] = {
            "peak.py (no kernel)": [],
            "sasmodels, cold cache": [],
            "sasmodels, warm": [],
        }
        for i in range(REPEAT):
            home = base / f"home-{i}"
            home.mkdir()
            env = {**os.environ, "HOME": str(home), "BUMPS_MPI_REGISTRY": str(base / "registry.jsonl")}
            times["peak.py (no kernel)"].append(check(ROOT / "examples" / "peak.py", env))
            times["sasmodels, cold cache"].append(
                check(ROOT / "examples" / "sasmodels" / "model.py", env, data)
            )
            times["sasmodels, warm"].append(check(ROOT / "examples" / "sasmodels" / "model.py", env, data))
            shutil.rmtree(home)
        cold = statistics.median(times["sasmodels, cold cache"])
        print(f"model check (submit --dry-run, default sandbox), median of {REPEAT}; ratio to the cold check")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:<24} {median:6.2f} s   {median / cold:5.2f}x")


if __name__ == "__main__":
    main()

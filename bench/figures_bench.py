"""`make bench`, part 4: what drawing a fit's figures costs, for the demo model and the refl1d model.

Each model is fitted for real (`bumps-submit submit --local -n 2`); the job draws its
figures at its end (the manifest records the seconds), then `bumps-submit plot` (a child
process on the login node: load the model and the exported chain, draw) and `bumps-submit
report` are timed as a user runs them. Prints the figures drawn and the seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRIPT = [sys.executable, "-m", "bumps_mpi"]


def run(*args: str) -> tuple[float, dict]:
    started = time.perf_counter()
    proc = subprocess.run([*SCRIPT, *args, "--json"], capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bumps-submit {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds, json.loads(proc.stdout)


def measure(label: str, model: Path, fit: list[str], scratch: Path) -> None:
    fit_s, record = run("submit", str(model), "--local", "-n", "2", *fit, "--jobs-dir", str(scratch / label))
    job_dir = Path(record["job_dir"])
    manifest = json.loads((job_dir / "figures" / "figures.json").read_text())
    plot_s, drawn = run("plot", str(job_dir), "--out", str(scratch / f"{label}-again"))
    report_s, report = run("report", str(job_dir))
    size = Path(report["report"]).stat().st_size
    print(f"{label}: {model.relative_to(ROOT)}, DREAM {' '.join(fit)}, fit and job {fit_s:.1f} s")
    print(f"  figures: {', '.join(f['file'] for f in manifest['figures'])}")
    if manifest["problems"]:
        print(f"  not drawn: {'; '.join(manifest['problems'])}")
    print(f"  drawn at the job's end (rank 0, from memory)      {manifest['seconds']:6.2f} s")
    files = len(drawn["figures"])
    print(f"  bumps-submit plot (login node: model + chain + draw) {plot_s:6.2f} s  ({files} files)")
    print(f"  bumps-submit report (figures final: HTML only)    {report_s:6.2f} s  ({size / 1e6:.1f} MB)")


def main() -> None:
    os.environ.setdefault("BUMPS_MPI_REGISTRY", os.path.join(tempfile.mkdtemp(), "jobs.jsonl"))
    with tempfile.TemporaryDirectory(prefix="bumps-mpi-figures-bench-") as scratch:
        measure("demo", ROOT / "examples" / "peak.py", ["--samples", "10000", "--seed", "1"], Path(scratch))
        try:
            import refl1d  # noqa: F401
        except ImportError:
            print("refl1d is not installed (pip install -e '.[bench]'): its figures were not measured")
            return
        fit = ["--samples", "17000", "--burn", "50", "--seed", "1"]  # 170 chains, 150 generations
        measure("refl1d", HERE / "models" / "tethered_brush.py", fit, Path(scratch))


if __name__ == "__main__":
    main()

"""`make bench`: the estimate (issue 26) against the run, on real models, at 1 and 2 ranks (and 4 where
the machine has the cores).

For each model: `bumps-submit estimate` sizes a DREAM fit to take about BENCH_ESTIMATE_S seconds
(default 80) on one rank; then the fit runs here under mpiexec (`submit --local -n N --time auto`,
which records the estimate) and `results --json` gives the estimate against the run. Printed: the
predicted and measured wall time and its error, and the predicted and measured parallel efficiency
(measured: the one-rank run's wall time over N times this one's). The goal: within 25 % for fits
longer than a minute.

    python bench/estimate_bench.py            # refl1d's case needs refl1d (pip install -e '.[bench]')
    BENCH_ESTIMATE_CASES=refl1d BENCH_ESTIMATE_S=120 python bench/estimate_bench.py   # one case, longer
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_S = float(os.environ.get("BENCH_ESTIMATE_S", "80"))
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


def command(*args: object, cwd: Path) -> dict:
    """bumps-submit ARGS --json, as a user runs it; its JSON answer."""
    env = {**os.environ, **THREADS}
    proc = subprocess.run(
        [sys.executable, "-m", "bumps_mpi", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=3600,
    )
    if proc.returncode != 0:
        sys.exit(f"bumps-submit {' '.join(map(str, args[:3]))} ... failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def cases(work: Path) -> list[tuple[str, Path, list[str]]]:
    """(label, model, its arguments): the project's examples, Bumps' own example, refl1d's."""
    found = [
        ("examples/peak.py", ROOT / "examples" / "peak.py", []),
        ("Bumps' decay example", HERE / "models" / "bumps_decay.py", []),
    ]
    try:
        import sasmodels  # noqa: F401

        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "sasmodels" / "simulate.py"), str(work), "1"],
            check=True,
            env={**os.environ, **THREADS},
        )
        found.append(
            ("examples/sasmodels", ROOT / "examples" / "sasmodels" / "model.py", [str(work / "T20.dat")])
        )
    except ImportError:
        print("sasmodels is not installed: its example is left out")
    try:
        import refl1d  # noqa: F401

        found.append(("refl1d tethered brush", HERE / "models" / "tethered_brush.py", []))
    except ImportError:
        print("refl1d is not installed (pip install -e '.[bench]'): its example is left out")
    only = os.environ.get("BENCH_ESTIMATE_CASES")  # e.g. "refl1d": the cases whose label has it
    return [case for case in found if not only or only in case[0]]


def samples_for(model: Path, args: list[str], work: Path) -> int:
    """DREAM samples for a fit of about TARGET_S seconds on one rank, from the estimate itself."""
    first = command(
        "estimate", model, "--samples", 10000, "--burn", 100, "--ntasks", 1, "--json", "--", *args, cwd=work
    )
    one = next(row for row in first["rows"] if row["ranks"] == 1)
    return max(1000, int(10000 * TARGET_S / one["wall_s"]))


def main() -> None:
    ranks = [1, 2] + ([4] if (os.cpu_count() or 1) >= 4 else [])
    print(
        f"the estimate against the run: DREAM fits of about {TARGET_S:.0f} s on one rank, "
        f"{os.cpu_count()} cores"
    )
    header = (
        f"  {'model':<24} {'ranks':>5} {'evaluations':>11} {'predicted':>10} {'measured':>10} {'error':>7}"
    )
    print(header + f" {'eff. predicted':>14} {'eff. measured':>13} {'s/eval predicted':>16} {'measured':>9}")
    errors = []
    with tempfile.TemporaryDirectory(prefix="estimate-bench-") as tmp:
        work = Path(tmp)
        for label, model, args in cases(work):
            samples = samples_for(model, args, work)
            walls: dict[int, float] = {}
            for n in ranks:
                job = work / f"{model.stem}-{n}"
                fit = ["--samples", samples, "--burn", 100, "--seed", 1, "--time", "auto"]
                command(
                    "submit",
                    model,
                    *fit,
                    "--local",
                    "-n",
                    n,
                    "--job-dir",
                    job,
                    "--json",
                    "--",
                    *args,
                    cwd=work,
                )
                found = command("results", job, "--json", cwd=work)["prediction"]
                predicted, measured = found["predicted"], found["measured"]
                walls[n] = measured["wall_s"]
                error = measured["wall_s"] / predicted["wall_s"] - 1
                errors.append(abs(error))
                efficiency = walls[1] / (n * walls[n]) if 1 in walls else float("nan")
                print(
                    f"  {label:<24} {n:>5} {predicted['evaluations']:>11,} {predicted['wall_s']:>9.1f}s "
                    f"{measured['wall_s']:>9.1f}s {error:>+7.0%} {predicted['efficiency']:>14.2f} "
                    f"{efficiency:>13.2f} {predicted['seconds_per_evaluation'] * 1e6:>14.0f}µs "
                    f"{(measured['seconds_per_evaluation'] or 0) * 1e6:>7.0f}µs"
                )
    print(f"  largest error {max(errors):.0%} (goal: within 25 % for fits longer than a minute)")


if __name__ == "__main__":
    main()

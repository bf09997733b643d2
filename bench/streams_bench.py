"""`make bench`, part 8: one user's event streams must not slow another user down.

A running fit whose job directory holds 300,000 files (what a model may write there), four pages
following its events as its owner, and another user asking `GET /api/v1/me` 200 times: p50 and p95 of
that user's latency with the streams open, against the same requests with none open (the baseline, same
server, same run). Before the streams read only the service's records, each round walked the fit's
whole directory on the event loop (measured once: p50 1.5 ms without streams, 1.73 s with them).
Usage: python bench/streams_bench.py [--files 300000] [--streams 4] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_bench import latencies, percentile, start, wait_up  # noqa: E402


def running_fit(data: Path, files: int) -> tuple[str, dict[str, str], subprocess.Popen]:
    """A fit recorded as running, its job directory full of files, a live process standing for its run."""
    from bumps_mpi.cluster import processes
    from bumps_mpi.jobdir import control_dir
    from bumps_mpi.service.store import Store

    store = Store(data / "service.sqlite")
    tokens = {user: store.add_token(user) for user in ("owner", "other")}
    fit, _ = store.new_fit("owner", "crowded", {"model": "peak.py"}, None, {})
    job = data / "fits" / fit["id"] / "job"
    control = control_dir(job)
    control.mkdir(parents=True)
    crowd = job / "export" / "crowd"
    crowd.mkdir(parents=True)
    for i in range(files):
        (crowd / f"f{i}").touch()
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", str(job)])
    request = json.dumps({"name": "crowded", "model": "peak.py", "fit": "dream"})
    local = {"state": "RUNNING", "started": time.time(), "finished": None, "exit_code": None,
             "launcher": processes.identity(run.pid), "supervisor": None}  # fmt: skip
    for where in (control, job):  # the job directory's copies: for versions that read them there
        (where / "job.json" if where == job else where / "request.json").write_text(request)
        (where / "local.json").write_text(json.dumps(local))
    store.update_fit(fit["id"], phase="submitted", job_dir=str(job), state="RUNNING")
    return fit["id"], tokens, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=300_000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bumps-mpi-streams-bench-") as scratch:
        data = Path(scratch) / "data"
        port = 18471
        config = Path(scratch) / "service.toml"
        config.write_text(f'[service]\ndata_dir = "{data}"\nport = {port}\npoll_s = 1\n')
        os.environ["BUMPS_MPI_REGISTRY"] = str(Path(scratch) / "registry.jsonl")
        fit_id, tokens, run = running_fit(data, args.files)
        server = start(config)
        url = f"http://127.0.0.1:{port}"
        stop = threading.Event()
        try:
            wait_up(url)
            latencies(url, tokens["other"], "/api/v1/me", 20)  # warm up
            alone = latencies(url, tokens["other"], "/api/v1/me", args.requests)

            def follow() -> None:
                headers = {"Authorization": f"Bearer {tokens['owner']}"}
                with httpx.Client(base_url=url, headers=headers, timeout=None) as http:
                    with http.stream("GET", f"/api/v1/fits/{fit_id}/events") as events:
                        for _ in events.iter_lines():
                            if stop.is_set():
                                return

            for _ in range(args.streams):
                threading.Thread(target=follow, daemon=True).start()
            time.sleep(3)  # the streams are open and their rounds going
            crowded = latencies(url, tokens["other"], "/api/v1/me", args.requests)
        finally:
            stop.set()
            server.terminate()
            server.wait()
            run.kill()
        print(f"another user's GET /api/v1/me, {args.streams} event streams on a fit of {args.files} files:")
        for label, values in (("no streams (baseline)", alone), (f"{args.streams} streams open", crowded)):
            p50, p95 = statistics.median(values) * 1e3, percentile(values, 95) * 1e3
            print(f"  {label:<24} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms")
        ratio = statistics.median(crowded) / statistics.median(alone)
        print(f"  ratio of medians (streams / baseline): {ratio:.1f}")


if __name__ == "__main__":
    main()

"""`make bench`, part 6: the job controller under load, on loopback.

1. 1,000 fits recorded (ten users, a finished job directory each), `bumps-submit serve` started as a
   user would, then 50 clients (threads, one keep-alive connection each) in bounded loops: requests per
   second and p50/p95 latency of the list (`GET /api/v1/fits`, a user's 100 fits) and one-fit
   (`GET /api/v1/fits/ID`) endpoints, against two baselines on the same server in the same run: a
   static file (the framework's floor) and `/api/v1/me` (authentication alone).
2. 20 fits running at once (local backend, one rank each, a model that mostly sleeps) with a page
   following each one's events: the CPU the service process uses, in % of one core, over 30 s; and
   another user's `GET /api/v1/fits` latency while they run, against the same before they started.

The clients share the machine's cores with the server, so the rates are a floor, not a ceiling.
Usage: python bench/service_bench.py [--clients 50] [--rounds 20] [--fits 20]
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

ROOT = Path(__file__).resolve().parents[1]
SLOW = ROOT / "tests" / "models" / "slow_peak.py"
USERS = [f"user{i}" for i in range(10)]


def seed(data: Path, count: int) -> dict[str, str]:
    """*count* finished fits for USERS, with their job directories; the users' tokens."""
    from bumps_mpi.jobdir import control_dir
    from bumps_mpi.service.store import Store

    store = Store(data / "service.sqlite")
    tokens = {user: store.add_token(user) for user in USERS}
    now = time.time()
    result = {
        "fitter": "dream", "chisq": 1.02, "chisq_str": "1.02(3)", "nllf": 40.0, "elapsed_s": 9.0, "ranks": 2,
        "parameters": [{"name": n, "best": 1.0, "mean": 1.0, "std": 0.1} for n in ("a", "b", "c", "d")],
    }  # fmt: skip
    for i in range(count):
        owner = USERS[i % len(USERS)]
        fit, _ = store.new_fit(owner, f"fit{i}", {"model": "peak.py"}, None, {})
        job = data / "fits" / fit["id"] / "job"
        control = control_dir(job)  # the request and the run's record: beside the job directory
        control.mkdir(parents=True)
        job.mkdir(parents=True)
        request = json.dumps({"name": f"fit{i}", "model": "peak.py", "fit": "dream"})
        (control / "request.json").write_text(request)
        (job / "job.json").write_text(request)
        ended = {"state": "COMPLETED", "exit_code": 0, "started": now - 9, "finished": now}
        (control / "local.json").write_text(json.dumps(ended))
        (job / "result.json").write_text(json.dumps(result))
        done = {"state": "COMPLETED", "ended": now, "chisq": 1.02}
        store.update_fit(fit["id"], phase="submitted", job_dir=str(job), **done)
    return tokens


def start(config: Path) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "bumps_mpi", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    return server


def wait_up(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/login", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit("the service did not start")


def load(url: str, tokens: dict[str, str], clients: int, rounds: int) -> dict[str, list[float]]:
    """Every client: per round, one request to each endpoint; the latencies (s) by endpoint."""
    first = httpx.get(f"{url}/api/v1/fits", headers={"Authorization": f"Bearer {tokens[USERS[0]]}"}).json()
    fit_of = {}
    for user, token in tokens.items():
        fits = httpx.get(f"{url}/api/v1/fits", headers={"Authorization": f"Bearer {token}"}).json()
        fit_of[user] = [f["id"] for f in fits]
    assert len(first) == 100, len(first)
    times: dict[str, list[float]] = {"static": [], "me": [], "list": [], "one": []}
    lock = threading.Lock()
    start_gate = threading.Barrier(clients)

    def client(index: int) -> None:
        user = USERS[index % len(USERS)]
        mine: dict[str, list[float]] = {key: [] for key in times}
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[user]}"}) as http:
            start_gate.wait()
            for r in range(rounds):
                for key, path in (
                    ("static", "/static/style.css"),
                    ("me", "/api/v1/me"),
                    ("list", "/api/v1/fits"),
                    ("one", f"/api/v1/fits/{fit_of[user][(index + r) % 100]}"),
                ):
                    began = time.perf_counter()
                    answer = http.get(path)
                    mine[key].append(time.perf_counter() - began)
                    assert answer.status_code == 200, (path, answer.status_code)
        with lock:
            for key, values in mine.items():
                times[key].extend(values)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latencies(url: str, token: str, path: str, count: int = 100) -> list[float]:
    """A user's GET *path*, *count* times one after another: seconds each."""
    seen = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for _ in range(count):
            began = time.perf_counter()
            assert http.get(path).status_code == 200
            seen.append(time.perf_counter() - began)
    return seen


def running_fits(
    url: str, token: str, other: str, count: int, pid: int, window: float
) -> tuple[float, int, list[float], list[float]]:
    """Start *count* fits, follow each one's events as a page would, measure the service's CPU; another
    user's latency before the fits and while they run (niced below the service: [service] nice)."""
    quiet = latencies(url, other, "/api/v1/fits")
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    ids = []
    for _ in range(count):
        answer = http.post(
            "/api/v1/fits",
            files=[("model", ("slow_peak.py", SLOW.read_bytes()))],
            data={"args": "0.05", "samples": "400000", "seed": "1", "ntasks": "1"},
        )
        assert answer.status_code == 201, answer.text
        ids.append(answer.json()["id"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # every fit's ranks started and reporting progress
        states = [http.get(f"/api/v1/fits/{i}").json() for i in ids]
        if all(s["state"] == "RUNNING" and s["progress"] for s in states):
            break
        time.sleep(2)
    running = sum(http.get(f"/api/v1/fits/{i}").json()["state"] == "RUNNING" for i in ids)
    stop = threading.Event()

    def follow(fit_id: str) -> None:
        with httpx.Client(base_url=url, headers=http.headers, timeout=None) as own:
            with own.stream("GET", f"/api/v1/fits/{fit_id}/events") as events:
                for _ in events.iter_lines():
                    if stop.is_set():
                        return

    followers = [threading.Thread(target=follow, args=(i,), daemon=True) for i in ids]
    for thread in followers:
        thread.start()
    time.sleep(3)
    before, began = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    used = (cpu_seconds(pid) - before) / (time.monotonic() - began)
    busy = latencies(url, other, "/api/v1/fits")
    stop.set()
    for fit_id in ids:
        http.post(f"/api/v1/fits/{fit_id}/cancel")
    return 100 * used, running, quiet, busy


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fits", type=int, default=20)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bumps-mpi-service-bench-") as scratch:
        data = Path(scratch) / "data"
        port = 18470
        config = Path(scratch) / "service.toml"
        config.write_text(
            f'[service]\ndata_dir = "{data}"\nport = {port}\nmax_running = {args.fits + 1}\n'
            f"[limits]\nmax_fits = {args.fits + 1}\nmax_ranks = 1\n"
        )
        os.environ["BUMPS_MPI_REGISTRY"] = str(Path(scratch) / "registry.jsonl")
        tokens = seed(data, 1000)
        server = start(config)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_up(url)
            load(url, tokens, 5, 2)  # warm up
            began = time.perf_counter()
            times = load(url, tokens, args.clients, args.rounds)
            wall = time.perf_counter() - began
            total = sum(len(v) for v in times.values())
            print(f"job controller: 1000 fits, {args.clients} clients x {args.rounds} rounds, loopback")
            print(f"  all requests: {total} in {wall:.1f} s = {total / wall:.0f} req/s (clients share cores)")
            floor = statistics.median(times["static"])
            for key, label in (
                ("static", "static file (baseline)"),
                ("me", "/api/v1/me (auth only)"),
                ("list", "/api/v1/fits (100 fits)"),
                ("one", "/api/v1/fits/ID"),
            ):
                values = times[key]
                p50, p95 = statistics.median(values), percentile(values, 95)
                rate = len(values) / sum(values) * args.clients
                print(
                    f"  {label:<26} p50 {1000 * p50:6.1f} ms  p95 {1000 * p95:6.1f} ms  "
                    f"~{rate:5.0f} req/s  p50 {p50 / floor:4.1f}x the static file"
                )
            cpu, running, quiet, busy = running_fits(
                url, tokens[USERS[0]], tokens[USERS[1]], args.fits, server.pid, args.window
            )
            print(
                f"  service CPU, {running} of {args.fits} fits running, {args.fits} event streams open: "
                f"{cpu:.1f}% of one core over {args.window:.0f} s (poll every 2 s)"
            )
            for label, values in (("no fits running (baseline)", quiet), (f"{running} fits running", busy)):
                p50, p95 = 1000 * statistics.median(values), 1000 * percentile(values, 95)
                print(f"  another user's /api/v1/fits, {label:<26} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms")
        finally:
            server.terminate()
            server.wait(timeout=30)
            subprocess.run(["pkill", "-KILL", "-f", str(data)], check=False)


if __name__ == "__main__":
    main()

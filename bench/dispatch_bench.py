"""`make bench`, part 7: the central dispatcher's queue under load, and how soon a dead worker's fit moves.

1. A controller in dispatch mode (`bumps-submit serve`; SQLite, then PostgreSQL when scripts/postgres-server
   runs) with 10,000 queued fits and 20 simulated
   workers (threads, one connection each, registered for real) on loopback: each claims in a loop until
   the queue is empty, then sends heartbeats for what it holds. Claims per second (all workers) and the
   latency of a claim and of a heartbeat (p50/p95), with GET /api/v1/me on the same server as the
   baseline (authentication alone).
2. With --death: a real worker (`bumps-submit worker --local`) with the default lease (180 s) runs a fit,
   is killed with SIGKILL, and a second worker waits: the seconds from the death to the fit running on
   the second worker, against the lease they are bounded by.

Usage: python bench/dispatch_bench.py [--fits 10000] [--workers 20] [--death]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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


def serve(config: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "bumps_mpi", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/login", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    sys.exit("the controller did not start")


def percentiles(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {1000 * statistics.median(values):6.1f} ms  p95 {1000 * cuts[94]:6.1f} ms"


def queue_load(scratch: Path, fits: int, workers: int, database: str = "") -> None:
    from bumps_mpi.service.dispatch import Queue
    from bumps_mpi.service.settings import load
    from bumps_mpi.service.store import Store

    data, port = scratch / f"data-{'pg' if database else 'sqlite'}", 18471
    config = scratch / "service.toml"
    config.write_text(
        f'[service]\ndata_dir = "{data}"\nport = {port}\nbackend = "dispatch"\nclaim_wait_s = 0\n'
        f'database = "{database}"\n'
    )
    settings = load(config)
    store = Store.of(settings)
    queue = Queue(settings, store)
    user_token = store.add_token("bench")
    began = time.perf_counter()
    with store.write() as db:
        now = time.time()
        db.executemany(
            "INSERT INTO fits(id, owner, name, created, phase, request, wants, state) "
            "VALUES (?, 'bench', ?, ?, 'queued', ?, '{}', 'PENDING')",
            [(f"f{i:06d}", f"fit{i}", now + i * 1e-6, json.dumps({"model": "m.py"})) for i in range(fits)],
        )
    seeded = time.perf_counter() - began
    credentials = [queue.register(queue.registration_token(), f"w{i}", {}, fits)[1] for i in range(workers)]
    server = serve(config, port)
    url = f"http://127.0.0.1:{port}"
    claims: list[float] = []
    beats: list[float] = []
    baseline: list[float] = []
    lock = threading.Lock()
    gate = threading.Barrier(workers + 1)

    def worker(credential: str) -> None:
        mine, held = [], []
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {credential}"}, timeout=60
        ) as http:
            gate.wait()
            while True:
                started = time.perf_counter()
                answer = http.post("/api/v1/dispatch/claim", json={"capacity": fits})
                mine.append(time.perf_counter() - started)
                if answer.status_code == 204:
                    break
                held.append(answer.json())
            gate.wait()
            pulse = []
            for claim in held[:50]:
                started = time.perf_counter()
                answer = http.post(
                    f"/api/v1/dispatch/fits/{claim['fit']}/heartbeat",
                    json={"lease": claim["lease"], "state": "RUNNING"},
                )
                pulse.append(time.perf_counter() - started)
                assert answer.status_code == 200, answer.text
        with lock:
            claims.extend(mine)
            beats.extend(pulse)

    threads = [threading.Thread(target=worker, args=(c,)) for c in credentials]
    try:
        for thread in threads:
            thread.start()
        gate.wait()
        began = time.perf_counter()
        gate.wait()
        claimed_s = time.perf_counter() - began
        for thread in threads:
            thread.join()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {user_token}"}) as http:
            for _ in range(200):
                started = time.perf_counter()
                http.get("/api/v1/me")
                baseline.append(time.perf_counter() - started)
        leased = store.read("SELECT COUNT(*) AS n FROM fits WHERE phase = 'leased'")[0]["n"]
        kind = "PostgreSQL" if database else "SQLite"
        print(f"dispatcher ({kind}): {fits} queued fits ({seeded:.1f} s to record), {workers} workers")
        print(f"  claimed {leased} of {fits} in {claimed_s:.1f} s: {leased / claimed_s:.0f} claims/s")
        print(f"  claim      {percentiles(claims)}   ({len(claims)} calls, the last of each one empty)")
        print(f"  heartbeat  {percentiles(beats)}   ({len(beats)} calls)")
        print(f"  /api/v1/me {percentiles(baseline)}   (baseline: authentication alone, one client)")
        assert leased == fits
    finally:
        server.terminate()
        server.wait(timeout=30)


def death(scratch: Path) -> None:
    """A worker killed mid-fit with the default lease: how soon is its fit running elsewhere?"""
    data, port = scratch / "death", 18472
    config = scratch / "death.toml"
    config.write_text(f'[service]\ndata_dir = "{data}"\nport = {port}\nbackend = "dispatch"\n')
    server = serve(config, port)
    url = f"http://127.0.0.1:{port}"
    token = subprocess.run(
        [sys.executable, "-m", "bumps_mpi", "serve", "--config", str(config), "token", "add", "bench"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip

    def worker(name: str) -> subprocess.Popen:
        registration = subprocess.run(
            [sys.executable, "-m", "bumps_mpi", "serve", "--config", str(config), "worker-token"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        return subprocess.Popen(
            [sys.executable, "-m", "bumps_mpi", "worker", "--controller", url, "--local", "--name", name,
             "--state-dir", str(scratch / name), "--registration-token", registration],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    first = worker("first")
    try:
        fit = http.post(
            "/api/v1/fits",
            files=[("model", ("slow_peak.py", SLOW.read_bytes()))],
            data={"samples": "1000000", "seed": "1", "args": "0.005", "ntasks": "1"},
        ).json()
        while http.get(f"/api/v1/fits/{fit['id']}").json()["state"] != "RUNNING":
            time.sleep(0.5)
        first.send_signal(signal.SIGKILL)
        died = time.monotonic()
        second = worker("second")
        while True:
            now = http.get(f"/api/v1/fits/{fit['id']}").json()
            if now["attempt"] == 2 and now["state"] == "RUNNING":
                break
            time.sleep(0.5)
        moved = time.monotonic() - died
        print(
            f"  worker killed -> its fit RUNNING on another worker: {moved:.0f} s (lease 180 s, beats 60 s)"
        )
        http.post(f"/api/v1/fits/{fit['id']}/cancel")
        second.send_signal(signal.SIGTERM)
    finally:
        first.kill()
        server.terminate()
        server.wait(timeout=30)
        subprocess.run(["pkill", "-KILL", "-f", str(scratch)], check=False)


def new_database(server: str) -> str:
    """A new database on *server*, or '' (said why) when it cannot be reached."""
    try:
        import psycopg

        with psycopg.connect(f"{server}/postgres", autocommit=True, connect_timeout=10) as db:
            name = f"bench_{os.getpid()}_{time.monotonic_ns()}"
            db.execute(f"CREATE DATABASE {name}")
        return f"{server}/{name}"
    except Exception as exc:  # no psycopg, no server: SQLite only
        print(f"PostgreSQL at {server} not measured: {type(exc).__name__}: {exc}")
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fits", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=20)
    parser.add_argument("--death", action="store_true", help="also time a worker's death (about 3 minutes)")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:54329",
        help="a PostgreSQL server to run the queue on as well (scripts/postgres-server's); '' for none",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bumps-mpi-dispatch-bench-") as scratch:
        os.environ["BUMPS_MPI_REGISTRY"] = str(Path(scratch) / "registry.jsonl")
        queue_load(Path(scratch), args.fits, args.workers)
        database = args.postgres and new_database(args.postgres)
        if database:
            queue_load(Path(scratch), args.fits, args.workers, database)
        if args.death:
            death(Path(scratch))


if __name__ == "__main__":
    main()

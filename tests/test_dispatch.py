"""The central dispatcher, for real: a controller in dispatch mode and `bumps-submit worker` processes (one
submitting to the project's Slurm cluster, one running locally), as an ordinary user, on loopback; and
the faults that must lose nothing: a worker killed, a worker cut off, the controller killed mid-way.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import EXAMPLE, MODELS, serial_fit, wait_until
from service_helpers import Service, Worker, follow, submit

pytestmark = pytest.mark.slurm
LEASE_S = 6
SLOW = MODELS / "slow_peak.py"
MANY = MODELS / "many_files.py"  # slow_peak's fit, with 300 more files to upload at its end
LONG_FIT = {"samples": "20000", "burn": "100", "seed": "5", "args": "0.005"}  # about 80 s on 2 ranks


def dispatcher(services, lease_s: float = LEASE_S, database: str = "") -> Service:
    """A controller in dispatch mode, started by the test's services fixture (closed at the test's end)."""
    service = services(
        "dispatch",
        "[limits]\nmax_fits = 20\nmax_ranks = 2\n",
        settings=f'lease_s = {lease_s}\nmax_attempts = 3\nclaim_wait_s = 5\ndatabase = "{database}"\n',
        site="checkpoint_every = 2\n",
    )
    service.database = database
    return service


@pytest.fixture(params=["sqlite", "postgres"])
def database(request):
    """The claim and recovery tests run on both stores: SQLite (embedded) and a real PostgreSQL server."""
    return request.getfixturevalue("postgres_server")() if request.param == "postgres" else ""


@pytest.fixture
def controller(slurm_cluster, database, services):
    service = dispatcher(services, database=database)
    yield service
    subprocess.run(["scancel", "--user", service.user.pw_name], check=False)


def rows(service: Service, query: str) -> list[dict]:
    """The controller's own records (read-only), from whichever database it keeps them in."""
    if getattr(service, "database", ""):
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(service.database, row_factory=dict_row) as db:
            return list(db.execute(query))
    db = sqlite3.connect(f"file:{service.data / 'service.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(query)]
    finally:
        db.close()


def attempts(service: Service) -> list[dict]:
    """Every claim."""
    return rows(service, "SELECT * FROM attempts ORDER BY claimed")


def test_two_workers_share_five_fits_within_their_capacity(controller):
    on_slurm = Worker(controller, "hpc", "--capacity", "1", "--label", "cluster=ci").start()
    here = Worker(controller, "laptop", "--capacity", "1", "--local", "--label", "cluster=laptop").start()
    try:
        alice = controller.client("alice")
        seeds = [1, 2, 3, 4, 5]
        fits = [submit(alice, EXAMPLE, samples="2000", burn="100", seed=str(s)).json() for s in seeds]
        assert {f["phase"] for f in fits} <= {"queued", "leased"}  # a worker may have claimed one already
        ended = [follow(alice, f["id"])[-1]["state"] for f in fits]
        assert ended == ["COMPLETED"] * 5, (ended, on_slurm.said(), here.said())
        names = {w["id"]: w["name"] for w in controller.client("admin").get("/api/v1/workers").json()}
        for fit, seed in zip(fits, seeds, strict=True):
            done = alice.get(f"/api/v1/fits/{fit['id']}").json()
            reference = serial_fit(EXAMPLE, "dream", {"samples": 2000, "burn": 100}, seed=seed)
            assert done["chisq"] == reference["chisq"], seed  # the same fit, wherever it ran
            assert [p["best"] for p in done["parameters"]] == reference["best"]
            assert done["attempt"] == 1 and len(done["figures"]) >= 5 and "report.html" in done["files"]
            on_hpc = names[done["worker"]] == "hpc"  # its Slurm log comes along, from its control directory
            assert any(name.startswith("logs/slurm-") for name in done["files"]) == on_hpc, done["files"]
        claims = attempts(controller)
        assert len(claims) == 5 and all(c["outcome"] == "completed COMPLETED" for c in claims)
        for worker in {c["worker"] for c in claims}:  # capacity 1: one fit at a time on each worker
            spans = sorted((c["claimed"], c["ended"]) for c in claims if c["worker"] == worker)
            assert all(spans[i][1] <= spans[i + 1][0] for i in range(len(spans) - 1)), spans
        health = {w["name"]: w for w in controller.client("admin").get("/api/v1/workers").json()}
        assert set(health) == {"hpc", "laptop"} and all(w["in_flight"] == 0 for w in health.values())
        assert all(w["last_seen"] >= max(c["claimed"] for c in claims) for w in health.values())  # seen since
        assert len({c["worker"] for c in claims}) == 2, claims  # both took part
        assert "Submitted" not in here.said() and "as Slurm job" in on_slurm.said()
        assert controller.client("bob").get("/api/v1/workers").status_code == 403  # health: admins only
    finally:
        on_slurm.kill(signal.SIGTERM)
        here.kill(signal.SIGTERM)


def registered(service: Service, name: str, labels: dict) -> httpx.Client:
    """A worker registered for real (a one-time token made by the administrator's command), as a client of
    the workers' API: it claims, heartbeats and completes only when the test says so."""
    token = subprocess.run(
        service.command("worker-token"), capture_output=True, text=True, env=service.env()
    ).stdout.strip()
    answer = httpx.post(
        f"{service.url}/api/v1/workers/register", json={"token": token, "name": name, "labels": labels}
    )
    assert answer.status_code == 201, answer.text
    return httpx.Client(  # a claim waits claim_wait_s (5 s) for a fit: longer than httpx's default
        base_url=service.url, headers={"Authorization": f"Bearer {answer.json()['credential']}"}, timeout=30
    )


def claimed(worker: httpx.Client, timeout: float = 60) -> dict:
    """The next fit this worker is offered (a claim long-polls a few seconds; ask again until one comes)."""
    deadline = time.monotonic() + timeout
    while (answer := worker.post("/api/v1/dispatch/claim", json={})).status_code == 204:
        assert time.monotonic() < deadline, "no fit was offered"
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_a_fit_whose_workers_vanish_fails_after_max_attempts_and_a_lost_workers_fit_can_be_cancelled(
    slurm_cluster, services
):
    """Workers that claim a fit and are never heard of again: the fit goes back to the queue after each
    lease, and ends FAILED after max_attempts (3) saying why; a fit cancelled while its worker is lost
    ends CANCELLED when the lease runs out, never queued again."""
    service = dispatcher(services, lease_s=3)
    alice = service.client("alice")
    doomed = submit(alice, EXAMPLE, samples="2000").json()
    vanishing = registered(service, "vanishing", {})
    for attempt in (1, 2, 3):
        claim = claimed(vanishing)  # once its lease has run out, the fit comes back
        assert claim["fit"] == doomed["id"] and claim["attempt"] == attempt, claim
    wait_until(lambda: alice.get(f"/api/v1/fits/{doomed['id']}").json()["state"] == "FAILED", "giving up", 60)
    shown = alice.get(f"/api/v1/fits/{doomed['id']}").json()
    assert "gave up after 3 attempts" in shown["message"], shown
    assert vanishing.post("/api/v1/dispatch/claim", json={}).status_code == 204  # never offered again

    lost = submit(alice, EXAMPLE, samples="2000").json()
    claim = claimed(vanishing)
    assert claim["fit"] == lost["id"]
    assert alice.post(f"/api/v1/fits/{lost['id']}/cancel").status_code == 202
    wait_until(
        lambda: alice.get(f"/api/v1/fits/{lost['id']}").json()["state"] == "CANCELLED", "cancelled", 60
    )
    assert "its worker was lost" in alice.get(f"/api/v1/fits/{lost['id']}").json()["message"]
    assert vanishing.post("/api/v1/dispatch/claim", json={}).status_code == 204
    assert [c["outcome"] for c in attempts(service)] == ["expired"] * 4


def test_the_workers_api_refuses_what_an_attacker_would_try(slurm_cluster, services):
    """Over the real server: no credential, a user's token, a reused registration token, a claim for labels
    the worker never registered with, a stale lease, another worker's lease, a path out of the fit, a
    wrong hash. Nothing of it is stored."""
    service = dispatcher(services)
    url = service.url
    token = Worker(service, "unused").token  # a one-time registration token, made for real

    def register(name: str, labels: dict) -> httpx.Client:
        return registered(service, name, labels)

    assert httpx.post(f"{url}/api/v1/workers/register", json={"token": token, "name": "a"}).status_code == 201
    assert httpx.post(f"{url}/api/v1/workers/register", json={"token": token, "name": "b"}).status_code == 403
    for headers in ({}, {"Authorization": f"Bearer {service.tokens['admin']}"}):
        assert httpx.post(f"{url}/api/v1/dispatch/claim", json={}, headers=headers).status_code == 401

    alice = service.client("alice")
    wanted = submit(alice, EXAMPLE, labels="cluster=hpc1").json()
    laptop = register("laptop", {"cluster": "laptop"})
    asked = laptop.post("/api/v1/dispatch/claim", json={"labels": {"cluster": "hpc1"}, "capacity": 99})
    assert asked.status_code == 204  # a claim cannot raise what the worker registered with
    hpc = register("hpc", {"cluster": "hpc1"})
    claim = hpc.post("/api/v1/dispatch/claim", json={}).json()
    assert claim["fit"] == wanted["id"] and claim["attempt"] == 1
    fit = f"/api/v1/dispatch/fits/{claim['fit']}"
    body, sha = b"{}", hashlib.sha256(b"{}").hexdigest()
    for who, lease in ((hpc, "lease-forged"), (laptop, claim["lease"])):  # stale or not its own: fenced
        assert who.post(f"{fit}/heartbeat", json={"lease": lease}).status_code == 409
        put = who.put(f"{fit}/files/result.json", params={"lease": lease}, content=body,
                      headers={"X-Content-SHA256": sha})  # fmt: skip
        assert put.status_code == 409
        assert who.post(f"{fit}/complete", json={"lease": lease, "state": "COMPLETED"}).status_code == 409
    for name in ("..%2F..%2Fsecret", "%2Fetc%2Fpasswd", "a%5C..%5Cb"):
        put = hpc.put(f"{fit}/files/{name}", params={"lease": claim["lease"]}, content=body,
                      headers={"X-Content-SHA256": sha})  # fmt: skip
        assert put.status_code in (404, 422), (name, put.status_code)
    wrong = hpc.put(f"{fit}/files/result.json", params={"lease": claim["lease"]}, content=body,
                    headers={"X-Content-SHA256": "0" * 64})  # fmt: skip
    assert wrong.status_code == 422
    wrong = hpc.put(f"{fit}/checkpoint", params={"lease": claim["lease"]}, content=body,
                    headers={"X-Content-SHA256": "0" * 64})  # fmt: skip
    assert wrong.status_code == 422, wrong.text  # a checkpoint is checked the same way
    assert not list((service.data / "fits" / claim["fit"]).rglob("*.h5"))
    assert not list((service.data / "fits" / claim["fit"]).rglob("result.json"))
    assert not list(service.base.rglob("*.part"))
    assert [p.name for p in service.data.rglob("secret*")] == ["secret"]  # its own, nothing beside it


def test_a_killed_workers_fit_resumes_elsewhere_from_its_checkpoint(controller):
    alice = controller.client("alice")
    doomed = Worker(controller, "doomed", "--capacity", "1").start()  # Slurm
    fit = submit(alice, SLOW, **LONG_FIT).json()
    checkpointed = controller.data / "fits" / fit["id"] / "checkpoints" / "1.h5"
    wait_until(checkpointed.exists, "a checkpoint uploaded by the first worker", timeout=180)
    first_job = json.loads((doomed.state / "inflight" / f"{fit['id']}.json").read_text())["job_dir"]
    slurm_id = json.loads((Path(first_job) / "job.json").read_text())["slurm"]["job_id"]
    doomed.kill()  # SIGKILL: no goodbye; its Slurm job runs on
    died = time.monotonic()
    rescuer = Worker(controller, "rescuer", "--capacity", "1", "--local").start()
    try:
        wait_until(
            lambda: "resuming from the checkpoint" in _local_out(rescuer, fit["id"], 2), "attempt 2 resuming"
        )
        moved_s = time.monotonic() - died
        doomed.start()  # restarted, it learns its lease is gone and cancels its Slurm job
        wait_until(
            lambda: "letting it go" in doomed.said(), "the restarted worker letting the fit go", timeout=60
        )
        wait_until(
            lambda: "CANCELLED" in _accounting(slurm_id), f"Slurm job {slurm_id} cancelled", timeout=60
        )
        assert follow(alice, fit["id"], timeout=400)[-1]["state"] == "COMPLETED"
        done = alice.get(f"/api/v1/fits/{fit['id']}").json()
        assert done["attempt"] == 2 and done["worker"] != attempts(controller)[0]["worker"]
        claims = attempts(controller)
        assert [(c["attempt"], c["outcome"]) for c in claims] == [(1, "expired"), (2, "completed COMPLETED")]
        job = controller.data / "fits" / fit["id"] / "job"
        assert (job / ".attempt").read_text() == "2"  # attempt 1 never wrote a thing the fit kept
        runs = json.loads((job / "runs.json").read_text())
        assert runs[0]["resumed_from_step"] > 0, runs
        kept = controller.data / "fits" / fit["id"]  # the last good checkpoint only, no attempt left over
        assert len(list((kept / "checkpoints").glob("*.h5"))) <= 1 and not list((kept / "attempts").glob("*"))
        print(f"worker killed -> fit resuming elsewhere: {moved_s:.1f} s (lease {LEASE_S} s)")
    finally:
        rescuer.kill(signal.SIGTERM)
        doomed.kill(signal.SIGTERM)


def _accounting(job_id: str) -> str:
    return subprocess.run(
        ["sacct", "-n", "-X", "-j", job_id, "-o", "State"], capture_output=True, text=True
    ).stdout


def _local_out(worker: Worker, fit_id: str, attempt: int) -> str:
    log = worker.state / "fits" / f"{fit_id}-{attempt}" / "job" / "local.out"
    return log.read_text() if log.exists() else ""


def test_a_worker_cut_off_longer_than_its_lease_cancels_its_fit(slurm_cluster, services):
    service = dispatcher(services)
    here = Worker(service, "island", "--capacity", "1", "--local").start()
    try:
        alice = service.client("alice")
        fit = submit(alice, SLOW, **LONG_FIT).json()
        wait_until(lambda: alice.get(f"/api/v1/fits/{fit['id']}").json()["state"] == "RUNNING", "running")
        service.stop(signal.SIGKILL)  # the controller is gone for longer than the lease
        state = here.state / "fits" / f"{fit['id']}-1" / ".bumps-control" / "job" / "local.json"
        wait_until(
            lambda: json.loads(state.read_text())["state"] == "CANCELLED", "the cut-off worker cancelling"
        )
        assert "cut off from the controller" in here.said()
        service.start()
        alice = service.client("alice")
        assert follow(alice, fit["id"], timeout=400)[-1]["state"] == "COMPLETED"  # attempt 2, from scratch
        claims = attempts(service)
        assert [(c["attempt"], c["outcome"]) for c in claims] == [(1, "expired"), (2, "completed COMPLETED")]
        assert (service.data / "fits" / fit["id"] / "job" / ".attempt").read_text() == "2"
    finally:
        here.kill(signal.SIGTERM)


def test_a_revoked_worker_stops_its_fits_and_they_go_back_to_the_queue(slurm_cluster, services):
    service = dispatcher(services)
    here = Worker(service, "lost-laptop", "--capacity", "1", "--local").start()
    try:
        alice = service.client("alice")
        fit = submit(alice, SLOW, **LONG_FIT).json()
        wait_until(lambda: alice.get(f"/api/v1/fits/{fit['id']}").json()["state"] == "RUNNING", "running")
        listed = subprocess.run(
            service.command("worker-list"), capture_output=True, text=True, env=service.env()
        )
        assert "lost-laptop" in listed.stdout and "in flight 1" in listed.stdout, listed.stdout
        revoked = subprocess.run(
            service.command("worker-revoke", "lost-laptop"), capture_output=True, text=True, env=service.env()
        )
        assert revoked.returncode == 0, revoked.stderr
        assert here.proc.wait(timeout=120) == 1  # it stops, saying why
        assert "credential (revoked?)" in here.said()
        state = here.state / "fits" / f"{fit['id']}-1" / ".bumps-control" / "job" / "local.json"
        wait_until(lambda: json.loads(state.read_text())["state"] == "CANCELLED", "its job stopped", 60)
        wait_until(
            lambda: alice.get(f"/api/v1/fits/{fit['id']}").json()["phase"] == "queued",
            "back in the queue",
            60,
        )
        command = service.command("worker-revoke", "lost-laptop")
        again = subprocess.run(command, capture_output=True, text=True, env=service.env())
        assert again.returncode == 1 and "no worker 'lost-laptop'" in again.stderr
    finally:
        here.kill(signal.SIGTERM)


def test_the_controller_killed_mid_claim_heartbeat_and_upload_loses_nothing(
    slurm_cluster, database, services
):
    service = dispatcher(services, lease_s=15, database=database)
    workers = [
        Worker(service, "w1", "--capacity", "1", "--local").start(),
        Worker(service, "w2", "--capacity", "1", "--local").start(),
    ]
    try:
        alice = service.client("alice")
        fits = [
            submit(alice, MANY, data=[SLOW], samples="3000", burn="100", seed=str(s), args="0.002").json()
            for s in (1, 2, 3)
        ]
        leases = "SELECT id, lease_expires FROM fits WHERE phase = 'leased'"

        def crash(when: str) -> None:
            service.stop(signal.SIGKILL)
            service.start()
            print(f"controller killed {when}")

        crash("while the workers claim")  # the first claims are in flight (long polling)
        wait_until(lambda: any(c["outcome"] is None for c in attempts(service)), "a fit running")
        claimed = {r["id"]: r["lease_expires"] for r in rows(service, leases)}

        def beat() -> bool:
            return any(
                claimed.get(r["id"], r["lease_expires"]) != r["lease_expires"] for r in rows(service, leases)
            )

        wait_until(beat, "a heartbeat after a claim")  # the kill lands after one heartbeat, before the next
        crash("between heartbeats")
        fits_dir = service.data / "fits"
        wait_until(lambda: any(fits_dir.glob("*/attempts/*/notes/*")), "result files arriving", timeout=300)
        crash("while results were being uploaded")
        alice = service.client("alice")
        ended = [follow(alice, f["id"], timeout=400)[-1]["state"] for f in fits]
        assert ended == ["COMPLETED"] * 3, (ended, [w.said() for w in workers])
        assert len(alice.get("/api/v1/fits").json()) == 3  # nothing duplicated
        assert not list(fits_dir.rglob("*.part"))  # no partial file left, anywhere
        claims = attempts(service)
        for fit in fits:
            mine = [c for c in claims if c["fit"] == fit["id"]]
            completed = [c for c in mine if c["outcome"] == "completed COMPLETED"]
            assert len(completed) == 1, mine  # one result per fit
            job = fits_dir / fit["id"] / "job"
            assert (job / ".attempt").read_text() == str(completed[0]["attempt"])
            assert json.loads((job / "result.json").read_text())["chisq"] > 0
        alive = [w.proc.poll() is None for w in workers]
        assert all(alive), [w.said()[-3000:] for w in workers]  # they recovered by themselves
    finally:
        for worker in workers:
            worker.kill(signal.SIGTERM)

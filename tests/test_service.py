"""The job controller, for real: `bumps-submit serve` (uvicorn) on a loopback port, as an ordinary user,
with the Slurm backend on the project's cluster; a real mail server (aiosmtpd) and webhook receiver; a
real headless Chromium for the pages. One service for the module; its own ones where a test restarts it.
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import subprocess
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import EXAMPLE, MODELS, as_user, chromium, cli, cli_json, one_line_error, wait_until
from service_helpers import Service, follow, free_port, on_page, submit, wait_for

from bumps_mpi.jobdir import control_dir

pytestmark = pytest.mark.slurm
SMALL = {"samples": "2000", "burn": "100", "seed": "7"}
SLOW = MODELS / "slow_peak.py"
SLOW_FIT = {"samples": "6000", "burn": "100", "seed": "3", "args": "0.005"}  # about 25 s on 2 ranks


class Mailbox:
    """A real SMTP server on loopback (aiosmtpd): what it received."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[str] = []
        self.arrived = threading.Condition()
        mailbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
                with mailbox.arrived:
                    mailbox.messages.append(envelope.content.decode("utf-8", "replace"))
                    mailbox.arrived.notify_all()
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def wait(self, fragment: str, timeout: float = 60) -> str:
        with self.arrived:
            self.arrived.wait_for(lambda: any(fragment in m for m in self.messages), timeout=timeout)
        found = [m for m in self.messages if fragment in m]
        assert found, f"no mail with {fragment!r} in {timeout} s: {self.messages}"
        return found[0]


class Hooks:
    """A real HTTP server on loopback that records the webhooks POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.hosts: list[str] = []  # each POST's Host header
        self.arrived = threading.Condition()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()
                with hooks.arrived:
                    hooks.hosts.append(self.headers["Host"])
                    hooks.bodies.append(body)
                    hooks.arrived.notify_all()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, fit_id: str, timeout: float = 60) -> list[dict]:
        with self.arrived:
            self.arrived.wait_for(lambda: any(b["fit"] == fit_id for b in self.bodies), timeout=timeout)
        return [b for b in self.bodies if b["fit"] == fit_id]


@pytest.fixture(scope="module")
def mailbox():
    box = Mailbox()
    yield box
    box.controller.stop()


@pytest.fixture(scope="module")
def hooks():
    receiver = Hooks()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def service(slurm_cluster, mailbox, hooks):
    """The shared service: Slurm backend, small upload limit, a mail server and allowed webhooks."""
    extra = (
        '[uploads]\nmax_mb = 4\n[limits]\nmax_ranks = 2\nmax_time = "00:10:00"\nmax_fits = 20\n'
        f'[mail]\nhost = "127.0.0.1"\nport = {mailbox.port}\n[webhooks]\nallowed_hosts = ["127.0.0.1"]\n'
    )
    running = Service("slurm", extra).start()
    yield running
    for fit in running.client("admin").get("/api/v1/fits").json():
        if fit["state"] in ("PENDING", "RUNNING"):
            running.client("admin").post(f"/api/v1/fits/{fit['id']}/cancel")
    running.close()


def job_dir_of(service: Service, fit_id: str) -> Path:
    return service.data / "fits" / fit_id / "job"


def fit_dirs(service: Service) -> list[str]:
    fits = service.data / "fits"
    return sorted(p.name for p in fits.iterdir()) if fits.is_dir() else []


# --- the API over the real Slurm backend ---------------------------------------------------------------


def test_a_fit_submitted_over_the_api_runs_on_slurm_to_the_same_results_as_the_cli(service, mailbox, hooks):
    alice = service.client("alice")
    answer = submit(alice, EXAMPLE, **SMALL, notify_email="alice@example.org", notify_webhook=hooks.url)
    assert answer.status_code == 201, answer.text
    fit = answer.json()
    assert fit["owner"] == "alice" and fit["job_id"] and fit["state"] == "PENDING"
    seen = follow(alice, fit["id"])
    states = [event["state"] for event in seen]
    assert states[-1] == "COMPLETED", seen
    assert any("progress" in event and event["progress"] for event in seen) or "RUNNING" in states

    done = alice.get(f"/api/v1/fits/{fit['id']}").json()
    from_cli = cli_json("results", job_dir_of(service, fit["id"]))
    assert done["chisq"] == from_cli["chisq"]
    assert done["parameters"] == from_cli["parameters"]
    assert done["sandbox"]["level"] == "require"
    assert "report.html" in done["files"] and len(done["figures"]) >= 5
    report = alice.get(f"/api/v1/fits/{fit['id']}/files/report.html")
    assert report.status_code == 200 and from_cli["chisq_str"] in report.text
    assert "attachment" in report.headers["content-disposition"]
    figure = alice.get(f"/api/v1/fits/{fit['id']}/files/figures/{done['figures'][0]}")
    assert figure.content.startswith(b"\x89PNG")

    mail = mailbox.wait(fit["id"])  # told once the fit ended, through the site's mail server
    assert "To: alice@example.org" in mail and "COMPLETED" in mail and service.url in mail
    hook = hooks.wait(fit["id"])
    assert len(hook) == 1 and hook[0]["state"] == "COMPLETED" and hook[0]["url"].startswith(service.url)
    assert hook[0]["chisq"] == pytest.approx(done["chisq"])
    job = job_dir_of(service, fit["id"])  # every user's models, data and results: no other account's
    for path in (service.data, service.data / "service.sqlite", job.parent, job, job / "result.json"):
        assert path.stat().st_mode & 0o077 == 0, (str(path), oct(path.stat().st_mode))
    log = f"slurm-{fit['job_id']}.out"  # the Slurm log, from the job's control directory
    assert log in done["files"] and alice.get(f"/api/v1/fits/{fit['id']}/files/{log}").status_code == 200


def test_cancel_over_the_api_and_delete(service):
    alice = service.client("alice")
    fit = submit(alice, SLOW, **SLOW_FIT).json()
    wait_for(alice, fit["id"], {"RUNNING", "PENDING"})
    assert alice.delete(f"/api/v1/fits/{fit['id']}").status_code == 409  # still running: cancel first
    with contextlib.ExitStack() as open_streams:  # one user's streams are limited; others' are not
        url = f"/api/v1/fits/{fit['id']}/events"
        for _ in range(8):
            assert open_streams.enter_context(alice.stream("GET", url)).status_code == 200
        refused = alice.get(url)
        assert refused.status_code == 429 and refused.headers["retry-after"], refused.text
        assert service.client("admin").get("/api/v1/me").status_code == 200

    def opens() -> int:
        with alice.stream("GET", url) as answer:
            return answer.status_code

    # closed: the service notices and counts them down
    wait_until(lambda: opens() != 429, "closed streams to be counted down", timeout=30, every=0.5)
    assert alice.post(f"/api/v1/fits/{fit['id']}/cancel").status_code == 202
    assert follow(alice, fit["id"])[-1]["state"] == "CANCELLED"
    assert alice.delete(f"/api/v1/fits/{fit['id']}").status_code == 204
    assert alice.get(f"/api/v1/fits/{fit['id']}").status_code == 404
    assert not (service.data / "fits" / fit["id"]).exists()
    assert fit["id"] not in [f["id"] for f in alice.get("/api/v1/fits").json()]


def test_a_failing_model_shows_its_traceback(service):
    alice = service.client("alice")
    fit = submit(alice, MODELS / "fails_in_fit.py", init="random", seed="3", samples="2000").json()
    assert follow(alice, fit["id"])[-1]["state"] == "FAILED"
    done = alice.get(f"/api/v1/fits/{fit['id']}").json()
    assert "Traceback" in done["error"]["traceback"] and done["error"]["message"]


def test_a_model_that_fails_its_check_is_refused_at_once(service):
    answer = submit(service.client("alice"), MODELS / "syntax_error.py")
    assert answer.status_code == 422 and "syntax_error.py: syntax error at line" in answer.json()["detail"]
    assert str(service.data) not in answer.text  # the service's own paths are its business
    assert all(f["name"] != "syntax_error" for f in service.client("alice").get("/api/v1/fits").json())


def test_a_file_of_the_services_host_named_as_an_argument_stays_closed_to_the_model(service):
    """The command line opens the files its user names as arguments to the model's sandbox; a user of the
    service naming the service's secret (or another fit's files) gets nothing of them."""
    secret = service.data / "secret"
    answer = submit(service.client("alice"), MODELS / "peak_file.py", args=json.dumps([str(secret)]))
    assert answer.status_code == 422 and "Permission denied" in answer.json()["detail"], answer.text
    assert all(f["name"] != "peak_file" for f in service.client("alice").get("/api/v1/fits").json())


def test_the_api_has_an_openapi_description_and_filters(service):
    schema = httpx.get(f"{service.url}/api/v1/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/v1/fits", "/api/v1/fits/{fit_id}", "/api/v1/fits/{fit_id}/events"):
        assert path in paths
    assert {"get", "post"} <= set(paths["/api/v1/fits"])
    alice = service.client("alice")
    if not alice.get("/api/v1/fits", params={"state": "COMPLETED"}).json():  # run alone: make one
        assert follow(alice, submit(alice, EXAMPLE, **SMALL).json()["id"])[-1]["state"] == "COMPLETED"
    everything = alice.get("/api/v1/fits").json()
    completed = alice.get("/api/v1/fits", params={"state": "COMPLETED"}).json()
    assert completed and [f["id"] for f in completed] == [
        f["id"] for f in everything if f["state"] == "COMPLETED"
    ]
    assert alice.get("/api/v1/fits", params={"state": "NO_SUCH"}).json() == []


# --- who may do what -----------------------------------------------------------------------------------


def test_requests_without_or_with_a_wrong_token_are_refused(service):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YTpi"}):
        answer = httpx.get(f"{service.url}/api/v1/fits", headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert httpx.get(f"{service.url}/", follow_redirects=False).headers["location"] == "/login"


def test_a_revoked_token_no_longer_works(service):
    token = service.token("carol")
    bearer = {"Authorization": f"Bearer {token}"}
    browser = httpx.Client(base_url=service.url, follow_redirects=False)
    assert browser.post("/login", data={"token": token}).status_code == 303
    assert browser.get("/api/v1/me").status_code == 200  # a session cookie from it
    assert httpx.get(f"{service.url}/api/v1/me", headers=bearer).status_code == 200
    done = subprocess.run(service.command("token", "revoke", "carol"), capture_output=True, env=service.env())
    assert done.returncode == 0
    assert httpx.get(f"{service.url}/api/v1/me", headers=bearer).status_code == 401
    assert browser.get("/api/v1/me").status_code == 401  # the sessions it opened end with it
    listed = subprocess.run(
        service.command("token", "list"), capture_output=True, text=True, env=service.env()
    )
    assert "carol" in listed.stdout and "revoked" in listed.stdout and token not in listed.stdout
    assert token not in (service.data / "service.sqlite").read_bytes().decode("latin-1")  # only its hash


def test_another_users_fit_does_not_exist_for_you_and_an_admin_sees_all(service):
    alice, bob, admin = service.client("alice"), service.client("bob"), service.client("admin")
    fit = submit(alice, EXAMPLE, **SMALL).json()
    for answer in (
        bob.get(f"/api/v1/fits/{fit['id']}"),
        bob.get(f"/api/v1/fits/{fit['id']}/events"),
        bob.get(f"/api/v1/fits/{fit['id']}/files/job.json"),
        bob.post(f"/api/v1/fits/{fit['id']}/cancel"),
        bob.delete(f"/api/v1/fits/{fit['id']}"),
    ):
        assert answer.status_code == 404, answer.text
    assert fit["id"] not in [f["id"] for f in bob.get("/api/v1/fits").json()]
    assert fit["id"] in [f["id"] for f in admin.get("/api/v1/fits").json()]
    assert admin.get(f"/api/v1/fits/{fit['id']}").status_code == 200
    assert follow(alice, fit["id"])[-1]["state"] == "COMPLETED"  # and bob changed nothing


def test_form_posts_need_their_csrf_token(service):
    browser = httpx.Client(base_url=service.url, follow_redirects=False)
    login = browser.post("/login", data={"token": service.tokens["alice"]})
    assert login.status_code == 303 and "bumps_session" in browser.cookies
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    fit = submit(service.client("alice"), SLOW, **SLOW_FIT).json()
    try:
        for csrf in (None, "0" * 64):
            data = {} if csrf is None else {"csrf": csrf}
            assert browser.post(f"/fits/{fit['id']}/cancel", data=data).status_code == 403
            assert browser.post(f"/api/v1/fits/{fit['id']}/cancel", data=data).status_code == 403
        assert browser.post("/submit", files={"model": ("m.py", b"x")}).status_code == 403
        assert not control_dir(job_dir_of(service, fit["id"])).joinpath("cancel-request").exists()
        assert service.client("alice").get(f"/api/v1/fits/{fit['id']}").json()["state"] in (
            "PENDING",
            "RUNNING",
        )
        me = browser.get("/api/v1/me").json()  # the page's own token works
        assert browser.post(f"/fits/{fit['id']}/cancel", data={"csrf": me["csrf"]}).status_code == 303
        assert follow(service.client("alice"), fit["id"])[-1]["state"] == "CANCELLED"
    finally:
        service.client("alice").post(f"/api/v1/fits/{fit['id']}/cancel")


def test_uploads_cannot_reach_outside_their_fit(service):
    alice = service.client("alice")
    before = fit_dirs(service)
    for name in ("../../escape.py", "/tmp/escape.py", "..", "a\\..\\b.py"):
        answer = alice.post("/api/v1/fits", files=[("model", (name, EXAMPLE.read_bytes()))])
        assert answer.status_code == 422, (name, answer.text)
    data = [("model", ("peak.py", EXAMPLE.read_bytes())), ("data", ("../../../escape.dat", b"1 2 3"))]
    assert alice.post("/api/v1/fits", files=data).status_code == 422
    clash = [("model", ("m.py", EXAMPLE.read_bytes())), ("data", ("m.py/d.txt", b"1"))]
    assert alice.post("/api/v1/fits", files=clash).status_code == 422  # a file and a folder of one name
    args = alice.post("/api/v1/fits", files=[("model", ("m.py", EXAMPLE.read_bytes()))], data={"args": "[1,"})
    assert args.status_code == 422 and "JSON list of strings" in args.json()["detail"]
    assert not list(service.base.rglob("escape*")) and not Path("/tmp/escape.py").exists()
    assert fit_dirs(service) == before  # nothing left behind


def test_the_estimate_is_refused_to_strangers_and_confines_what_it_runs(service):
    """POST /api/v1/estimate runs a stranger's model: no token, no CSRF, a name that climbs out are
    refused; a model that writes outside its upload while it is timed writes nothing; no scratch stays."""
    before = fit_dirs(service)
    model = [("model", ("peak.py", EXAMPLE.read_bytes()))]
    assert httpx.post(f"{service.url}/api/v1/estimate", files=model).status_code == 401
    browser = httpx.Client(base_url=service.url, follow_redirects=False)
    assert browser.post("/login", data={"token": service.tokens["alice"]}).status_code == 303
    assert browser.post("/api/v1/estimate", files=model).status_code == 403  # a session needs its CSRF
    alice = service.client("alice")
    climbing = [*model, ("data", ("../../../escape.dat", b"1 2 3"))]
    assert alice.post("/api/v1/estimate", files=climbing).status_code == 422
    planted = service.base / "planted-by-estimate"
    writer = f"open({str(planted)!r}, 'w').write('x')\n".encode() + EXAMPLE.read_bytes()
    alice.post("/api/v1/estimate", files=[("model", ("writer.py", writer))])
    assert not planted.exists() and not list(service.base.rglob("escape*"))
    assert alice.post("/api/v1/estimate", files=model).json()["estimate"]["evaluations"] > 0
    assert fit_dirs(service) == before  # the estimates' uploads are gone


def _zip(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries.items():
            zf.writestr(name, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # a symbolic link
            zf.writestr(info, target)
    return buffer.getvalue()


def test_zips_are_checked_entry_by_entry(service):
    alice = service.client("alice")
    peak = EXAMPLE.read_bytes()
    refused = {
        "a zip slip": _zip({"peak.py": peak, "../../slipped.py": b"print(1)"}),
        "an absolute entry": _zip({"peak.py": peak, "/tmp/slipped.py": b"print(1)"}),
        "a link": _zip({"peak.py": peak}, links={"data.txt": "/etc/shadow"}),
        "a zip bomb": _zip({"peak.py": peak, "zeros.dat": b"\0" * (150 << 20)}),
        "not a zip": b"PK\x03\x04 not really",
        "too many entries": _zip({"peak.py": peak, **{f"d/{i}.dat": b"" for i in range(60)}}),
    }
    for why, archive in refused.items():
        answer = alice.post("/api/v1/fits", files=[("archive", ("model.zip", archive))])
        assert answer.status_code == 422, (why, answer.text)
        assert answer.json()["detail"], why
    assert not list(service.base.rglob("slipped*")) and not Path("/tmp/slipped.py").exists()
    good = _zip({"peak.py": peak, "data/readme.txt": b"data beside the model"})
    answer = alice.post("/api/v1/fits", files=[("archive", ("model.zip", good))], data=SMALL)
    assert answer.status_code == 201, answer.text
    fit = answer.json()
    assert (service.data / "fits" / fit["id"] / "model" / "data" / "readme.txt").is_file()
    assert follow(alice, fit["id"])[-1]["state"] == "COMPLETED"


def test_oversized_uploads_are_refused_as_they_arrive(service):
    alice = service.client("alice")
    big = [("model", ("peak.py", EXAMPLE.read_bytes())), ("data", ("big.dat", b"0" * (6 << 20)))]
    answer = alice.post("/api/v1/fits", files=big)
    assert answer.status_code == 413 and "4 MB" in answer.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams
        yield b'--x\r\nContent-Disposition: form-data; name="model"; filename="m.py"\r\n\r\n'
        for _ in range(8):
            yield b"#" * (1 << 20)

    streamed = alice.post(
        "/api/v1/fits", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"}
    )
    assert streamed.status_code == 413


def test_limits_per_user_are_enforced(service):
    alice = service.client("alice")
    too_many = submit(alice, EXAMPLE, ntasks="3")
    assert too_many.status_code == 422 and "1 to 2 ranks" in too_many.json()["detail"]
    too_long = submit(alice, EXAMPLE, time="01:00:00")
    assert too_long.status_code == 422 and "00:10:00" in too_long.json()["detail"]
    hook = submit(alice, EXAMPLE, notify_webhook="http://10.0.0.1/steal")
    assert hook.status_code == 422 and "not one this service may call" in hook.json()["detail"]


def test_a_hostile_model_is_confined_and_the_service_goes_on(service, tmp_path):
    """The model runs as the service's own user, yet cannot read its database or secret, nor another fit."""
    alice = service.client("alice")
    victim = submit(alice, EXAMPLE, **SMALL).json()
    assert follow(alice, victim["id"])[-1]["state"] == "COMPLETED"
    victim_result = job_dir_of(service, victim["id"]) / "result.json"
    secret = service.data / "secret"
    settings = {
        "attacks": {
            "secret": str(secret),
            "other_result": str(victim_result),
            "other_checkpoint": str(job_dir_of(service, victim["id"]) / "job.json"),
            "home_file": str(Path(service.user.pw_dir) / "pwned"),
            "tmp_file": str(service.base / "pwned"),
            "port": service.port,
            "victim_pid": service.proc.pid,
            "huge_mb": 80,
        },
        "raise": False,
    }
    (tmp_path / "attacks.json").write_text(json.dumps(settings))
    files = [
        ("model", ("hostile.py", (MODELS / "hostile.py").read_bytes())),
        ("data", ("attacks.json", (tmp_path / "attacks.json").read_bytes())),
    ]
    fit = alice.post("/api/v1/fits", files=files, data={**SMALL, "args": "attacks.json"}).json()
    assert follow(alice, fit["id"])[-1]["state"] == "COMPLETED"
    outcomes = json.loads((job_dir_of(service, fit["id"]) / "attacks-out.json").read_text())
    assert all(outcome.startswith("blocked") for outcome in outcomes.values()), outcomes
    assert not (service.base / "pwned").exists() and not (Path(service.user.pw_dir) / "pwned").exists()
    assert (
        json.loads(victim_result.read_text())["chisq"]
        == alice.get(f"/api/v1/fits/{victim['id']}").json()["chisq"]
    )

    settings["raise"] = True  # the same attack, uncaught: the fit fails and says why
    (tmp_path / "attacks.json").write_text(json.dumps(settings))
    files[1] = ("data", ("attacks.json", (tmp_path / "attacks.json").read_bytes()))
    failed = alice.post("/api/v1/fits", files=files, data={**SMALL, "args": "attacks.json"}).json()
    assert follow(alice, failed["id"])[-1]["state"] == "FAILED"
    error = alice.get(f"/api/v1/fits/{failed['id']}").json()["error"]
    assert "PermissionError" in error["traceback"] or "Permission denied" in error["message"]
    assert service.proc.poll() is None and alice.get("/api/v1/me").status_code == 200


# --- the pages, in a real browser --------------------------------------------------------------------------


def _login(browser, service: Service, who: str = "alice") -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{service.url}/login")
    browser.find_element(By.NAME, "token").send_keys(service.tokens[who])
    browser.find_element(By.ID, "login").click()
    _until(browser, lambda: browser.current_url.rstrip("/") == service.url, "the list of fits after login")


_until = on_page  # the shared browser wait (service_helpers)


def _images_loaded(browser) -> list:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#figures img')).map(i => [i.complete, i.naturalWidth])"
    )


def test_the_pages_in_a_real_browser(service, tmp_path):
    """Log in, submit through the form, watch the progress bar move and the figures appear; cancel another."""
    from selenium.webdriver.common.by import By

    browser = chromium()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        _login(browser, service)
        browser.save_screenshot(str(shots / "1-fits.png"))
        browser.get(f"{service.url}/submit")
        browser.find_element(By.ID, "model").send_keys(str(SLOW))
        for field, value in SLOW_FIT.items():
            browser.find_element(By.ID, field).send_keys(value)
        browser.save_screenshot(str(shots / "2-submit.png"))
        browser.find_element(By.ID, "submit").click()
        _until(browser, lambda: "/fits/" in browser.current_url, "the fit's page after submitting")
        fit_id = browser.current_url.rsplit("/", 1)[1]

        values = []

        def moved() -> bool:
            value = browser.execute_script(
                "const p = document.getElementById('progress'); return p && p.value"
            )
            if value and (not values or value != values[-1]):
                values.append(value)
            return len(values) >= 2

        _until(browser, moved, "progress bar moving")
        assert values[-1] > values[0], values  # it moved on its own: no reload
        browser.save_screenshot(str(shots / "3-running.png"))
        _until(browser, lambda: len(_images_loaded(browser)) >= 5, "figures after the fit")
        _until(
            browser,
            lambda: all(done and width > 0 for done, width in _images_loaded(browser)),
            "loaded images",
        )
        assert browser.find_element(By.ID, "state").text == "COMPLETED"
        assert browser.find_element(By.ID, "chisq").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#parameters tbody tr")) == 4
        browser.save_screenshot(str(shots / "4-completed.png"))
        assert service.client("alice").get(f"/api/v1/fits/{fit_id}").json()["state"] == "COMPLETED"

        other = submit(service.client("alice"), SLOW, **SLOW_FIT).json()
        browser.get(f"{service.url}/fits/{other['id']}")
        browser.find_element(By.ID, "cancel").click()
        _until(browser, lambda: browser.find_element(By.ID, "state").text == "CANCELLED", "CANCELLED")
        browser.save_screenshot(str(shots / "5-cancelled.png"))

        browser.get(service.url)  # the list shows both, live
        rows = {
            r.get_attribute("data-fit") for r in browser.find_elements(By.CSS_SELECTOR, "#fits tr[data-fit]")
        }
        assert {fit_id, other["id"]} <= rows
        for shot in shots.iterdir():
            assert shot.stat().st_size > 5000
        print(f"screenshots of the pages: {shots}")
    finally:
        browser.quit()


def test_names_from_a_model_are_inert_in_the_pages(service, tmp_path):
    alice = service.client("alice")
    fit = submit(alice, MODELS / "hostile_names.py", **SMALL).json()
    assert follow(alice, fit["id"])[-1]["state"] == "COMPLETED"
    from selenium.webdriver.common.by import By

    browser = chromium()
    try:
        _login(browser, service)
        alerts = []
        browser.get(f"{service.url}/fits/{fit['id']}")
        scripts = browser.execute_script("return Array.from(document.scripts).map(s => s.src)")
        assert scripts == [f"{service.url}/static/app.js"], scripts
        assert not browser.find_elements(
            By.CSS_SELECTOR, "#parameters img, #parameters script, #parameters b"
        )
        names = [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#parameters tbody td:first-child")]
        assert '<script>alert("a")</script>' in names, names
        assert any("<img src=x onerror=alert(1)>" in name and "\x1b" not in name for name in names), names
        try:
            alerts.append(browser.switch_to.alert.text)
        except Exception:  # no alert: what must happen
            pass
        assert not alerts
        browser.get(f"{service.url}/fits/{fit['id']}/report.html")  # served under a sandboxing CSP
        assert not browser.execute_script("return document.querySelectorAll('script').length")
        browser.save_screenshot(str(tmp_path / "hostile-names.png"))
    finally:
        browser.quit()


def _zombies(pid: int) -> list[str]:
    """The children of *pid* that ended and were never waited for (a moment's grace for the reaper)."""
    deadline = time.monotonic() + 10
    while True:
        states = subprocess.run(
            ["ps", "--ppid", str(pid), "-o", "pid=,stat="], capture_output=True, text=True
        )
        found = [line for line in states.stdout.splitlines() if line.split()[1].startswith("Z")]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _fit_row(service: Service, fit_id: str) -> tuple:
    db = sqlite3.connect(f"file:{service.data / 'service.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT state, ended FROM fits WHERE id = ?", (fit_id,)).fetchone()
    finally:
        db.close()


def test_a_model_that_forges_its_records_and_plants_links_gains_nothing(mpiexec, tmp_path, services):
    """Its job directory is the model's to write: the service acts on its own records and serves no link."""
    local = services("local", "[limits]\nmax_ranks = 2\n")
    victim = subprocess.Popen([*as_user(local.user.pw_uid, local.user.pw_gid), "sleep", "600"])
    try:
        alice = local.client("alice")
        forge = {"victim": victim.pid, "secret": str(local.data / "secret")}
        files = [
            ("model", ("forger.py", (MODELS / "forger.py").read_bytes())),
            ("data", ("forge.json", json.dumps(forge).encode())),
            ("data", ("slow_peak.py", SLOW.read_bytes())),
        ]
        fit = alice.post(
            "/api/v1/fits", files=files, data={"samples": "400000", "args": "0.005 forge.json"}
        ).json()
        job = job_dir_of(local, fit["id"])
        wait_until((job / "export" / "evil.js").exists, "the model to plant its files", timeout=120)
        for _ in range(5):  # monitor rounds after the forgery: the forged state.json and local.json are in
            time.sleep(1)  # the job directory, where nothing reads them (the run's records are in its
            assert _fit_row(local, fit["id"]) == ("RUNNING", None)  # control directory): still RUNNING
        assert json.loads((control_dir(job) / "local.json").read_text())["state"] == "RUNNING"

        listed = alice.get(f"/api/v1/fits/{fit['id']}").json()["files"]
        assert "export/evil.svg" in listed
        for planted in ("export/stolen.txt", "slurm-1.out", "export/pipe.txt", "state.json"):
            assert planted not in listed
            assert alice.get(f"/api/v1/fits/{fit['id']}/files/{planted}").status_code == 404
        svg = alice.get(f"/api/v1/fits/{fit['id']}/files/export/evil.svg")
        assert svg.headers["content-type"] == "application/octet-stream"
        assert svg.headers["content-disposition"].startswith("attachment")
        assert svg.headers["content-security-policy"].startswith("sandbox")
        assert svg.headers["x-content-type-options"] == "nosniff"

        assert alice.post(f"/api/v1/fits/{fit['id']}/cancel").status_code == 202
        assert follow(alice, fit["id"])[-1]["state"] in ("CANCELLED", "FAILED")
        assert victim.poll() is None  # the process the model named is untouched
        left = subprocess.run(["pgrep", "-f", str(job)], capture_output=True, text=True).stdout.split()
        assert not left, left  # and the real ranks are gone, though ranks.json named someone else
        assert not _zombies(local.proc.pid)  # the ended supervisor was waited for
    finally:
        victim.kill()


def test_without_authentication_only_loopback_by_name_and_no_webhook_inside(mpiexec, services):
    open_one = services("local", settings='auth = "none"\n')
    me = httpx.get(f"{open_one.url}/api/v1/me")
    assert me.status_code == 200 and me.json()["name"] == "local"
    rebound = httpx.get(f"{open_one.url}/api/v1/me", headers={"Host": "attacker.example"})
    assert rebound.status_code == 401  # a page elsewhere whose name resolves here gets nothing
    client = httpx.Client(base_url=open_one.url)
    assert submit(client, EXAMPLE).status_code == 403  # a page elsewhere cannot post here either
    client.headers["X-CSRF-Token"] = me.json()["csrf"]
    for inside in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "http://10.1.2.3/"):
        answer = submit(client, EXAMPLE, notify_webhook=inside)
        assert answer.status_code == 422 and "own network" in answer.json()["detail"], answer.text


# --- restarts, idempotency, and a service that must not listen openly --------------------------------------


def test_a_restart_while_fits_run_and_one_is_being_submitted_loses_and_duplicates_nothing(
    slurm_cluster, tmp_path, services
):
    restarted = services("slurm", '[limits]\nmax_ranks = 2\nmax_time = "00:10:00"\n')
    alice = restarted.client("alice")
    running = submit(alice, SLOW, **SLOW_FIT, idempotency_key="run-1").json()
    wait_for(alice, running["id"], {"RUNNING"})
    slow_check = tmp_path / "slow_check.py"  # its model check takes 4 s: time to stop the service
    slow_check.write_text("import time\ntime.sleep(4)\n" + EXAMPLE.read_text())
    posting = threading.Thread(
        target=lambda: _quietly(
            lambda: submit(restarted.client("alice"), slow_check, **SMALL, idempotency_key="k-2")
        )
    )
    posting.start()
    wait_until(
        lambda: any(f["phase"] == "submitting" for f in alice.get("/api/v1/fits").json()),
        "the submission to show",
        timeout=60,
        every=0.1,
    )
    restarted.stop(signal_kill())  # the worst moment: mid-check, mid-fit, no goodbye
    posting.join()
    restarted.start()

    alice = restarted.client("alice")
    fits = alice.get("/api/v1/fits").json()
    assert len(fits) == 2, fits
    caught = [f for f in fits if f["id"] != running["id"]][0]
    assert caught["phase"] == "interrupted"
    again = submit(alice, slow_check, **SMALL, idempotency_key="k-2")  # the client retries, as told
    assert again.status_code == 201 and again.json()["id"] == caught["id"]
    twice = submit(alice, slow_check, **SMALL, idempotency_key="k-2")
    assert twice.status_code == 200 and twice.json()["id"] == caught["id"]
    assert submit(alice, SLOW, **SLOW_FIT, idempotency_key="run-1").json()["id"] == running["id"]
    assert follow(alice, running["id"])[-1]["state"] == "COMPLETED"
    assert follow(alice, caught["id"])[-1]["state"] == "COMPLETED"
    assert len(alice.get("/api/v1/fits").json()) == 2
    accounting = subprocess.run(
        ["sacct", "-a", "-n", "-X", "-o", "WorkDir%300", "-S", "now-1hour"],
        capture_output=True,
        text=True,
    )
    assert accounting.stdout.count(str(restarted.data / "fits" / caught["id"])) == 1  # sbatch'ed once


def _quietly(call) -> None:
    try:
        call()
    except httpx.HTTPError:
        pass  # the service went away mid-request: what this test does to it


def signal_kill() -> int:
    import signal

    return signal.SIGKILL


def test_a_local_run_outlives_a_restart_of_the_service(mpiexec, services):
    local = services("local", "[limits]\nmax_ranks = 2\n")
    alice = local.client("alice")
    fit = submit(alice, SLOW, **SLOW_FIT).json()
    wait_for(alice, fit["id"], {"RUNNING"})
    local.stop(signal_kill())
    local.start()
    assert follow(local.client("alice"), fit["id"])[-1]["state"] == "COMPLETED"
    assert len(local.client("alice").get("/api/v1/fits").json()) == 1


def test_failed_logins_are_rate_limited(services):
    limited = services("local")
    codes = [httpx.post(f"{limited.url}/login", data={"token": f"guess-{i}"}).status_code for i in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    right = httpx.post(f"{limited.url}/login", data={"token": limited.tokens["alice"]})
    assert right.status_code == 429  # even the right token waits: a guesser learns nothing


def test_a_trusted_proxy_names_the_user_and_no_one_else_can(services):
    """auth = "proxy": the user name from the proxy's header, believed only from the proxy's address."""
    proxied = services(
        "local", settings='auth = "proxy"\ntrusted_proxies = ["127.0.0.2"]\nadmins = ["boss"]\n'
    )
    proxy = httpx.Client(base_url=proxied.url, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
    me = proxy.get("/api/v1/me", headers={"X-Remote-User": "dana"})
    assert me.status_code == 200 and (me.json()["name"], me.json()["admin"]) == ("dana", False)
    assert proxy.get("/api/v1/me", headers={"X-Remote-User": "boss"}).json()["admin"] is True
    assert proxy.get("/api/v1/me").status_code == 401  # the proxy named no one
    spoofed = {"X-Remote-User": "boss", "X-Forwarded-For": "127.0.0.2", "X-Real-IP": "127.0.0.2"}
    assert httpx.get(f"{proxied.url}/api/v1/me", headers=spoofed).status_code == 401  # not the proxy
    token = {"Authorization": f"Bearer {proxied.tokens['alice']}"}
    assert httpx.get(f"{proxied.url}/api/v1/me", headers=token).status_code == 401  # proxy mode only


def test_the_service_refuses_to_listen_openly_without_authentication(tmp_path):
    config = tmp_path / "open.toml"
    config.write_text(f'[service]\nauth = "none"\ndata_dir = "{tmp_path}/data"\n')
    done = cli("serve", "--config", config, "--host", "0.0.0.0", timeout=60)
    one_line_error(done, "refuses to listen on 0.0.0.0 without authentication")
    bad = tmp_path / "bad.toml"
    bad.write_text("[service]\nbackend = 'cloud'\n")
    one_line_error(cli("serve", "--config", bad, timeout=60), "backend='cloud'")


def test_a_limit_answers_429_with_retry_after_and_a_bad_request_422(mpiexec, services):
    """A request refused only by a user's limit is fine in itself: 429 and when to try again (before: 422,
    like a broken model). The OpenAPI description says what is sent."""
    local = services("local", "[limits]\nmax_ranks = 2\nmax_fits = 1\n")
    alice = local.client("alice")
    first = submit(alice, SLOW, **SLOW_FIT).json()
    second = submit(alice, EXAMPLE, **SMALL)
    assert second.status_code == 429 and int(second.headers["retry-after"]) > 0, second.text
    assert "the most this service allows" in second.json()["detail"]
    assert submit(alice, EXAMPLE, ntasks="3").status_code == 422
    schema = httpx.get(f"{local.url}/api/v1/openapi.json").json()
    described = schema["paths"]["/api/v1/fits"]["post"]["responses"]
    assert {"200", "201", "422", "429"} <= set(described), described
    assert alice.post(f"/api/v1/fits/{first['id']}/cancel").status_code == 202


def test_a_webhook_is_posted_to_the_address_it_was_checked_at(monkeypatch, tmp_path):
    """One lookup per call: the address checked is the one connected to, with the Host header kept (a name
    that answers a public address to the check and 127.0.0.1 to the call would reach inside otherwise).
    Here the site allows the name, its first answer is the hooks' loopback address and every later one an
    address where nothing listens."""
    import socket as sockets

    from bumps_mpi.service import notify
    from bumps_mpi.service.settings import ServiceConfig

    hooks = Hooks()
    port = hooks.server.server_port
    real, asked = sockets.getaddrinfo, []

    def lookup(host, *args, **kwargs):
        if host != "hooks.example":
            return real(host, *args, **kwargs)
        asked.append(host)
        address = "127.0.0.1" if len(asked) == 1 else "127.0.0.2"
        return [(sockets.AF_INET, sockets.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(sockets, "getaddrinfo", lookup)
    config = ServiceConfig(data_dir=tmp_path)
    config.webhook_hosts = ["hooks.example"]
    fit = {"id": "f1", "name": "peak", "notify": json.dumps({"webhook": f"http://hooks.example:{port}/hook"})}
    assert notify.send(config, fit, {"state": "COMPLETED", "chisq": 1.0}) == []
    assert hooks.wait("f1") and hooks.hosts == [f"hooks.example:{port}"] and asked == ["hooks.example"]


def test_a_users_quota_of_kept_fits_is_a_clear_refusal(mpiexec, services):
    local = services("local", "[limits]\nmax_ranks = 2\nmax_kept = 1\n")
    alice = local.client("alice")
    first = submit(alice, EXAMPLE, **SMALL).json()
    assert follow(alice, first["id"])[-1]["state"] == "COMPLETED"
    refused = submit(alice, EXAMPLE, **SMALL)
    assert refused.status_code == 422 and "you keep 1 fits" in refused.json()["detail"], refused.text
    assert "delete some" in refused.json()["detail"]
    bob = local.client("bob")
    running = submit(bob, SLOW, **SLOW_FIT)  # bob's quota is his own
    assert running.status_code == 201, running.text
    wait_for(bob, running.json()["id"], {"RUNNING"})
    assert bob.delete(f"/api/v1/fits/{running.json()['id']}").status_code == 409  # a running local fit
    browser = httpx.Client(base_url=local.url, follow_redirects=False)  # deleted from its page
    assert browser.post("/login", data={"token": local.tokens["alice"]}).status_code == 303
    csrf = browser.get("/api/v1/me").json()["csrf"]
    assert browser.post(f"/fits/{first['id']}/delete", data={"csrf": csrf}).status_code == 303
    assert alice.get(f"/api/v1/fits/{first['id']}").status_code == 404
    assert not (local.data / "fits" / first["id"]).exists()
    assert submit(alice, EXAMPLE, **SMALL).status_code == 201
    assert bob.post(f"/api/v1/fits/{running.json()['id']}/cancel").status_code == 202

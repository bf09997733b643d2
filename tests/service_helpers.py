"""A real job controller for the tests: `bumps-submit serve` on a loopback port, as an ordinary user."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from conftest import as_user, wait_until

USER = "bumpsci"  # the service account (tests/test_sandbox.py makes it too)


def service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
        return pwd.getpwnam(USER)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """One service: its configuration, data directory, tokens and process; restartable."""

    def __init__(
        self, backend: str, extra: str = "", user: pwd.struct_passwd | None = None, settings: str = "",
        site: str = "",
    ):  # fmt: skip
        self.user = user or service_user()
        self.base = Path(tempfile.mkdtemp(prefix="bumps-service-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.base / "service.toml"
        self.config.write_text(
            f'[service]\ndata_dir = "{self.data}"\nport = {self.port}\nbackend = "{backend}"\npoll_s = 1\n'
            f'base_url = "{self.url}"\n{settings}{extra}'
        )
        self.site = self.base / "site.toml"
        self.site.write_text(f'[profiles.default]\ntime = "00:10:00"\nsandbox_max_file_mb = 64\n{site}')
        for path in (self.base, self.config, self.site):
            os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self.proc: subprocess.Popen | None = None
        self.log = self.base / "serve.log"
        self.tokens = {name: self.token(name, admin=name == "admin") for name in ("alice", "bob", "admin")}

    def env(self) -> dict[str, str]:
        keep = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("BUMPS_MPI_") or k == "BUMPS_MPI_REQUIRE_CLUSTER"
        }
        return {**keep, "HOME": self.user.pw_dir, "BUMPS_MPI_CONFIG": str(self.site), "PYTHONUNBUFFERED": "1"}

    def command(self, *args: str) -> list[str]:
        return [
            *as_user(self.user.pw_uid, self.user.pw_gid),
            sys.executable,
            "-m",
            "bumps_mpi",
            "serve",
            "--config",
            str(self.config),
            *args,
        ]

    def token(self, name: str, admin: bool = False) -> str:
        done = subprocess.run(
            self.command("token", "add", name, *(["--admin"] if admin else [])),
            capture_output=True, text=True, env=self.env(), check=True,
        )  # fmt: skip
        return done.stdout.strip()

    def start(self) -> Service:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/login", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service ended: {self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"the service did not answer in 60 s: {self.log.read_text()[-3000:]}")

    def stop(self, how: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(how)
            self.proc.wait(timeout=30)
        self.proc = None

    def client(self, who: str | None = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-f", str(self.base)], check=False)  # local runs, workers
        shutil.rmtree(self.base, ignore_errors=True)


class Worker:
    """`bumps-submit worker` for a service in dispatch mode, as the service's user; restartable."""

    def __init__(self, service: Service, name: str, *options: str):
        self.service, self.name, self.options = service, name, options
        self.state = service.base / f"worker-{name}"
        self.log = service.base / f"worker-{name}.log"
        made = subprocess.run(
            service.command("worker-token"), capture_output=True, text=True, env=service.env()
        )
        assert made.returncode == 0, made.stderr
        self.token = made.stdout.strip()
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        service = self.service
        command = [
            *as_user(service.user.pw_uid, service.user.pw_gid), sys.executable, "-m", "bumps_mpi", "worker",
            "--controller", service.url, "--name", self.name, "--state-dir", str(self.state),
            "--registration-token", self.token, *self.options,
        ]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=service.env())
        return self

    def kill(self, how: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(how)
            self.proc.wait(timeout=30)
        self.proc = None

    def said(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def submit(client: httpx.Client, model: Path, **fields: str) -> httpx.Response:
    """POST a model file (and data files) to the API, as a script would."""
    files = [("model", (model.name, model.read_bytes(), "text/x-python"))]
    for data in fields.pop("data", []):
        files.append(("data", (Path(data).name, Path(data).read_bytes(), "application/octet-stream")))
    headers = {"Idempotency-Key": fields.pop("idempotency_key")} if "idempotency_key" in fields else {}
    return client.post("/api/v1/fits", files=files, data=fields, headers=headers)


def follow(client: httpx.Client, fit_id: str, timeout: float = 300) -> list[dict]:
    """Read the fit's Server-Sent Events until `end`; every event's data."""
    seen: list[dict] = []
    with client.stream("GET", f"/api/v1/fits/{fit_id}/events", timeout=timeout) as events:
        name = None
        for line in events.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                if name == "end":
                    return seen
                seen.append(json.loads(line[6:]))
    return seen


def wait_for(client: httpx.Client, fit_id: str, states: set[str], timeout: float = 300) -> dict:
    seen: list[dict] = [{}]

    def reached() -> dict | None:
        seen[0] = fit = client.get(f"/api/v1/fits/{fit_id}").json()
        return fit if fit.get("state") in states else None

    return wait_until(reached, lambda: f"fit {fit_id} to reach {states}; last: {seen[0]}", timeout, every=0.5)


def on_page(browser, condition, what: str, timeout: float = 180) -> None:
    """Wait for *condition* in a browser; a page that reloads meanwhile (its elements gone) just means:
    not yet."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def holds() -> bool:
        try:
            return bool(condition())
        except (StaleElementReferenceException, NoSuchElementException):
            return False

    wait_until(holds, lambda: f"{what}; page: {browser.current_url}", timeout)

"""Shared fixtures: every test gets its own registry and site config; Slurm is real or absent.

With BUMPS_MPI_REQUIRE_CLUSTER=1 (set by `make test` and CI) a missing
cluster or MPI runtime fails the Slurm and MPI tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bumps_mpi.cluster.states import TERMINAL as TERMINAL_STATES
from bumps_mpi.sandbox import landlock

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "peak.py"
MODELS = Path(__file__).resolve().parent / "models"
MPI_TESTS = Path(__file__).resolve().parent / "mpi"  # in-process MPI tests: pytest-mpi, under mpiexec
REQUIRE = os.environ.get("BUMPS_MPI_REQUIRE_CLUSTER") == "1"
TERMINAL = {state.value for state in TERMINAL_STATES}
NOBODY = 65534  # the unprivileged user hostile-input tests run as (root ignores permissions)
# a small DREAM fit: 40 points a generation, 150 generations
SMALL_DREAM = ["--samples", "2000", "--burn", "100", "--seed", "7"]
# a fit whose random start reaches the failing region of the failing test models at once
FAILING_FIT = ["--init", "random", "--seed", "3", "--samples", "2000"]


def pytest_ignore_collect(collection_path, config):
    """tests/mpi/ runs in-process on every rank under mpiexec (pytest-mpi's --with-mpi, as `make test` does);
    a plain run leaves it out rather than skip it."""
    if collection_path == MPI_TESTS and not config.getoption("--with-mpi", default=False):
        return True
    return None


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """Under mpiexec with --with-mpi only rank 0 reports: every test there shares its verdict across ranks,
    and N copies of the same report, interleaved, would be hard to read."""
    if config.getoption("--with-mpi", default=False):
        from mpi4py import MPI

        if MPI.COMM_WORLD.rank != 0 and config.pluginmanager.has_plugin("terminalreporter"):
            config.pluginmanager.unregister(name="terminalreporter")


def unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (BUMPS_MPI_REQUIRE_CLUSTER=1: this must not be skipped)")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own registry, no user site file, bit-reproducible fits."""
    monkeypatch.setenv("BUMPS_MPI_REGISTRY", str(tmp_path / "registry.jsonl"))
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(tmp_path / "no-site.toml"))
    monkeypatch.setenv("NUMBA_DISABLE_JIT", "1")
    for key in list(os.environ):
        if key.startswith("BUMPS_MPI_") and key not in (
            "BUMPS_MPI_REGISTRY",
            "BUMPS_MPI_CONFIG",
            "BUMPS_MPI_REQUIRE_CLUSTER",
        ):
            monkeypatch.delenv(key)
    return tmp_path


def cli(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict | None = None,
    user: int | None = None,
) -> subprocess.CompletedProcess:
    """bumps-submit as a user runs it: a new process, its exit code, stdout and stderr.

    *user* runs it as that unprivileged uid (the test process must be root to switch).
    """
    prefix = [] if user is None else as_user(user)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "bumps_mpi", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=None if env is None else {**os.environ, **env},
    )


def as_user(uid: int, gid: int | None = None) -> list[str]:
    """A command prefix that runs what follows as *uid* (util-linux's setpriv), or a skip/failure."""
    import pwd

    if os.geteuid() != 0:
        unavailable("switching to an unprivileged user needs root")
    if gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert the bumps-submit contract for bad input: exit 1, one line 'bumps-submit: error: ...'."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bumps-submit: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def write_model(path: Path, prelude: str = "", body: str = "problem = FitProblem(model)\n") -> Path:
    """A copy of examples/peak.py with *prelude* code run first and *body* defining the problem."""
    text = EXAMPLE.read_text().replace("problem = FitProblem(model)\n", "")
    path.write_text(prelude + "\n" + text + "\n" + body)
    return path


def fake_job(
    job_dir: Path, state: str = "COMPLETED", result: bool = True, register: bool = True, **spec: object
) -> Path:
    """A finished local job directory written by hand (no MPI run): for tests of what reads one."""
    from bumps_mpi.jobdir import control_dir

    job_dir.mkdir(parents=True)
    control = control_dir(job_dir.resolve())
    control.mkdir(parents=True)
    now = time.time()
    request = json.dumps({"name": "fake", "model": str(EXAMPLE), "fit": "dream", "created": now, **spec})
    (control / "request.json").write_text(request)
    (job_dir / "job.json").write_text(request)
    (control / "local.json").write_text(
        json.dumps({"state": state, "exit_code": 0, "started": now - 5, "finished": now})
    )
    if result:
        parameter = {"name": "height", "best": 2.0, "mean": 2.0, "std": 0.1}
        (job_dir / "result.json").write_text(
            json.dumps(
                {
                    "fitter": "dream",
                    "chisq": 1.0,
                    "chisq_str": "1.0(1)",
                    "nllf": 40.0,
                    "elapsed_s": 1.0,
                    "parameters": [parameter],
                    "ranks": 2,
                }
            )
        )
    if register:
        from bumps_mpi.front import registry

        registry.add(
            {
                "job_id": spec.get("slurm", {}).get("job_id"),
                "job_dir": str(job_dir),
                "name": "fake",
                "submitted": now,
            }
        )
    return job_dir


def cli_json(*args: str, **kw) -> object:
    proc = cli(*args, "--json", **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def slurm_cluster():
    """The project's cluster (scripts/slurm-cluster start), with accounting answering."""
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        acct = subprocess.run(
            ["sacctmgr", "-n", "list", "cluster"], capture_output=True, text=True, timeout=30
        )
    except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
        unavailable(f"no Slurm here ({exc}); start it with scripts/slurm-cluster start")
    if ping.returncode != 0 or "UP" not in ping.stdout or acct.returncode != 0:
        unavailable("the Slurm test cluster is not running; start it with scripts/slurm-cluster start")
    return True


HOSTS = 3  # make test starts the cluster with SLURM_HOSTS=3: nodes h1..h3, partition `hosts`


@pytest.fixture(scope="session")
def hosts_cluster(slurm_cluster):
    """The cluster's several hosts (each node a network namespace: SLURM_HOSTS=3 scripts/slurm-cluster
    start): their names, every one up."""
    shown = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "hosts", "-o", "%N %t"], capture_output=True, text=True, timeout=30
    )
    nodes = dict(line.split() for line in shown.stdout.splitlines() if line.strip())
    if len(nodes) < HOSTS or any(s not in ("idle", "mix", "alloc") for s in nodes.values()):
        unavailable(
            f"the cluster has not {HOSTS} hosts up in partition 'hosts' ({nodes or shown.stderr.strip()}): "
            f"start it with SLURM_HOSTS={HOSTS} scripts/slurm-cluster start"
        )
    return sorted(nodes)


@pytest.fixture
def shared_dir():
    """A directory every host sees (the hosts have their own /tmp, as compute nodes do): the tests'
    'shared file system', under /var/tmp; removed afterwards."""
    made = Path(tempfile.mkdtemp(prefix="bumps-mpi-hosts-", dir="/var/tmp"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made, ignore_errors=True)


POSTGRES = "postgresql://postgres@127.0.0.1:54329"  # scripts/postgres-server's


@pytest.fixture(scope="session")
def postgres_server():
    """The project's PostgreSQL (scripts/postgres-server start); a function that makes a new database."""
    try:
        import psycopg
    except ImportError:
        unavailable("psycopg is not installed: pip install -e '.[test,service,postgres]'")
    try:
        psycopg.connect(f"{POSTGRES}/postgres", connect_timeout=10).close()
    except psycopg.Error as exc:
        unavailable(
            f"the PostgreSQL test server is not running ({exc}); start it: scripts/postgres-server start"
        )

    def new_database() -> str:
        name = f"bumps_{os.getpid()}_{time.monotonic_ns()}"
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return f"{POSTGRES}/{name}"

    return new_database


@pytest.fixture(scope="session")
def mpiexec():
    exe = Path(sys.executable).parent / "mpiexec"
    if not exe.exists():
        unavailable("no mpiexec beside this Python: pip install mpich")
    return str(exe)


def wait_until(condition, what="", timeout: float = 240, every: float = 0.2):
    """Poll *condition* every *every* seconds until it returns something true, and return that; fail
    naming *what* (text, or a function that says what was last seen) after *timeout* seconds. The one
    polling loop of the tests."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {(what() if callable(what) else what) or condition}")
        time.sleep(every)


@pytest.fixture
def services():
    """Start job controllers for one test: services(backend, extra, ...) is a started
    service_helpers.Service, closed (its processes killed, its files removed) when the test ends."""
    from service_helpers import Service

    started: list = []

    def start(*args, **kwargs):
        started.append(Service(*args, **kwargs).start())
        return started[-1]

    yield start
    for service in started:
        service.close()


def wait_for_state(
    job: str, states: set[str] = TERMINAL, timeout: float = 240, exit_known: bool = True
) -> dict:
    """Poll `status --json` (once a second) until the job reaches one of *states*; fail past *timeout*.

    A Slurm job that has ended is returned once its exit is known too (the script's own exit-status
    file, or accounting): the controller and the job directory may show the end a moment earlier.
    """
    seen: list[dict] = [{}]

    def reached() -> dict | None:
        seen[0] = record = cli_json("status", job)[0]
        waiting = exit_known and record["state"] in TERMINAL and record["job_id"] and record["exit"] is None
        return record if record["state"] in states and not waiting else None

    return wait_until(
        reached, lambda: f"job {job} to reach {sorted(states)}; last status: {seen[0]}", timeout, 1
    )


def serial_fit(model: Path, fit: str, options: dict, seed: int) -> dict:
    """The same fit with plain Bumps in one process (its default serial map): the reference."""
    import numpy as np
    from bumps import fitters
    from bumps.fitproblem import load_problem

    problem = load_problem(model)
    cls = next(c for c in fitters.FITTERS if c.id == fit)
    np.random.seed(seed)
    driver = fitters.FitDriver(cls, problem=problem, monitors=[], **options)
    x, _ = driver.fit()
    problem.setp(x)
    return {"best": [float(v) for v in x], "chisq": float(problem.chisq()), "labels": problem.labels()}


def sbatch_wrap(cwd: Path, command: str, *options: str) -> str:
    """A plain job straight through sbatch (not bumps-submit): a neighbour that preempts ours, or a victim."""
    return subprocess.run(
        ["sbatch", "--parsable", "-o", "/dev/null", *options, "--wrap", command],
        capture_output=True,
        text=True,
        check=True,
        cwd=cwd,
    ).stdout.strip()


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a file system that really fills up (mounting needs root)."""
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path) -> Path:
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (65536, 1):  # then the last few bytes too
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass
    return filler


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG from its IHDR chunk; fails the test if it is not a PNG."""
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", data[:16]
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


class ParsedPage:
    """A report parsed with the standard library's HTML parser: its tags, attributes and text."""

    def __init__(self, text: str):
        from html.parser import HTMLParser

        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        page = self

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                page.tags.append((tag, dict(attrs)))

            def handle_data(self, data):
                page.text.append(data)

        parser = Parser(convert_charrefs=True)
        parser.feed(text)
        parser.close()
        self.all_text = "".join(self.text)

    def elements(self, tag: str) -> list[dict]:
        return [attrs for name, attrs in self.tags if name == tag]


def check_figures_and_report(job_dir: Path, dream: bool = True) -> ParsedPage:
    """Every expected figure is a real PNG of sensible size; the report embeds them, names every parameter
    and the chi-square, and refers to nothing outside itself."""
    manifest = json.loads((job_dir / "figures" / "figures.json").read_text())
    files = {f["file"] for f in manifest["figures"]}
    expected = {"model0.png"} | (
        {"dream-vars.png", "dream-trace.png", "dream-logp.png", "dream-corr.png"} if dream else set()
    )
    assert expected <= files, (expected, files, manifest["problems"])
    for name in files:
        width, height = png_size((job_dir / "figures" / name).read_bytes())
        assert width >= 300 and height >= 200, (name, width, height)
    result = json.loads((job_dir / "result.json").read_text())
    page = ParsedPage((job_dir / "report.html").read_text())
    for parameter in result["parameters"]:
        assert parameter["name"] in page.all_text
    assert result["chisq_str"] in page.all_text
    images = page.elements("img")
    assert len(images) == len(files)
    import base64

    for image in images:
        assert image["src"].startswith("data:image/png;base64,")
        png_size(base64.b64decode(image["src"].split(",", 1)[1]))
    assert not page.elements("script") and not page.elements("link") and not page.elements("iframe")
    for _, attrs in page.tags:  # no address outside the file: nothing to fetch, nothing to leak
        for value in attrs.values():
            value = value or ""
            assert "http:" not in value and "https:" not in value and not value.startswith("//"), value[:80]
    return page


def chromium():
    """Debian's chromium and chromium-driver, driven by Selenium: nothing downloaded."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        unavailable("Debian's chromium and chromium-driver are not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, for the tests
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


SANDBOX_USER = "bumpsci"  # made by the test set-up: an ordinary account with a home directory


@pytest.fixture(scope="session")
def landlock_abi():
    abi = landlock.abi_version()
    if abi < 6:
        unavailable(f"this kernel offers Landlock ABI {abi}: the sandbox tests need 6 (files, TCP, scopes)")
    return abi


@pytest.fixture(scope="session")
def user():
    """An ordinary account (uid, gid, home), created once if missing: needs root, as CI is."""
    if os.geteuid() != 0:
        unavailable("creating the unprivileged test user needs root")
    try:
        entry = pwd.getpwnam(SANDBOX_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", SANDBOX_USER], check=True)
        entry = pwd.getpwnam(SANDBOX_USER)
    return entry

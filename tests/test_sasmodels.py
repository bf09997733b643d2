"""Real users' sasmodels fits (issue 22): the model written as sasmodels' own examples write it
(`load_model("ellipsoid@hayter_msa")`, the data file from sys.argv[1]), from an account whose home has
never seen sasmodels, confined by the default sandbox and by `require`: locally, as a Slurm campaign over
five files, and through the job controller. Before the library cache, the model check failed with
"Permission denied: '<home>/.sasmodels'" and nothing ran.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT, SMALL_DREAM, ParsedPage, as_user, cli, one_line_error, wait_until

from bumps_mpi.sandbox.policy import mpi_environment

EXAMPLE = ROOT / "examples" / "sasmodels"
PROGRAMS = Path(__file__).parent / "mpi_programs"
MODEL = EXAMPLE / "model.py"
CACHED = Path(".cache", "bumps-mpi", "sasmodels", "compiled_models")


class Account:
    """A fresh account's place: its home (nothing of sasmodels in it), the data, its site profile."""

    def __init__(self, user, sandbox: str = "best-effort", count: int = 5):
        self.user, self.level = user, sandbox
        self.base = Path(tempfile.mkdtemp(prefix="bumps-sas-"))
        self.home, self.data, self.jobs = self.base / "home", self.base / "data", self.base / "jobs"
        self.home.mkdir()
        simulate(self.data, count)
        (self.base / "site.toml").write_text(f"[profiles.default]\nsandbox = '{sandbox}'\n")
        for path in (self.base, *self.base.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.base.chmod(0o755)

    def env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "BUMPS_MPI_REGISTRY": str(self.base / "registry.jsonl"),
            "BUMPS_MPI_CONFIG": str(self.base / "site.toml"),
        }

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return cli(*args, env=self.env(), user=self.user.pw_uid, timeout=timeout)

    def kernels(self) -> list[Path]:
        folder = self.home / CACHED
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


def simulate(where: Path, count: int) -> list[Path]:
    """The example's own data: *count* curves (its compiler cache in a scratch home, not root's)."""
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(
            [sys.executable, EXAMPLE / "simulate.py", where, str(count)],
            check=True, env={**os.environ, "SAS_DLL_PATH": scratch},
        )  # fmt: skip
    return sorted(where.glob("*.dat"))


@pytest.fixture
def account(user, landlock_abi, mpiexec, request):
    made = Account(user, getattr(request, "param", "best-effort"))
    yield made
    made.close()


@pytest.mark.mpi_launch
@pytest.mark.parametrize("account", ["best-effort", "require"], indirect=True)
def test_a_sasmodels_fit_runs_confined_from_a_fresh_home_and_the_next_reuses_its_kernel(account):
    data = str(account.data / "T30.dat")
    first = account.cli("submit", MODEL, *SMALL_DREAM, "--local", "-n", "2", "--jobs-dir", account.jobs,
                        "--json", "--", data)  # fmt: skip
    assert first.returncode == 0, first.stderr
    job = json.loads(first.stdout)["job_dir"]
    assert json.loads(account.cli("status", job, "--json").stdout)[0]["state"] == "COMPLETED"
    found = json.loads(account.cli("results", job, "--json").stdout)
    assert found["chisq"] < 3 and found["failed_evaluations"] == 0, found
    best = {p["name"]: p["best"] for p in found["parameters"]}
    assert abs(best["radius_equatorial"] - 48) < 3 and abs(best["radius_polar"] - 20) < 3, best
    kernels = account.kernels()  # compiled once, into the user's cache; nothing under ~/.sasmodels
    assert [k.name.split("_")[3] for k in kernels] == ["ellipsoid", "hayter"], kernels  # the product's two
    assert all(k.suffix == ".so" for k in kernels) and not (account.home / ".sasmodels").exists()
    cache = account.home / ".cache" / "bumps-mpi"
    assert cache.stat().st_mode & 0o077 == 0  # the user's own
    assert found["sandbox"]["level"] == account.level and found["sandbox"]["opened"] == [str(cache)]
    shown = account.cli("results", job).stdout
    assert f"writable besides the job: {cache}" in shown, shown

    before = [(k.stat().st_ino, k.stat().st_mtime_ns) for k in kernels]
    again = account.cli("submit", MODEL, *SMALL_DREAM, "--local", "-n", "2", "--jobs-dir", account.jobs,
                        "--json", "--", str(account.data / "T40.dat"))  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert account.kernels() == kernels  # the same kernel, not compiled again
    assert [(k.stat().st_ino, k.stat().st_mtime_ns) for k in kernels] == before


def test_a_refused_write_is_named_with_the_option_that_opens_it(account):
    """A library that writes where the sandbox does not let it: the check's one line names the path and
    --write; opened with --write, the model checks, and the request records what was opened."""
    models = account.base / "models"
    models.mkdir()
    wanted = account.home / ".mylib"
    (models / "writes_home.py").write_text(
        (EXAMPLE.parents[0] / "peak.py")
        .read_text()
        .replace(
            "from bumps.names import",
            f"open({str(wanted / 'state')!r}, 'w').write('x')\nfrom bumps.names import",
        )
    )
    os.chown(models, account.user.pw_uid, account.user.pw_gid)
    os.chown(models / "writes_home.py", account.user.pw_uid, account.user.pw_gid)
    wanted.mkdir()
    os.chown(wanted, account.user.pw_uid, account.user.pw_gid)
    refused = account.cli("submit", models / "writes_home.py", "--dry-run", "--jobs-dir", account.jobs)
    assert refused.returncode != 0 and not account.jobs.exists()
    line = one_line_error(refused, str(wanted / "state"), "--write")
    assert "Permission denied" in line
    opened = account.cli(
        "submit",
        models / "writes_home.py",
        "--dry-run",
        "--json",
        "--write",
        wanted,
        "--jobs-dir",
        account.jobs,
    )
    assert opened.returncode == 0, opened.stderr
    assert json.loads(opened.stdout)["spec"]["sandbox"]["write"] == [str(wanted)]
    assert (wanted / "state").read_text() == "x"
    for unsafe in (account.home, account.home / ".config"):  # what unconfined programs read: refused
        (account.home / ".config").mkdir(exist_ok=True)
        refused = account.cli(
            "submit", models / "writes_home.py", "--dry-run", "--jobs-dir", account.jobs, "--write", unsafe
        )
        one_line_error(refused, str(unsafe), "a directory of its own")


def test_four_ranks_compiling_the_same_kernel_into_a_cold_cache_at_once(mpiexec, landlock_abi, tmp_path):
    """Each rank compiles (the cache is cold for all) and renames its library into place: no rank loads
    another's half-written file, and the cache holds the two libraries whole, with no partial left."""
    cache, own = tmp_path / "cache", tmp_path / "own"
    own.mkdir()
    ran = subprocess.run(
        [mpiexec, "-n", "4", sys.executable, "-m", "mpi4py", PROGRAMS / "sas_cold_cache.py", cache, own],
        capture_output=True, text=True, timeout=300, env={**os.environ, **mpi_environment(1)},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    ranks = json.loads((own / "ranks.json").read_text())
    assert sorted(r["rank"] for r in ranks) == [0, 1, 2, 3]
    assert all(r["values"] == ranks[0]["values"] and min(r["values"]) > 0 for r in ranks)
    assert all("bumps_mpi.sandbox.atomic_cc" in r["cc"] for r in ranks)
    made = sorted(p.name for p in (cache / "sasmodels" / "compiled_models").iterdir())
    assert len(made) == 2 and all(name.endswith(".so") for name in made), made


def test_the_compiler_wrapper_renames_only_a_whole_library(tmp_path, monkeypatch):
    """atomic_cc: the target appears only once the compiler succeeded; a failed compile leaves nothing."""
    from bumps_mpi.sandbox import atomic_cc

    source = tmp_path / "k.c"
    source.write_text("double twice(double x) { return 2 * x; }\n")
    target = tmp_path / "k.so"
    assert atomic_cc.main(["-shared", "-fPIC", str(source), "-o", str(target)]) == 0
    assert target.stat().st_size > 0 and sorted(p.name for p in tmp_path.iterdir()) == ["k.c", "k.so"]
    source.write_text("this is not C\n")
    broken = tmp_path / "broken.so"
    assert atomic_cc.main(["-shared", "-fPIC", str(source), "-o", str(broken)]) != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.c", "k.so"]
    monkeypatch.setenv("BUMPS_MPI_CC", "false")  # the user's own CC is the one run
    assert atomic_cc.main(["-o", str(tmp_path / "x.so")]) != 0


@pytest.mark.slurm
def test_a_sasmodels_campaign_over_five_files_on_slurm_from_a_fresh_account(account, slurm_cluster):
    """One command, default sandbox: five fits as a job array, each COMPLETED; the kernel compiled once
    (by the model check, which warms the user's cache for the ranks); the campaign's table."""
    done = account.cli(
        "submit", MODEL, *SMALL_DREAM, "--ntasks", "1", "--each", str(account.data / "*.dat"),
        "--jobs-dir", account.jobs, "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    campaign = json.loads(done.stdout)
    assert campaign["fits"] == 5

    def ended() -> dict | None:
        summary = json.loads(account.cli("status", campaign["campaign_id"], "--json").stdout)
        return (
            summary if summary["ended"] and all(r["exit"] is not None for r in summary["records"]) else None
        )

    summary = wait_until(ended, "the campaign's five fits to end", timeout=400, every=1)
    assert summary["counts"] == {"COMPLETED": 5}, summary
    table = json.loads(account.cli("results", campaign["campaign_dir"], "--json").stdout)
    found = [row["parameters"]["radius_equatorial"]["best"] for row in table]
    assert [round(r / 4) for r in found] == [10, 11, 12, 13, 14], found  # simulated: 40, 44, ... 56
    assert len(account.kernels()) == 2  # one compile per library, for five fits

    # the campaign's report: each parameter across the series at its temperature, chi-square, the table
    shown = account.cli("results", campaign["campaign_dir"])
    report = Path(campaign["campaign_dir"]) / "report.html"
    assert shown.returncode == 0 and f"report: {report}" in shown.stdout, shown.stderr
    page = ParsedPage(report.read_text())
    captions = [img["alt"] for img in page.elements("img")]
    assert captions == [*table[0]["parameters"], "chi-square of every fit"], captions
    assert "placed at the number in its label" in page.all_text  # T20.dat ... T40.dat: a numeric axis
    links = [a["href"] for a in page.elements("a")]
    assert links == [f"fits/{i}/report.html" for i in range(5)], links
    drawn = account.cli("plot", campaign["campaign_id"], "--format", "svg", "--json")
    figures = json.loads(drawn.stdout)["figures"]
    assert len(figures) == 5 and all(Path(f).read_text().lstrip().startswith("<?xml") for f in figures)


@pytest.mark.mpi_launch
def test_sasmodels_fits_through_the_job_controller_each_user_with_a_cache_of_their_own(landlock_abi, mpiexec):
    """The service (sandbox `require`): alice's and bob's sasmodels fits complete, each user's kernels
    in a cache of their own under the service's data, never in the service account's home."""
    from service_helpers import Service, follow, submit

    from bumps_mpi.service.caches import cache_key, user_cache

    service = Service("local", "[limits]\nmax_ranks = 2\n").start()
    try:
        data = simulate(service.base / "data", 1)[0]
        for who in ("alice", "bob"):
            client = service.client(who)
            fit = submit(client, MODEL, data=[data], samples="2000", burn="100", seed="7", args=data.name)
            assert fit.status_code == 201, fit.text
            assert follow(client, fit.json()["id"])[-1]["state"] == "COMPLETED"
            shown = client.get(f"/api/v1/fits/{fit.json()['id']}").json()
            assert shown["failed_evaluations"] == 0 and shown["chisq"] < 3, shown
        caches = [
            user_cache(service.data, cache_key(who)) / "sasmodels" / "compiled_models"
            for who in ("alice", "bob")
        ]
        assert caches[0] != caches[1]
        assert [len(list(c.glob("*.so"))) for c in caches] == [2, 2]
        assert not (Path(service.user.pw_dir) / ".sasmodels").exists()
    finally:
        service.close()


def test_a_cache_the_account_cannot_make_is_a_note_not_a_failure(user, landlock_abi):
    """A home the job cannot write (a service account's, a read-only one): the libraries compile into the
    job's own directory, and what happened is said where the sandbox is described."""
    base = Path(tempfile.mkdtemp(prefix="bumps-sas-"))
    base.chmod(0o755)
    own = base / "own"
    own.mkdir()
    os.chown(own, user.pw_uid, user.pw_gid)
    code = (
        "import json, os; from pathlib import Path; from bumps_mpi.sandbox import policy as p; "
        "e = p.apply(p.Policy(level='best-effort', read=[*p.python_paths(), *p.SYSTEM_READ], "
        f"cache='/root/.cache/bumps-mpi-test'), Path({str(own)!r})); "
        "print(json.dumps([e, os.environ['SAS_DLL_PATH'], p.describe(e)]))"
    )
    try:
        ran = subprocess.run([*as_user(user.pw_uid, user.pw_gid), sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert ran.returncode == 0, ran.stderr
    enforced, where, described = json.loads(ran.stdout)
    assert enforced["cache"] is None and enforced["opened"] == [] and where.startswith(str(own / "tmp"))
    assert "library cache /root/.cache/bumps-mpi-test: Permission denied" in described

"""The sandbox against hostile models, run for real as an unprivileged user (root ignores permissions
and rlimits): each attack is blocked and the job's own files stay intact with the sandbox on; the same
attacks succeed with it off, which shows each check can fail. Local MPI and Slurm alike."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import EXAMPLE, MODELS, SMALL_DREAM, as_user, cli, cli_json, unavailable, wait_until

from bumps_mpi.sandbox import landlock
from bumps_mpi.sandbox import policy as sandbox

HOSTILE = MODELS / "hostile.py"
BLOCKED = {
    "read the secret in the home directory": "EACCES",
    "read another job's result.json": "EACCES",
    "overwrite another job's checkpoint": "EACCES",
    "write to the home directory": "EACCES",
    "write to /tmp outside the job": "EACCES",
    "follow a symlink out of the job directory": "EACCES",
    "connect to a TCP port": "EACCES",
    "bind a TCP port": "EACCES",
    "signal a process outside the job": "EPERM",
    "write a huge file": "EFBIG",
}


class World:
    """Everything a hostile model might go after, owned by the test user, and the job's place."""

    def __init__(self, user):
        self.user = user
        self.base = Path(tempfile.mkdtemp(prefix="bumps-sandbox-"))
        self.home = Path(user.pw_dir)
        self.secret = self.home / ".ssh" / "id_bumps_test"
        self.home_file = self.home / f"bumps-pwned-{self.base.name}"
        self.tmp_file = Path("/tmp") / f"bumps-pwned-{self.base.name}"
        self.models = self.base / "models"
        self.other = self.base / "other-job"
        self.jobs = self.base / "jobs"
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.victim = subprocess.Popen([*as_user(user.pw_uid, user.pw_gid), "sleep", "600"])
        self.secret.parent.mkdir(mode=0o700, exist_ok=True)
        self.secret.write_text("PRIVATE KEY")
        self.models.mkdir()
        shutil.copy(HOSTILE, self.models / "hostile.py")
        self.other.mkdir()
        (self.other / "result.json").write_text('{"chisq": 1.0}')
        (self.other / "checkpoint.h5").write_bytes(b"precious checkpoint")
        (self.base / "site.toml").write_text("[profiles.default]\nsandbox_max_file_mb = 64\n")
        for path in (self.base, self.secret.parent, self.secret, *self.base.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.base.chmod(0o755)

    def settings(self, raise_: bool = False, at_import: bool = False) -> str:
        attacks = {
            "secret": str(self.secret),
            "other_result": str(self.other / "result.json"),
            "other_checkpoint": str(self.other / "checkpoint.h5"),
            "home_file": str(self.home_file),
            "tmp_file": str(self.tmp_file),
            "port": self.listener.getsockname()[1],
            "victim_pid": self.victim.pid,
            "huge_mb": 80,
        }
        path = self.models / "attacks.json"
        path.write_text(json.dumps({"attacks": attacks, "raise": raise_, "at_import": at_import}))
        os.chown(path, self.user.pw_uid, self.user.pw_gid)
        return path.name

    def env(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "BUMPS_MPI_REGISTRY": str(self.base / "registry.jsonl"),
            "BUMPS_MPI_CONFIG": str(self.base / "site.toml"),
        }

    def submit(self, *args: str, settings: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return cli(
            "submit",
            self.models / "hostile.py",
            *SMALL_DREAM,
            "--jobs-dir",
            self.jobs,
            "--json",
            *args,
            "--",
            settings,
            env=self.env(),
            user=self.user.pw_uid,
            timeout=timeout,
        )

    def untouched(self) -> None:
        assert (self.other / "result.json").read_text() == '{"chisq": 1.0}'
        assert (self.other / "checkpoint.h5").read_bytes() == b"precious checkpoint"
        assert not self.home_file.exists() and not self.tmp_file.exists()
        assert self.victim.poll() is None, "the process outside the job was signalled"

    def close(self) -> None:
        self.victim.kill()
        self.victim.wait()
        self.listener.close()
        for path in (self.home_file, self.tmp_file):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def world(user, landlock_abi, mpiexec):
    made = World(user)
    yield made
    made.close()


def outcomes(job_dir: Path) -> dict[str, str]:
    return json.loads((job_dir / "attacks-out.json").read_text())


@pytest.mark.mpi_launch
def test_every_attack_is_blocked_in_a_local_job_and_the_job_still_fits(world):
    done = world.submit("--local", "-n", "2", settings=world.settings())
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    job_dir = Path(record["job_dir"])
    assert record["state"] == "COMPLETED", record
    assert outcomes(job_dir) == {name: f"blocked: {errno}" for name, errno in BLOCKED.items()}
    world.untouched()
    found = json.loads(cli("results", job_dir, "--json", env=world.env(), user=world.user.pw_uid).stdout)
    assert found["sandbox"]["abi"] >= 6 and found["sandbox"]["network"] == "no TCP bind or connect"
    assert str(job_dir) in found["sandbox"]["write"] and str(world.home) not in found["sandbox"]["read"]
    assert "sandbox" in (job_dir / "report.html").read_text()


@pytest.mark.mpi_launch
def test_the_same_attacks_succeed_with_the_sandbox_off(world):
    """Each check above can fail: without the sandbox, every attack gets through."""
    done = world.submit("--local", "-n", "2", "--sandbox", "off", settings=world.settings())
    assert done.returncode == 0, done.stderr
    job_dir = Path(json.loads(done.stdout)["job_dir"])
    assert outcomes(job_dir) == dict.fromkeys(BLOCKED, "done")
    assert (world.other / "checkpoint.h5").read_bytes() == b"spoiled" and world.home_file.exists()
    assert world.victim.wait(timeout=10) == -signal.SIGUSR1


@pytest.mark.mpi_launch
def test_a_blocked_attack_that_is_not_caught_is_reported_clearly(world):
    done = world.submit("--local", "-n", "2", settings=world.settings(raise_=True))
    assert done.returncode == 1
    record = json.loads(done.stdout)
    assert record["state"] == "FAILED"
    message = record["error"]["message"]
    assert "PermissionError" in message and str(world.secret) in message and "rank 0" in message, message
    world.untouched()


def test_the_login_node_check_is_confined_too(world):
    """The attack at import: submit refuses in one line, and nothing is written."""
    done = world.submit("--local", settings=world.settings(at_import=True), timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "PermissionError" in done.stderr and str(world.secret) in done.stderr
    assert not world.jobs.exists()


@pytest.mark.slurm
def test_every_attack_is_blocked_under_slurm(world, slurm_cluster):
    done = world.submit("--time", "5", settings=world.settings())
    assert done.returncode == 0, done.stderr
    submitted = json.loads(done.stdout)

    def ended() -> dict | None:
        shown = cli("status", submitted["job_id"], "--json", env=world.env(), user=world.user.pw_uid)
        record = json.loads(shown.stdout)[0]
        return record if record["state"] not in ("PENDING", "RUNNING") else None

    record = wait_until(ended, "the job to end", timeout=240, every=1)
    assert record["state"] == "COMPLETED", record
    assert outcomes(Path(submitted["job_dir"])) == {name: f"blocked: {e}" for name, e in BLOCKED.items()}
    world.untouched()


@pytest.mark.mpi_launch
@pytest.mark.parametrize("ranks", [2, 3])
def test_fits_under_the_sandbox_are_bit_identical(isolated, mpiexec, landlock_abi, ranks):
    runs = {}
    for level in ("off", "best-effort"):
        record = cli_json(
            "submit",
            EXAMPLE,
            "--local",
            "-n",
            str(ranks),
            *SMALL_DREAM,
            "--sandbox",
            level,
            "--jobs-dir",
            isolated / level,
        )
        assert record["state"] == "COMPLETED", record
        runs[level] = cli_json("results", record["job_dir"])
    assert runs["best-effort"]["sandbox"]["abi"] >= 6 and runs["off"]["sandbox"] == {"level": "off"}
    assert [p["best"] for p in runs["off"]["parameters"]] == [
        p["best"] for p in runs["best-effort"]["parameters"]
    ]
    assert runs["off"]["chisq"] == runs["best-effort"]["chisq"]


def test_require_refuses_a_kernel_without_what_it_needs(monkeypatch, tmp_path):
    """A kernel older than the sandbox needs, for `require`: one line naming the ABI; nothing applied."""
    monkeypatch.setattr(landlock, "abi_version", lambda: 3)
    with pytest.raises(sandbox.SandboxError, match=r"offers Landlock ABI 3, and the sandbox needs ABI 6"):
        sandbox.apply(sandbox.Policy(level="require"), tmp_path)
    assert not (tmp_path / "tmp").exists()


def test_an_unknown_level_is_refused(isolated):
    proc = cli("submit", EXAMPLE, "--dry-run", env={"BUMPS_MPI_SANDBOX": "strict"})
    assert (
        proc.returncode == 1
        and "sandbox (from environment variable BUMPS_MPI_SANDBOX)='strict'" in proc.stderr
    )


def test_the_apparmor_profile_parses(isolated, tmp_path):
    """For sites that want the old design's outer layer: the printed profile is valid AppArmor."""
    parser = shutil.which("apparmor_parser")
    if parser is None:
        unavailable("Debian's apparmor package is not installed (make test installs it)")
    profile = tmp_path / "bumps-mpi-job"
    shown = cli("sandbox", "apparmor-profile", "--jobs-root", tmp_path / "jobs")
    assert shown.returncode == 0, shown.stderr
    profile.write_text(shown.stdout)
    checked = subprocess.run([parser, "-Q", "-K", str(profile)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert f'"{tmp_path / "jobs"}/**" rwkl,' in shown.stdout and "deny @{HOME}/.ssh/** rwlkm," in shown.stdout
    profile.write_text(shown.stdout.replace(" mrix,", " mrix"))  # the parser does refuse a broken one
    assert subprocess.run([parser, "-Q", "-K", str(profile)], capture_output=True).returncode != 0


def test_numbas_compiled_code_is_copied_into_the_sandboxs_own_cache(tmp_path, monkeypatch):
    """Confined, numba cannot write beside the package: a private copy of its cache avoids compiling
    everything again in every job (refl1d: seconds per rank), in numba's NUMBA_CACHE_DIR layout."""
    import hashlib
    import importlib.util

    site = tmp_path / "site-packages"
    cached = site / "pkg" / "lib" / "__pycache__"
    cached.mkdir(parents=True)
    for name in ("kernel.f-12.py311.nbi", "kernel.f-12.py311.1.nbc", "other.pyc"):
        (cached / name).write_bytes(name.encode())
    monkeypatch.setattr(sys, "path", [str(site)])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "numba" else real(name))
    sandbox._seed_numba_cache(tmp_path / "cache")
    source_dir = str(site / "pkg" / "lib")
    target = tmp_path / "cache" / f"lib_{hashlib.sha1(source_dir.encode()).hexdigest()}"
    assert sorted(p.name for p in target.iterdir()) == ["kernel.f-12.py311.1.nbc", "kernel.f-12.py311.nbi"]


@pytest.mark.mpi_launch
def test_names_that_are_escapes_and_markup_stay_text_for_a_confined_job(world):
    """The terminal and the report are attack surfaces too: the hostile names, confined, as the user."""
    shutil.copy(MODELS / "hostile_names.py", world.models / "hostile_names.py")
    os.chown(world.models / "hostile_names.py", world.user.pw_uid, world.user.pw_gid)
    as_them = {"env": world.env(), "user": world.user.pw_uid}
    done = cli(
        "submit",
        world.models / "hostile_names.py",
        "--local",
        "--samples",
        "2000",
        "--name",
        "names",
        "--jobs-dir",
        world.jobs,
        "--json",
        **as_them,
    )
    assert done.returncode == 0, done.stderr
    job_dir = json.loads(done.stdout)["job_dir"]
    for command in ("status", "results"):
        shown = cli(command, job_dir, **as_them)
        assert shown.returncode == 0 and "\x1b" not in shown.stdout + shown.stderr, command
    page = (Path(job_dir) / "report.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page


@pytest.mark.mpi_launch
def test_data_the_model_was_not_given_opens_only_with_read_or_sandbox_read(world):
    """A model that reads data from elsewhere is refused it (one line, naming the path) until the user
    names it with --read or the profile's sandbox_read; a model kept in the home directory itself gets
    only its own file, not its neighbours."""
    beamtime = world.base / "beamtime"
    beamtime.mkdir()
    data = beamtime / "run42.dat"
    shutil.copy(EXAMPLE.parent / "data" / sorted(os.listdir(EXAMPLE.parent / "data"))[0], data)
    for name in ("data_beside.py", "peak_file.py"):
        shutil.copy(MODELS / name, world.models / name)
    (world.models / "where.txt").write_text(str(data))
    for path in (beamtime, data, *world.models.iterdir()):
        os.chown(path, world.user.pw_uid, world.user.pw_gid)

    def submit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        model = world.models / "data_beside.py"
        options = [*SMALL_DREAM, "--jobs-dir", str(world.jobs), "--json", *args]
        return cli("submit", model, *options, env={**world.env(), **(env or {})}, user=world.user.pw_uid)

    refused = submit("--dry-run")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert "PermissionError" in refused.stderr and str(data) in refused.stderr
    done = submit("--local", "-n", "2", "--read", str(beamtime))
    assert done.returncode == 0 and json.loads(done.stdout)["state"] == "COMPLETED", done.stderr
    site = world.base / "site-read.toml"
    site.write_text(f'[profiles.default]\nsandbox_read = ["{beamtime}"]\n')
    os.chown(site, world.user.pw_uid, world.user.pw_gid)
    assert submit("--dry-run", env={"BUMPS_MPI_CONFIG": str(site)}).returncode == 0

    for name in ("data_beside.py", "peak_file.py", "where.txt"):  # kept in the home directory itself
        shutil.copy(world.models / name, world.home / name)
        os.chown(world.home / name, world.user.pw_uid, world.user.pw_gid)
    at_home = cli("submit", world.home / "data_beside.py", *SMALL_DREAM, "--dry-run", "--read", str(beamtime),
                  "--jobs-dir", world.jobs, env=world.env(), user=world.user.pw_uid)  # fmt: skip
    assert at_home.returncode == 1 and "PermissionError" in at_home.stderr, at_home.stderr
    assert str(world.home / "where.txt") in at_home.stderr  # its neighbour in the home directory: closed
    for name in ("data_beside.py", "peak_file.py", "where.txt"):
        (world.home / name).unlink()

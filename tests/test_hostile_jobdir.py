"""The job directory is hostile input (issue 21): a model that attacks its own job directory, run for real
as an unprivileged user, through the restart paths: nothing it plants or forges there is imported, run,
followed or trusted by the unconfined side (the batch script, the launcher, the post-mortem, resume).

Each planted module leaves a marker outside the job directory if anything ever imports it unconfined;
before the control directory and the safe start, a resume imported the planted mpi4py.py at once.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import EXAMPLE, MODELS, ParsedPage, as_user, cli, fake_job, wait_until

from bumps_mpi.jobdir import JobDir, control_dir
from bumps_mpi.results import figures

FIT = ["--samples", "8000", "--burn", "50", "--seed", "3", "--checkpoint-every", "1"]


class Den:
    """The attacker's place: its models, the jobs directory, and the markers directory outside both."""

    def __init__(self, user):
        self.user = user
        self.base = Path(tempfile.mkdtemp(prefix="bumps-hostile-"))
        self.models, self.jobs, self.markers = self.base / "models", self.base / "jobs", self.base / "markers"
        for made in (self.models, self.jobs, self.markers):
            made.mkdir()
        for name in ("planter.py", "slow_peak.py"):
            shutil.copy(MODELS / name, self.models / name)
        self.secret = self.base / "secret.txt"  # the user's own file, outside every job: never to be shown
        self.secret.write_text("TOP-SECRET-7f3a")
        (self.base / "site.toml").write_text("[profiles.default]\nsandbox = 'best-effort'\n")
        for path in (self.base, *self.base.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid)
        self.base.chmod(0o755)

    def env(self) -> dict[str, str]:
        return {
            "HOME": self.user.pw_dir,
            "BUMPS_MPI_REGISTRY": str(self.base / "registry.jsonl"),
            "BUMPS_MPI_CONFIG": str(self.base / "site.toml"),
        }

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return cli(*args, env=self.env(), user=self.user.pw_uid, timeout=timeout)

    def submit_args(self, mode: str, *options: str, delay: str = "0.002") -> list[str]:
        planter = self.models / "planter.py"
        return ["submit", str(planter), *FIT, *options, "--", delay, str(self.markers), mode]

    def wait(self, job_id: str, timeout: float = 300) -> dict:
        seen: list[dict] = [{}]

        def ended() -> dict | None:
            seen[0] = record = json.loads(self.cli("status", job_id, "--json").stdout)[0]
            done = record["state"] not in ("PENDING", "RUNNING", "REQUEUED") and record.get("exit_code")
            return record if done else None

        return wait_until(ended, lambda: f"job {job_id} to end; last: {seen[0]}", timeout, every=1)

    def nothing_ran(self, *outputs: str) -> None:
        """No marker: no planted module was ever imported, and no forged script ever ran."""
        assert sorted(p.name for p in self.markers.iterdir()) == []
        for text in outputs:
            assert "PLANTED CODE RAN" not in text, text

    def close(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def den(user, landlock_abi, mpiexec):
    made = Den(user)
    yield made
    made.close()


def planted_outcomes(job_dir: Path) -> dict[str, str]:
    return json.loads((job_dir / "planted-out.json").read_text())


def check_control_held(job_dir: Path, level: str = "best-effort") -> None:
    """The model could not write, add to or move its control directory, and its request is intact."""
    outcomes = planted_outcomes(job_dir)
    assert all(v.startswith("blocked") for v in outcomes.values()), outcomes
    request = json.loads((control_dir(job_dir) / "request.json").read_text())
    assert request["sandbox"]["level"] == level and request["max_requeues"] != 99
    assert json.loads((job_dir / "job.json").read_text())["sandbox"] == {"level": "off"}  # the forgery


@pytest.mark.mpi_launch
def test_a_local_resume_imports_nothing_planted_and_ignores_the_forged_request(den):
    """Stop a local run that planted modules and forged job.json (sandbox off), then resume it."""
    job_dir = den.jobs / "planted"
    args = [*den.submit_args("plant", "--local", "-n", "2", "--job-dir", str(job_dir))]
    proc = subprocess.Popen(
        [*as_user(den.user.pw_uid), sys.executable, "-m", "bumps_mpi", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **den.env()},
    )
    wait_until(
        lambda: (job_dir / "planted-out.json").exists() or proc.poll() is not None, "the planting", 120
    )
    assert proc.poll() is None, "the fit ended before it could be stopped: make it longer"
    proc.send_signal(signal.SIGTERM)  # rank 0 checkpoints and stops
    out, err = proc.communicate(timeout=120)
    assert "CANCELLED" in out and (job_dir / "checkpoint.h5").exists(), out + err
    assert (job_dir / "mpi4py.py").exists() and (job_dir / "bumps_mpi" / "__init__.py").exists()
    check_control_held(job_dir)
    shown = den.cli("status", str(job_dir), "--json")  # links in place of ranks.json and error.json
    drawn = den.cli("report", str(job_dir))
    assert shown.returncode == 0 and "a symbolic link: not followed" in shown.stdout, shown.stdout
    for text in (
        shown.stdout,
        shown.stderr,
        drawn.stdout,
        drawn.stderr,
        (job_dir / "report.html").read_text(),
    ):
        assert "TOP-SECRET" not in text

    resumed = den.cli("resume", str(job_dir), "--json")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads(resumed.stdout)["state"] == "COMPLETED"
    result = json.loads((job_dir / "result.json").read_text())
    assert result["sandbox"]["level"] == "best-effort" and result["restarts"] == 1  # not the forged "off"
    runs = json.loads((job_dir / "runs.json").read_text())
    assert [r["sandbox"]["level"] for r in runs] == ["best-effort", "best-effort"], runs
    den.nothing_ran(out, err, resumed.stdout, resumed.stderr, _text(job_dir / "local.out"))


@pytest.mark.slurm
def test_under_slurm_the_post_mortem_and_resume_run_nothing_planted_or_forged(den, slurm_cluster):
    """Rank 0 plants, forges run.sbatch and job.json, then dies unreported once a checkpoint exists: the
    batch script's post-mortem explains it; resume submits the trusted script, confined as asked."""
    done = den.cli(
        *den.submit_args("die", "--ntasks", "2", "--time", "5", "--json", "--jobs-dir", str(den.jobs))
    )
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout)
    job_dir = Path(first["job_dir"])
    record = den.wait(first["job_id"])
    assert record["state"] == "FAILED", record
    error = json.loads((job_dir / "error.json").read_text())
    assert error["phase"] == "run" and "rank 0" in error["message"], error  # the real post-mortem's words
    check_control_held(job_dir)
    log = (control_dir(job_dir) / f"slurm-{first['job_id']}.out").read_text()
    den.nothing_ran(log)

    again = den.cli("resume", str(job_dir), "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)["job_id"]
    assert den.wait(second)["state"] == "COMPLETED"
    result = json.loads((job_dir / "result.json").read_text())
    assert result["sandbox"]["level"] == "best-effort", result["sandbox"]
    log = (control_dir(job_dir) / f"slurm-{second}.out").read_text()
    den.nothing_ran(log)


@pytest.mark.slurm
def test_a_model_cannot_requeue_its_job_past_the_requests_limit(den, slurm_cluster):
    """Rank 0 exits 3 ("requeue me") on its own: the batch script keeps the request's limit (0 here)."""
    options = ["--ntasks", "1", "--time", "5", "--max-requeues", "0", "--json", "--jobs-dir", str(den.jobs)]
    done = den.cli(*den.submit_args("requeue", *options))
    assert done.returncode == 0, done.stderr
    submitted = json.loads(done.stdout)
    record = den.wait(submitted["job_id"])
    assert record["state"] == "FAILED" and record["exit_code"] == "1:0", record
    log = (control_dir(Path(submitted["job_dir"])) / f"slurm-{submitted['job_id']}.out").read_text()
    assert "requeue limit (0) spent" in log and "requeueing" not in log, log
    den.nothing_ran(log)


def test_the_report_embeds_no_figure_through_a_link(isolated, tmp_path):
    """A link planted in figures/ (named in the manifest, as the model can write it) is not followed."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\nTOP SECRET KEY MATERIAL")
    job = fake_job(isolated / "jobs" / "linked")
    figures = job / "figures"
    figures.mkdir()
    (figures / "dream-vars.png").symlink_to(secret)
    figure = {"file": "dream-vars.png", "title": "vars"}  # final figures: the report draws nothing new
    manifest = {"format": "png", "figures": [figure], "source": {"kind": "result"}}
    (figures / "figures.json").write_text(json.dumps(manifest))
    done = cli("report", job)
    assert done.returncode == 0, done.stderr
    page = (job / "report.html").read_text()
    assert base64.b64encode(secret.read_bytes()).decode() not in page


def test_a_figures_directory_that_is_a_link_is_not_read(isolated, tmp_path):
    """figures/ itself a link to a directory elsewhere: neither its manifest nor its PNGs are read."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "dream-vars.png").write_bytes(b"\x89PNG\r\n\x1a\nTOP SECRET")
    figure = {"file": "dream-vars.png", "title": "vars"}
    (elsewhere / "figures.json").write_text(json.dumps({"format": "png", "figures": [figure]}))
    job = JobDir(fake_job(isolated / "jobs" / "linked-dir"))
    (job.path / "figures").symlink_to(elsewhere)
    assert figures.manifest_of(job) is None
    with pytest.raises(OSError):
        job.read_beneath("figures/dream-vars.png", 1 << 20)
    assert figures.is_final(job, {"format": "png", "figures": [{"file": None}], "source": []}) is False


def test_an_oversized_job_file_is_reported_not_loaded(isolated):
    """A progress.json or ranks.json of many megabytes is named as damaged in one line, never parsed."""
    job = fake_job(isolated / "jobs" / "big", state="COMPLETED")
    with open(job / "progress.json", "w") as fh:
        fh.write('{"step": 1, "steps": 2, "pad": "' + "x" * (8 << 20) + '"}')
    shown = cli("status", job, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)[0]
    assert "progress.json" in record["warning"] and "damaged, not loaded" in record["warning"], record


@pytest.mark.mpi_launch
def test_a_service_restart_that_resumes_a_local_fit_runs_nothing_planted(den):
    """The job controller starts a dead local fit again from its checkpoint when it restarts: its new
    supervisor (the service's own account, which can read the database and the secret) and ranks import
    nothing the model planted, and the request (sandbox `require`) is the service's, not job.json's."""
    from service_helpers import Service, follow, submit

    local = Service("local", "[limits]\nmax_ranks = 2\n").start()
    markers = local.base / "markers"  # outside every fit, writable by the service's account
    markers.mkdir()
    os.chown(markers, local.user.pw_uid, local.user.pw_gid)
    try:
        alice = local.client("alice")
        args = f"0.002 {markers} plant"
        fit = submit(
            alice, MODELS / "planter.py", data=[MODELS / "slow_peak.py"], samples="400000", args=args
        )
        assert fit.status_code == 201, fit.text
        fit_id = fit.json()["id"]
        job = local.data / "fits" / fit_id / "job"
        wait_until(lambda: (job / "planted-out.json").exists(), "the model to plant")
        os.kill(_rank0(job), signal.SIGUSR2)  # a checkpoint now, to continue from (ranks.json is a link now)
        wait_until(lambda: (job / "checkpoint.h5").exists(), "a checkpoint")
        local.stop(signal.SIGKILL)
        subprocess.run(["pkill", "-KILL", "-f", str(job)], check=False)  # the run dies with it: stale
        wait_until(lambda: not _running(job), "the run's processes to end")
        check_control_held(job, "require")
        local.start()  # reconcile: the stale run starts again from its checkpoint
        wait_until(lambda: len(json.loads((job / "runs.json").read_text())) == 2, "the run started again")
        assert (job / "mpi4py.py").exists() and (job / "bumps_mpi" / "__init__.py").exists()
        alice = local.client("alice")
        assert alice.post(f"/api/v1/fits/{fit_id}/cancel").status_code == 202
        assert follow(alice, fit_id)[-1]["state"] == "CANCELLED"
        runs = json.loads((job / "runs.json").read_text())
        assert len(runs) == 2 and all(r["sandbox"]["level"] == "require" for r in runs), runs
        assert sorted(p.name for p in markers.iterdir()) == []
        assert "PLANTED CODE RAN" not in _text(job / "local.out")
    finally:
        local.close()


def _text(path: Path) -> str:
    """A job file's text as the unconfined side reads it (the model may have left a pipe there)."""
    from bumps_mpi.jobdir import read_regular

    try:
        return read_regular(path).decode(errors="replace")
    except OSError:
        return ""


def _rank0(job: Path) -> int:
    """Rank 0 of the job's run, from the process table."""
    from bumps_mpi.cluster import processes

    found = subprocess.run(["pgrep", "-f", f"bumps_mpi.job {job}"], capture_output=True, text=True)
    return next(int(p) for p in found.stdout.split() if processes.rank_of(int(p)) == 0)


def _running(job: Path) -> bool:
    found = subprocess.run(["pgrep", "-f", f"bumps_mpi.job {job}"], capture_output=True, text=True)
    return bool(found.stdout.split())


def test_the_report_escapes_everything_the_model_wrote(isolated):
    """The error's message, host and traceback, the point, the model's path, figure titles (alt= and
    captions) and the figures not drawn: all text in the report, never markup."""
    from bumps_mpi.results import report

    evil = "<script>alert(1)</script>"
    quote = "'><img src=x onerror=alert(1)>"
    job = JobDir(fake_job(isolated / "jobs" / "x", state="FAILED", result=False, model=f"/m/{evil}.py"))
    error = {"phase": "fit", "rank": 0, "host": evil, "message": evil, "traceback": evil, "point": [evil]}
    (job.path / "error.json").write_text(json.dumps(error))
    figures_dir = job.path / "figures"
    figures_dir.mkdir()
    (figures_dir / "dream-vars.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    manifest = {"format": "png", "figures": [{"file": "dream-vars.png", "title": quote}], "problems": [evil]}
    (figures_dir / "figures.json").write_text(json.dumps({**manifest, "source": {"kind": "result"}}))
    page = ParsedPage(report.build(job, {"state": "FAILED", "exit": "1"}))
    assert page.elements("script") == [] and all("onerror" not in a for _, a in page.tags), page.tags
    assert [a.get("alt") for a in page.elements("img")] == [quote]  # the title, as an attribute's text
    assert page.all_text.count(evil) >= 4 and quote in page.all_text  # shown as what it is


@pytest.mark.mpi_launch
def test_a_dispatched_fit_moved_to_another_worker_runs_nothing_planted(landlock_abi, mpiexec):
    """Through the dispatcher: a local worker's fit plants its modules and is checkpointed, then that
    worker and its run die; the fit's next attempt runs on another worker from the uploaded checkpoint.
    Neither worker, nor the controller that stores what the attempts send (the planted files among
    them), nor the confined ranks import anything the model planted."""
    from service_helpers import Service, Worker, follow, submit

    service = Service(
        "dispatch",
        "[limits]\nmax_ranks = 2\n",
        settings="lease_s = 6\nmax_attempts = 3\nclaim_wait_s = 5\n",
        site="checkpoint_every = 1\n",
    ).start()
    markers = service.base / "markers"  # outside every fit, writable by the accounts that run them
    markers.mkdir()
    os.chown(markers, service.user.pw_uid, service.user.pw_gid)
    first = Worker(service, "first", "--capacity", "1", "--local").start()
    second = None
    try:
        alice = service.client("alice")
        fit = submit(
            alice, MODELS / "planter.py", data=[MODELS / "slow_peak.py"], samples="400000",
            args=f"0.002 {markers} plant", ntasks="2",
        )  # fmt: skip
        assert fit.status_code == 201, fit.text
        fit_id = fit.json()["id"]
        job = first.state / "fits" / f"{fit_id}-1" / "job"
        wait_until(lambda: (job / "planted-out.json").exists(), "the model to plant")
        os.kill(_rank0(job), signal.SIGUSR2)  # a checkpoint now, for the next attempt to continue from
        uploaded = service.data / "fits" / fit_id / "checkpoints" / "1.h5"
        wait_until(uploaded.exists, "the first worker to upload a checkpoint")
        first.kill()  # no goodbye; its run dies with it
        subprocess.run(["pkill", "-KILL", "-f", str(job)], check=False)
        wait_until(lambda: not _running(job), "the first attempt's processes to end")
        second = Worker(service, "second", "--capacity", "1", "--local").start()
        moved = second.state / "fits" / f"{fit_id}-2" / "job"
        wait_until(lambda: (moved / "planted-out.json").exists(), "attempt 2 to plant again")
        runs = json.loads(_text(moved / "runs.json"))
        assert runs[0]["resumed_from_step"] > 0, runs  # from the checkpoint attempt 1 sent
        assert alice.post(f"/api/v1/fits/{fit_id}/cancel").status_code == 202
        assert follow(alice, fit_id)[-1]["state"] == "CANCELLED"
        kept = service.data / "fits" / fit_id / "job"
        assert (kept / "mpi4py.py").exists()  # sent up as a result file, and only stored
        from bumps_mpi.service.caches import cache_key

        assert runs[0]["sandbox"]["cache"] == str(second.state / "caches" / cache_key("alice"))  # alice's own
        assert sorted(p.name for p in markers.iterdir()) == []
        for text in (first.said(), second.said(), _text(service.log)):
            assert "PLANTED CODE RAN" not in text
    finally:
        for worker in (first, second):
            if worker is not None:
                worker.kill(signal.SIGTERM)
        service.close()


def test_a_forged_sandbox_record_is_described_as_unreadable_not_an_error():
    """result.json is the job's, so the model's: its sandbox record may be anything."""
    from bumps_mpi.sandbox import policy

    for forged in ({"level": "best-effort", "abi": 6}, {"level": "x", "abi": 1, "opened": 5}, "text", [1]):
        assert policy.describe(forged) == "unknown: the job's record of its sandbox is not readable"
    record = {"level": "require", "abi": 6, "rlimits": {"file_size_mb": 1}, "opened": [1, "/c"]}
    shown = policy.describe(record)
    assert shown.endswith("writable besides the job: 1, /c")


def test_plot_draws_outside_the_job_and_installs_only_the_figures_it_drew(isolated, tmp_path):
    """`plot` runs the model in a child: that child confines itself to a private scratch directory
    outside the job (a running model could swap one inside the job for a link to the home directory),
    and only the figures its manifest names, regular files, leave it: not the numpy.py, the
    sitecustomize.py or the link to a secret that the model left beside them."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    seen = tmp_path / "seen.txt"
    model = tmp_path / "models" / "leaves_things.py"
    model.parent.mkdir()
    model.write_text(  # where the drawing child draws: its request, on its command line
        "import json, os\nfrom pathlib import Path\n"
        "words = open('/proc/self/cmdline', 'rb').read().split(b'\\0')\n"
        "asked = [json.loads(w) for w in words if w.startswith(b'{')]\n"
        "if asked and 'out' in asked[0]:\n"
        "    here = Path(asked[0]['out'])\n"
        f"    open({str(seen)!r}, 'a').write(str(here))\n"
        "    for name in ('numpy.py', 'sitecustomize.py'):\n"
        "        (here / name).write_text('raise SystemExit(\"planted\")')\n"
        f"    os.symlink({str(secret)!r}, here / 'model.png')\n" + EXAMPLE.read_text()
    )
    job = fake_job(isolated / "jobs" / "leaver", model=str(model))
    out = tmp_path / "out"
    drawn = cli("plot", job, "--out", out, "--json")
    assert drawn.returncode == 0, drawn.stderr
    where = seen.read_text() if seen.exists() else ""
    assert where and not where.startswith(str(job)), where  # the child's own directory: not in the job
    names = sorted(p.name for p in out.iterdir())
    assert "numpy.py" not in names and "sitecustomize.py" not in names, names
    assert all(p.is_file() and not p.is_symlink() for p in out.iterdir())
    assert not any(b"TOP-SECRET" in p.read_bytes() for p in out.iterdir())
    assert "figures.json" in names and any(n.endswith(".png") for n in names), names


def test_a_link_in_place_of_the_private_directory_is_replaced_not_followed(landlock_abi, tmp_path):
    """A job directory from an earlier run is the model's: its tmp/ may be a link to the user's files.
    Confining a rank, a viewer or a child there removes the link and makes a real directory."""
    from bumps_mpi.sandbox import policy

    own, elsewhere = tmp_path / "job", tmp_path / "elsewhere"
    own.mkdir()
    elsewhere.mkdir()
    (own / "tmp").symlink_to(elsewhere)
    code = (
        "import json, sys; from pathlib import Path; from bumps_mpi.sandbox import policy as p; "
        "p.apply(p.Policy(level='best-effort', read=[*p.python_paths(), *p.SYSTEM_READ]), Path(sys.argv[1]))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(own)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (own / "tmp").is_dir() and not (own / "tmp").is_symlink()
    assert sorted(elsewhere.iterdir()) == []  # nothing was made through the link
    assert policy.TMP_DIR == "tmp"

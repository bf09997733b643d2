"""Bad input: one line on stderr, exit code 1, nothing written or overwritten, never a hang.

Each class of defect from issue 9 has its cases here: the model check (a
subprocess with a time limit), options checked against what Bumps and Slurm
accept, broken files, and misleading words.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import EXAMPLE, MODELS, NOBODY, cli, fake_job, one_line_error, wait_until, write_model

from bumps_mpi.jobdir import JobDir


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else None


def nothing_written(isolated: Path) -> None:
    assert not (isolated / "jobs").exists()
    assert not (isolated / "registry.jsonl").exists()


# --- options: checked against Bumps and Slurm before anything is written -------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        ([MODELS / "does-not-exist.py"], "model file not found"),
        ([MODELS], "is a directory: give the model's Python file"),
        (["/dev/zero"], "/dev/zero is not a regular file"),
        ([MODELS / "syntax_error.py"], "syntax error at line"),
        ([MODELS / "missing_data.py"], "no-such-data-file.dat"),
        ([EXAMPLE, "--fit", "dreem"], "unknown fitter 'dreem'; choose one of:"),
        ([EXAMPLE, "--fit", "amoeba", "--burn", "10"], "fitter 'amoeba' has no option 'burn'"),
        ([EXAMPLE, "--fit-option", "alpha=lots"], "fit option alpha='lots' for fitter 'dream': not a float"),
        ([EXAMPLE, "--fit-option", "alpha=nan"], "must be a finite number"),
        ([EXAMPLE, "--fit", "de", "--fit-option", "CR=1.5"], "CR='1.5' for fitter 'de': must be at most 1"),
        ([EXAMPLE, "--pop", "0"], "--pop=0 for fitter 'dream': the population must not be empty"),
        ([EXAMPLE, "--pop", "1"], "gives dream 4 chains for this model's 4 parameters; it needs at least 7"),
        ([EXAMPLE, "--pop", "-3"], "gives dream 3 chains"),
        ([EXAMPLE, "--fit", "de", "--pop", "-20"], "only dream takes a negative pop"),
        ([EXAMPLE, "--fit", "de", "--pop", "0.5"], "gives de 2 members"),
        ([EXAMPLE, "--thin", "0"], "--thin=0 for fitter 'dream': must be at least 1"),
        ([EXAMPLE, "--thin", "500", "--samples", "2000"], "--thin=500 is more than the 50 generations"),
        ([EXAMPLE, "--init", "bogus"], 'invalid option "bogus": use eps|lhs|cov|random'),
        ([EXAMPLE, "--samples", "0"], "--samples must be at least 1 for dream"),
        (
            [EXAMPLE, "--steps", "-5", "--fit", "amoeba"],
            "--steps=-5 for fitter 'amoeba': must be at least 0",
        ),
        ([EXAMPLE, "--nodes", "-1"], "--nodes must be a whole number of at least 1, got -1"),
        ([EXAMPLE, "--ntasks", "0"], "--ntasks must be a whole number of at least 1"),
        ([EXAMPLE, "--check-timeout", "0"], "--check-timeout must be a whole number of at least 1"),
        ([EXAMPLE, "--max-requeues", "-1"], "--max-requeues must be a whole number of at least 0"),
        ([EXAMPLE, "--time", "-5"], "--time='-5' is not a Slurm time limit"),
        ([EXAMPLE, "--time", "1:2:3:4"], "--time='1:2:3:4' is not a Slurm time limit"),
        ([EXAMPLE, "--time", "1.5"], "is not a Slurm time limit"),
        ([EXAMPLE, "--mem", "-1"], "--mem='-1' is not a Slurm memory size"),
        ([EXAMPLE, "--mem", "1.5G"], "is not a Slurm memory size"),
        ([EXAMPLE, "--seed", "-1"], "--seed must be between 0 and 2**32-1"),
        (
            [EXAMPLE, "--mail-type", "END;reboot"],
            "--mail-type='END;reboot': 'END;reboot' is not a Slurm mail",
        ),
        ([EXAMPLE, "--mail-type", "END,sometimes"], "'sometimes' is not a Slurm mail type"),
        ([EXAMPLE, "--mail-user", "me $(id)"], "--mail-user='me $(id)' is not a user name or an email"),
        ([EXAMPLE, "--name", "x; rm -rf ~"], "job name 'x; rm -rf ~' is not allowed"),
        ([EXAMPLE, "--partition", "a b"], "partition='a b' is not a valid Slurm value"),
        ([EXAMPLE, "--profile", "nope"], "unknown profile 'nope'"),
        ([EXAMPLE, "--local", "-n", "0"], "-n must be at least 1"),
        ([EXAMPLE, "--local", "-n", "100000"], "more than 4 ranks per core on this machine"),
    ],
)
def test_one_line_error_and_nothing_written(isolated, args, message):
    proc = cli("submit", *args, "--jobs-dir", isolated / "jobs")
    one_line_error(proc, message)
    nothing_written(isolated)


@pytest.mark.parametrize("pop", ["-7", "2", "1.75"])
def test_populations_bumps_accepts_are_accepted(isolated, pop):
    """A negative pop is DREAM's total population (legal in Bumps); 1.75 x 4 parameters gives 7 chains."""
    proc = cli("submit", EXAMPLE, "--pop", pop, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["spec"]["fit_options"]["pop"] == float(pop)


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("BUMPS_MPI_BALANCE", "sometimes", "environment variable BUMPS_MPI_BALANCE='sometimes' is not valid"),
        ("BUMPS_MPI_NTASKS", "four", "environment variable BUMPS_MPI_NTASKS='four' is not a whole number"),
        ("BUMPS_MPI_TIME", "-5", "time (from environment variable BUMPS_MPI_TIME)='-5' is not a Slurm time"),
        ("BUMPS_MPI_CHECK_TIMEOUT", "0", "check_timeout (from environment variable BUMPS_MPI_CHECK_TIMEOUT)"),
    ],
)
def test_environment_variables_are_named_in_their_errors(isolated, variable, value, message):
    proc = cli("submit", EXAMPLE, "--jobs-dir", isolated / "jobs", env={variable: value})
    one_line_error(proc, message)
    nothing_written(isolated)


def test_a_site_file_value_is_named_with_its_file(isolated, monkeypatch):
    site = isolated / "site.toml"
    site.write_text('[profiles.default]\nmem = "lots"\n')
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(site))
    proc = cli("submit", EXAMPLE, "--jobs-dir", isolated / "jobs")
    one_line_error(proc, f"mem (from {site} [profiles.default])='lots' is not a Slurm memory size")


def test_cheap_checks_come_before_the_model_is_loaded(isolated):
    """A bad --time fails at once, without waiting for a model that never finishes loading."""
    loaded = isolated / "loaded"
    model = write_model(isolated / "forever.py", f"open({str(loaded)!r}, 'w')\nwhile True:\n    pass\n")
    proc = cli("submit", model, "--time", "bogus", "--jobs-dir", isolated / "jobs", timeout=30)
    one_line_error(proc, "--time='bogus' is not a Slurm time limit")
    assert not loaded.exists()  # the model check (a minute by default) never started


# --- the model check: a subprocess with a time limit ----------------------------------------------------


def test_a_model_that_loops_forever_times_out(isolated):
    model = write_model(isolated / "forever.py", "while True:\n    pass\n")
    for extra in ([], ["--dry-run"], ["--local"]):
        proc = cli(
            "submit", model, "--check-timeout", "2", "--jobs-dir", isolated / "jobs", *extra, timeout=60
        )
        one_line_error(proc, "the model check did not finish in 2 s", "--check-timeout")
    nothing_written(isolated)


def test_a_model_that_exits_the_process_is_an_error_not_success(isolated):
    model = write_model(isolated / "quits.py", "import os\nprint('bye')\nos._exit(0)\n")
    proc = cli("submit", model, "--dry-run")
    assert proc.returncode == 1 and "before it finished" in proc.stderr and "os._exit()" in proc.stderr
    assert proc.stdout == ""  # no script printed: nothing was checked
    assert "  | bye" in proc.stderr  # the tail of what it printed, below the one-line error


def test_a_model_that_calls_sys_exit_says_so(isolated):
    model = write_model(isolated / "exits.py", "import sys\nsys.exit(3)\n")
    one_line_error(cli("submit", model, "--dry-run"), "the model called sys.exit(3) while loading")


def test_a_model_that_crashes_the_interpreter(isolated):
    model = write_model(isolated / "crash.py", "import ctypes\nctypes.string_at(0)\n")
    one_line_error(cli("submit", model, "--dry-run"), "the model check crashed: killed by signal 11 SIGSEGV")


def test_a_model_file_named_with_a_leading_dot_is_one_clear_line(isolated):
    model = write_model(isolated / ".peak.py")
    line = one_line_error(cli("submit", model, "--dry-run", "--name", "peak"), "starts with a dot")
    assert "rename it (for example 'peak.py')" in line and "IndexError" not in line


def test_a_model_that_imports_mpi4py_is_checked_and_one_that_calls_mpi_is_told_why(isolated):
    """The check runs outside MPI: importing mpi4py must not abort it; calling MPI there says what to do."""
    imports = write_model(isolated / "imports_mpi.py", "from mpi4py import MPI\n")
    proc = cli("submit", imports, "--dry-run", "--json", "--sandbox", "require")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["spec"]["parameters"] == ["background", "center", "height", "width"]
    calls = write_model(isolated / "calls_mpi.py", "from mpi4py import MPI\nRANK = MPI.COMM_WORLD.rank\n")
    proc = cli("submit", calls, "--dry-run")
    first = proc.stderr.splitlines()[0]
    assert proc.returncode == 1 and "the model uses MPI (mpi4py) while it loads" in first, proc.stderr
    assert "remove the mpi4py import" in first and "os._exit" not in proc.stderr


def test_a_model_that_reads_stdin_gets_end_of_file_not_a_hang(isolated):
    model = write_model(isolated / "asks.py", "name = input('sample? ')\n")
    proc = cli("submit", model, "--dry-run", timeout=60)
    assert proc.returncode == 1 and "EOFError" in proc.stderr.splitlines()[0]


def test_output_of_a_chatty_model_never_reaches_the_json(isolated):
    """Megabytes printed at import: --dry-run --json is still one JSON document, and fast."""
    model = write_model(isolated / "chatty.py", "for i in range(100000):\n    print('x' * 50, i)\n")
    proc = cli("submit", model, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["spec"]["parameters"] == ["background", "center", "height", "width"]
    proc = cli("submit", model, "--dry-run")
    assert proc.stdout.startswith("#!/bin/bash\n") and "xxxxx" not in proc.stdout


def test_the_tail_of_a_failing_models_output_is_shown_without_control_sequences(isolated):
    model = write_model(
        isolated / "loud.py",
        "for i in range(100):\n    print(f'line {i}')\nprint('\\x1b]0;pwned\\x07\\x1b[2Jcleared')\n"
        "raise RuntimeError('no data \\x1b[31mred\\x1b[0m')\n",
    )
    proc = cli("submit", model, "--dry-run")
    assert proc.returncode == 1
    first, *rest = proc.stderr.splitlines()
    assert first.startswith("bumps-submit: error: ") and "RuntimeError: no data red" in first
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    assert rest[-1] == "  | cleared" and "  | line 99" in rest and "  | line 50" not in rest  # the last lines


def test_a_problem_of_the_wrong_type_says_what_a_model_must_define(isolated):
    for body in ("problem = 42\n", "problem = model\n"):
        model = write_model(isolated / "wrong.py", body=body)
        line = one_line_error(cli("submit", model, "--dry-run"), "not a FitProblem")
        assert "problem = FitProblem(model)" in line


def test_processes_a_model_leaves_behind_are_ended_with_the_check(isolated):
    pidfile = isolated / "child.pid"
    model = write_model(
        isolated / "spawns.py",
        f"import subprocess\nchild = subprocess.Popen(['sleep', '600'])\nopen({str(pidfile)!r}, 'w')"
        ".write(str(child.pid))\n",
    )
    proc = cli("submit", model, "--dry-run", "--sandbox", "off")  # the model writes beside itself
    assert proc.returncode == 0, proc.stderr
    pid = int(pidfile.read_text())
    wait_until(lambda: not _alive(pid), "the model's child to end with the check", timeout=10, every=0.1)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_a_model_imports_the_modules_beside_it(isolated):
    """As `python model.py` would: the model's directory first on sys.path (Bumps' peaks example)."""
    proc = cli("submit", MODELS / "neighbours" / "model.py", "--dry-run", "--json", cwd=isolated)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["spec"]["parameters"] == ["background", "center", "height", "width"]


# --- where the job directory goes ------------------------------------------------------------------------


def test_existing_job_dir_is_not_touched(isolated):
    target = isolated / "mine"
    target.mkdir()
    (target / "result.json").write_text("precious")
    one_line_error(cli("submit", EXAMPLE, "--job-dir", target, "--local"), "already exists")
    assert listing(target) == ["result.json"] and (target / "result.json").read_text() == "precious"


def test_jobs_dir_that_is_a_file(isolated):
    (isolated / "jobs").write_text("not a directory")
    one_line_error(cli("submit", EXAMPLE, "--jobs-dir", isolated / "jobs"), "is a file, not a directory")
    one_line_error(cli("submit", EXAMPLE, "--job-dir", isolated / "jobs" / "x"), "is a file, not a directory")
    assert (isolated / "jobs").read_text() == "not a directory"


def test_job_dir_under_a_parent_nobody_may_write(isolated):
    """As an unprivileged user (root ignores permissions): a one-line error, nothing made."""
    shared = Path(tempfile.mkdtemp(prefix="bumps-mpi-perm-"))
    try:
        shared.chmod(0o755)
        locked = shared / "locked"
        locked.mkdir(mode=0o755)
        env = {
            "BUMPS_MPI_REGISTRY": str(shared / "registry.jsonl"),
            "BUMPS_MPI_CONFIG": str(shared / "site.toml"),
            "HOME": str(shared),
        }
        proc = cli("submit", EXAMPLE, "--jobs-dir", locked / "jobs", "--dry-run", env=env, user=NOBODY)
        one_line_error(proc, "cannot create a job directory under", "permission denied")
        proc = cli("submit", EXAMPLE, "--job-dir", locked / "a" / "b", env=env, user=NOBODY)
        one_line_error(proc, "permission denied")
        assert listing(locked) == []
    finally:
        shutil.rmtree(shared)


def test_dry_run_writes_nothing(isolated):
    jobs = isolated / "jobs"
    proc = cli("submit", EXAMPLE, "--jobs-dir", jobs, "--dry-run", "--ntasks", "3")
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --ntasks=3" in proc.stdout and "bumps_mpi.job" in proc.stdout
    assert not jobs.exists()


def test_jobs_dir_from_the_site_profile_expands_variables(isolated, monkeypatch):
    site = isolated / "site.toml"
    site.write_text('[profiles.default]\njobs_dir = "$SCRATCH_ROOT/fits"\n')
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(site))
    proc = cli("submit", EXAMPLE, "--dry-run", "--json", env={"SCRATCH_ROOT": str(isolated / "scratch")})
    assert proc.returncode == 0, proc.stderr
    assert Path(json.loads(proc.stdout)["job_dir"]).parent == isolated / "scratch" / "fits"
    unset = cli("submit", EXAMPLE, "--dry-run")  # $SCRATCH_ROOT is not set here
    one_line_error(unset, "environment variable $SCRATCH_ROOT is not set")


def test_sbatch_missing_is_clear(isolated, monkeypatch):
    """Outside a cluster, submit says so (and leaves no directory) instead of a traceback."""
    monkeypatch.setenv("PATH", "/nonexistent")
    one_line_error(cli("submit", EXAMPLE, "--jobs-dir", isolated / "jobs"), "sbatch not found", "--local")
    nothing_written(isolated)


# --- broken files: a one-line error naming the file; listings go on --------------------------------------


def test_unknown_job(isolated):
    for command in ("status", "results", "cancel", "resume", "checkpoint"):
        one_line_error(cli(command, "123456789"), "no job '123456789'")


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "not valid JSON"),
        ('{"name": "x", "mod', "truncated?"),
        ("[1, 2]", "holds a JSON list, not a dict"),
        (b"\xff\xfe garbage", "not UTF-8"),
    ],
)
def test_a_broken_job_json_is_named_and_the_others_still_listed(isolated, content, why):
    healthy = fake_job(isolated / "jobs" / "healthy")
    broken = fake_job(isolated / "jobs" / "broken")
    path = JobDir(broken).file("request.json")  # the request, in the control directory
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for command in ("status", "results", "cancel", "resume"):
        one_line_error(cli(command, broken), f"cannot read {path}: ", why)
    listed = cli("status")
    assert listed.returncode == 0, listed.stderr
    assert str(healthy) in listed.stdout and "COMPLETED" in listed.stdout
    assert f"warning: cannot read {path}: " in listed.stderr and why in listed.stderr
    assert "Traceback" not in listed.stderr
    records = json.loads(cli("status", "--json").stdout)
    assert {r["job_dir"]: r["state"] for r in records} == {str(healthy): "COMPLETED", str(broken): "UNKNOWN"}


def test_a_truncated_result_json(isolated):
    job = fake_job(isolated / "jobs" / "one")
    (job / "result.json").write_text('{"fitter": "dream", "chi')
    one_line_error(cli("results", job), f"cannot read {job / 'result.json'}: not valid JSON")
    shown = cli("status", job)
    assert shown.returncode == 0 and f"warning: cannot read {job / 'result.json'}" in shown.stderr


def test_broken_cache_and_progress_files_never_break_status(isolated):
    job = fake_job(isolated / "jobs" / "one")
    JobDir(job).file("state.json").write_text("garbage")
    (job / "progress.json").write_text("[]")
    (job / "error.json").mkdir()
    shown = cli("status", job, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)[0]
    assert record["state"] == "COMPLETED" and "progress.json: holds a JSON list" in record["warning"]


def test_registry_lines_that_are_not_job_entries_are_skipped_and_said(isolated):
    healthy = fake_job(isolated / "jobs" / "healthy")
    registry = isolated / "registry.jsonl"
    with open(registry, "ab") as fh:
        fh.write(b'[1, 2]\n"x"\n42\n{}\n\xff\xfe\n{"job_dir": 7}\n{truncated\n')
    listed = cli("status")
    assert listed.returncode == 0, listed.stderr
    assert str(healthy) in listed.stdout
    for line, why in ((2, "not a job entry"), (6, "not UTF-8"), (8, "not JSON")):
        assert f"warning: skipped {registry} line {line}: {why}" in listed.stderr
    assert "Traceback" not in listed.stderr


def test_a_registered_job_whose_directory_was_deleted(isolated):
    gone = fake_job(isolated / "jobs" / "gone", slurm={"job_id": "4242"})
    kept = fake_job(isolated / "jobs" / "kept")
    shutil.rmtree(gone)
    one_line_error(cli("status", "4242"), f"cannot read {gone}: the job directory no longer exists")
    one_line_error(cli("results", "4242"), "no longer exists")
    listed = json.loads(cli("status", "--json").stdout)
    assert [r["job_dir"] for r in listed] == [str(kept)]


@pytest.mark.parametrize(
    "text, message",
    [
        ("profiles = 3\n", "profiles must be a table"),
        ("[profiles]\ndefault = 3\n", "profiles.default must be a table"),
        ('default_profle = "cpu"\n', "unknown top-level key 'default_profle'"),
        ("[profile.cpu]\nntasks = 4\n", "unknown top-level key 'profile'"),
        ("default_profile = 3\n", "default_profile must be a string"),
        ('[profiles.default]\nextra = ["--signal=USR2@60"]\n', "is not allowed: bumps-mpi sets --signal"),
        ('[profiles.default]\nskip = ["requeue"]\n', "bumps-mpi needs this directive"),
    ],
)
def test_broken_site_configuration(isolated, monkeypatch, text, message):
    site = isolated / "site.toml"
    site.write_text(text)
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(site))
    one_line_error(cli("submit", EXAMPLE, "--jobs-dir", isolated / "jobs", "--dry-run"), message)


def test_a_site_configuration_path_that_is_a_directory(isolated, monkeypatch):
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(isolated))
    one_line_error(cli("submit", EXAMPLE, "--dry-run"), f"cannot read {isolated}: is a directory")
    one_line_error(cli("config"), "is a directory")


# --- words that say what is true -------------------------------------------------------------------------


def test_status_limit_zero_lists_everything_and_filters_say_so(isolated):
    first, second = fake_job(isolated / "jobs" / "a"), fake_job(isolated / "jobs" / "b")
    listed = cli("status", "--limit", "0")
    assert listed.returncode == 0 and str(first) in listed.stdout and str(second) in listed.stdout
    none = cli("status", "--state", "FAILED")
    assert none.returncode == 0 and "No jobs match" in none.stdout and "No jobs yet" not in none.stdout


def test_results_of_a_completed_job_without_result_json(isolated):
    job = fake_job(isolated / "jobs" / "a", result=False)
    one_line_error(cli("results", job), "is COMPLETED but its result.json is missing")


def test_cancel_of_a_finished_local_job_says_it_has_ended(isolated):
    job = fake_job(isolated / "jobs" / "a")
    line = one_line_error(cli("cancel", job), "has already ended (COMPLETED): there is nothing to cancel")
    assert "Ctrl-C" not in line


def test_too_many_local_ranks_for_this_machine_are_warned_about(isolated):
    cores = len(os.sched_getaffinity(0))
    proc = cli("submit", MODELS / "syntax_error.py", "--local", "-n", str(cores + 1))
    assert f"warning: {cores + 1} ranks on {cores} cores" in proc.stderr
    assert proc.returncode == 1 and "syntax error" in proc.stderr


def test_config_shows_each_setting_and_where_it_comes_from(isolated, monkeypatch):
    site = isolated / "site.toml"
    site.write_text('[profiles.default]\npartition = "short"\n')
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(site))
    shown = json.loads(cli("config", "--json", env={"BUMPS_MPI_NTASKS": "8"}).stdout)
    assert shown["settings"]["partition"] == "short" and shown["sources"]["partition"].startswith(str(site))
    assert (
        shown["settings"]["ntasks"] == 8
        and shown["sources"]["ntasks"] == "environment variable BUMPS_MPI_NTASKS"
    )
    assert shown["sources"]["check_timeout"] == "the packaged defaults"


def test_status_without_slurm_is_unknown_not_pending(isolated, monkeypatch):
    """When Slurm cannot answer, a submitted job's state is UNKNOWN with the reason, never a guess."""
    job_dir = isolated / "job"
    job_dir.mkdir()
    JobDir(job_dir).control.mkdir(parents=True)
    JobDir(job_dir).file("request.json").write_text(json.dumps({"name": "peak", "slurm": {"job_id": "4242"}}))
    monkeypatch.setenv("PATH", "/nonexistent")
    record = json.loads(cli("status", job_dir, "--json").stdout)[0]
    assert record["state"] == "UNKNOWN" and record["job_id"] == "4242"
    assert "Slurm not reachable" in record["reason"] and "sacct" in record["reason"]


def test_a_check_whose_answer_the_model_made_a_pipe_ends_with_one_line(isolated):
    """The model runs in the check's child and can write where the child answers: a pipe there (and an
    exit before any answer) must not leave bumps-submit waiting on it for ever."""
    model = write_model(
        isolated / "pipe.py",
        "import os, pathlib\n"
        "answer = pathlib.Path('/proc/self/cmdline').read_bytes().split(b'\\0')[3].decode()\n"
        "os.mkfifo(answer)\nos._exit(0)\n",
    )
    one_line_error(cli("submit", model, "--dry-run", "--sandbox", "off", timeout=60), "before it finished")


def test_a_model_path_that_is_a_loop_of_links_is_one_line(isolated):
    loop = isolated / "loop.py"
    loop.symlink_to(loop)
    one_line_error(cli("submit", loop, "--dry-run"), "is a loop of symbolic links")
    nothing_written(isolated)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminal_closed_during_the_check_ends_the_check_and_its_files(isolated, signum):
    """SIGHUP (the terminal closed) or SIGTERM while the model check runs: the check's whole process
    group ends with bumps-submit, and its scratch directory is removed."""
    proc, pid = _checking(isolated, "while True: pass\n")
    scratch = [p for p in Path(tempfile.gettempdir()).glob("bumps-mpi-child-*") if _owns(p, pid)]
    proc.send_signal(signum)
    proc.wait(timeout=30)
    assert proc.returncode == 128 + signum, proc.stderr.read()
    wait_until(lambda: not _alive(pid), "the model check to end", timeout=10, every=0.1)
    assert scratch and not any(p.exists() for p in scratch)


def _checking(isolated: Path, forever: str) -> tuple[subprocess.Popen, int]:
    """`submit --dry-run` of a model that never finishes loading (*forever*, after saying its pid):
    bumps-submit's process, and the model check's pid once it runs."""
    pidfile = isolated / "check.pid"
    model = write_model(
        isolated / "slow.py",
        f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\n{forever}",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "bumps_mpi", "submit", str(model), "--dry-run", "--sandbox", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    wait_until(lambda: pidfile.exists() and pidfile.read_text(), "the model check to start", 30, every=0.1)
    return proc, int(pidfile.read_text())


def _owns(scratch: Path, pid: int) -> bool:
    """Whether the process *pid* answers into the scratch directory (its command line names it)."""
    try:
        return str(scratch) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_interrupting_the_check_leaves_nothing_running(isolated):
    """Ctrl-C while the model check runs: bumps-submit ends, and so does the check's process group."""
    proc, pid = _checking(isolated, "time.sleep(600)\n")
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    wait_until(lambda: not _alive(pid), "the model check to end", timeout=10, every=0.1)


# --- files bumps-mpi did not write: the right types, or unreadable (never a traceback) ------------------


@pytest.mark.parametrize(
    "name, content",
    [
        ("local.json", {"state": "WEIRD", "started": 1.0}),
        ("local.json", {"state": "RUNNING", "started": 1.0, "launcher": "oops"}),
        ("local.json", {"state": "COMPLETED", "started": "yesterday"}),
        ("state.json", {"state": "BOGUS"}),
        ("ranks.json", [1, 2]),
        ("progress.json", {"step": 1, "steps": "abc"}),
        ("progress.json", {"step": 1, "steps": float("inf")}),  # Infinity: int() of it would raise
        ("result.json", {}),
        ("result.json", {"fitter": "dream", "chisq": 1, "chisq_str": "1", "parameters": [{"name": 3}]}),
    ],
)
def test_job_files_of_the_wrong_shape(isolated, name, content):
    healthy = fake_job(isolated / "jobs" / "healthy")
    odd = fake_job(isolated / "jobs" / "odd")
    JobDir(odd).file(name).write_text(json.dumps(content))  # control files where they belong
    listed = cli("status")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert str(healthy) in listed.stdout
    records = {r["job_dir"]: r for r in json.loads(cli("status", "--json").stdout)}
    assert records[str(healthy)]["state"] == "COMPLETED"
    for command in ("status", "results", "cancel", "resume", "plot", "report"):
        done = cli(command, odd)
        assert "Traceback" not in done.stderr, (command, done.stderr)
        assert done.returncode in (0, 1) and not (done.returncode == 1 and done.stderr.count("\n") > 1), (
            command,
            done.stderr,
        )


def test_unforeseen_failures_in_the_check_say_what_they_were(isolated):
    """steps=inf overflows Bumps' own parser; an nllf that is an array; a bumps.py where the user stands."""
    one_line_error(cli("submit", EXAMPLE, "--fit-option", "steps=inf", "--dry-run"), "steps='inf'")
    model = write_model(
        isolated / "array.py", body="problem = FitProblem(model)\nproblem.nllf = lambda p=None: [1.0, 2.0]\n"
    )
    line = one_line_error(cli("submit", model, "--dry-run"), "evaluating the model failed")
    assert "os._exit" not in line
    shadow = isolated / "here"
    shadow.mkdir()
    (shadow / "bumps.py").write_text("raise RuntimeError('not the real bumps')\n")
    proc = cli("submit", EXAMPLE, "--dry-run", cwd=shadow)
    assert proc.returncode == 0, proc.stderr


def test_a_jobs_dir_behind_a_dangling_link(isolated):
    (isolated / "scratch").symlink_to(isolated / "not-mounted")
    proc = cli("submit", EXAMPLE, "--jobs-dir", isolated / "scratch" / "jobs")
    one_line_error(proc, "links to", "which does not exist (not mounted?)")


def test_a_hung_sbatch_keeps_the_directory_and_says_so(isolated, monkeypatch):
    """sbatch timed out and squeue cannot answer: the job may be queued, so its directory is kept."""
    from bumps_mpi.cluster import slurm
    from bumps_mpi.errors import SubmitError
    from bumps_mpi.front import submission

    shims = isolated / "shims"
    shims.mkdir()
    (shims / "sbatch").write_text("#!/bin/sh\nsleep 30\n")
    (shims / "squeue").write_text(
        "#!/bin/sh\necho 'squeue: error: slurm_load_jobs error: timed out' >&2\nexit 1\n"
    )
    for shim in shims.iterdir():
        shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    monkeypatch.setattr(slurm, "SBATCH_TIMEOUT_S", 1)
    request = submission.JobRequest(model=EXAMPLE, jobs_dir=isolated / "jobs")
    with pytest.raises(
        SubmitError, match="the queue cannot say whether the job was queued.*is kept"
    ) as caught:
        submission.submit(request)
    kept = [p for p in (isolated / "jobs").iterdir() if not p.name.startswith(".")]
    assert (
        len(kept) == 1 and str(kept[0]) in str(caught.value) and JobDir(kept[0]).file("run.sbatch").is_file()
    )


def test_a_second_resume_at_once_is_refused(isolated):
    """Two resumes of one fit at once would start two runs in one directory: the second is refused while
    the first holds the fit's lock (here, the test holds it), and the lock goes with its holder."""
    from bumps_mpi.jobdir import RESUME_LOCK, exclusive

    job = JobDir(fake_job(isolated / "jobs" / "one", state="FAILED", result=False))
    with exclusive(job.file(RESUME_LOCK), "held by the test"):
        one_line_error(cli("resume", job.path), "is being resumed by another command right now")
    done = cli("resume", job.path)  # free again: now it gets as far as the fit itself
    assert "being resumed" not in done.stderr and done.returncode == 1, done.stderr

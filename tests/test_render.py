"""The sbatch text: a golden file, quoting, and refusal of values Slurm or bash would misread."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bumps_mpi.cluster.render import render_sbatch
from bumps_mpi.config import slurm_dir
from bumps_mpi.errors import UsageError

GOLDEN = Path(__file__).parent / "golden" / "basic.sbatch"
HOSTILE = [
    "a'; touch /tmp/bumps-mpi-pwned; '",
    'x"$(touch /tmp/bumps-mpi-pwned)"',
    "two words",
    "semi;colon",
    "new\nline",
    "back`tick`",
    "dollar$HOME",
]


def render(**overrides) -> str:
    args = dict(
        template=(slurm_dir() / "job.sbatch").read_text(),
        name="peak",
        job_dir="/scratch/me/bumps-jobs/peak-1",
        python="/opt/venv/bin/python",
        resources={"partition": "debug", "time": "00:10:00", "nodes": 1, "ntasks": 4, "mem": "2G"},
        launcher="srun",
        launcher_args=["--mpi=pmi2"],
        extra=["--constraint=cpu"],
        prologue=["module load python/3.11"],
        epilogue=["echo done"],
        version="0.1.0",
        signal_grace=120,
        max_requeues=2,
    )
    args.update(overrides)
    return render_sbatch(**args)


def test_golden_file():
    assert render() == GOLDEN.read_text()


def test_directives_sorted_and_skippable():
    lines = [line for line in render(skip=["mem", "constraint"]).splitlines() if line.startswith("#SBATCH")]
    assert lines == sorted(lines)
    assert not any("--mem" in line or "--constraint" in line for line in lines)


def test_mpirun_launcher_gets_ntasks():
    text = render(launcher="mpirun", launcher_args=["--bind-to", "core"])
    assert (
        'mpirun --bind-to core -n "${SLURM_NTASKS}" /opt/venv/bin/python -m mpi4py -m bumps_mpi.job' in text
    )


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize("setting", ["partition", "account", "time", "mem", "mail_user"])
def test_hostile_directive_values_refused(setting, value):
    with pytest.raises(UsageError, match=setting):
        render(resources={setting: value})


def test_slurm_mail_is_passed_through(isolated):
    """`submit --mail-type/--mail-user`: Slurm's own mail when the job ends (checked, then written as is)."""
    from conftest import EXAMPLE, cli

    proc = cli("submit", EXAMPLE, "--dry-run", "--mail-type", "END,FAIL", "--mail-user", "me@lab.example")
    assert proc.returncode == 0, proc.stderr
    assert (
        "#SBATCH --mail-type=END,FAIL\n" in proc.stdout
        and "#SBATCH --mail-user=me@lab.example\n" in proc.stdout
    )
    assert "--mail" not in render()


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_job_name_refused(value):
    with pytest.raises(UsageError, match="name"):
        render(name=value)


@pytest.mark.parametrize(
    "value, why",
    [
        ("--constraint=a b", "as 2 options"),  # sbatch splits #SBATCH lines on spaces: a second option
        ("--comment=x --array=1-9", "as 2 options"),
        ("--x=1\n#SBATCH --y", "line break"),
        ("--x=1\r--y", "line break"),
        ("constraint=cpu", "long option"),
        ("-C cpu", "long option"),
        ("--comment='open", "quotation"),
        ("--comment=a#b", "unquoted #"),
    ],
)
def test_extra_directive_sbatch_would_misread_is_refused(value, why):
    with pytest.raises(UsageError, match=f"extra directive.*{why}"):
        render(extra=[value])


@pytest.mark.parametrize(
    "value",
    [
        "--signal=USR1@10",
        "--sig=USR1@10",  # sbatch takes unambiguous abbreviations of long options
        "--requeue",
        "--no-requeue",
        "--output=/tmp/x.out",
        "--out=x",
        "--error=err.txt",
        "--open-mode=truncate",
        "--array=0-9",
        "--arr=1",
        "--job-name=x",
        "--chdir=/tmp",
        "--wrap=id",
        "--test-only",
        "--wait",
    ],
)
def test_extra_directive_cannot_replace_what_the_job_relies_on(value):
    with pytest.raises(UsageError, match=r"is not allowed: bumps-mpi sets --"):
        render(extra=[value])


@pytest.mark.parametrize("value", ["--time=5", "--part=debug", "--ntasks=9"])
def test_extra_directive_for_a_setting_names_the_setting(value):
    with pytest.raises(UsageError, match="use the .* setting"):
        render(extra=[value])


@pytest.mark.parametrize(
    "value",
    [
        "--exclude=cn[01-03]",
        "--constraint=intel|amd",
        "--gres=gpu:2",
        "--comment='two words'",
        "--comment='issue #9'",
        "--exclusive",
    ],
)
def test_ordinary_slurm_syntax_in_extra_is_written_verbatim(value):
    assert f"\n#SBATCH {value}\n" in render(extra=[value])


@pytest.mark.parametrize("option", ["signal", "requeue", "output", "open-mode", "job-name", "--signal"])
def test_skip_cannot_remove_what_the_job_relies_on(option):
    with pytest.raises(UsageError, match="bumps-mpi needs this directive"):
        render(skip=[option])


def test_skip_of_an_unknown_directive_is_an_error():
    with pytest.raises(UsageError, match="skip 'memory': no such directive.*mem"):
        render(skip=["memory"])


def test_prologue_is_shell_written_verbatim():
    """Documented: prologue and epilogue lines are shell, written as given (the site's or user's own)."""
    text = render(prologue=["module load x && source $HOME/env"], epilogue=["echo $SLURM_JOB_ID"])
    assert "\nmodule load x && source $HOME/env\n" in text and "\necho $SLURM_JOB_ID\n" in text


@pytest.mark.parametrize("job_dir", [d for d in HOSTILE if "\n" not in d])
def test_hostile_paths_are_quoted_and_inert(tmp_path, job_dir):
    """The script sees the path as one word; bash runs nothing from it (checked by running bash)."""
    python = str(tmp_path / "py; touch pwned")
    job_dir = f"{job_dir}/peak-1"  # the jobs directory is the user's choice; a job directory's name is ours
    text = render(job_dir=job_dir, python=python, launcher="echo", launcher_args=[], prologue=[], epilogue=[])
    text = text.replace('cd "$CONTROL_DIR" ||', "true ||")  # the directory need not exist for this check
    proc = subprocess.run(["bash", "-c", text], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{python} -m mpi4py -m bumps_mpi.job {job_dir}"
    assert not (tmp_path / "pwned").exists() and not Path("/tmp/bumps-mpi-pwned").exists()


def test_job_dir_with_newline_refused():
    with pytest.raises(UsageError, match="line break"):
        render(job_dir="/tmp/a\nb")


def test_srun_always_kills_the_step_when_a_rank_dies():
    """Else a killed rank leaves the others waiting in MPI until the time limit (seen on the test cluster)."""
    assert "srun --mpi=pmi2 --kill-on-bad-exit=1 " in render()
    assert render(launcher_args=["-K0"]).count("kill-on-bad-exit") == 0  # the site chose otherwise


@pytest.mark.parametrize(
    ("time", "grace", "expected"),
    [
        ("00:10:00", 120, 120),
        ("1", 120, 30),
        ("1", 15, 15),
        ("2-00:00:00", 300, 300),
        (None, 120, 120),
        ("0", 120, 120),  # Slurm: no limit
        ("UNLIMITED", 120, 120),
    ],
)
def test_time_limit_signal_leaves_room_to_checkpoint(time, grace, expected):
    """Slurm warns the batch shell (B:) *grace* s before the limit, never more than half the limit."""
    text = render(resources={"time": time, "ntasks": 2}, signal_grace=grace)
    assert f"#SBATCH --signal=B:USR1@{expected}\n" in text
    assert "#SBATCH --requeue\n" in text


def test_signal_grace_must_be_positive():
    with pytest.raises(UsageError, match="signal_grace"):
        render(signal_grace=0)


@pytest.mark.parametrize("campaign_dir", [d for d in HOSTILE if "\n" not in d])
def test_array_script_runs_each_task_in_its_own_fit_directory(tmp_path, campaign_dir):
    """A campaign's array: each task's JOB_DIR is fits/<task> under the quoted campaign directory."""
    text = render(
        job_dir=campaign_dir, array="0-5%2", launcher="echo", launcher_args=[], prologue=[], epilogue=[]
    )
    assert "#SBATCH --array=0-5%2" in text
    assert "#SBATCH --output=fits/.bumps-control/%a/slurm-%A_%a.out" in text  # never the model's to replace
    # a task requeues itself by its task id: a task's raw id may be the array's own, which names every task
    assert 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in text
    text = text.replace('cd "$CONTROL_DIR" ||', "true ||")
    env = {"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "4"}
    proc = subprocess.run(["bash", "-c", text], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"-m bumps_mpi.job {campaign_dir}/fits/4")
    assert not Path("/tmp/bumps-mpi-pwned").exists()


def test_array_size_is_checked_like_any_directive():
    with pytest.raises(UsageError, match="max_running"):
        render(array="0-5%2; touch x")

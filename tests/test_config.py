"""Site configuration: command line > environment > user file > packaged defaults."""

from __future__ import annotations

import pytest

from bumps_mpi.config import load_settings
from bumps_mpi.errors import UsageError

USER_FILE = """
default_profile = "cpu"
[profiles.default]
time = "02:00:00"
account = "lab"
[profiles.cpu]
partition = "compute"
ntasks = 8
prologue = ["module load python"]
[profiles.debug]
partition = "debug"
ntasks = 2
"""


@pytest.fixture
def user_file(isolated, monkeypatch):
    path = isolated / "site.toml"
    path.write_text(USER_FILE)
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(path))
    return path


def test_packaged_defaults_alone():
    settings = load_settings()
    assert settings["launcher"] == "srun" and settings["ntasks"] == 2 and settings["profile"] == "default"


def test_user_file_over_defaults(user_file):
    settings = load_settings()
    assert settings["profile"] == "cpu"
    assert (settings["partition"], settings["ntasks"], settings["time"]) == ("compute", 8, "02:00:00")
    assert settings["launcher"] == "srun"  # from the packaged defaults
    assert settings["prologue"] == ["module load python"]


def test_environment_over_user_file(user_file, monkeypatch):
    monkeypatch.setenv("BUMPS_MPI_PARTITION", "short")
    monkeypatch.setenv("BUMPS_MPI_NTASKS", "16")
    settings = load_settings()
    assert (settings["partition"], settings["ntasks"], settings["account"]) == ("short", 16, "lab")


def test_command_line_over_environment(user_file, monkeypatch):
    monkeypatch.setenv("BUMPS_MPI_PARTITION", "short")
    settings = load_settings("debug", {"partition": "gpu", "ntasks": None})
    assert (settings["profile"], settings["partition"], settings["ntasks"]) == ("debug", "gpu", 2)


def test_profile_from_environment(user_file, monkeypatch):
    monkeypatch.setenv("BUMPS_MPI_PROFILE", "debug")
    assert load_settings()["partition"] == "debug"


def test_unknown_profile_names_the_known_ones(user_file):
    with pytest.raises(UsageError, match="unknown profile 'gpu'.*cpu, debug, default"):
        load_settings("gpu")


@pytest.mark.parametrize(
    "text, error",
    [
        ('[profiles.default]\npartiton = "x"\n', "unknown setting 'partiton'"),
        ('[profiles.default]\nntasks = "eight"\n', "ntasks must be a whole number"),
        ("[profiles.default\n", "site configuration"),  # broken TOML: still one line
    ],
    ids=["unknown-setting", "wrong-type", "broken-toml"],
)
def test_a_bad_site_file_is_a_usage_error(isolated, monkeypatch, text, error):
    path = isolated / "site.toml"
    path.write_text(text)
    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(path))
    with pytest.raises(UsageError, match=error):
        load_settings()


def test_example_file_is_valid(monkeypatch):
    from bumps_mpi.config import slurm_dir

    monkeypatch.setenv("BUMPS_MPI_CONFIG", str(slurm_dir() / "site.example.toml"))
    settings = load_settings("debug")
    assert settings["qos"] == "debug" and settings["skip"] == ["mem"] and settings["account"] == "my-project"

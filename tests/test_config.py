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


@pytest.mark.parametrize("ports", ["80-90", "40000", "50000-40000", "1024-65535", "a-b"])
def test_a_bad_mpi_port_range_is_one_line_saying_what_to_give(ports):
    from bumps_mpi.front.validation import check_resources

    with pytest.raises(
        UsageError, match=r"sandbox.mpi.ports=.*give LOW-HIGH, TCP ports between 1024 and 65535"
    ):
        check_resources({"sandbox_mpi_ports": ports})


def test_the_mpi_ports_reach_the_request_and_mpi(isolated):
    """The packaged range goes into the job's request, and from it into the environment MPI reads."""
    from bumps_mpi.sandbox.policy import mpi_environment, mpi_ports

    assert load_settings()["sandbox_mpi_ports"] == "40000-40999"
    ports = mpi_ports({"sandbox": {"mpi_ports": [40000, 40999]}})
    assert ports[0] == 40000 and ports[-1] == 40999 and len(ports) == 1000
    assert mpi_environment(2, ports)["UCX_TCP_PORT_RANGE"] == "40000-40999"
    assert "UCX_TCP_PORT_RANGE" not in mpi_environment(1, ports)  # one node: no TCP at all
    assert mpi_ports({"sandbox": {}}) == [] and mpi_ports({}) == []  # a request from before the range

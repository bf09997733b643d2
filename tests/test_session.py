"""Bumps' own viewer (issue 22): a finished fit leaves a Bumps session file that Bumps' own command line
and loader read, with the chi-square and parameters `results` gives; `bumps-submit open` serves Bumps'
webview on it, confined, on loopback only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import EXAMPLE, SMALL_DREAM, cli, cli_json, fake_job, one_line_error, wait_until
from service_helpers import free_port


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mpiexec):
    jobs = tmp_path_factory.mktemp("session-jobs")
    done = cli("submit", EXAMPLE, *SMALL_DREAM, "--local", "-n", "2", "--jobs-dir", jobs, "--json",
               env={"BUMPS_MPI_REGISTRY": str(jobs / "registry.jsonl")})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return Path(json.loads(done.stdout)["job_dir"])


@pytest.mark.mpi_launch
def test_bumps_own_command_line_and_loader_read_the_session_of_a_finished_fit(finished, tmp_path):
    from bumps.fitters import load_fit_from_session

    found = cli_json("results", finished)
    assert found["session"] == "session.h5" and (finished / "session.h5").is_file()
    said = subprocess.run(
        [Path(sys.executable).parent / "bumps", "--read-session", finished / "session.h5", "--chisq"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert said.returncode == 0, said.stderr
    assert f"chisq {found['chisq_str']}" in said.stdout.splitlines(), said.stdout
    problem, fit = load_fit_from_session(finished / "session.h5")
    assert list(problem.labels()) == [p["name"] for p in found["parameters"]]
    assert np.allclose(fit.x, [p["best"] for p in found["parameters"]], rtol=1e-12, atol=0)
    assert fit.state is not None and fit.state.draw().points.shape[1] == len(found["parameters"])  # DREAM's


@pytest.mark.mpi_launch
def test_open_serves_bumps_viewer_confined_on_loopback(finished, landlock_abi):
    port = free_port()
    viewer = subprocess.Popen(
        [sys.executable, "-m", "bumps_mpi", "open", str(finished), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:

        def serving() -> bool:
            assert viewer.poll() is None, viewer.stderr.read()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(serving, "Bumps' viewer to answer", timeout=120, every=0.5)
        listening = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True
        ).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"], listening
        pid = int(listening.split("pid=")[1].split(",")[0])
        status = Path(f"/proc/{pid}/status").read_text()
        assert "NoNewPrivs:\t1" in status  # confined (Landlock needs no_new_privs)
    finally:
        viewer.send_signal(signal.SIGINT)
        viewer.wait(timeout=30)
    assert f"http://127.0.0.1:{port}/" in viewer.stdout.read()
    assert "TCP bind only on " + str(port) in viewer.stderr.read()


def test_open_without_a_session_says_so(isolated):
    job = fake_job(isolated / "jobs" / "old")
    one_line_error(cli("open", job), "no Bumps session", "session.h5")

"""Figures and report.html: Bumps' own plots of real fits, a page that is safe and self-contained.

Real local MPI fits; the report is parsed with the standard library's HTML
parser and opened in Debian's headless Chromium (driven by Selenium) to check
that its images really load.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    EXAMPLE,
    FAILING_FIT,
    MODELS,
    SMALL_DREAM,
    ParsedPage,
    check_figures_and_report,
    chromium,
    cli,
    cli_json,
    png_size,
    wait_until,
)

SLOW = MODELS / "slow_peak.py"


@pytest.mark.mpi_launch
def test_a_dream_fit_draws_its_figures_and_writes_its_report(isolated, mpiexec):
    record = cli_json("submit", EXAMPLE, "--local", *SMALL_DREAM, "--jobs-dir", isolated / "jobs")
    assert record["state"] == "COMPLETED", record
    job_dir = Path(record["job_dir"])
    page = check_figures_and_report(job_dir)
    assert "COMPLETED" in page.all_text and "68% interval" in page.all_text
    found = cli_json("results", job_dir)
    assert found["report"] == str(job_dir / "report.html") and len(found["figures"]) >= 5
    shown = cli("results", job_dir)
    assert f"report:    {job_dir / 'report.html'}" in shown.stdout

    # plot again, in another format and place: the job's own figures stay as they are
    before = (job_dir / "figures" / "model0.png").read_bytes()
    svgs = isolated / "svgs"
    drawn = cli_json("plot", job_dir, "--format", "svg", "--out", svgs)
    assert drawn["source"]["kind"] == "result" and drawn["problems"] == []
    for figure in drawn["figures"]:
        assert (svgs / figure["file"]).read_text().lstrip().startswith("<?xml")
    assert (job_dir / "figures" / "model0.png").read_bytes() == before


@pytest.mark.mpi_launch
def test_names_from_the_model_stay_text(isolated, mpiexec):
    """Names from the model that are markup: shown as text, never elements; no escapes on the terminal."""
    record = cli_json(
        "submit",
        MODELS / "hostile_names.py",
        "--local",
        "--samples",
        "2000",
        "--name",
        "hostile",
        "--jobs-dir",
        isolated / "jobs",
    )
    assert record["state"] == "COMPLETED", record
    job_dir = Path(record["job_dir"])
    page = ParsedPage((job_dir / "report.html").read_text())
    assert not page.elements("script")
    assert [img for img in page.elements("img") if not img["src"].startswith("data:image/png")] == []
    assert '<script>alert("a")</script>' in page.all_text
    assert "b & 'quoted' \"too\" <img src=x onerror=alert(1)>" in page.all_text
    shown = cli("results", job_dir)
    assert (
        shown.returncode == 0 and "\x1b" not in shown.stdout and '<script>alert("a")</script>' in shown.stdout
    )


@pytest.mark.mpi_launch
def test_a_failed_fit_is_plotted_at_its_start_and_reported_with_its_traceback(isolated, mpiexec):
    failed = cli(
        "submit", MODELS / "fails_in_fit.py", *FAILING_FIT, "--local", "--json", "--jobs-dir", isolated
    )
    record = json.loads(failed.stdout)
    assert record["state"] == "FAILED"
    job_dir = Path(record["job_dir"])
    drawn = cli("plot", job_dir)
    assert drawn.returncode == 0, drawn.stderr
    assert "note: drawn at the model's starting point: the fit failed" in drawn.stderr
    assert drawn.stdout.strip().splitlines() == [str(job_dir / "figures" / "model0.png")]
    done = cli_json("report", job_dir)
    page = ParsedPage(Path(done["report"]).read_text())
    assert (
        "model exploded at height=" in page.all_text and "Traceback (most recent call last)" in page.all_text
    )
    assert "at the model's starting point" in page.all_text and "FAILED" in page.all_text


@pytest.mark.mpi_launch
def test_a_running_then_stopped_fit_is_drawn_from_its_checkpoint(isolated, mpiexec):
    job_dir = isolated / "job"
    args = [
        "submit",
        SLOW,
        "--samples",
        "40000",
        "--seed",
        "2",
        "--local",
        "--job-dir",
        job_dir,
        "--",
        "0.002",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bumps_mpi", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until((job_dir / "progress.json").exists, "the fit to start", timeout=120)
        assert cli("checkpoint", job_dir).returncode == 0
        wait_until((job_dir / "checkpoint.h5").exists, "the checkpoint asked for", timeout=120)
        drawn = cli_json("plot", job_dir)
        assert drawn["source"]["kind"] == "checkpoint", drawn
        assert drawn["source"]["label"].endswith("the fit is still running")
        assert {"model0.png", "dream-vars.png", "dream-logp.png"} <= {f["file"] for f in drawn["figures"]}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert cli_json("status", job_dir)[0]["state"] == "CANCELLED"
    done = cli_json("report", job_dir)
    assert done["source"]["label"].endswith("the fit stopped there"), done
    page = ParsedPage(Path(done["report"]).read_text())
    assert "from the checkpoint at step" in page.all_text and "CANCELLED" in page.all_text
    assert len(page.elements("img")) >= 5


@pytest.mark.mpi_launch
def test_the_report_renders_in_a_real_browser(isolated, mpiexec, tmp_path):
    record = cli_json("submit", EXAMPLE, "--local", *SMALL_DREAM, "--jobs-dir", isolated / "jobs")
    report = Path(record["job_dir"]) / "report.html"
    browser = chromium()
    try:
        browser.get(report.as_uri())
        script = "return Array.from(document.images).map(i => [i.complete, i.naturalWidth])"
        images = wait_until(
            lambda: (found := browser.execute_script(script)) and all(done for done, _ in found) and found,
            "the report's images to load",
            timeout=30,
            every=0.1,
        )
        assert len(images) >= 5 and all(width > 0 for _, width in images), images
        assert browser.title.startswith("peak: bumps-mpi report")
        screenshot = tmp_path / "report.png"
        browser.save_screenshot(str(screenshot))
        print(f"screenshot of the report: {screenshot}")
        assert png_size(screenshot.read_bytes())[0] > 0
    finally:
        browser.quit()

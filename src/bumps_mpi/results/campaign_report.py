"""A campaign's results to look at: every fitted parameter across the series of fits, as sasmodels'
batch_fit.py ends, in one self-contained page (report.html in the campaign directory) and as figures.

One figure per parameter: each fit's best value with its 68 % interval (from
DREAM's draws when the fit drew its figures, else mean ± std) against the
fit's label, in campaign order; labels that each hold one number (T20.dat,
"--temperature 35", a scan number) go on a numeric axis. Then the chi-square of
every fit, the table, a link to each fit's own report, and the fits without a
result marked with why. Values come from the fits' result files, which their
models could write: each is taken only if it is a finite number, and every
string (parameter names, labels, errors) is escaped in the page and drawn by
matplotlib as plain text (no mathtext).
"""

from __future__ import annotations

import base64
import io
import math
import os
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from ..jobdir import REPORT_FILE, JobDir, write_atomic
from .figures import manifest_of
from .report import POLICY, STYLE

# a sign only where it starts a word: the dash of "peak-100K" joins words, "-35" or "x=-35" is negative
NUMBER = re.compile(r"(?:(?<![\w.])[-+])?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
MAX_PARAMETERS = 50  # figures at most: more names than this are not a model's parameters but a flood
MAX_NAME = 200  # characters of a parameter's name or a label shown
FAILED_COLOUR = "tab:red"


@dataclass
class Series:
    """What the figures show: one position per fit, and per parameter its points."""

    labels: list[str]
    positions: list[float]
    numeric: bool
    chisq: list[float | None]
    parameters: dict[str, list[tuple[float, float, float] | None]] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)  # positions' indices of fits without a result


def label_number(label: str) -> float | None:
    """The one number in a label's last part without its extension (T20.dat -> 20), else None."""
    text = label.rstrip("/")
    text = os.path.basename(text) if "/" in text else text
    stem, extension = os.path.splitext(text)
    if extension[1:] and not extension[1:].isdigit():  # .dat, .h5: not the 5 of "35.5"
        text = stem
    found = NUMBER.findall(text.replace("_", " "))
    return float(found[0]) if len(found) == 1 else None


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def series(rows: list[dict[str, Any]]) -> Series:
    """The campaign table (bumps_mpi.front.campaign_table.table) as the figures' points."""
    labels = [str(row.get("label"))[:MAX_NAME] for row in rows]
    numbers = [label_number(label) for label in labels]
    numeric = len(rows) > 1 and None not in numbers and len(set(numbers)) == len(numbers)
    positions = [float(n or 0.0) for n in numbers] if numeric else [float(i) for i in range(len(rows))]
    out = Series(labels, positions, numeric, [_finite(row.get("chisq")) for row in rows])
    names = list(dict.fromkeys(str(n)[:MAX_NAME] for row in rows for n in row.get("parameters", {})))
    names = names[:MAX_PARAMETERS]  # the fits' result files are their models' to write
    for i, row in enumerate(rows):
        if row.get("chisq") is None:
            out.failed.append(i)
        stats = _draw_stats(row)
        for name in names:
            out.parameters.setdefault(name, []).append(
                _point(row.get("parameters", {}).get(name), stats.get(name))
            )
    return out


def _draw_stats(row: dict[str, Any]) -> dict[str, Any]:
    """The fit's own statistics from DREAM's draws (its figures' manifest), by parameter name."""
    if not row.get("job_dir") or row.get("chisq") is None:
        return {}
    manifest = manifest_of(JobDir(row["job_dir"])) or {}
    if manifest.get("source", {}).get("kind") != "result":
        return {}
    return {str(s.get("name")): s for s in manifest.get("stats") or [] if isinstance(s, dict)}


def _point(values: Any, stats: Any) -> tuple[float, float, float] | None:
    """(best, low, high) of the 68 % interval: the draws' when known, else mean ± std."""
    if not isinstance(values, dict):
        return None
    best = _finite(values.get("best"))
    if best is None:
        return None
    interval = stats.get("p68") if isinstance(stats, dict) else None
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        low, high = _finite(interval[0]), _finite(interval[1])
    else:
        mean, std = _finite(values.get("mean")), _finite(values.get("std"))
        low, high = (mean - std, mean + std) if mean is not None and std is not None else (None, None)
    if low is None or high is None:
        low = high = best
    return best, min(low, best), max(high, best)


def draw(points: Series, fmt: str = "png") -> dict[str, bytes]:
    """Each figure's file name and bytes: NN-<parameter>.<fmt> in the table's order, then chisq.<fmt>."""
    import matplotlib

    matplotlib.use("Agg")
    with matplotlib.rc_context():  # Matplotlib's own defaults: no matplotlibrc from here, no TeX
        matplotlib.rcdefaults()
        matplotlib.rcParams["text.usetex"] = False
        return _draw(points, fmt)


def _draw(points: Series, fmt: str) -> dict[str, bytes]:
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    panels = [
        (f"{i + 1:02d}-{_file_part(name)}", name, values)
        for i, (name, values) in enumerate(points.parameters.items())
    ]
    panels.append(("chisq", "chi-square", [None if c is None else (c, c, c) for c in points.chisq]))
    for file, name, values in panels:
        figure, axes = plt.subplots(figsize=(7, 3.6), dpi=100)
        try:
            shown = [(x, v) for x, v in zip(points.positions, values, strict=True) if v is not None]
            if shown:
                xs = [x for x, _ in shown]
                best = [v[0] for _, v in shown]
                below = [v[0] - v[1] for _, v in shown]
                above = [v[2] - v[0] for _, v in shown]
                axes.errorbar(
                    xs,
                    best,
                    yerr=[below, above],
                    fmt="o-",
                    capsize=3,
                    lw=1,
                    label="best, 68 % interval" if file != "chisq" else name,
                )
            for i in points.failed:
                axes.axvline(points.positions[i], color=FAILED_COLOUR, ls=":", lw=1.2)
            if points.failed:
                axes.plot([], [], color=FAILED_COLOUR, ls=":", label="no result")
            if file == "chisq" and shown and max(best) > 0 and max(best) / max(min(best), 1e-300) > 100:
                axes.set_yscale("log")
            axes.set_title(name, parse_math=False)
            axes.set_ylabel(name if file != "chisq" else "chi-square (reduced)", parse_math=False)
            if not points.numeric:
                axes.set_xticks(points.positions)
                ticks = axes.set_xticklabels(
                    [_short(label) for label in points.labels], rotation=30, ha="right"
                )
                for tick in ticks:
                    tick.set_parse_math(False)
                axes.set_xlabel("fit (campaign order)")
            else:
                axes.set_xlabel("the number in each fit's label")
            if shown or points.failed:
                axes.legend(fontsize=8, loc="best")
            figure.tight_layout()
            buffer = io.BytesIO()
            figure.savefig(buffer, format=fmt)
            out[f"{file}.{fmt}"] = buffer.getvalue()
        finally:
            plt.close(figure)
    return out


def _file_part(name: str) -> str:
    """A parameter's name as part of a file name: nothing that could leave the directory."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)[:40].lstrip(".") or "parameter"


def _short(label: str, width: int = 24) -> str:
    text = os.path.basename(label.rstrip("/")) or label
    return text if len(text) <= width else text[: width - 1] + "…"


def figures_to(directory: Path, rows: list[dict[str, Any]], fmt: str) -> list[Path]:
    """`plot CAMPAIGN`: the figures as files in *directory* (made if missing), each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in draw(series(rows), fmt).items():
        write_atomic(directory / name, data)
        written.append(directory / name)
    return written


def page(campaign_dir: Path, name: str, rows: list[dict[str, Any]]) -> str:
    """The campaign's report.html text."""
    points = series(rows)
    titles = [*points.parameters, "chi-square of every fit"]
    images = draw(points, "png")
    figures = "".join(
        f"<figure><img src='data:image/png;base64,{base64.b64encode(data).decode('ascii')}' "
        f"alt='{escape(title, quote=True)}'><figcaption>{escape(title)}</figcaption></figure>"
        for title, data in zip(titles, images.values(), strict=True)
    )
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row.get("state"))] = counts.get(str(row.get("state")), 0) + 1
    summary = ", ".join(f"{n} {escape(state)}" for state, n in sorted(counts.items()))
    axis = (
        "Each fit is placed at the number in its label."
        if points.numeric
        else "Fits are shown in campaign order, by label."
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{POLICY}\">"
        f"<title>{escape(name)}: campaign report</title><style>{STYLE}</style></head><body>"
        f"<h1>{escape(name)}</h1><p>{len(rows)} fits: {summary}</p>"
        f"<h2>Parameters across the campaign</h2><p>Best value and 68 % interval of every fitted parameter "
        f"(from DREAM's draws where the fit drew them, else mean ± std); fits without a result are dotted "
        f"red lines. {axis}</p>{figures}"
        f"<h2>Fits</h2>{_table(campaign_dir, rows, list(points.parameters))}"
        "<footer>Written by bumps-submit results. Open each fit's own report for its figures.</footer>"
        "</body></html>\n"
    )


def _table(campaign_dir: Path, rows: list[dict[str, Any]], names: list[str]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in ("fit", "label", "state", "chi-square", *names, "report"))
    body = []
    for row in rows:
        cells = []
        for name in names:
            value = row.get("parameters", {}).get(name) or {}
            best, std = _finite(value.get("best")), _finite(value.get("std"))
            cells.append(f"<td class='num'>{'–' if best is None else f'{best:.5g}'}"
                         f"{'' if std is None else f' ± {std:.2g}'}</td>")  # fmt: skip
        chisq = _finite(row.get("chisq"))
        index, label, state = (escape(str(row.get(k))) for k in ("index", "label", "state"))
        shown = "–" if chisq is None else f"{chisq:.4g}"
        body.append(
            f"<tr><td class='num'>{index}</td><td>{label}</td>"
            f"<td><span class='state {state}'>{state}</span></td><td class='num'>{shown}</td>"
            f"{''.join(cells)}<td>{_report_link(campaign_dir, row)}</td></tr>"
        )
        if row.get("error"):
            error = escape(str(row["error"]))
            body.append(f"<tr><td></td><td colspan='{len(names) + 4}' class='note'>{error}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _report_link(campaign_dir: Path, row: dict[str, Any]) -> str:
    """A relative link to the fit's report.html, if it is a real file there (never through a link)."""
    if not row.get("job_dir"):
        return ""
    report = Path(row["job_dir"]) / REPORT_FILE
    if report.is_symlink() or not report.is_file():
        return ""
    href = os.path.relpath(report, campaign_dir)
    return f"<a href='{escape(href, quote=True)}'>report</a>"


def write(campaign_dir: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """report.html in the campaign directory (its own, not a fit's: the model cannot write it)."""
    path = campaign_dir / REPORT_FILE
    write_atomic(path, page(campaign_dir, name, rows))
    return path

"""The fit's figures, drawn by Bumps' (and refl1d's) own plotting code after the fit, never during it.

What is drawn: the model against the data with residuals (`problem.plot`, which
refl1d extends with the profile), and for DREAM the parameter histograms, the
traces, the log-likelihood convergence, the correlations, the parallel
coordinates and, where the model's plugin supports it, the model's uncertainty
band (`bumps.dream.views.plot_all`, `bumps.errplot`), plus the statistics of
each parameter (best, mean, median, std, 68% and 95% intervals). A manifest,
figures.json, lists them with where they came from.

Where from: a completed fit draws from its final state at the job's end (rank
0, after result.json is safe: a drawing failure never fails the fit). `plot`
and `report` on the login node draw in a child process (bumps_mpi.sandbox.child: the
model's plot code is the user's code) from the exports, or for a running,
stopped or failed fit from its last checkpoint, or else at the model's starting
point, and every such figure says so.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ..jobdir import (
    CHECKPOINT_FILE,
    DEFAULT_MAX_READ_BYTES,
    EXPORT_DIR,
    FIGURES_DIR,
    FIGURES_MANIFEST,
    RESULT_FILE,
    JobDir,
    read_regular,
    write_json,
)

FORMATS = ("png", "svg", "pdf")
FIGURE_MAX_BYTES = 32 << 20  # a figure larger than this is not taken (Bumps' PNGs are tens of KB)
TITLES = {  # what each of Bumps' figures shows, for captions
    "vars": "Posterior distribution of each parameter",
    "corr": "Correlations between parameters",
    "trace": "Parameter traces",
    "acceptance": "acceptance",
    "logp": "Log-likelihood convergence",
    "parcor": "Parallel coordinates of the draws",
    "errors": "Model uncertainty from the posterior draws",
}


def export_name(problem: Any) -> str:
    """The file prefix of Bumps' exports for *problem* (also used to find them again)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in (problem.name or "model"))


def draw(problem: Any, best: Any, state: Any, out: Path, fmt: str, source: dict[str, Any]) -> dict[str, Any]:
    """Draw every figure of one fit into the directory *out* (which must exist); returns the manifest.

    *state* is DREAM's (None for other fitters); *source* says where the values come
    from ({"kind": "result" | "checkpoint" | "start", "label": ...}), and a figure
    not drawn from the final result carries that label on it. One figure that
    fails (the model's own plot code, say) is reported in `problems`; the rest
    are drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no display on a node or a login shell
    import matplotlib.pyplot as plt

    started = time.perf_counter()
    note = None if source["kind"] == "result" else source["label"]
    original_savefig = plt.savefig

    def savefig(*args: Any, **kwargs: Any) -> Any:  # every figure not from the final result says so
        if note:
            plt.gcf().text(0.5, 0.005, note, ha="center", va="bottom", fontsize=9, color="firebrick")
        return original_savefig(*args, **kwargs)

    figures: list[dict[str, str]] = []
    problems: list[str] = []
    stats = None
    plt.rcParams["savefig.format"] = fmt
    plt.close("all")
    plt.savefig = savefig  # Bumps' views call plt.savefig themselves
    try:
        figures += _draw_models(problem, best, out, fmt, problems)
        if state is not None:
            stats = _statistics(state, problems)
            figures += _draw_dream(problem, state, out, fmt, problems)
    finally:
        plt.savefig = original_savefig
        plt.close("all")
    return {
        "format": fmt,
        "source": source,
        "figures": figures,
        "stats": stats,
        "problems": problems,
        "seconds": round(time.perf_counter() - started, 3),
        "drawn": time.time(),
    }


def _draw_models(problem: Any, best: Any, out: Path, fmt: str, problems: list[str]) -> list[dict[str, str]]:
    """problem.plot: one figure per model (refl1d adds the profile), saved here in any format."""
    import matplotlib.pyplot as plt

    figures = []
    try:
        problem.setp(best)
        problem.plot(fignum=1, figfile=None)  # leaves one figure per model open
        models = list(problem.models)
        names = [getattr(m, "name", None) or f"model {i + 1}" for i, m in enumerate(models)]
        if len(models) == 1 and not getattr(models[0], "name", None):
            names = [problem.name or "the model"]
        for index, number in enumerate(plt.get_fignums()):
            label = names[index] if index < len(names) else f"model {index + 1}"
            path = out / f"model{index}.{fmt}"
            plt.figure(number)
            plt.savefig(path, format=fmt)
            figures.append(
                {"name": path.stem, "file": path.name, "title": f"{label}: the model and the data"}
            )
    except Exception as exc:  # the model's own plot code: say so, draw the rest
        problems.append(f"model plot: {type(exc).__name__}: {exc}")
    plt.close("all")
    return figures


def _statistics(state: Any, problems: list[str]) -> list[dict[str, Any]] | None:
    from bumps.dream.stats import var_stats

    try:
        return [_stat(v) for v in var_stats(state.draw())]
    except Exception as exc:
        problems.append(f"statistics: {type(exc).__name__}: {exc}")
        return None


def _draw_dream(problem: Any, state: Any, out: Path, fmt: str, problems: list[str]) -> list[dict[str, str]]:
    """DREAM's own views (histograms, traces, convergence, correlations, coordinates), then the
    model's uncertainty band where its plugin draws one (refl1d does)."""
    import matplotlib.pyplot as plt
    from bumps.dream.views import plot_all

    try:
        plot_all(state, figfile=str(out / "dream"))  # dream-vars, -trace, -logp, -corr, -parcor, -err.json
    except Exception as exc:
        problems.append(f"DREAM views: {type(exc).__name__}: {exc}")
    plt.close("all")
    (out / "dream-err.json").unlink(missing_ok=True)  # the same statistics are in the manifest
    try:
        from bumps import errplot

        _install_plugin(problem)
        errors = errplot.calc_errors(problem, errplot.error_points_from_state(state))
        if errors is not None:
            plt.figure()
            errplot.show_errors(errors)
            plt.savefig(out / f"dream-errors.{fmt}", format=fmt)
    except Exception as exc:
        problems.append(f"uncertainty plot: {type(exc).__name__}: {exc}")
    plt.close("all")
    order = list(TITLES)

    def rank(path: Path) -> int:
        return order.index(_kind(path)) if _kind(path) in order else len(order)

    return [
        {"name": p.stem, "file": p.name, "title": TITLES.get(_kind(p), _kind(p))}
        for p in sorted(out.glob(f"dream-*.{fmt}"), key=rank)
        if _kind(p) in TITLES and p.is_file() and not p.is_symlink()  # only what plot_all draws, never a link
    ]


# Model packages whose Bumps plugin draws the uncertainty band (what their own command line installs)
PLUGINS = {"refl1d": "refl1d.bumps_interface.fitplugin"}


def _install_plugin(problem: Any) -> None:
    """Install the Bumps plugin of the package the models come from, as its own command line does."""
    import importlib

    import bumps.plugin

    packages = {type(model).__module__.split(".")[0] for model in problem.models}
    for package in sorted(packages & set(PLUGINS)):
        try:
            plugin = importlib.import_module(PLUGINS[package])
        except ImportError:  # another version of the package: no band, the rest is drawn
            continue
        for symbol in bumps.plugin.__all__:  # what bumps.cli.install_plugin does
            if hasattr(plugin, symbol):
                setattr(bumps.plugin, symbol, getattr(plugin, symbol))


def _kind(path: Path) -> str:
    return path.stem.removeprefix("dream-")


def _stat(v: Any) -> dict[str, Any]:
    def number(x: Any) -> float | None:
        x = float(x)
        return x if math.isfinite(x) else None

    return {
        "name": v.label,
        "best": number(v.best),
        "mean": number(v.mean),
        "median": number(v.median),
        "std": number(v.std),
        "p68": [number(v.p68_range[0]), number(v.p68_range[1])],
        "p95": [number(v.p95_range[0]), number(v.p95_range[1])],
    }


# --- where the values come from -----------------------------------------------------------------------


def _values(job: JobDir, problem: Any, state_word: str | None) -> tuple[Any, Any, dict[str, Any]]:
    """(best point, DREAM state or None, source): from the result, else the checkpoint, else the start."""
    spec = job.spec
    fit = spec.get("fit")
    result = job.result
    if result is not None:
        best = [p["best"] for p in result["parameters"]]
        state = None
        prefix = job.file(EXPORT_DIR) / export_name(problem)
        if fit == "dream" and Path(f"{prefix}-chain.mc.gz").exists():
            from bumps.dream.state import load_state

            state = load_state(f"{prefix}.mc")  # Bumps drops the last suffix: keep the name's own dots
            if spec.get("fit_options", {}).get("trim", True):
                state.portion = state.trim_portion()  # as DreamFit left it at the end of the fit
        return best, state, {"kind": "result", "label": "the fit's result"}
    saved = job.file(CHECKPOINT_FILE)
    if saved.exists():
        from ..runtime import checkpoint

        fit_state, info = checkpoint.load(saved)
        step = int(info.get("step", 0))
        why = {
            "RUNNING": "the fit is still running",
            "PENDING": "the fit waits to continue",
            "REQUEUED": "the fit waits to continue",
            "FAILED": "the fit failed after it",
        }.get(state_word or "", "the fit stopped there")
        source = {"kind": "checkpoint", "step": step, "label": f"from the checkpoint at step {step}: {why}"}
        if fit == "dream":
            return fit_state.best()[0], fit_state, source
        points = fit_state.get("point") if isinstance(fit_state, dict) else None
        if points:
            return points[0], None, source
    why = "the fit failed" if state_word == "FAILED" else "the fit has no result or checkpoint yet"
    return problem.getp(), None, {"kind": "start", "label": f"at the model's starting point: {why}"}


# --- the child that draws on the login node, and its parent -------------------------------------------


def main(argv: list[str]) -> None:
    """The child: confines itself like the job's ranks (reading the job, writing only request['out']),
    loads the model, finds the values, draws, answers the manifest."""
    from ..errors import BumpsMpiError
    from ..sandbox import child

    answer, request = child.request(argv)
    try:
        job = JobDir(request["job_dir"])
        spec = job.spec  # the request, from the control directory: read before confinement, kept
        asked = spec.get("sandbox") or {"level": "off"}
        child.confine(asked, spec["model"], Path(request["out"]), read=[request["job_dir"]])
    except BumpsMpiError as exc:
        child.reply(answer, {"ok": False, "message": str(exc)})
    from ..runtime.fit import load_model

    try:
        problem = load_model(spec["model"], spec.get("model_args", []))
        best, state, source = _values(job, problem, request.get("state"))
        manifest = draw(problem, best, state, Path(request["out"]), request["format"], source)
        write_json(Path(request["out"]) / FIGURES_MANIFEST, manifest)
        reply: dict[str, Any] = {"ok": True, "manifest": manifest}
    except BumpsMpiError as exc:
        reply = {"ok": False, "message": str(exc)}
    except Exception as exc:  # a checkpoint or export that cannot be read, say
        reply = {"ok": False, "message": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    child.reply(answer, reply)


def plot(job: JobDir, out: Path | None, fmt: str, state_word: str | None, timeout: float) -> dict[str, Any]:
    """Draw a job's figures in a child process into *out* (default: the job's figures/); the manifest.

    The child runs the model, confined, in a private scratch directory outside the job (which a running
    model could otherwise replace by a link, and the child would confine itself to the link's target);
    only the figures its manifest names, regular files with plain names, are then copied into place."""
    import tempfile

    from ..errors import BumpsMpiError, UsageError
    from ..runtime.threads import THREAD_VARIABLES
    from ..sandbox import child

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    destination = Path(out).absolute() if out is not None else job.file(FIGURES_DIR)
    scratch = Path(tempfile.mkdtemp(prefix="bumps-mpi-figures-"))  # the user's own, 0700
    try:
        env = {**dict.fromkeys(THREAD_VARIABLES, "1"), "MPLBACKEND": "Agg"}
        request = {"job_dir": str(job.path), "out": str(scratch), "format": fmt, "state": state_word}
        done = child.run("bumps_mpi.results.figures", request, timeout, env=env)
        answer = done.answer if isinstance(done.answer, dict) else {}
        if not answer.get("ok") or not isinstance(answer.get("manifest"), dict):
            why = answer.get("message") or (
                f"did not finish in {timeout:g} s"
                if done.timed_out
                else done.crash() or "ended without an answer"
            )
            raise BumpsMpiError(f"drawing the figures of {job.path} failed: {why}", output=done.output)
        manifest = _sane(answer["manifest"])
        try:
            install(_drawn(scratch, manifest), destination)
        except OSError as exc:
            raise BumpsMpiError(f"cannot write figures in {destination}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    manifest["directory"] = str(destination)
    return manifest


def _drawn(scratch: Path, manifest: dict[str, Any]) -> dict[str, bytes]:
    """What the child drew, by name: the figures its (sane) manifest names, each a regular file (no link
    followed, size capped), and the manifest itself. Anything else the model left there stays there."""
    found = {}
    for figure in manifest["figures"]:
        try:
            found[figure["file"]] = read_regular(scratch / figure["file"], FIGURE_MAX_BYTES)
        except OSError:
            continue
    manifest["figures"] = [f for f in manifest["figures"] if f["file"] in found]
    found[FIGURES_MANIFEST] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return found


def install(drawn: dict[str, bytes], destination: Path) -> None:
    """Put freshly drawn figures in place: a reader sees the old set or the new one, never a mix.

    *drawn* is the figures by name. Into the job's own
    figures/ they go as a whole new set, staged beside it and written through the staging directory's
    descriptor (never through a link the model put in its place); into a directory the user named, our
    files are added or replaced, nothing else."""
    import os
    import tempfile

    from ..jobdir import current_umask

    destination.parent.mkdir(parents=True, exist_ok=True)
    ours = destination.name == FIGURES_DIR and (destination.is_dir() or not destination.exists())
    staging = None
    if ours:
        staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".figures-", suffix=".tmp"))
    target = staging if staging is not None else destination
    target.mkdir(parents=True, exist_ok=True)
    no_link = os.O_NOFOLLOW if staging is not None else 0  # the user's own directory may be a link
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | no_link | os.O_CLOEXEC)
    try:
        if staging is not None:
            os.fchmod(fd, 0o777 & ~current_umask())  # mkdtemp made it 0700; never chmod through a link
        for name, data in drawn.items():
            _write_beneath(fd, name, data)
    finally:
        os.close(fd)
    if staging is None:
        return
    if destination.is_dir() and not destination.is_symlink():  # ours: replace the whole set
        old = destination.with_name(f".{FIGURES_DIR}-old-{os.getpid()}")
        os.rename(destination, old)
        os.rename(staging, destination)
        shutil.rmtree(old, ignore_errors=True)
        return
    if destination.is_symlink():  # the model's link in place of figures/: never followed, replaced
        destination.unlink()
    os.rename(staging, destination)


def _write_beneath(directory: int, name: str, data: bytes) -> None:
    """One file in the directory open as *directory*, by a plain name, replaced whole, no link followed."""
    import os

    if "/" in name or name in ("", ".", ".."):
        raise OSError(22, f"not a plain file name: {name!r}")
    partial = f".{name}.{os.getpid()}.partial"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with os.fdopen(os.open(partial, flags, 0o666, dir_fd=directory), "wb") as handle:
        handle.write(data)
    os.replace(partial, name, src_dir_fd=directory, dst_dir_fd=directory)


def in_job(jobdir: JobDir, problem: Any, best: Any, state: Any) -> dict[str, Any]:
    """At the job's end, on rank 0: the final figures, drawn from the fit still in memory."""
    import tempfile

    scratch = Path(tempfile.mkdtemp(dir=jobdir.path, prefix=".figures-", suffix=".tmp"))
    try:
        manifest = draw(problem, best, state, scratch, "png", {"kind": "result", "label": "the fit's result"})
        write_json(scratch / FIGURES_MANIFEST, manifest)
        drawn = {p.name: p.read_bytes() for p in scratch.iterdir() if p.is_file() and not p.is_symlink()}
        install(drawn, jobdir.file(FIGURES_DIR))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest


def manifest_of(job: JobDir) -> dict[str, Any] | None:
    """The figures drawn for a job, or None; never raises for a broken manifest."""
    try:  # beneath the job directory: figures/ may be a link the model left
        data = json.loads(job.read_beneath(f"{FIGURES_DIR}/{FIGURES_MANIFEST}", DEFAULT_MAX_READ_BYTES))
    except Exception:
        return None
    return _sane(data) if isinstance(data, dict) else None


MAX_FIGURES = 50  # a manifest naming more is not one Bumps' drawing wrote


def _sane(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as bumps-mpi writes it, whatever the model put there: figures named by a plain file
    name in figures/ (each once, at most MAX_FIGURES), titles and problems as text."""
    figures, seen = [], set()
    listed = manifest.get("figures")
    for figure in listed if isinstance(listed, list) else []:
        if not isinstance(figure, dict) or not isinstance(figure.get("file"), str):
            continue
        name = Path(figure["file"]).name
        if name in seen or not name or name.startswith("."):
            continue
        seen.add(name)
        title = figure.get("title")
        figures.append({**figure, "file": name, "title": title if isinstance(title, str) else name})
    problems = manifest.get("problems")
    problems = problems if isinstance(problems, list) else []
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    return {
        **manifest,
        "figures": figures[:MAX_FIGURES],
        "problems": [str(p) for p in problems[:MAX_FIGURES]],
        "source": source,
    }


def is_final(job: JobDir, manifest: dict[str, Any] | None) -> bool:
    """True when the job's figures are PNGs drawn from its final result (nothing newer to draw)."""
    try:  # the manifest is the model's to write: any shape, any name
        return (
            manifest is not None
            and manifest.get("format") == "png"
            and manifest.get("source", {}).get("kind") == "result"
            and job.file(RESULT_FILE).exists()
            and all(
                (job.file(FIGURES_DIR) / Path(str(f["file"])).name).is_file()
                for f in manifest.get("figures", [])
            )
        )
    except (AttributeError, TypeError, KeyError):
        return False


if __name__ == "__main__":
    main(sys.argv[1:])

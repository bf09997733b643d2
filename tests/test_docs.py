"""The documentation shows what the program does: the tutorial's commands run, in its order, on the test
cluster, and print the words its pages show; the Python API's notebook runs, cell by cell; every
`bumps-submit` line shown anywhere in the docs or the README names commands and options that exist.

A page's console blocks are `$ command` lines, each followed by the output it shows (`...` elides).
The pages show the ids and directories of the run they were written from (job 4242, /home/me/...):
each is replaced by this run's as the commands print them."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TUTORIAL = ["laptop", "cluster", "results", "campaign"]  # tutorial/index.md's order
INSTALLING = ("python3 -m venv", ". ~/venvs/", "pip install")  # what the test's own venv has done already
PAGE_HOME = "/home/me"
TRANSIENT = {"PENDING", "RUNNING", "REQUEUED"}  # a state shown in passing: the cluster may be quicker today


@dataclass
class Step:
    """One `$ command` of a page and the output the page shows under it."""

    page: str
    command: str
    shown: list[str] = field(default_factory=list)


def console_steps(page: Path) -> list[Step]:
    steps: list[Step] = []
    block = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            block = line.strip() == "```console"
            continue
        if not block:
            continue
        if line.startswith("$ "):
            steps.append(Step(page.name, line[2:].strip()))
        elif steps and line.strip() != "...":
            steps[-1].shown.append(line)
    return steps


def words(lines: list[str]) -> set[str]:
    """The plain words of some lines: no numbers, paths, ids or dates, which differ from run to run."""
    found = set()
    for line in lines:
        for token in line.split():
            token = token.strip(",.:;()[]'\"")
            if len(token) > 2 and token.isalpha():
                found.add(token)
    return found


def downloads(page: Path) -> list[Path]:
    """The files a page offers with {download} (relative to the page), as paths in the checkout."""
    return [
        (page.parent / rel).resolve()
        for rel in re.findall(r"\{download\}`[^<`]*<([^>]+)>`", page.read_text())
    ]


def follow_setup(page: Path, home: Path) -> None:
    """What a page asks the reader to set up besides its commands: the files it offers for download (into
    ~/fits, data files into ~/fits/data) and the site profile it shows, as its file (the page includes it)."""
    for offered in downloads(page):
        target = home / "fits" / ("data" if offered.parent.name == "data" else "") / offered.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(offered, target)
    if "{literalinclude} site.toml" in page.read_text():
        (home / ".config" / "bumps-mpi").mkdir(parents=True)
        shutil.copy(DOCS / "tutorial" / "site.toml", home / ".config" / "bumps-mpi" / "site.toml")


class Reader:
    """Runs the steps as a reader would, in ~/fits, and maps the page's ids and directories to this run's."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env = home, env
        self.fits = home / "fits"
        self.names = {PAGE_HOME: str(home)}

    def learn(self, shown: list[str], printed: str) -> None:
        """Pair the page's job ids and directories with the ones this run printed."""
        for pattern in (
            r"Submitted (?:job|campaign) (\d+)",
            r"directory: (\S+)",
            r"(?m)^\s+local\s+\w+.*\s(/\S+)$",
        ):
            page, real = re.findall(pattern, "\n".join(shown)), re.findall(pattern, printed)
            for a, b in zip(page, real, strict=False):  # elided lines show fewer
                self.names.setdefault(a, b)

    def command(self, text: str) -> str:
        for page, real in sorted(self.names.items(), key=lambda item: -len(item[0])):
            text = text.replace(page, real)
        return text

    def run(self, step: Step) -> None:
        command = self.command(step.command)
        self.fits.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["bash", "-c", command], cwd=self.fits, env=self.env, capture_output=True, text=True, timeout=600
        )
        printed = done.stdout + done.stderr
        where = f"{step.page}: $ {step.command}\n(ran: {command})\n{printed[-3000:]}"
        assert done.returncode == 0, where
        missing = words(step.shown) - TRANSIENT - words(printed.splitlines())
        assert not missing, f"the page shows words the command no longer prints: {sorted(missing)}\n{where}"
        self.learn(step.shown, printed)


def reader_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUMPS_MPI_")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env['PATH']}", NUMBA_DISABLE_JIT="1")
    return env


def test_the_tutorial_runs_as_its_pages_show(tmp_path, slurm_cluster):
    """Every command of the tutorial, in order: a local fit, the same on the cluster with the page's site
    profile, its results, report and figures, then a campaign over four data files."""
    home = tmp_path / "home"
    reader = Reader(home, reader_env(home))
    ran = []
    for name in TUTORIAL:
        page = DOCS / "tutorial" / f"{name}.md"
        follow_setup(page, home)
        for step in console_steps(page):
            if step.command.startswith(INSTALLING):
                continue
            reader.run(step)
            ran.append(step.command)
    assert sum(command.startswith("bumps-submit submit") for command in ran) == 4, ran
    assert any("--local" in command for command in ran) and any("--each" in command for command in ran)
    assert (home / "fits" / "svg" / "model0.svg").is_file()  # the figures `plot --out svg` drew
    assert (home / ".config" / "bumps-mpi" / "site.toml").is_file()  # the cluster page's profile


def notebook_script(path: Path) -> str:
    """The notebook's code cells as one script that shows each cell's last expression, as Jupyter does."""
    cells = [cell for cell in json.loads(path.read_text())["cells"] if cell["cell_type"] == "code"]
    parts = []
    for i, cell in enumerate(cells):
        source = "".join(cell["source"])
        tree = ast.parse(source)
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.get_source_segment(source, tree.body[-1])
            head = source[: source.rindex(last)] if last else source
            source = f"{head}_show(({last}))\n"
        parts.append(f"print('--- cell {i}')\n{source}")
    return "def _show(value):\n    if value is not None:\n        print(repr(value))\n\n" + "\n".join(parts)


def test_the_python_api_notebook_runs_and_shows_what_it_printed(tmp_path, slurm_cluster):
    """The notebook's cells run in order where the tutorial left the reader (~/fits, the site profile),
    and each prints the words its stored output shows."""
    notebook = DOCS / "guides" / "python-api.ipynb"
    home = tmp_path / "home"
    fits = home / "fits"
    for name in TUTORIAL:
        follow_setup(DOCS / "tutorial" / f"{name}.md", home)
    done = subprocess.run(
        [sys.executable, "-c", notebook_script(notebook)],
        cwd=fits,
        env=reader_env(home),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    printed = done.stdout.split("--- cell ")[1:]
    cells = [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]
    assert len(printed) == len(cells)
    for cell, out in zip(cells, printed, strict=True):
        shown = [
            line
            for output in cell.get("outputs", [])
            for text in [output.get("text") or output.get("data", {}).get("text/plain", "")]
            for line in ("".join(text) if isinstance(text, list) else text).splitlines()
        ]
        missing = words(shown) - words(out.splitlines())
        assert not missing, (cell["source"], missing, out)
    assert "{'COMPLETED': 4}" in done.stdout and "'COMPLETED'" in done.stdout


def shown_command_lines() -> list[tuple[str, str]]:
    """(where, line) of every bumps-submit command in a code block of the docs' pages and the README."""
    found = []
    pages = [*DOCS.rglob("*.md"), ROOT / "README.md"]
    for page in pages:
        if "_build" in page.parts:
            continue
        block = False
        lines = re.sub(r"\\\n\s*", " ", page.read_text()).splitlines()  # a command continued on the next line
        for number, line in enumerate(lines, 1):
            if line.startswith("```"):
                block = not block
                continue
            text = line[2:] if line.startswith("$ ") else line
            if block and re.match(r"\s*(/\S+/)?bumps-submit ", text):
                found.append((f"{page.relative_to(ROOT)}:{number}", text.strip()))
    return found


def test_every_command_and_option_the_docs_show_exists():
    """A command or an option renamed or removed fails here, naming the page and line that shows it."""
    from bumps_mpi.cli import main

    lines = shown_command_lines()
    assert len(lines) > 60  # the tutorial, the guides, the administrator's guide and the README
    for where, line in lines:
        first = line.split(" | ")[0].split(" && ")[0].replace("[", "").replace("]", "")  # [--optional]
        rest = iter(shlex.split(first, comments=True)[1:])
        command: click.Command = main
        for word in rest:
            if word == "--":
                break
            if word.startswith("-") and word != "-":
                option = word.split("=", 1)[0]
                known = {name: p for p in command.params for name in [*p.opts, *p.secondary_opts]}
                assert option in {*known, "-h", "--help"}, f"{where}: no option {option} in: {line}"
                param = known.get(option)
                takes_value = isinstance(param, click.Option) and not (param.is_flag or param.count)
                if takes_value and "=" not in word:
                    next(rest, None)  # its value
            elif isinstance(command, click.Group):
                sub = command.get_command(click.Context(command), word)
                assert sub is not None, f"{where}: no command {word!r} in: {line}"
                command = sub


def test_the_site_builds_without_warnings_and_its_references_cover_the_code(tmp_path):
    """The site as `make docs` builds it (warnings are errors), and the references hold every setting,
    every command, every HTTP path and every public Python name the code has today."""
    from bumps_mpi.cli import main
    from bumps_mpi.config import KEYS

    out = tmp_path / "html"
    build = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html", str(DOCS)]
    done = subprocess.run([*build, str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    references = ("settings", "cli", "http-api")
    html = {name: (out / "reference" / f"{name}.html").read_text() for name in references}
    table = html["settings"][html["settings"].index("<table") : html["settings"].index("</table>")]
    for key in KEYS:
        assert f'<span class="pre">{key}</span>' in table, key

    def commands(group: click.Group, prefix: str) -> list[str]:
        found = []
        for name, command in group.commands.items():
            found.append(f"{prefix} {name}")
            if isinstance(command, click.Group):
                found += commands(command, f"{prefix} {name}")
        return found

    text = {name: re.sub(r"<[^>]+>", "", page) for name, page in html.items()}
    for command in commands(main, "bumps-submit"):
        assert f"{command} [OPTIONS]" in text["cli"], command
    # the description the build wrote from the application (create_app here would change this process's
    # umask for every later test)
    spec = json.loads((DOCS / "_generated" / "openapi.json").read_text())
    assert "/api/v1/fits" in spec["paths"] and "/api/v1/estimate" in spec["paths"]
    for path, methods in spec["paths"].items():
        for method in methods if path.startswith("/api/") else ():
            assert f"{method.upper()} {path}" in text["http-api"], (method, path)
    python = (out / "reference" / "python-api.html").read_text()
    import bumps_mpi

    for name in bumps_mpi.__all__:
        if name != "__version__":
            assert f'id="bumps_mpi.{name}"' in python, name
    assert (out / "tutorial" / "laptop.html").is_file() and (out / "guides" / "python-api.html").is_file()

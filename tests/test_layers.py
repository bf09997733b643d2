"""The package's layers, from its source (issue 23): the import graph, drawn with `ast` from every
import that runs (at the top of a module or inside a function alike; not `if TYPE_CHECKING:`), has no
cycle, and no module imports a layer above its own. docs/architecture.md explains the layers; this test
keeps them so.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "bumps_mpi"
# lowest first; a module may import its own layer and those below. The most specific prefix wins.
LAYERS = {
    "bumps_mpi.version": 0, "bumps_mpi.errors": 0, "bumps_mpi.text": 0, "bumps_mpi.pythonenv": 0,
    "bumps_mpi.config": 0, "bumps_mpi.jobdir": 0, "bumps_mpi.records": 0,
    "bumps_mpi.sandbox": 1, "bumps_mpi.cluster": 1,
    "bumps_mpi.runtime": 2, "bumps_mpi.results": 3, "bumps_mpi.runtime.job": 4, "bumps_mpi.job": 4,
    "bumps_mpi.postmortem": 4,
    "bumps_mpi.front": 5, "bumps_mpi.cli": 7,
    "bumps_mpi.service": 6, "bumps_mpi": 8, "bumps_mpi.__main__": 8,
}  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules *name* imports: `from . import x` names the submodule x, not the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {  # `if TYPE_CHECKING:` imports are for annotations: nothing imports them at run time
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{a.name}" for a in node.names} & known.keys()
            found |= subs
            if target in known and len(subs) < len(node.names):
                found.add(target)
    return found - {name}


def layer(name: str) -> int:
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[prefix]


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_layer():
    assert all(layer(name) >= 0 for name in modules())


def test_no_module_imports_a_layer_above_its_own():
    edges = graph()
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets if layer(b) > layer(a))
    assert upward == []


def test_the_import_graph_has_no_cycle():
    edges = graph()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(edges[node]):
            if seen.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[node] = 2

    for start in sorted(edges):
        if start not in seen:
            visit(start, [start])
    assert cycles == []


def test_the_pull_worker_imports_nothing_of_the_controller():
    """The worker runs on another cluster's login node: it shares the core and the wire format with the
    controller, never its store, queue, runner, application or monitor."""
    edges = graph()
    reached, todo = set(), ["bumps_mpi.service.worker"]
    while todo:
        name = todo.pop()
        for nxt in edges[name] - reached:
            reached.add(nxt)
            todo.append(nxt)
    controller = {f"bumps_mpi.service.{m}" for m in ("store", "dispatch", "runner", "app", "monitor", "auth")}
    assert sorted(reached & controller) == []

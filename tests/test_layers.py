"""The layout rules of CONTRIBUTING.md, read from the source: imports point down, no cycles, short modules.

Every ``import`` in helpers/ counts, lazy ones inside functions and ``TYPE_CHECKING`` ones
too: a lazy import still ties the two packages together, it only delays the cost.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELPERS = ROOT / "helpers"
LESSONS = {"sync", "pubsub", "choosing", "capstone"}
ANY = {"", "core", "grading", "labchecks", "tools", *LESSONS}
#: What each package may import besides itself ("" is ``helpers/__init__.py`` and ``__main__.py``,
#: the entry points, which start the commands in tools/).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    **{lesson: {"core"} for lesson in LESSONS},
    "grading": {"core"},
    "labchecks": {"core", "grading", *LESSONS},
    "tools": ANY,
    "": ANY,
}
MAX_LINES = 600


def module_name(path: Path) -> str:
    """``helpers/core/broker.py`` -> ``helpers.core.broker``; a package is its ``__init__``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> Iterator[str]:
    """Every ``helpers...`` name the file imports, relative imports made absolute."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)  # `from helpers.core import broker`


def import_graph() -> dict[str, set[str]]:
    """helpers module -> the helpers modules it imports (a name inside a module counts as the module)."""
    files = {module_name(path): path for path in sorted(HELPERS.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for imported in imported_names(path):
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported not in ("", "helpers", name):
                targets.add(imported)
        graph[name] = targets
    return graph


def package_of(module: str) -> str:
    """``helpers.core.broker`` -> ``core``; ``helpers`` and ``helpers.__main__`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (HELPERS / parts[1]).is_dir()) else ""


def test_the_graph_sees_the_imports_it_should() -> None:
    """The reader finds absolute, relative and lazy imports (else the rules below would pass on nothing)."""
    graph = import_graph()
    assert "helpers.core.mosquitto" in graph["helpers.tools.classroom"]  # from helpers.core.mosquitto import (...)
    assert "helpers.tools.doctor" in graph["helpers"], "the lazy import inside helpers.doctor()"
    assert all(package_of(m) in ANY for m in graph), sorted({package_of(m) for m in graph} - ANY)


def test_imports_point_down() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if package_of(target) not in {package_of(module)} | ALLOWED[package_of(module)]
    ]
    assert upward == [], "imports must point down (CONTRIBUTING.md, Layout):\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append([*path[path.index(module) :], module])
            return
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_no_helpers_module_is_over_600_lines() -> None:
    lengths = {str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines()) for path in HELPERS.rglob("*.py")}
    long = sorted(f"{name}: {lines} lines" for name, lines in lengths.items() if lines > MAX_LINES)
    assert long == [], "split these along their concerns (CONTRIBUTING.md):\n" + "\n".join(long)

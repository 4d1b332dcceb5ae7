"""Learner submissions built from the real notebooks: the solution's own code, edited.

A test that asks "does this check catch that mistake?" should start from what the lab
really ships, not from a hand-copied solution that drifts away from it. ``submission``
reads ``solutions/<lab>.ipynb``, keeps what a learner's kernel would hold after Run All
(the imports, the functions and classes, the UPPER_CASE settings such as ``QOS`` or
``RETRY_ON``), applies edits (one mistake, or a correct alternative), and executes the
result into a fresh namespace for the checks. Statements that start services, brokers or
demos are left out: the test starts what its checks need.

Every edit must find its text exactly once, and ``replaced`` only swaps a name the
solution defines: when a solution notebook changes what a test edits, the test fails
here, naming the edit, instead of quietly testing a variant that no longer makes its
mistake. ``notebook_definitions`` does the same for a lesson's cells (lesson 04's fixes).
"""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nbformat

from helpers.grading.labgen import LABS, SOLUTIONS

Edit = tuple[str, str]
"""``(old, new)``: text of the solution's code, and what a learner wrote instead."""

_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _is_setting(node: ast.stmt) -> bool:
    """An UPPER_CASE assignment computed without ``await`` (``QOS = 1``, ``RETRY_ON = (...)``)."""
    return (
        isinstance(node, ast.Assign)
        and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)
        and not any(isinstance(n, ast.Await) for n in ast.walk(node.value))
    )


def _kept(node: ast.stmt) -> bool:
    """An import, a definition, or an UPPER_CASE setting (never a statement that runs a demo)."""
    return isinstance(node, _DEFINITIONS) or _is_setting(node)


def _name_of(node: ast.stmt) -> str | None:
    """The name a definition or setting binds; None for an import."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return node.name
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def _statements(source: str, names: set[str] | None) -> list[tuple[str | None, str]]:
    """The kept top-level statements of one cell as ``(name, text)``, decorators and comments inside included.

    With ``names``, a definition is kept only if it binds one of them (imports always are).
    """
    lines = source.splitlines()
    kept = []
    for node in ast.parse(source).body:  # ast.parse accepts a notebook's top-level await
        name = _name_of(node)
        if _kept(node) and (names is None or name is None or name in names):
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            kept.append((name, "\n".join(lines[first - 1 : node.end_lineno])))
    return kept


def notebook_source(path: Path, names: Iterable[str] | None = None) -> str:
    """The imports and definitions of a notebook, in notebook order, as one module's source.

    ``names`` keeps only those definitions (and every import); each must be defined once.
    """
    wanted = None if names is None else set(names)
    nb = nbformat.read(path, as_version=4)
    parts = [part for cell in nb.cells if cell.cell_type == "code" for part in _statements(cell.source, wanted)]
    if wanted is not None:
        found = sorted(name for name, _ in parts if name is not None)
        assert found == sorted(wanted), f"{path.name} changed: defines {found}, the tests take {sorted(wanted)}"
    return "\n\n\n".join(text for _, text in parts)


def solution_source(lab: str) -> str:
    """The definitions of ``solutions/<lab>.ipynb``, in notebook order, as one module's source."""
    return notebook_source(SOLUTIONS / f"{lab}.ipynb")


def edited(text: str, *edits: Edit, what: str = "the solution") -> str:
    """``text`` with each edit applied; an ``old`` that does not occur exactly once is an error naming it."""
    for old, new in edits:
        found = text.count(old)
        assert found == 1, f"{what} changed: {old!r} occurs {found} times (expected once)"
        text = text.replace(old, new)
    return text


def _executed(source: str, name: str, filename: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name}
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def submission(lab: str, *edits: Edit) -> dict[str, Any]:
    """A namespace like the learner's kernel: the solution's definitions of ``lab`` with ``edits`` applied.

    Each ``old`` must occur exactly once, so a changed solution fails loudly here instead
    of leaving a variant that no longer makes its mistake.
    """
    source = edited(solution_source(lab), *edits, what=f"the solution of {lab}")
    return _executed(source, f"submission_{lab}", f"solutions/{lab}.ipynb (edited)")


def shipped_lab(lab: str) -> dict[str, Any]:
    """The namespace of ``labs/<lab>.ipynb`` as shipped: the learner's functions not written yet."""
    return _executed(notebook_source(LABS / f"{lab}.ipynb"), f"lab_{lab}", f"labs/{lab}.ipynb")


def notebook_definitions(path: Path, names: Iterable[str]) -> dict[str, Any]:
    """The named definitions of a lesson notebook (with its imports), executed into a fresh namespace."""
    return _executed(notebook_source(path, names), f"cells_of_{path.stem}", str(path))


def replaced(namespace: dict[str, Any], **functions: Callable[..., Any]) -> dict[str, Any]:
    """``namespace`` with some of its functions swapped for a learner's (a mistake the text edits cannot say).

    Each name must already be one the solution defines: a renamed function fails here.
    """
    missing = sorted(set(functions) - set(namespace))
    assert not missing, f"the solution no longer defines {missing}"
    namespace.update(functions)
    return namespace


def markdown_cells(lab: str, *, shipped: bool = False) -> list[str]:
    """The Markdown cells of the solution (or, ``shipped``, of the lab): what the grader gives the checks."""
    nb = nbformat.read((LABS if shipped else SOLUTIONS) / f"{lab}.ipynb", as_version=4)
    return [cell.source for cell in nb.cells if cell.cell_type == "markdown"]


@asynccontextmanager
async def warmup_kernel(ns: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """Lab 00's namespace after Run All: the hello service running and the p50 the notebook measured."""
    from helpers.core.http import start_service

    ns["svc"] = await start_service("hello", ns["hello"])
    try:
        ns["p50_ms"] = await ns["measure_p50"](f"{ns['svc'].url}/", 20)
        yield ns
    finally:
        await ns["svc"].stop()

"""Learner submissions built from the real solution notebooks: the solution's own code, edited.

A test that asks "does this check catch that mistake?" should start from what the lab
really ships, not from a hand-copied solution that drifts away from it. ``submission``
reads ``solutions/<lab>.ipynb``, keeps what a learner's kernel would hold after Run All
(the imports, the functions and classes, the UPPER_CASE settings such as ``QOS`` or
``RETRY_ON``), applies edits (one mistake, or a correct alternative), and executes the
result into a fresh namespace for the checks. Statements that start services, brokers or
demos are left out: the test starts what its checks need.
"""

from __future__ import annotations

import ast
from typing import Any

import nbformat

from helpers.grading.labgen import SOLUTIONS

Edit = tuple[str, str]
"""``(old, new)``: text of the solution's code, and what a learner wrote instead."""

_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _kept(node: ast.stmt) -> bool:
    """An import, a definition, or an UPPER_CASE setting (never a statement that runs a demo)."""
    if isinstance(node, _DEFINITIONS):
        return True
    return (
        isinstance(node, ast.Assign)
        and all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)
        and not any(isinstance(n, ast.Await) for n in ast.walk(node.value))
    )


def _statements(source: str) -> list[str]:
    """The kept top-level statements of one cell, as written (decorators and comments inside included)."""
    lines = source.splitlines()
    kept = []
    for node in ast.parse(source).body:  # ast.parse accepts a notebook's top-level await
        if _kept(node):
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            kept.append("\n".join(lines[first - 1 : node.end_lineno]))
    return kept


def solution_source(lab: str) -> str:
    """The definitions of ``solutions/<lab>.ipynb``, in notebook order, as one module's source."""
    nb = nbformat.read(SOLUTIONS / f"{lab}.ipynb", as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code"]
    return "\n\n\n".join(part for source in cells for part in _statements(source))


def submission(lab: str, *edits: Edit) -> dict[str, Any]:
    """A namespace like the learner's kernel: the solution's definitions of ``lab`` with ``edits`` applied.

    Each ``old`` must occur exactly once, so a changed solution fails loudly here instead
    of leaving a variant that no longer makes its mistake.
    """
    source = solution_source(lab)
    for old, new in edits:
        found = source.count(old)
        assert found == 1, f"the solution of {lab} changed: {old!r} occurs {found} times (expected once)"
        source = source.replace(old, new)
    namespace: dict[str, Any] = {"__name__": f"submission_{lab}"}
    exec(compile(source, f"solutions/{lab}.ipynb (edited)", "exec"), namespace)
    return namespace

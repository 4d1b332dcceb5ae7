"""The order of a submission's run: its cells, and each question's checks in the right place.

:func:`plan_steps` puts each question's checks right after the notebook's first
``check("qN")`` cell; a question whose check cell the learner deleted runs where the lab
as shipped has it (found by aligning the two notebooks' code cells), before the clean-up
cell that would stop what the checks test. Pure functions of the notebooks: no kernel.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import nbformat

from helpers.grading.checks import Check, runs_at

CHECK_CALL = re.compile(r"""\bcheck\(\s*["'](?P<q>[^"']+)["']\s*\)""")


StepKind = Literal["cell", "question"]
"""``cell``: run notebook cell ``index``; ``question``: run the checks ``checks`` (indices into the lab's checks)."""


@dataclass(frozen=True)
class Step:
    """One thing to run: a notebook cell, or the checks of one question."""

    kind: StepKind
    index: int = -1
    question: str = ""
    checks: tuple[int, ...] = ()


def _normalized(source: str) -> str:
    return "\n".join(line.rstrip() for line in str(source).strip().splitlines())


def _code_sources(nb: nbformat.NotebookNode) -> list[tuple[int, str]]:
    return [(i, _normalized(c.get("source", ""))) for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"]


def _places(nb: nbformat.NotebookNode, reference: nbformat.NotebookNode | None, missing: list[str]) -> dict[str, int]:
    """Where each question whose check cell the learner deleted belongs: before this cell of ``nb``.

    The lab as shipped (``reference``) says what follows the question's check cell there;
    the first of those cells the submission still has unchanged (found by aligning the
    two notebooks' code cells) is where the checks run, so they run before the lab's
    clean-up cell stops the broker and the services they need.
    """
    if reference is None or not missing:
        return {}
    mine = [(i, src) for i, src in _code_sources(nb) if src]
    theirs = [src for _, src in _code_sources(reference) if src]
    matcher = difflib.SequenceMatcher(None, [src for _, src in mine], theirs, autojunk=False)
    same = {block.b + k: mine[block.a + k][0] for block in matcher.get_matching_blocks() for k in range(block.size)}
    places: dict[str, int] = {}
    for q in missing:
        spots = [j for j, src in enumerate(theirs) if any(m.group("q") == q for m in CHECK_CALL.finditer(src))]
        after = [same[j] for j in range(spots[0] + 1, len(theirs)) if j in same] if spots else []
        if after:
            places[q] = after[0]
    return places


def plan_steps(
    nb: nbformat.NotebookNode, checks: Sequence[Check], reference: nbformat.NotebookNode | None = None
) -> tuple[list[Step], list[str]]:
    """Notebook cells in order; each question's checks right after its first check("qN") cell.

    A check declared with ``after="qM"`` runs with question qM's checks (it needs code
    written for qM), and still counts for its own question. A question whose check cell
    was deleted runs where the lab as shipped (``reference``) has it: before the first
    cell that follows it there and is still in the submission (the lab's clean-up cell,
    for the last question); without a reference, after the last cell.
    """
    steps: list[Step] = []
    anchored: set[str] = set()
    questions = list(dict.fromkeys(c.question for c in checks))

    def question(q: str) -> Step:
        return Step("question", question=q, checks=tuple(j for j, c in enumerate(checks) if runs_at(c, questions) == q))

    calls = {
        i: [m.group("q") for m in CHECK_CALL.finditer(c.get("source", ""))]
        for i, c in enumerate(nb.cells)
        if c.get("cell_type") == "code"
    }
    present = {q for qs in calls.values() for q in qs}
    missing = [q for q in questions if q not in present]
    places = _places(nb, reference, missing)
    notes = []
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        for q in missing:
            if places.get(q) == index and q not in anchored:
                anchored.add(q)
                steps.append(question(q))
                notes.append(
                    f'no check("{q}") cell found: its checks ran before {describe_cell(nb, index)}, where the lab has it'
                )
        steps.append(Step("cell", index))
        for q in calls[index]:
            if q in questions and q not in anchored:
                anchored.add(q)
                steps.append(question(q))
    last = [q for q in questions if q not in anchored]
    steps.extend(question(q) for q in last)
    notes += [f'no check("{q}") cell found: its checks ran after the last cell' for q in last]
    return steps, notes


def given_setup_cell(nb: nbformat.NotebookNode, reference: nbformat.NotebookNode | None) -> int | None:
    """The index of the submission's first code cell when it is the lab's setup cell as shipped, unchanged.

    That cell is the course's own code (imports, the checker, the broker): when it fails,
    no learner code has run yet, and the failure says the course's environment is broken,
    not the submission. None without a reference, or when the learner changed that cell.
    """
    if reference is None:
        return None
    mine, theirs = _code_sources(nb), _code_sources(reference)
    if not mine or not theirs or not theirs[0][1]:
        return None
    return mine[0][0] if mine[0][1] == theirs[0][1] else None


def describe_cell(nb: nbformat.NotebookNode, index: int) -> str:
    code_cells = [i for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"]
    number = code_cells.index(index) + 1 if index in code_cells else index + 1
    lines = [ln.strip() for ln in nb.cells[index].get("source", "").splitlines()]
    first = next((ln for ln in lines if ln and not ln.startswith("# NBVAL")), "")
    return f"code cell {number} ({first[:40]!r})"

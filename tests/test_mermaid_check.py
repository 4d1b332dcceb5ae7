"""The fast Mermaid check: every diagram of the course passes, and each known mistake is named by its line.

tests/test_browser.py renders the same examples in JupyterLab, so what this check
accepts is known to draw there, and the mistakes marked ``jupyterlab_rejects`` are known
to fail there too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mermaid_examples import BAD, GOOD, Bad

from helpers.tools.mermaid_check import Diagram, DiagramError, check_course, check_diagram, diagrams_in, main

ROOT = Path(__file__).resolve().parents[1]
COURSE = [
    d
    for folder in ("notebooks", "labs", "solutions")
    for p in sorted((ROOT / folder).glob("*.ipynb"))
    for d in diagrams_in(p, ROOT)
]


def test_the_course_has_both_kinds_of_diagram() -> None:
    kinds = {d.text.split()[0] for d in COURSE}
    assert {"flowchart", "sequenceDiagram"} <= kinds, kinds


@pytest.mark.parametrize("diagram", COURSE, ids=[d.where() for d in COURSE])
def test_every_course_diagram_passes(diagram: Diagram) -> None:
    check_diagram(diagram.text)


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_examples_pass(name: str) -> None:
    check_diagram(GOOD[name])


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_each_mistake_is_named_with_its_line(bad: Bad) -> None:
    with pytest.raises(DiagramError) as caught:
        check_diagram(bad.text)
    assert caught.value.line == bad.line, str(caught.value)
    assert str(caught.value).startswith(f"line {bad.line} of the diagram: ")
    assert bad.fragment in str(caught.value), str(caught.value)


def test_other_kinds_of_diagram_are_refused_by_name() -> None:
    with pytest.raises(DiagramError, match="`gantt` diagrams are not checked here"):
        check_diagram("gantt\n  title x")


def _notebook(path: Path, *markdown: str) -> Path:
    cells = [{"cell_type": "markdown", "metadata": {}, "source": text} for text in markdown]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}), encoding="utf-8")
    return path


def test_a_report_names_notebook_cell_diagram_and_line(tmp_path: Path) -> None:
    good = "```mermaid\nsequenceDiagram\n  A->>B: hi\n```"
    bad = "text\n\n```mermaid\nflowchart LR\n  A --> B\n```\n\n~~~mermaid\nsequenceDiagram\n  A->>B: a; b\n~~~"
    path = _notebook(tmp_path / "lesson.ipynb", good, bad)
    checked, problems = check_course([path], root=tmp_path)
    assert checked == 3
    assert problems == [
        "lesson.ipynb cell 1 diagram 2: line 2 of the diagram: a `;` ends a statement in Mermaid (`a; b`): write #59; or a comma"
    ]


def test_the_command_exits_1_on_a_problem_and_0_when_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _notebook(tmp_path / "bad.ipynb", '```mermaid\nflowchart LR\n  A[say "hi"] --> B\n```')
    good = _notebook(tmp_path / "good.ipynb", "```mermaid\nflowchart LR\n  A[say #quot;hi#quot;] --> B\n```")
    assert main([str(bad)]) == 1
    assert 'cell 0: line 2 of the diagram: a `"` inside a label' in capsys.readouterr().out
    assert main([str(good)]) == 0
    assert capsys.readouterr().out.strip() == "1 diagrams checked, 0 with problems"


def test_python_m_helpers_diagrams_checks_the_whole_course() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "helpers", "diagrams"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith(f"{len(COURSE)} diagrams checked, 0 with problems")

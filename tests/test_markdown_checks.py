"""Checks that read the notebook's Markdown (a diagram, a written answer), and checks that run after a later question.

``Context.markdown()`` has two sources. In the grader, the Markdown cells of the
submitted file, handed to the kernel session by the grader itself: nothing the
notebook's code defines or writes changes them. In the notebook (``await check("q1")``),
the newest saved notebook of the lab in the kernel's working folder, found by its
``metadata.course_lab.id`` (or, for a solution without that metadata, its file name);
without one the check says to save the notebook.

``@checks.check(..., after="q2")``: the grader runs the check right after q2's check cell,
because it needs code written for q2; it still counts for its own question.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers.grading.checks import SAVE_FIRST, Checks, Context, LabError, lab_notebooks, load_checks, run_check, saved_markdown
from helpers.grading.runner import Options, grade_file, plan_steps

LAB = "93_notes"

NOTES_CHECKS = '''
from helpers.grading.checks import Checks, expect

checks = Checks("93_notes")


@checks.check("q1")
async def mentions_the_token(ctx):
    """The Markdown names the secret token"""
    text = "\\n".join(ctx.markdown())
    expect("TOKEN-42" in text, f"no token in {len(ctx.markdown())} Markdown cell(s)")
    return f"{len(ctx.markdown())} cells"


@checks.check("q1", hidden=True, after="q2", points=2)
async def sees_later_code(ctx):
    """Hidden: runs with q2's checks, where later() exists"""
    expect(await ctx.call("later") == "written in q2", "later() is not right")


@checks.check("q2")
async def later_is_written(ctx):
    """later() is written"""
    await ctx.call("later")
'''


@pytest.fixture(scope="module")
def notes_checks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checks")
    (folder / "notes.py").write_text(NOTES_CHECKS, encoding="utf-8")
    return folder


def notes_notebook(path: Path, answer: str = "My answer: TOKEN-42", q1_code: str = "x = 1") -> Path:
    cells = [
        new_markdown_cell("# Notes lab"),
        new_code_cell(f'from helpers.grading.notebook import checker\ncheck = checker("{LAB}")'),
        new_markdown_cell(answer),
        new_code_cell(q1_code),
        new_code_cell('await check("q1")'),
        new_code_cell('def later():\n    return "written in q2"'),
        new_code_cell('await check("q2")'),
    ]
    nbformat.write(new_notebook(cells=cells, metadata={"course_lab": {"id": LAB}}), path)
    return path


def options(checks_dir: Path) -> Options:
    return Options(checks_dir=checks_dir, cell_timeout=5, total_timeout=60)


# --------------------------------------------------------------------------- the grader's source: the submitted file


@pytest.mark.kernel
async def test_the_grader_gives_the_checks_the_submitted_markdown(notes_checks: Path, tmp_path: Path) -> None:
    result = await grade_file(notes_notebook(tmp_path / "notes.ipynb"), options(notes_checks))
    assert result.full_marks, result.failures()
    mentions = next(c for c in result.checks if c.name == "mentions_the_token")
    assert mentions.message == "2 cells"


@pytest.mark.kernel
async def test_notebook_code_cannot_change_what_the_checks_read(notes_checks: Path, tmp_path: Path) -> None:
    """Without the token in its Markdown, a submission fails, whatever its code plants: a variable,
    a saved notebook of the lab in the working folder (the notebook-side fallback), a patched Context."""
    plant = f"""
import json, pathlib
markdown = ["TOKEN-42"]
cells = [{{"cell_type": "markdown", "source": "TOKEN-42", "metadata": {{}}}}]
doc = {{"cells": cells, "metadata": {{"course_lab": {{"id": "{LAB}"}}}}}}
pathlib.Path("planted.ipynb").write_text(json.dumps(doc))
import helpers.grading.checks as hc
hc.Context.markdown = lambda self: ["TOKEN-42"]
"""
    path = notes_notebook(tmp_path / "cheat.ipynb", answer="no answer here", q1_code=plant)
    result = await grade_file(path, options(notes_checks))
    mentions = next(c for c in result.checks if c.name == "mentions_the_token")
    assert not mentions.passed
    assert "no token in 2 Markdown cell(s)" in mentions.message


@pytest.mark.kernel
async def test_an_after_check_runs_with_the_later_question_and_counts_for_its_own(notes_checks: Path, tmp_path: Path) -> None:
    result = await grade_file(notes_notebook(tmp_path / "notes.ipynb"), options(notes_checks))
    assert {q: p for q, (p, _) in result.questions.items()} == {"q1": 3, "q2": 1}, result.failures()


def test_plan_steps_moves_an_after_check_to_its_anchor(notes_checks: Path, tmp_path: Path) -> None:
    checks = list(load_checks(LAB, notes_checks))
    nb = nbformat.read(notes_notebook(tmp_path / "notes.ipynb"), as_version=4)
    steps, notes = plan_steps(nb, checks)
    questions = [(s.question, [checks[j].name for j in s.checks]) for s in steps if s.kind == "question"]
    assert questions == [("q1", ["mentions_the_token"]), ("q2", ["sees_later_code", "later_is_written"])]
    assert notes == []


def test_a_visible_after_check_runs_at_its_anchor_in_the_notebook_too() -> None:
    """``check("q1")`` leaves out a q1 check declared after q2 (its code is not written yet); ``check("q2")`` runs it,
    after q2's own, as the grader does. It still counts for q1."""
    checks = Checks(LAB)

    @checks.check("q1")
    async def early(ctx: Context) -> None:
        """q1's own"""

    @checks.check("q1", after="q2")
    async def needs_q2(ctx: Context) -> None:
        """q1's, needing q2's code"""

    @checks.check("q2")
    async def second(ctx: Context) -> None:
        """q2's own"""

    assert [c.name for c in checks.run_at("q1", hidden=False)] == ["early"]
    assert [c.name for c in checks.run_at("q2", hidden=False)] == ["second", "needs_q2"]
    assert checks.max_points("q1") == 2


def test_after_must_name_a_question_of_the_lab(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text(
        "from helpers.grading.checks import Checks\nchecks = Checks('94_bad')\n\n"
        "@checks.check('q1', after='q9')\nasync def late(ctx):\n    pass\n",
        encoding="utf-8",
    )
    with pytest.raises(LabError, match="runs after question 'q9'"):
        load_checks("94_bad", tmp_path)


# --------------------------------------------------------------------------- the notebook's source: the saved file


def _write(path: Path, markdown: list[str], lab: str | None = LAB, age_s: float = 0.0) -> Path:
    meta = {"course_lab": {"id": lab}} if lab else {}
    cells = [{"cell_type": "markdown", "metadata": {}, "source": text} for text in markdown]
    path.write_text(json.dumps({"cells": cells, "metadata": meta, "nbformat": 4, "nbformat_minor": 5}), encoding="utf-8")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def _reader() -> Checks:
    checks = Checks(LAB)

    @checks.check("q1")
    async def reads(ctx: Context) -> str:
        """Reads the Markdown"""
        return " | ".join(ctx.markdown())

    return checks


def test_the_newest_saved_notebook_of_the_lab_is_read(tmp_path: Path) -> None:
    _write(tmp_path / "old.ipynb", ["old"], age_s=60)
    _write(tmp_path / "copy.ipynb", ["new", "diagram"], age_s=1)
    _write(tmp_path / "other.ipynb", ["another lab"], lab="00_warmup")
    _write(tmp_path / f"{LAB}-solution.ipynb", ["the solution, named after the lab"], lab=None, age_s=120)
    (tmp_path / "broken.ipynb").write_text("{not json", encoding="utf-8")
    assert [p.name for p in lab_notebooks(LAB, tmp_path)] == ["copy.ipynb", "old.ipynb", f"{LAB}-solution.ipynb"]
    assert saved_markdown(LAB, tmp_path) == ["new", "diagram"]


async def test_in_the_notebook_check_reads_the_saved_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the kernel's working folder: where Jupyter saves the notebook
    (reads,) = list(_reader())
    _write(tmp_path / f"{LAB}.ipynb", ["intro", "```mermaid\nflowchart LR\n```"])
    result = await run_check(reads, {})
    assert result.passed
    assert result.message == "intro | ```mermaid\nflowchart LR\n```"
    given = await run_check(reads, {}, markdown=["from the grader"])
    assert given.message == "from the grader", "markdown handed in wins over the saved file"


async def test_without_a_saved_notebook_the_check_says_to_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (reads,) = list(_reader())
    result = await run_check(reads, {})
    assert not result.passed
    assert SAVE_FIRST in result.message
    assert LAB in result.message

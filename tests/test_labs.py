"""Labs are generated from solutions, and the check() API behaves as documented.

Parametrized over every notebook in solutions/, so a lab another author adds is covered
the moment its solution lands (its checks file must exist, its check("qN") cells must
match its checks, its outputs must be stored, and labs/ must be regenerated).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helpers.grading.checks import GRADING_ENV, Checks, Context, LabError, expect, load_checks, run_check
from helpers.grading.labgen import (
    LABS,
    PLACEHOLDER,
    SOLUTIONS,
    MarkerError,
    generate,
    main,
    make_lab,
    solution_paths,
    stale,
    strip_code,
    strip_markdown,
)
from helpers.grading.notebook import checker, format_report

LAB_IDS = [p.stem for p in solution_paths()]
CHECK_CALL = re.compile(r"""\bcheck\(\s*["']([^"']+)["']\s*\)""")


# --------------------------------------------------------------------------- the generator


def test_labs_folder_is_what_the_generator_writes() -> None:
    assert stale() == [], "run 'make labs' (python -m helpers labs) and commit labs/"


def test_strip_code_keeps_hints_and_indentation() -> None:
    source = "\n".join(
        [
            "async def hello(request):",
            "    # BEGIN SOLUTION",
            "    # HINT: read ?name=",
            "    name = request.query['name']",
            "    return name",
            "    # END SOLUTION",
            "",
            "# BEGIN SOLUTION",
            "# LAB: p50_ms = ...  # a number",
            "p50_ms = 3.0",
            "# END SOLUTION",
            "print(p50_ms)",
        ]
    )
    lab, blocks = strip_code(source)
    assert blocks == 2
    assert lab.splitlines() == [
        "async def hello(request):",
        "    # HINT: read ?name=",
        f"    {PLACEHOLDER}",
        "",
        "p50_ms = ...  # a number",
        "print(p50_ms)",
    ]


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("# BEGIN SOLUTION\nx = 1", "without END"),
        ("x = 1\n# END SOLUTION", "line 2: END SOLUTION without BEGIN"),
        ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "line 2: BEGIN SOLUTION inside"),
    ],
)
def test_unbalanced_markers_are_reported_with_their_line(source: str, problem: str) -> None:
    with pytest.raises(MarkerError, match=problem):
        strip_code(source, "lab.ipynb cell 3")


def test_markdown_answers_become_a_prompt() -> None:
    text, blocks = strip_markdown("Why?\n<!-- BEGIN SOLUTION -->\nBecause the caller waits.\n<!-- END SOLUTION -->")
    assert blocks == 1
    assert "caller waits" not in text
    assert "Your answer here" in text


def _solution() -> nbformat.NotebookNode:
    answer = new_code_cell("def f():\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION", execution_count=3)
    answer.outputs = [new_output("stream", name="stdout", text="1\n")]
    only = new_code_cell("assert f() == 1", metadata={"tags": ["solution_only"]})
    return new_notebook(
        cells=[new_markdown_cell("# Lab"), answer, only], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}
    )


def test_make_lab_clears_outputs_drops_solution_only_cells_and_labels_the_lab() -> None:
    solution = _solution()
    lab = make_lab(solution, "77_demo")
    assert [c.cell_type for c in lab.cells] == ["markdown", "code"]
    code = lab.cells[1]
    assert code.outputs == []
    assert code.execution_count is None
    assert "return 1" not in code.source
    assert lab.metadata["course_lab"]["id"] == "77_demo"
    assert lab.metadata["kernelspec"]["name"] == "python3"
    assert "return 1" in solution.cells[1].source, "the solution's code is left untouched"
    assert solution.cells[1].outputs, "the solution's outputs are left untouched"


def test_a_solution_without_blocks_is_an_error() -> None:
    with pytest.raises(MarkerError, match="no '# BEGIN SOLUTION' block"):
        make_lab(new_notebook(cells=[new_code_cell("x = 1")]), "77_demo")


def test_check_mode_fails_when_labs_are_stale(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sols, labs = tmp_path / "solutions", tmp_path / "labs"
    sols.mkdir()
    nbformat.write(_solution(), sols / "77_demo.ipynb")
    args = ["--solutions", str(sols), "--labs", str(labs)]
    assert main(["--check", *args]) == 1
    assert "missing" in capsys.readouterr().out
    assert main(args) == 0
    assert (labs / "77_demo.ipynb").exists()
    assert main(["--check", *args]) == 0
    lab = labs / "77_demo.ipynb"
    lab.write_text(lab.read_text().replace("Lab", "Lab (edited by hand)"))
    assert main(["--check", *args]) == 1
    assert "differs" in capsys.readouterr().out
    shutil.copy(lab, labs / "88_gone.ipynb")  # a generated lab whose solution was deleted
    generate(sols, labs)
    assert not (labs / "88_gone.ipynb").exists()
    assert stale(sols, labs) == []


# --------------------------------------------------------------------------- every lab


@pytest.mark.parametrize("lab", LAB_IDS)
def test_solution_is_executed_with_clean_outputs(lab: str) -> None:
    nb = nbformat.read(SOLUTIONS / f"{lab}.ipynb", as_version=4)
    for index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        assert cell.execution_count is not None, f"code cell {index + 1} was not executed: run the solution in place"
        for output in cell.outputs:
            assert output.output_type != "error", f"code cell {index + 1} stored an error: {output.get('evalue')}"
            assert "Traceback" not in output.get("text", ""), f"code cell {index + 1} stored a traceback"


@pytest.mark.parametrize("lab", LAB_IDS)
def test_checks_match_the_notebook(lab: str) -> None:
    checks = load_checks(lab)
    nb = nbformat.read(SOLUTIONS / f"{lab}.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any(f'checker("{lab}")' in s or f"checker('{lab}')" in s for s in code), f'bind check = checker("{lab}")'
    asked = {q for s in code for q in CHECK_CALL.findall(s)}
    assert asked == set(checks.questions), f"check() cells ask {sorted(asked)}, checks declare {checks.questions}"
    for question in checks.questions:
        assert checks.of(question, hidden=False), f"{question} has only hidden checks: the learner gets no feedback"


@pytest.mark.parametrize("lab", LAB_IDS)
def test_lab_keeps_no_solution_code(lab: str) -> None:
    nb = nbformat.read(LABS / f"{lab}.ipynb", as_version=4)
    for cell in nb.cells:
        assert "BEGIN SOLUTION" not in cell.source
        assert "END SOLUTION" not in cell.source
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None
    assert nb.metadata["course_lab"]["id"] == lab


def test_warmup_has_hidden_checks_for_every_question() -> None:
    checks = load_checks("00_warmup")
    assert checks.questions == ["q1", "q2", "q3"]
    for question in checks.questions:
        assert any(c.hidden for c in checks.of(question)), question


# --------------------------------------------------------------------------- the check() API


def _demo_checks() -> Checks:
    demo = Checks("77_demo")

    @demo.check("q1", hint="return twice the input")
    async def doubles(ctx: Context) -> str:
        """double(2) is 4."""
        got = await ctx.call("double", 2)
        expect(got == 4, f"double(2) returned {got!r}")
        return "ok"

    @demo.check("q1", hidden=True, points=2)
    async def hidden_one(ctx: Context) -> None:
        """Hidden: value is set."""
        assert ctx.get("value") == 1, "value should be 1"

    @demo.check("q2", timeout=0.2)
    async def slow(ctx: Context) -> None:
        """slow() finishes."""
        await ctx.call("slow", timeout=5)

    return demo


async def test_run_check_reports_pass_fail_and_learner_errors() -> None:
    demo = _demo_checks()
    doubles, hidden, slow = list(demo)
    assert (await run_check(doubles, {"double": lambda x: 2 * x})).passed
    failed = await run_check(doubles, {"double": lambda x: x})
    assert not failed.passed
    assert failed.message == "double(2) returned 2"
    assert failed.points == 0
    assert "not defined" in (await run_check(doubles, {})).message
    raising = await run_check(doubles, {"double": lambda x: 1 / 0})
    assert raising.message == "double() raised ZeroDivisionError: division by zero"

    def todo(x: int) -> int:
        raise NotImplementedError("your code here")

    assert "not written yet" in (await run_check(doubles, {"double": todo})).message
    assert "still `...`" in (await run_check(hidden, {"value": ...})).message

    async def never() -> None:
        await asyncio.sleep(30)

    timed_out = await run_check(slow, {"slow": never})
    assert not timed_out.passed
    assert "timed out after 0.2 s" in timed_out.message


def test_checks_registry_counts_hidden_points_and_rejects_mistakes() -> None:
    demo = _demo_checks()
    assert demo.questions == ["q1", "q2"]
    assert [c.name for c in demo.of("q1", hidden=False)] == ["doubles"]
    assert demo.max_points() == 4
    assert demo.max_points("q1") == 3
    with pytest.raises(LabError, match="async def"):
        demo.check("q3")(lambda ctx: None)  # type: ignore[arg-type, return-value]  # a sync lambda on purpose: the registry must refuse it

    async def doubles(ctx: Context) -> None:
        return None

    with pytest.raises(LabError, match="two checks named"):
        demo.check("q3")(doubles)


async def test_report_shows_ticks_reasons_and_hints() -> None:
    demo = _demo_checks()
    results = [await run_check(c, {"double": lambda x: x, "value": 1}) for c in demo.of("q1")]
    text = format_report(results)
    assert "q1: 1/2 passed" in text
    assert "\u2717 double(2) is 4" in text
    assert "why:  double(2) returned 2" in text
    assert "hint: return twice the input" in text


async def test_check_in_a_notebook_must_be_awaited_and_is_skipped_while_grading(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    check = checker("00_warmup")
    pending = check("q1")
    assert 'await check("q1")' in repr(pending)
    report = await pending  # no svc in this namespace: both visible checks fail, with reasons
    assert not report.passed
    assert "`svc` is not defined" in capsys.readouterr().out
    monkeypatch.setenv(GRADING_ENV, "1")
    assert (await check("q1")).results == []
    assert "skipped while grading" in capsys.readouterr().out


def test_load_checks_explains_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no checks for lab"):
        load_checks("55_missing", tmp_path)
    (tmp_path / "wrong.py").write_text("from helpers.grading.checks import Checks\nchecks = Checks('00_other')\n")
    with pytest.raises(LabError, match="declares Checks"):
        load_checks("12_wrong", tmp_path)


# --------------------------------------------------------------------------- two hint levels

CODE_IN_A_HINT = re.compile(r"[A-Za-z_][\w.]*\([^)]+\)|\w=\w| = ")
"""A call with arguments or an assignment: code, which belongs in code_hint, not in the level-1 hint."""


@pytest.mark.parametrize("lab", LAB_IDS)
def test_hints_give_the_idea_and_the_code_waits_for_hint_2(lab: str) -> None:
    for check in load_checks(lab):
        assert check.hint, f"{check.name} has no hint: say which idea or rule to follow"
        assert not CODE_IN_A_HINT.search(check.hint), f"{check.name}'s hint spells out code: move it to code_hint"
        if not check.hidden:
            assert check.code_hint, f"{check.name} has no code_hint: await check(q, hint=2) would show nothing"
            assert check.code_hint != check.hint


@pytest.mark.parametrize("lab", LAB_IDS)
def test_a_lab_never_names_a_check_by_its_function_name(lab: str) -> None:
    nb = nbformat.read(LABS / f"{lab}.ipynb", as_version=4)
    text = "\n".join(cell.source for cell in nb.cells)
    named = [check.name for check in load_checks(lab) if check.name in text]
    assert not named, f"the lab's text names checks by function name: {named}; let their descriptions speak"

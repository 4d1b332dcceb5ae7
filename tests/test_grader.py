"""The grader gives the true score, whatever the submission does.

Every lab in solutions/ is covered automatically: its solution gets full marks and the
lab as shipped scores (near) zero. Adversarial submissions (endless loops, errors
midway, a dead kernel, monkeypatched checks and helpers, forged output, files that are
not notebooks, unknown labs) each have a test; most use a tiny lab declared here so
they run in a couple of seconds, the monkeypatching ones use the real warm-up lab.
Set MQTT_URL (python -m helpers mosquitto -- pytest tests/test_grader.py) to run the
broker-bound ones against Mosquitto: the submission's kernel inherits MQTT_URL.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers.grading.cli import main
from helpers.grading.feedback import write_feedback
from helpers.grading.labgen import LABS, ROOT, SOLUTIONS, solution_paths
from helpers.grading.report import Result
from helpers.grading.runner import Options, grade_file, identify_lab

LAB_IDS = [p.stem for p in solution_paths()]
WARMUP = SOLUTIONS / "00_warmup.ipynb"

TINY_CHECKS = '''
import os
from helpers.grading.checks import Checks, expect

checks = Checks("91_tiny")


@checks.check("q1")
async def doubles(ctx):
    """double(21) is 42"""
    got = await ctx.call("double", 21)
    expect(got == 42, f"double(21) returned {got!r}")


@checks.check("q1", hidden=True)
async def doubles_negative(ctx):
    """Hidden: double(-4) is -8"""
    expect(await ctx.call("double", -4) == -8, "double(-4) should be -8")


@checks.check("q2")
async def answer_is_set(ctx):
    """answer is 42"""
    expect(ctx.get("answer") == 42, f"answer is {ctx.get('answer')!r}")


@checks.check("q3", timeout=3)
async def greets(ctx):
    """greet('Ada') is 'hi Ada'"""
    got = await ctx.call("greet", "Ada", timeout=3)
    expect(got == "hi Ada", f"greet('Ada') returned {got!r}")


@checks.check("q3")
async def sees_mqtt_url(ctx):
    """The kernel sees the grader's MQTT_URL"""
    expect(os.environ.get("MQTT_URL", "") == EXPECTED_MQTT_URL, f"kernel MQTT_URL={os.environ.get('MQTT_URL')!r}")
'''

TINY_CELLS = {
    "setup": 'from helpers.grading.notebook import checker\ncheck = checker("91_tiny")',
    "q1": "def double(x):\n    return 2 * x",
    "q2": "answer = 42",
    "q3": 'async def greet(name):\n    return f"hi {name}"',
}
TINY_MAX = 5.0


@pytest.fixture(scope="module")
def tiny_checks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checks folder holding the tiny lab 91_tiny (the grader's --checks option)."""
    folder = tmp_path_factory.mktemp("checks")
    expected = f"\nEXPECTED_MQTT_URL = {os.environ.get('MQTT_URL', '')!r}\n"
    (folder / "tiny.py").write_text(TINY_CHECKS + expected, encoding="utf-8")
    return folder


def tiny_notebook(path: Path, **replace: str) -> Path:
    """The tiny lab, solved, with some cells' code replaced; check cells after each question."""
    cells = [new_markdown_cell("# Tiny lab")]
    for key, source in TINY_CELLS.items():
        cells.append(new_code_cell(replace.get(key, source)))
        if key != "setup":
            cells.append(new_code_cell(f'await check("{key}")'))
    nb = new_notebook(cells=cells, metadata={"course_lab": {"id": "91_tiny"}})
    nbformat.write(nb, path)
    return path


def tiny_options(tiny_checks: Path, *, cell_timeout: float = 4, check_timeout: float | None = None) -> Options:
    return Options(checks_dir=tiny_checks, cell_timeout=cell_timeout, check_timeout=check_timeout, total_timeout=60)


def points(result: Result) -> dict[str, float]:
    return {q: p for q, (p, _) in result.questions.items()}


def warmup_variant(path: Path, edit: Callable[[nbformat.NotebookNode], None], *, from_lab: bool = False) -> Path:
    """A copy of the warm-up solution (or lab) with ``edit`` applied, named so the grader finds its lab."""
    nb = nbformat.read(LABS / WARMUP.name if from_lab else WARMUP, as_version=4)
    edit(nb)
    nbformat.write(nb, path)
    return path


def cell_with(nb: nbformat.NotebookNode, text: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.cell_type == "code" and text in c.source)


# --------------------------------------------------------------------------- every lab


@pytest.mark.kernel  # the grader starts the submission's kernel in this process
@pytest.mark.broker
@pytest.mark.parametrize("lab", LAB_IDS)
def test_solution_gets_full_marks(lab: str, tmp_path: Path) -> None:
    report = tmp_path / "results.json"
    code = main([str(SOLUTIONS / f"{lab}.ipynb"), "--json", str(report)])
    graded = json.loads(report.read_text())["submissions"][0]
    failures = [f"{c['question']} {c['name']}: {c['message']}" for c in graded["checks"] if not c["passed"]]
    assert not failures, f"the solution of {lab} fails checks: {failures}; notes: {graded['notes']}"
    assert graded["score"] == graded["max_score"] > 0
    assert code == 0, "exit code 0 means every submission got full marks"


@pytest.mark.kernel  # the grader starts the submission's kernel in this process
@pytest.mark.broker
@pytest.mark.parametrize("lab", LAB_IDS)
def test_lab_as_shipped_fails_its_checks(lab: str, tmp_path: Path) -> None:
    report = tmp_path / "results.json"
    code = main([str(LABS / f"{lab}.ipynb"), "--json", str(report)])
    graded = json.loads(report.read_text())["submissions"][0]
    assert graded["status"] == "graded"
    assert graded["lab"] == lab
    assert graded["score"] <= 0.2 * graded["max_score"], f"{lab} as shipped already earns {graded['score']}/{graded['max_score']}"
    assert code == 1


# --------------------------------------------------------------------------- adversarial, tiny lab


@pytest.mark.kernel
async def test_tiny_solution_full_marks_and_kernel_inherits_mqtt_url(tiny_checks: Path, tmp_path: Path) -> None:
    result = await grade_file(tiny_notebook(tmp_path / "t.ipynb"), tiny_options(tiny_checks))
    assert result.full_marks, result.failures()
    assert result.score == TINY_MAX
    assert result.seconds < 20


@pytest.mark.kernel
async def test_endless_loop_is_interrupted_and_the_rest_still_counts(tiny_checks: Path, tmp_path: Path) -> None:
    nb = tiny_notebook(tmp_path / "loop.ipynb", q2="while True:\n    pass")
    result = await grade_file(nb, tiny_options(tiny_checks, cell_timeout=2))
    assert points(result) == {"q1": 2, "q2": 0, "q3": 2}
    assert any("ran past 2 s and was interrupted" in n for n in result.notes), result.notes
    assert "answer" in " ".join(result.failures())


@pytest.mark.kernel
async def test_loop_that_ignores_interrupts_restarts_the_kernel_without_it(tiny_checks: Path, tmp_path: Path) -> None:
    spin = "import asyncio\nasync def spin():\n    while True:\n        pass\nawait spin()\nanswer = 42"
    nb = tiny_notebook(tmp_path / "spin.ipynb", q2=spin)
    result = await grade_file(nb, tiny_options(tiny_checks, cell_timeout=2))
    assert points(result) == {"q1": 2, "q2": 0, "q3": 2}, result.failures()
    # ipykernel turns Ctrl-C into a task cancel, which a busy loop never sees: the grader restarts the kernel
    assert any("ran past 2 s" in n for n in result.notes), result.notes


@pytest.mark.kernel
async def test_function_that_hangs_inside_a_check_scores_zero_with_reason(tiny_checks: Path, tmp_path: Path) -> None:
    hang = "async def greet(name):\n    while True:\n        pass"
    nb = tiny_notebook(tmp_path / "hang.ipynb", q3=hang)
    result = await grade_file(nb, tiny_options(tiny_checks, check_timeout=2))
    assert points(result) == {"q1": 2, "q2": 1, "q3": 1}
    reason = next(c.message for c in result.checks if c.name == "greets")
    assert "interrupted" in reason or "did not finish" in reason


@pytest.mark.kernel
async def test_code_under_check_cannot_rewire_the_graders_modules(tiny_checks: Path, tmp_path: Path) -> None:
    rewire = textwrap.dedent(
        """
        async def greet(name):
            import helpers.grading.checks as grading
            real = grading.CheckResult
            def always_passed(question, check_name, description, passed, points, max_points, *rest):
                return real(question, check_name, description, True, max_points, max_points, *rest)
            grading.CheckResult = always_passed
            return "wrong answer"
        """
    )
    result = await grade_file(tiny_notebook(tmp_path / "rewire.ipynb", q3=rewire), tiny_options(tiny_checks))
    greets = next(c for c in result.checks if c.name == "greets")
    assert not greets.passed
    assert "helpers.grading.checks.CheckResult" in greets.message
    assert any("replaced helpers.grading.checks.CheckResult" in f for f in result.flags), result.flags
    assert points(result) == {"q1": 2, "q2": 1, "q3": 1}


@pytest.mark.kernel
async def test_kernel_death_midway_keeps_credit_for_the_rest(tiny_checks: Path, tmp_path: Path) -> None:
    nb = tiny_notebook(tmp_path / "exit.ipynb", q2="import os\nos._exit(3)")
    result = await grade_file(nb, tiny_options(tiny_checks))
    assert points(result) == {"q1": 2, "q2": 0, "q3": 2}
    assert any("kernel died" in n for n in result.notes), result.notes


@pytest.mark.kernel
async def test_error_midway_gives_partial_credit(tiny_checks: Path, tmp_path: Path) -> None:
    nb = tiny_notebook(tmp_path / "raise.ipynb", q1='raise RuntimeError("stuck here")')
    result = await grade_file(nb, tiny_options(tiny_checks))
    assert points(result) == {"q1": 0, "q2": 1, "q3": 2}
    assert any("RuntimeError: stuck here" in n for n in result.notes)
    assert "double" in next(c.message for c in result.checks if c.name == "doubles")


@pytest.mark.kernel
async def test_hidden_checks_count_in_the_grade(tiny_checks: Path, tmp_path: Path) -> None:
    only_positive = "def double(x):\n    return 42 if x == 21 else 0"
    result = await grade_file(tiny_notebook(tmp_path / "h.ipynb", q1=only_positive), tiny_options(tiny_checks))
    hidden = next(c for c in result.checks if c.name == "doubles_negative")
    assert hidden.hidden
    assert not hidden.passed
    assert points(result)["q1"] == 1


@pytest.mark.kernel
async def test_forged_results_and_replaced_check_do_not_count(tiny_checks: Path, tmp_path: Path) -> None:
    forged = json.dumps({"index": 2, "result": {"question": "q2", "passed": True, "points": 1.0}})
    cheat = textwrap.dedent(
        f"""
        async def check(question=None):
            print(question, "all passed")
        print("0123456789abcdef0123456789abcdef {forged}")
        print("{{boot}}", flush=True)
        """
    )
    nb = tiny_notebook(tmp_path / "forge.ipynb", q2=cheat)
    result = await grade_file(nb, tiny_options(tiny_checks))
    assert points(result)["q2"] == 0


@pytest.mark.kernel
async def test_cells_after_a_check_cannot_find_the_graders_nonce(tiny_checks: Path, tmp_path: Path) -> None:
    snoop = textwrap.dedent(
        """
        import linecache, re
        places = [repr(list(globals())), repr(In), repr(Out)]
        places += ["".join(entry[2]) for entry in list(linecache.cache.values()) if len(entry) > 2 and entry[2]]
        leaks = [p for p in places if re.search(r"[0-9a-f]{32}", p)]  # a nonce is 32 hex digits
        if leaks:
            raise RuntimeError("leaked " + leaks[0][:200])
        answer = 42
        """
    )
    result = await grade_file(tiny_notebook(tmp_path / "snoop.ipynb", q2=snoop), tiny_options(tiny_checks))
    assert not any("leaked" in n for n in result.notes), result.notes
    assert result.full_marks, result.failures()


@pytest.mark.kernel
async def test_missing_check_cell_still_runs_its_checks(tiny_checks: Path, tmp_path: Path) -> None:
    path = tiny_notebook(tmp_path / "nocheck.ipynb")
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if 'check("q2")' not in c.source]
    nbformat.write(nb, path)
    result = await grade_file(path, tiny_options(tiny_checks))
    assert result.full_marks
    assert any('check("q2")' in n for n in result.notes)


@pytest.mark.broker
@pytest.mark.kernel
async def test_deleted_check_cell_runs_its_checks_before_the_clean_up_cell(tmp_path: Path) -> None:
    """The warm-up's last cell stops the service q3's checks measure: they must run before it,
    where the lab as shipped has check("q3"), and q1's where the lab has check("q1")."""
    path = tmp_path / "00_warmup_nocheck.ipynb"
    nb = nbformat.read(WARMUP, as_version=4)
    nb.cells = [c for c in nb.cells if 'check("q3")' not in c.source and 'check("q1")' not in c.source]
    nbformat.write(nb, path)
    result = await grade_file(path)
    assert result.full_marks, result.failures()
    notes = " | ".join(result.notes)
    assert 'no check("q3") cell found: its checks ran before code cell' in notes, notes
    assert "await stop_all()" in notes, notes
    assert 'no check("q1") cell found: its checks ran before code cell' in notes, notes
    # without the lab as shipped to go by they run after the last cell: the service is gone by then
    late = await grade_file(path, Options(labs_dir=None))
    assert late.questions["q3"][0] < late.questions["q3"][1], late.failures()


# --------------------------------------------------------------------------- adversarial, warm-up lab


@pytest.mark.broker
@pytest.mark.kernel
async def test_monkeypatching_check_checks_module_and_helpers_does_not_change_the_score(tmp_path: Path) -> None:
    sabotage = textwrap.dedent(
        """
        import sys, types
        import helpers.grading.checks as hc
        import helpers.core.http, helpers.core.measure

        async def check(question=None):
            print(question, "all passed")

        async def always_pass(check, namespace, **kw):
            return hc.CheckResult(check.question, check.name, check.description, True, check.points, check.points)

        hc.run_check = always_pass
        hc.expect = lambda *args, **kwargs: None
        hc.Context.get = lambda self, name, default=None: None
        hc.load_checks = lambda *args, **kwargs: hc.Checks("00_warmup")
        fake = types.ModuleType("helpers.labchecks.warmup")
        fake.checks = hc.Checks("00_warmup")
        sys.modules["helpers.labchecks.warmup"] = fake
        helpers.core.measure.percentile = lambda values, q: 50.0
        """
    )

    def add(nb: nbformat.NotebookNode) -> None:
        nb.cells.insert(2, new_code_cell(sabotage))

    lab = await grade_file(warmup_variant(tmp_path / "cheat_00_warmup.ipynb", add, from_lab=True))
    assert lab.status == "graded", lab.failures()
    assert lab.score == 0, lab.failures()
    assert any("helpers.grading.checks.run_check was replaced" in f for f in lab.flags), lab.flags


@pytest.mark.broker
@pytest.mark.kernel
async def test_sabotaged_helpers_do_not_cost_a_correct_solution_points(tmp_path: Path) -> None:
    sabotage = textwrap.dedent(
        """
        import helpers.grading.checks, helpers.core.http
        async def broken_start_service(*args, **kwargs):
            raise RuntimeError("sabotaged")
        helpers.core.http.start_service = broken_start_service
        helpers.grading.checks.expect = lambda *args, **kwargs: (_ for _ in ()).throw(AssertionError("sabotaged"))
        """
    )

    def add(nb: nbformat.NotebookNode) -> None:
        index = nb.cells.index(cell_with(nb, 'await check("q1")'))
        nb.cells.insert(index, new_code_cell(sabotage))

    result = await grade_file(warmup_variant(tmp_path / "00_warmup_sabotage.ipynb", add))
    assert result.full_marks, result.failures()
    assert any("helpers.core.http.start_service" in f for f in result.flags), result.flags


@pytest.mark.broker
@pytest.mark.kernel  # the grader starts the submission's kernel in this process
async def test_warmup_partial_credit_when_q2_raises(tmp_path: Path) -> None:
    def break_q2(nb: nbformat.NotebookNode) -> None:
        cell = cell_with(nb, "async def round_trip")
        cell.source = 'raise RuntimeError("midway")\n' + cell.source

    result = await grade_file(warmup_variant(tmp_path / "00_warmup_midway.ipynb", break_q2))
    assert points(result) == {"q1": 3, "q2": 0, "q3": 5}, result.failures()


# --------------------------------------------------------------------------- error rows and batches


async def test_not_a_notebook_is_an_error_row(tmp_path: Path) -> None:
    text = tmp_path / "00_warmup.ipynb"
    text.write_text("this is my homework, honest", encoding="utf-8")
    not_nb = tmp_path / "other_00_warmup.ipynb"
    not_nb.write_text('{"hello": 1}', encoding="utf-8")
    for path in (text, not_nb, tmp_path / "missing.ipynb"):
        result = await grade_file(path)
        assert result.status == "error"
        assert not result.full_marks
        assert "not a Jupyter notebook" in result.error or "no such file" in result.error


@pytest.mark.kernel
async def test_malformed_cells_are_graded_not_crashed(tiny_checks: Path, tmp_path: Path) -> None:
    path = tmp_path / "odd.ipynb"
    doc = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"course_lab": {"id": "91_tiny"}, "kernelspec": {"name": "nope"}},
        "cells": [
            {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None},  # no source at all
            {"cell_type": "code", "metadata": {}, "source": ["def double(x):\n", "    return 2 * x\n"], "outputs": []},
            {"cell_type": "raw", "metadata": {}, "source": "answer = 41"},
        ],
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    result = await grade_file(path, tiny_options(tiny_checks))
    assert result.status == "graded", result.failures()
    assert points(result) == {"q1": 2, "q2": 0, "q3": 1}, result.failures()


@pytest.mark.kernel
async def test_a_failing_given_setup_cell_is_an_error_row_not_zero_points(tiny_checks: Path, tmp_path: Path) -> None:
    """Held-out zoe_ok got 0/25 as an ordinary graded row: the course package changed under the grader, and the lab's
    own first cell raised ModuleNotFoundError before any learner code ran. That is no grade: it is an error row."""
    labs = tmp_path / "labs"
    labs.mkdir()
    broken = "import helpers.core.no_such_module_renamed_away\n" + TINY_CELLS["setup"]
    tiny_notebook(labs / "91_tiny.ipynb", setup=broken)  # the lab as shipped: its setup cell imports a module now gone
    given = await grade_file(tiny_notebook(tmp_path / "given.ipynb", setup=broken), Options(**_tiny(tiny_checks, labs)))
    assert given.status == "error", given.failures()
    assert "ModuleNotFoundError" in given.error, given.error
    assert "setup cell" in given.error, given.error
    assert not given.questions, given.questions  # no score presented as a grade
    (feedback,) = write_feedback([given], tmp_path / "fb")
    told = feedback.read_text(encoding="utf-8")
    assert "Grading failed" in told, told
    assert "ModuleNotFoundError" in told, told
    assert "points" not in told, told
    own = "import no_such_package_of_the_learner\n" + TINY_CELLS["setup"]  # the learner changed the given cell
    theirs = await grade_file(tiny_notebook(tmp_path / "own.ipynb", setup=own), Options(**_tiny(tiny_checks, labs)))
    assert theirs.status == "graded", theirs.error
    assert points(theirs) == {"q1": 2, "q2": 1, "q3": 2}, theirs.failures()


def _tiny(tiny_checks: Path, labs: Path) -> dict[str, Any]:
    return {"checks_dir": tiny_checks, "cell_timeout": 4, "total_timeout": 60, "labs_dir": labs}


async def test_unknown_lab_is_an_error_row(tmp_path: Path) -> None:
    path = tmp_path / "mystery.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")], metadata={"course_lab": {"id": "99_nope"}}), path)
    result = await grade_file(path)
    assert result.status == "error"
    assert "unknown lab" in result.error
    assert "99_nope" in result.error
    assert "00_warmup" in result.error


def test_lab_identified_by_metadata_then_file_name() -> None:
    labs = ["00_warmup", "02_sync_chain"]
    by_meta = new_notebook(metadata={"course_lab": {"id": "02_sync_chain"}})
    assert identify_lab(by_meta, Path("whatever.ipynb"), labs) == ("02_sync_chain", "metadata")
    assert identify_lab(new_notebook(), Path("alice-00_warmup (1).ipynb"), labs) == ("00_warmup", "file name")
    assert identify_lab(new_notebook(), Path("alice.ipynb"), labs)[0] is None


@pytest.mark.broker
def test_batch_of_a_folder_writes_a_correct_csv(tmp_path: Path) -> None:
    folder = tmp_path / "submissions"
    folder.mkdir()
    solved = nbformat.read(WARMUP, as_version=4)
    nbformat.write(solved, folder / "alice_00_warmup.ipynb")  # found by file name (no lab metadata)
    (folder / "bob.ipynb").write_bytes((LABS / WARMUP.name).read_bytes())  # found by metadata
    (folder / "carol_00_warmup.ipynb").write_text("not json", encoding="utf-8")
    out_csv, out_json = tmp_path / "grades.csv", tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "helpers", "grade", str(folder), "--csv", str(out_csv), "--json", str(out_json)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    rows = {Path(r["submission"]).name: r for r in csv.DictReader(out_csv.open(encoding="utf-8"))}
    assert set(rows) == {"alice_00_warmup.ipynb", "bob.ipynb", "carol_00_warmup.ipynb"}
    alice, bob, carol = rows["alice_00_warmup.ipynb"], rows["bob.ipynb"], rows["carol_00_warmup.ipynb"]
    assert (alice["status"], alice["lab"], alice["score"], alice["percent"]) == (
        "graded",
        "00_warmup",
        alice["max_score"],
        "100.0",
    )
    q1, q2, q3 = (f"00_warmup q{n}" for n in (1, 2, 3))  # one column per lab question
    assert (alice[q1], alice[q2], alice[q3]) == ("3", "5", "5")
    assert alice["failed"] == ""
    assert (bob["status"], bob["score"], bob[q1]) == ("graded", "0", "0")
    assert "svc" in bob["failed"]
    assert carol["status"] == "error"
    assert "not a Jupyter notebook" in carol["error"]
    assert carol[q1] == ""
    doc = json.loads(out_json.read_text())
    assert [s["full_marks"] for s in doc["submissions"]] == [True, False, False]
    assert "1/3 with full marks, 1 error row(s)" in run.stdout


def test_no_submissions_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no submissions" in capsys.readouterr().err


def test_options_are_resolved_once_into_a_frozen_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch edge decides every option once: the sandbox is probed once, the seed drawn once, the folders to hide
    gathered once; the plan is frozen, and every submission of the batch is graded by it."""
    import dataclasses

    from helpers.grading import plan as planning
    from helpers.grading.runner import grade_many, resolve_plan

    asked: list[str] = []
    resolve = planning.boxes.resolve

    def counted(mode: str) -> tuple[str, str]:
        asked.append(mode)
        return resolve(mode)

    monkeypatch.setattr(planning.boxes, "resolve", counted)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = [tmp_path / "a" / "one.ipynb", tmp_path / "b" / "two.ipynb"]
    for f in files:
        f.write_text("not a notebook")
    reports = tmp_path / "reports"
    plan = resolve_plan(Options(sandbox="none", hide=(reports,), labs_dir=None), files)
    assert asked == ["none"]
    assert plan.sandbox == "none"
    assert plan.seed, "a seed is drawn when none is given"
    assert plan.seed == dataclasses.replace(plan).seed, "a seed is drawn once"
    assert resolve_plan(Options(sandbox="none", seed="s1"), files).seed == "s1"
    assert {reports, tmp_path / "a", tmp_path / "b", Path.cwd(), Path.home()} <= set(plan.hide)
    assert set(plan.describe()) == {"cell_timeout_s", "total_timeout_s", "broker", "jobs", "alone", "seed", "sandbox"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.seed = "changed"  # type: ignore[misc] # the point: no stage may change an option
    asked.clear()
    results = asyncio.run(grade_many(files, Options(sandbox="none", jobs=2, labs_dir=None)))
    assert asked == ["none"], "a batch resolves its sandbox once, not once per submission"
    assert [r.status for r in results] == ["error", "error"]
    assert {r.sandbox for r in results} == {"none"}
    assert all(r.error.startswith("not a Jupyter notebook") for r in results), [r.error for r in results]

"""What the grader writes for instructors and learners: per-lab CSV columns, per-check pass
rates, re-grading a subset into earlier results, feedback files, a Canvas gradebook column.

Most tests build :class:`Result` rows by hand (no kernel, milliseconds); the merge test
grades a tiny lab for real through the command line, twice.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TypedDict, Unpack

import pytest
from test_grader import TINY_CHECKS, tiny_notebook

from helpers.grading.checks import CheckResult
from helpers.grading.cli import main
from helpers.grading.feedback import write_feedback
from helpers.grading.report import Result, check_summary, format_summary, merge, read_json, write_csv, write_json


@pytest.fixture(scope="module")
def tiny_checks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny lab of test_grader (91_tiny: 5 points, q2 is ``answer = 42``)."""
    folder = tmp_path_factory.mktemp("checks")
    expected = f"\nEXPECTED_MQTT_URL = {os.environ.get('MQTT_URL', '')!r}\n"
    (folder / "tiny.py").write_text(TINY_CHECKS + expected, encoding="utf-8")
    return folder


class Texts(TypedDict, total=False):
    """What a failed check may say besides its description."""

    message: str
    hint: str
    code_hint: str


def check(
    question: str, name: str, passed: bool, *, points: float = 1, hidden: bool = False, **more: Unpack[Texts]
) -> CheckResult:
    """One check's result, as the grader records it."""
    return CheckResult(question, name, f"{name} works", passed, points if passed else 0.0, points, hidden=hidden, **more)


def graded(submission: str, lab: str, *checks: CheckResult) -> Result:
    return Result.graded(submission, lab, list(checks))


def test_each_lab_question_gets_its_own_csv_column(tmp_path: Path) -> None:
    rows = [
        graded("a.ipynb", "00_warmup", check("q1", "greets", True, points=3)),
        graded("b.ipynb", "04_reliable_consumer", check("q1", "acks", False, points=2)),
    ]
    write_csv(rows, tmp_path / "grades.csv")
    table = list(csv.DictReader((tmp_path / "grades.csv").open(encoding="utf-8")))
    assert table[0]["00_warmup q1"] == "3"
    assert table[0]["04_reliable_consumer q1"] == ""
    assert table[1]["00_warmup q1"] == ""
    assert table[1]["04_reliable_consumer q1"] == "0"
    assert "q1" not in table[0]


def test_check_summary_counts_failures_per_check_and_lab() -> None:
    rows = [
        graded("a", "00_warmup", check("q1", "greets", True), check("q2", "echoes", False, hidden=True)),
        graded("b", "00_warmup", check("q1", "greets", False), check("q2", "echoes", False, hidden=True)),
        graded("c", "04_reliable_consumer", check("q1", "greets", True)),
        Result("d", status="error", error="not a Jupyter notebook"),
    ]
    summary = {(s["lab"], s["check"]): s for s in check_summary(rows)}
    assert summary[("00_warmup", "greets")] | {} == {
        "lab": "00_warmup",
        "question": "q1",
        "check": "greets",
        "hidden": False,
        "passed": 1,
        "failed": 1,
        "pass_rate": 0.5,
    }
    assert (summary[("00_warmup", "echoes")]["failed"], summary[("04_reliable_consumer", "greets")]["passed"]) == (2, 1)
    text = format_summary(check_summary(rows))
    assert "[00_warmup] q2 echoes  2/2 failed (hidden)" in text
    assert text.index("echoes") < text.index("greets")  # hardest first


def test_results_json_round_trips_and_merge_replaces_only_regraded_rows(tmp_path: Path) -> None:
    first = [graded("a", "00_warmup", check("q1", "greets", False)), graded("b", "00_warmup", check("q1", "greets", True))]
    write_json(first, tmp_path / "r.json", {"seed": "x"})
    back = read_json(tmp_path / "r.json")
    assert back == first
    again = graded("a", "00_warmup", check("q1", "greets", True))
    new = graded("c", "00_warmup", check("q1", "greets", True))
    assert [(r.submission, r.score) for r in merge(back, [again, new])] == [("a", 1), ("b", 1), ("c", 1)]
    spelled_otherwise = graded(str(Path("b").resolve()), "00_warmup", check("q1", "greets", False))
    assert [(r.submission, r.score) for r in merge(back, [spelled_otherwise])] == [("a", 0), (str(Path("b").resolve()), 0)]


@pytest.mark.kernel
def test_regrading_a_subset_merges_into_the_earlier_json_and_csv(
    tiny_checks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "subs"
    folder.mkdir()
    tiny_notebook(folder / "ada.ipynb")
    bob = tiny_notebook(folder / "bob.ipynb", q2="answer = 41")
    out_json, out_csv = tmp_path / "results.json", tmp_path / "grades.csv"
    common = ["--checks", str(tiny_checks), "--sandbox", "none", "-q", "--json", str(out_json), "--csv", str(out_csv)]
    assert main([str(folder), *common]) == 1
    before = json.loads(out_json.read_text())
    assert [s["score"] for s in before["submissions"]] == [5, 4]
    assert {s["check"]: s["failed"] for s in before["checks_summary"]}["answer_is_set"] == 1
    assert "per check: learners who failed it" in capsys.readouterr().out

    tiny_notebook(bob)  # bob fixes q2 and is re-graded alone
    assert main([str(bob), *common, "--merge", "--feedback", str(tmp_path / "fb")]) == 0
    assert "1 row(s) graded now, 1 kept from before" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "fb").iterdir()) == ["bob.html", "bob.md"]  # only who was graded now
    assert "5 of 5 points" in (tmp_path / "fb" / "bob.md").read_text(encoding="utf-8")
    after = json.loads(out_json.read_text())
    assert [(Path(s["submission"]).name, s["score"]) for s in after["submissions"]] == [("ada.ipynb", 5), ("bob.ipynb", 5)]
    assert after["submissions"][0] == before["submissions"][0]  # ada's row is kept as it was
    assert {s["check"]: s["failed"] for s in after["checks_summary"]}["answer_is_set"] == 0
    table = list(csv.DictReader(out_csv.open(encoding="utf-8")))
    assert [(Path(r["submission"]).name, r["score"], r["91_tiny q2"]) for r in table] == [
        ("ada.ipynb", "5", "1"),
        ("bob.ipynb", "5", "1"),
    ]


class _Head:
    """A stdout read by ``head -1``: the first line gets through, then the pipe is closed."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        if "\n" in self.text:
            raise BrokenPipeError(32, "Broken pipe")
        self.text += text
        return len(text)

    def flush(self) -> None:
        if "\n" in self.text:
            raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_never_costs_the_report_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`grade ... | head` stopped the grader at its first print after the pipe closed, before --json and --csv were
    written (held-out run). The files are written first, and printing to a closed pipe stops only the printing."""
    folder = tmp_path / "subs"
    folder.mkdir()
    for name in ("ada_00_warmup", "bob_00_warmup"):
        (folder / f"{name}.ipynb").write_text("not a notebook", encoding="utf-8")  # error rows: no kernel needed
    out_json, out_csv, feedback = tmp_path / "results.json", tmp_path / "grades.csv", tmp_path / "fb"
    head = _Head()
    monkeypatch.setattr("sys.stdout", head)
    code = main([str(folder), "--sandbox", "none", "--json", str(out_json), "--csv", str(out_csv), "--feedback", str(feedback)])
    monkeypatch.undo()
    assert code == 1
    assert head.text.startswith("grading 2 submission(s)")
    assert [Path(s["submission"]).name for s in json.loads(out_json.read_text())["submissions"]] == [
        "ada_00_warmup.ipynb",
        "bob_00_warmup.ipynb",
    ]
    assert len(list(csv.DictReader(out_csv.open(encoding="utf-8")))) == 2
    assert sorted(p.name for p in feedback.iterdir()) == [
        "ada_00_warmup.html",
        "ada_00_warmup.md",
        "bob_00_warmup.html",
        "bob_00_warmup.md",
    ]


def test_merge_without_json_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.ipynb").write_text("{}", encoding="utf-8")
    assert main([str(tmp_path / "x.ipynb"), "--merge", "--csv", str(tmp_path / "g.csv")]) == 2
    assert "--merge needs --json" in capsys.readouterr().err


# --------------------------------------------------------------------------- feedback files


def two_learners() -> list[Result]:
    """Ada fails a visible and a hidden check; Bob fails different ones, with a secret in his message."""
    ada = graded(
        "subs/ada_00_warmup.ipynb",
        "00_warmup",
        check("q1", "greets", True, points=2),
        check("q2", "echoes", False, hint="await the reply", code_hint="return await reply()", message="got None"),
        check("q2", "echoes_unicode", False, hidden=True, hint="encode as UTF-8", message="hidden input 'é' came back wrong"),
        check("q3", "counts", True, hidden=True),
    )
    ada.notes = ["code cell 4 ('async def round_trip(') ran past 15 s and was interrupted"]
    ada.flags = ["helpers.grading.checks.expect was replaced by notebook code"]
    bob = graded("other/bob.ipynb", "00_warmup", check("q1", "greets", False, message="BOB-ONLY-MESSAGE"))
    return [ada, bob, Result("subs/carol.ipynb", status="error", error="not a Jupyter notebook: NotJSONError")]


def test_feedback_files_tell_each_learner_their_own_result_only(tmp_path: Path) -> None:
    written = write_feedback(two_learners(), tmp_path / "fb")
    assert [p.name for p in written] == ["ada_00_warmup.md", "bob.md", "carol.md"]
    ada = (tmp_path / "fb" / "ada_00_warmup.md").read_text(encoding="utf-8")
    assert "ada_00_warmup.ipynb: 3 of 5 points." in ada
    assert "| q1 | 2 / 2 |" in ada
    assert "| q2 | 0 / 2 |" in ada
    assert "### q2: echoes works (echoes)" in ada
    assert "- What went wrong: got None" in ada
    assert "- Hint: await the reply" in ada
    assert "1 hidden check passed, 1 failed." in ada
    assert "echoes_unicode" not in ada
    assert "é" not in ada
    assert "encode as UTF-8" not in ada
    assert "return await reply()" not in ada  # never the code hint
    assert "ran past 15 s" in ada
    assert "replaced by notebook code" not in ada
    assert "BOB-ONLY-MESSAGE" not in ada
    assert "bob" not in ada.lower()
    page = (tmp_path / "fb" / "ada_00_warmup.html").read_text(encoding="utf-8")
    assert "<h3>q2: echoes works (echoes)</h3>" in page
    assert "<li>Hint: await the reply</li>" in page
    assert "echoes_unicode" not in page
    assert "return await reply()" not in page
    assert "<script" not in page
    carol = (tmp_path / "fb" / "carol.md").read_text(encoding="utf-8")
    assert "could not be graded: not a Jupyter notebook" in carol


def test_feedback_names_hidden_checks_when_asked_and_escapes_html(tmp_path: Path) -> None:
    rows = two_learners()
    rows[1].checks[0].message = "<b>got</b> & lost"
    write_feedback(rows, tmp_path, name_hidden=True)
    ada = (tmp_path / "ada_00_warmup.md").read_text(encoding="utf-8")
    assert "- q2: echoes_unicode works (echoes_unicode): hidden input 'é' came back wrong" in ada
    assert "- q3: counts works (counts): passed" in ada
    assert "return await reply()" not in ada
    assert "&lt;b&gt;got&lt;/b&gt; &amp; lost" in (tmp_path / "bob.html").read_text(encoding="utf-8")


def test_same_file_name_in_two_folders_gets_two_feedback_files(tmp_path: Path) -> None:
    rows = [graded(f"{d}/lab.ipynb", "00_warmup", check("q1", "x", d == "a")) for d in ("a", "b")]
    assert [p.name for p in write_feedback(rows, tmp_path)] == ["lab.md", "lab-2.md"]


# --------------------------------------------------------------------------- Canvas

# An export as Canvas writes it: a byte-order mark, CRLF line ends, quoted names with commas,
# a Points Possible row, other assignments' scores, computed columns. Each cell is written
# raw (quotes included), so the expected file is built the same way, not re-serialized.
HEADER = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "Lab 00 warmup (1201)", "Quiz 1 (1202)", "Current Score"]
ROWS = [
    ["    Points Possible", "", "", "", "", "100.00", "10.00", "(read only)"],
    ['"Lovelace, Ada"', "101", "S-101", "ada", '"Section A, Mon"', "", "9.50", "95.00"],
    ['"Turing, Alan"', "102", "S-102", "alan", "Section A", "12.00", "", "60.00"],
    ['"Hopper, ""Amazing"" Grace"', "103", "S-103", "grace", "Section B", "", "7", "70.00"],
    ['"Student, Test"', "104", "", "", "", "", "", ""],
]
COLUMN = 5


def gradebook_bytes(rows: list[list[str]]) -> bytes:
    lines = [",".join(HEADER)] + [",".join(r) for r in rows]
    return ("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8")


def test_canvas_fills_one_column_and_leaves_every_other_byte(tmp_path: Path) -> None:
    from helpers.grading.canvas import fill

    export = tmp_path / "gradebook.csv"
    export.write_bytes(gradebook_bytes(ROWS))
    (tmp_path / "roster.csv").write_text("submission,SIS Login ID\nada,ada\nalan,alan\nzed,zed\n", encoding="utf-8")
    results = [
        graded("subs/ada_00_warmup.ipynb", "00_warmup", check("q1", "x", True, points=10), check("q2", "y", False, points=3)),
        graded("subs/alan.ipynb", "00_warmup", check("q1", "x", True, points=10), check("q2", "y", True, points=3)),
        graded("subs/zed_00_warmup.ipynb", "00_warmup", check("q1", "x", True, points=13)),
        graded("subs/nobody_00_warmup.ipynb", "00_warmup", check("q1", "x", True, points=13)),
        Result("subs/eve_00_warmup.ipynb", lab="00_warmup", status="error", error="not a Jupyter notebook"),
    ]
    done = fill(export, tmp_path / "roster.csv", results)
    assert export.read_bytes() == gradebook_bytes(ROWS)  # the export is untouched
    expected = [list(r) for r in ROWS]
    expected[1][COLUMN], expected[2][COLUMN] = "76.92", "100"  # 10/13 and 13/13 of 100 points possible
    assert done.out == tmp_path / "gradebook-filled.csv"
    assert done.out.read_bytes() == gradebook_bytes(expected)  # byte for byte, but the two cells
    assert done.column == "Lab 00 warmup (1201)"
    assert done.written == {"Lovelace, Ada": "76.92", "Turing, Alan": "100"}
    assert done.unmatched == ["zed_00_warmup.ipynb (SIS Login ID zed is not in the gradebook)", "nobody_00_warmup.ipynb"]
    assert done.not_graded == ["eve_00_warmup.ipynb (not a Jupyter notebook)"]
    assert done.missing == ['Hopper, "Amazing" Grace', "Student, Test"]
    summary = done.summary()
    assert "wrote 2 score(s)" in summary
    assert "nobody_00_warmup.ipynb" in summary
    assert "Student, Test" in summary


def test_canvas_never_guesses(tmp_path: Path) -> None:
    from helpers.grading.canvas import CanvasError, fill

    export = tmp_path / "gradebook.csv"
    export.write_bytes(gradebook_bytes(ROWS))
    (tmp_path / "roster.csv").write_text("submission,ID\nada,101\nada_00_warmup,101\n", encoding="utf-8")
    twice = [graded(f"{d}/ada_00_warmup.ipynb", "00_warmup", check("q1", "x", True)) for d in ("a", "b")]
    done = fill(export, tmp_path / "roster.csv", twice)
    assert done.written == {}
    assert done.conflicts == ["Lovelace, Ada (ada_00_warmup.ipynb, ada_00_warmup.ipynb)"]
    assert "Lovelace, Ada" not in done.missing
    assert done.out.read_bytes() == export.read_bytes()
    with pytest.raises(CanvasError, match="no assignment column names lab 04_reliable_consumer"):
        fill(export, tmp_path / "roster.csv", [graded("x.ipynb", "04_reliable_consumer", check("q1", "x", True))])
    with pytest.raises(CanvasError, match="must be a new file"):
        fill(export, tmp_path / "roster.csv", twice, out=export)
    with pytest.raises(CanvasError, match="one Canvas column holds one lab"):
        fill(export, tmp_path / "roster.csv", [*twice, graded("y.ipynb", "04_reliable_consumer", check("q1", "x", True))])


@pytest.mark.kernel
def test_grade_command_fills_the_canvas_column(tiny_checks: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "subs"
    folder.mkdir()
    tiny_notebook(folder / "ada.ipynb")
    tiny_notebook(folder / "alan.ipynb", q2="answer = 41")
    header = "Student,ID,SIS User ID,SIS Login ID,Section,Tiny lab 91_tiny (7),Current Score\n"
    export = tmp_path / "export.csv"
    export.write_text(header + "Ada,1,,ada,A,,\nAlan,2,,alan,A,,\nBea,3,,bea,A,,\n", encoding="utf-8")
    (tmp_path / "roster.csv").write_text("submission,ID\nada,1\nalan,2\n", encoding="utf-8")
    out = tmp_path / "filled.csv"
    args = [
        "--checks",
        str(tiny_checks),
        "--sandbox",
        "none",
        "-q",
        "--canvas",
        str(export),
        "--roster",
        str(tmp_path / "roster.csv"),
    ]
    assert main([str(folder), *args, "--canvas-out", str(out)]) == 1
    assert "students without a graded submission (cell left as it was): Bea" in capsys.readouterr().out
    assert out.read_text(encoding="utf-8") == header + "Ada,1,,ada,A,5,\nAlan,2,,alan,A,4,\nBea,3,,bea,A,,\n"
    assert main([str(folder), *args[:-2]]) == 2  # --canvas without --roster: said before grading
    assert "go together" in capsys.readouterr().err

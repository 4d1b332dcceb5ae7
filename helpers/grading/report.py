"""What the grader reports: one :class:`Result` per submission, as text, CSV and JSON."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from helpers.grading.checks import CheckResult, format_points

Status = Literal["graded", "error"]
"""A submission was graded, or could not be graded at all (an error row, scored 0)."""


@dataclass
class Result:
    """One submission's grade."""

    submission: str
    lab: str = ""
    status: Status = "graded"
    """``graded``, or ``error`` when the file could not be graded at all (see ``error``)."""
    score: float = 0.0
    max_score: float = 0.0
    questions: dict[str, list[float]] = field(default_factory=dict)
    """question -> [points, max points]"""
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What happened while the notebook ran (errors, timeouts, restarts)."""
    flags: list[str] = field(default_factory=list)
    """Signs of tampering, for a human to look at; they do not change the score."""
    error: str = ""
    seconds: float = 0.0
    sandbox: str = ""
    """How the submission's kernel was isolated: ``bwrap``, ``setpriv`` or ``none`` (see helpers.grading.sandbox)."""

    @classmethod
    def graded(cls, submission: str, lab: str, checks: list[CheckResult], **details: Any) -> Result:
        """A graded submission: points per question and the total, from its check results."""
        questions: dict[str, list[float]] = {}
        for check in checks:
            got = questions.setdefault(check.question, [0.0, 0.0])
            got[0] += float(check.points)
            got[1] += float(check.max_points)
        return cls(
            submission,
            lab=lab,
            score=sum(q[0] for q in questions.values()),
            max_score=sum(q[1] for q in questions.values()),
            questions=questions,
            checks=checks,
            **details,
        )

    @property
    def full_marks(self) -> bool:
        """True when graded and every point was earned."""
        return self.status == "graded" and self.max_score > 0 and self.score >= self.max_score

    def failures(self) -> list[str]:
        """One line per failed check: question, name, reason."""
        return [f"{c.question} {c.name}{' (hidden)' if c.hidden else ''}: {c.message}" for c in self.checks if not c.passed]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        """A row :func:`write_json` wrote (for merging a re-graded subset into earlier results)."""
        names = {f.name for f in fields(cls)}
        row = {k: v for k, v in data.items() if k in names}
        row["checks"] = [CheckResult.from_dict(c) for c in row.get("checks", [])]
        return cls(**row)


def question_column(lab: str, question: str) -> str:
    """The CSV column of one lab's question: labs number their questions alike, so q1 of
    lab 00 and q1 of lab 04 get a column each."""
    return f"{lab} {question}"


def question_columns(results: Sequence[Result]) -> list[str]:
    """Every (lab, question) column across the batch, in first-seen order."""
    return list(dict.fromkeys(question_column(r.lab, q) for r in results for q in r.questions))


def merge(earlier: Sequence[Result], fresh: Sequence[Result]) -> list[Result]:
    """``earlier`` with each re-graded submission's row replaced by its ``fresh`` one, in place;
    submissions graded for the first time come last. A file is the same file however its
    path was written (``subs/a.ipynb``, ``./subs/a.ipynb``, absolute)."""
    new = {_same_file(r.submission): r for r in fresh}
    kept = [new.pop(_same_file(r.submission), r) for r in earlier]
    return kept + list(new.values())


def _same_file(submission: str) -> str:
    return str(Path(submission).resolve())


def read_json(path: Path | str) -> list[Result]:
    """The submissions of a results file :func:`write_json` wrote."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Result.from_dict(row) for row in doc.get("submissions", [])]


def check_summary(results: Sequence[Result]) -> list[dict[str, Any]]:
    """How many graded submissions passed and failed each check (per lab, in the checks' order):
    which checks a class finds hardest, and which check may be wrong."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        for c in r.checks if r.status == "graded" else ():
            row = rows.setdefault(
                (r.lab, c.name),
                {"lab": r.lab, "question": c.question, "check": c.name, "hidden": c.hidden, "passed": 0, "failed": 0},
            )
            row["passed" if c.passed else "failed"] += 1
    for row in rows.values():
        row["pass_rate"] = round(row["passed"] / (row["passed"] + row["failed"]), 3)
    return list(rows.values())


def format_summary(summary: Sequence[Mapping[str, Any]]) -> str:
    """The per-check pass rates as a table for the end of a batch (hardest first within a lab)."""
    if not summary:
        return ""
    ordered = sorted(summary, key=lambda s: (s["lab"], s["pass_rate"]))
    width = max(len(f"{s['question']} {s['check']}") for s in ordered)
    lines = ["per check: learners who failed it"]
    for s in ordered:
        name = f"{s['question']} {s['check']}"
        total = s["passed"] + s["failed"]
        hidden = " (hidden)" if s["hidden"] else ""
        lines.append(f"  [{s['lab']}] {name:<{width}}  {s['failed']}/{total} failed{hidden}")
    return "\n".join(lines)


def format_row(result: Result) -> str:
    """One submission as one line, plus its failure reasons."""
    if result.status == "error":
        return f"{result.submission}\n    ERROR: {result.error}"
    pts = format_points
    per_q = "  ".join(f"{q} {pts(p)}/{pts(m)}" for q, (p, m) in result.questions.items())
    head = f"{result.submission}  [{result.lab}]  {pts(result.score)}/{pts(result.max_score)}  {per_q}  ({result.seconds:.1f} s)"
    lines = [head]
    lines += [f"    - {f}" for f in result.failures()]
    lines += [f"    note: {n}" for n in result.notes]
    lines += [f"    FLAG: {f}" for f in result.flags]
    return "\n".join(lines)


def write_csv(results: Sequence[Result], path: Path | str) -> None:
    """One row per submission: score, points per lab question, failures, notes, flags, errors."""
    questions = question_columns(results)
    header = [
        "submission",
        "lab",
        "status",
        "score",
        "max_score",
        "percent",
        *questions,
        "failed",
        "notes",
        "flags",
        "error",
        "seconds",
        "sandbox",
    ]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in results:
            percent = round(100 * r.score / r.max_score, 1) if r.max_score else 0.0
            mine = {question_column(r.lab, q): p for q, (p, _) in r.questions.items()}
            per_q = [format_points(mine[q]) if q in mine else "" for q in questions]
            writer.writerow(
                [
                    r.submission,
                    r.lab,
                    r.status,
                    format_points(r.score),
                    format_points(r.max_score),
                    percent,
                    *per_q,
                    " | ".join(r.failures()),
                    " | ".join(r.notes),
                    " | ".join(r.flags),
                    r.error,
                    r.seconds,
                    r.sandbox,
                ]
            )


def write_json(results: Sequence[Result], path: Path | str, grader: Mapping[str, Any]) -> None:
    """Everything, per check, for tools and for feedback to learners; ``grader`` says how it ran."""
    doc = {
        "grader": dict(grader),
        "submissions": [{**asdict(r), "full_marks": r.full_marks} for r in results],
        "checks_summary": check_summary(results),
    }
    Path(path).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
